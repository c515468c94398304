"""Write docs/cli.md, the command-line reference, from the real parser's `--help`.

    python scripts/cli_reference.py           regenerate docs/cli.md
    python scripts/cli_reference.py --check   exit 1 when docs/cli.md differs from what the parser says now

The commands are found by walking launch.py's argparse parser, so a new
subcommand is documented by running this again; tests/test_docs.py fails until
then. The text must not depend on who runs it: help is formatted 100 columns
wide, without colour, and with every EXEMPLAR_* variable unset, since those
replace the defaults that `--help` shows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "cli.md"
REGENERATE = "python scripts/cli_reference.py"
WIDTH = "100"
ENV_PREFIX = "EXEMPLAR_"

HEADER = f"""# Command-line reference

Every command of `python launch.py` with its `--help`, generated from the parser by
`{REGENERATE}` (do not edit by hand: `tests/test_docs.py` fails when this file and
the parser disagree). Every setting also has an environment variable, named beside it;
the defaults shown are those with no such variable set.
"""


@dataclass(frozen=True)
class Command:
    """One parser of the command line: its words after `python launch.py`, its help line, and the parser."""

    words: tuple[str, ...]
    summary: str
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return self.parser.prog


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), summary: str = "") -> Iterator[Command]:
    """The parser and every subcommand under it, depth first, in the order the parser lists them."""
    yield Command(words, summary, parser)
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias of a subcommand already listed
                continue
            seen.add(id(sub))
            yield from commands(sub, (*words, name), helps.get(name, ""))


def actions(parser: argparse.ArgumentParser) -> list[str]:
    """The words a subcommand's first positional argument chooses from (`models list|activate`), if any."""
    for action in parser._actions:
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
            return [str(choice) for choice in action.choices]
    return []


@contextmanager
def plain_environment() -> Iterator[None]:
    """Fixed width, no colour, no EXEMPLAR_* variables, for as long as the block runs; then as before."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        del os.environ[key]
    os.environ.update({"COLUMNS": WIDTH, "NO_COLOR": "1", "PYTHON_COLORS": "0"})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _anchor(name: str) -> str:
    """The fragment GitHub gives a heading `name` (letters, digits, '-' and '_' kept; spaces become '-')."""
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def generate() -> str:
    """docs/cli.md as the parser describes the command line now."""
    with plain_environment():
        import launch  # the parser builds its flags from the environment, so only inside the block

        found = list(commands(launch.build_parser()))
        helps = [command.parser.format_help() for command in found]
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    for command in found[1:]:
        summary = command.summary.replace("|", r"\|")  # a bar would end the table cell
        lines.append(f"| [`{command.name}`](#{_anchor(command.name)}) | {summary} |")
    for command, text in zip(found, helps):
        lines += ["", f"## {command.name}", ""]
        choices = actions(command.parser) if command.words else []
        if choices:
            lines += [
                "Its first argument picks what it does: "
                + ", ".join(f"`{command.name} {choice}`" for choice in choices)
                + ".",
                "",
            ]
        lines += ["```text", *(line.rstrip() for line in text.rstrip().splitlines()), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/cli.md from the parser's --help.")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if docs/cli.md is out of date")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if not REFERENCE.is_file() or REFERENCE.read_text(encoding="utf-8") != text:
            print(f"{REFERENCE.relative_to(REPO)} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{REFERENCE.relative_to(REPO)} is up to date.")
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"Wrote {REFERENCE.relative_to(REPO)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
