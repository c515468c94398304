"""The shape of the code, checked on its import graph (every import, function-local ones
included: hiding an import in a function does not remove the dependency).

The rules are DESIGN.md's: storage imports nothing of the project; core imports storage at
most; bot and training never import each other; inside bot, ui and api use chat, which uses
serving, never the other way; and no module imports itself round a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "core", "storage", "training")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path], root: Path = REPO) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from bot.ui import chat_history` imports the submodule when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            # `import bot.serving.engine` also runs bot and bot.serving, but those are packages'
            # __init__ files with nothing in them; the module itself is the dependency.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def layer(module: str) -> str:
    """bot's subpackage (bot.serving, bot.chat, bot.api, bot.ui, or bot for its top-level modules), else the package."""
    parts = module.split(".")
    if parts[0] == "bot" and len(parts) > 1 and parts[1] in ("serving", "chat", "api", "ui"):
        return ".".join(parts[:2])
    return parts[0]


# Which layers each layer may import (besides itself).
ALLOWED = {
    "storage": set(),
    "core": {"storage"},
    "training": {"core", "storage"},
    "bot.serving": {"core", "storage"},
    "bot.chat": {"bot.serving", "core", "storage"},
    # bot's top-level modules: auth (a leaf) and server (the wiring, which may import everything in bot).
    "bot": {"bot.serving", "bot.chat", "bot.api", "bot.ui", "core", "storage"},
    "bot.api": {"bot", "bot.chat", "bot.serving", "core", "storage"},
    "bot.ui": {"bot", "bot.chat", "bot.serving", "core", "storage"},
}


def test_every_import_points_down_the_layers(graph):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]
    )
    # bot's own top-level modules: only bot.server wires the subpackages together; auth is a leaf.
    wrong += sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if layer(module) == "bot" and module != "bot.server"
        for target in targets
        if target.startswith("bot.")
    )
    wrong += sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if layer(module) in ("bot.api", "bot.ui")
        for target in targets
        if target == "bot.server"
    )
    assert not wrong, "imports against the layering (DESIGN.md, Layout):\n" + "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles(graph):
    assert cycles(graph) == [], "modules that import each other round a circle"


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_function_local_import_counts(tmp_path):
    """The circle the layout once had (admin_feedback -> ui -> admin_ui -> admin_feedback) was hidden in functions."""
    source = tmp_path / "bot" / "ui" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from bot.ui import y\n    from bot.serving.base import GenerationParams\n")
    modules = {"bot.ui.x": source, "bot.ui.y": source, "bot.serving.base": source}
    assert imports_of(source, modules, root=tmp_path) == {"bot.ui.y", "bot.serving.base"}


def sys_path_edits(path: Path) -> list[int]:
    """Lines of `path` that change sys.path (insert, append, extend, assignment)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "path"
            and isinstance(target.value, ast.Name)
            and target.value.id == "sys"
        ):
            lines.append(node.lineno)
    return lines


def test_tests_benchmarks_and_scripts_do_not_edit_sys_path():
    """They import the project as installed (pip install -e .) or from the repository root (python -m)."""
    edits = {
        str(path.relative_to(REPO)): lines
        for folder in ("tests", "benchmarks", "scripts")
        for path in (REPO / folder).rglob("*.py")
        if (lines := sys_path_edits(path))
    }
    assert edits == {}


def test_benchmarks_do_not_import_the_tests():
    offenders = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "benchmarks").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            name.split(".")[0] == "tests"
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
        )
    )
    assert offenders == []
