"""The documentation says what the code does: every command is in the CLI reference with its
current --help, and every link between the README, docs/ and the code leads somewhere."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import launch

REPO = Path(__file__).resolve().parent.parent
CLI_REFERENCE = REPO / "docs" / "cli.md"
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("*/README.md"))]
# [text](target) and [text]: target; images too. Code spans are removed first (see links_in).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def cli_reference_script() -> ModuleType:
    """scripts/cli_reference.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "scripts" / "cli_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def parsers_and_actions(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Walk the parser: every subcommand (`python launch.py serve`, at any depth), and for a subcommand
    whose first argument is a choice, each choice as a command line (`python launch.py models activate`)."""
    parsers: list[str] = []
    choices: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                below = parsers_and_actions(sub)
                parsers += [sub.prog, *below[0]]
                choices += below[1]
        elif not action.option_strings and action.choices:
            choices += [f"{parser.prog} {choice}" for choice in action.choices]
    return parsers, choices


def test_every_command_of_the_parser_is_in_the_cli_reference():
    text = CLI_REFERENCE.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", text, re.MULTILINE))
    parsers, choices = parsers_and_actions(launch.build_parser())
    assert {"python launch.py serve", "python launch.py train", "python launch.py backup"} <= set(parsers)
    assert "python launch.py models activate" in choices
    missing = [p for p in parsers if p not in headings] + [c for c in choices if f"`{c}`" not in text]
    assert not missing, f"not in docs/cli.md: {missing}; run `python scripts/cli_reference.py`"


def test_cli_reference_is_what_the_parser_prints_now():
    script = cli_reference_script()
    expected = script.generate()
    assert CLI_REFERENCE.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale (a command or its --help changed): run `python scripts/cli_reference.py`"
    )


def test_the_reference_does_not_depend_on_the_terminal_or_the_environment(monkeypatch):
    script = cli_reference_script()
    plain = script.generate()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("EXEMPLAR_PORT", "8000")
    monkeypatch.setenv("EXEMPLAR_TRAIN_EPOCHS", "9")
    assert script.generate() == plain
    assert os.environ["COLUMNS"] == "40" and os.environ["EXEMPLAR_PORT"] == "8000"  # given back as it was


def test_check_mode_says_how_to_regenerate(tmp_path, monkeypatch, capsys):
    script = cli_reference_script()
    stale = tmp_path / "cli.md"
    stale.write_text("# an old reference\n", encoding="utf-8")
    monkeypatch.setattr(script, "REFERENCE", stale)
    monkeypatch.setattr(script, "REPO", tmp_path)
    assert script.main(["--check"]) == 1
    assert "python scripts/cli_reference.py" in capsys.readouterr().err
    assert script.main([]) == 0 and script.main(["--check"]) == 0


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file (a repeated heading gets -1, -2, ...)."""
    found: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            base, n = slug(match.group(1)), 0
            name = base
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links_in(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and code spans."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document):
    broken = []
    for target in links_in(document):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target} (no heading #{fragment} in {path.relative_to(REPO)})")
    assert not broken, f"{document.relative_to(REPO)}: broken links: {broken}"


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Why `some_flag` is off\n\n## Title\n\n"
        "See [a](missing.md), [b](#title), [c](#nope) and `[d](not-a-link.md)`.\n"
    )
    assert links_in(page) == ["missing.md", "#title", "#nope"]
    assert anchors(page) == {"title", "why-some_flag-is-off", "title-1"}
