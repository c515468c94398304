"""Command-line flags and environment variables generated from the config dataclasses.

A config field is typed once, with its default and help text (`_help(...)` in
core/config.py and training/config.py); `add_flags` turns every field into a
flag whose `--help` is that text, and `from_args` reads the parsed flags back
into the dataclass. Adding a field therefore adds its flag and its environment
variable, with no edit here or in launch.py:

    field `few_shot_k` of ServeConfig        -> --few-shot-k,           env EXEMPLAR_FEW_SHOT_K
    field `epochs` of TrainConfig (prefix train) -> --train-epochs,     env EXEMPLAR_TRAIN_EPOCHS
    a bool field `few_shot`                  -> --few-shot / --no-few-shot

Field metadata may also carry `choices` (a tuple, or derived from an Enum-typed
field) and `flag: False` to keep a field off the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

ENV_PREFIX = "EXEMPLAR_"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One generated flag: the field it fills, its option string, its environment variable and its type."""

    field: dataclasses.Field
    dest: str
    option: str
    env: str
    type: Any
    optional: bool


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without `| None`, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def config_flags(config_class: type, prefix: str = "", only: tuple[str, ...] | None = None) -> list[Flag]:
    """The flags of `config_class`'s fields (those in `only`, when given), in declaration order."""
    hints = typing.get_type_hints(config_class)
    flags = []
    for f in dataclasses.fields(config_class):
        if not f.metadata.get("flag", True) or (only is not None and f.name not in only):
            continue
        name = f"{prefix}_{f.name}" if prefix else f.name
        kind, optional = _unwrap(hints[f.name])
        flags.append(Flag(f, name, "--" + name.replace("_", "-"), ENV_PREFIX + name.upper(), kind, optional))
    return flags


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _converter(flag: Flag) -> Any:
    """A function from the command-line (or environment) text to the field's type."""
    kind = flag.type
    if kind is bool:
        return _parse_bool
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind
    if kind in (int, float, str, Path):
        convert = kind
    else:
        raise TypeError(f"{flag.field.name}: no command-line form for the type {kind!r}; add one in core/flags.py")
    if flag.optional:
        return lambda text: None if text.strip() == "" else convert(text)
    return convert


def _choices(flag: Flag) -> tuple[Any, ...] | None:
    if "choices" in flag.field.metadata:
        return tuple(flag.field.metadata["choices"])
    if isinstance(flag.type, type) and issubclass(flag.type, enum.Enum):
        return tuple(flag.type)
    return None


def _default(flag: Flag) -> Any:
    f = flag.field
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(flag: Flag) -> str:
    text = flag.field.metadata.get("help", "")
    default = _default(flag)
    shown = default.value if isinstance(default, enum.Enum) else default
    suffix = f"env {flag.env}" + ("" if default is None or flag.field.metadata.get("secret") else f"; default {shown}")
    # argparse formats help with %-style; a literal % in the text must be doubled.
    return f"{text} ({suffix})".replace("%", "%%")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    prefix: str = "",
    only: tuple[str, ...] | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of `config_class`; an environment variable, when set, replaces the default."""
    environ = os.environ if environ is None else environ
    for flag in config_flags(config_class, prefix, only):
        convert = _converter(flag)
        default = _default(flag)
        if environ.get(flag.env) is not None:
            try:
                default = convert(environ[flag.env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                print(f"error: environment variable {flag.env}={environ[flag.env]!r}: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": default, "help": _help(flag)}
        if flag.type is bool and not flag.optional:
            parser.add_argument(flag.option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        choices = _choices(flag)
        metavar = flag.field.metadata.get("metavar") or METAVARS.get(flag.type)
        if choices:
            metavar = "{" + ",".join(str(getattr(c, "value", c)) for c in choices) + "}"
        parser.add_argument(flag.option, type=convert, choices=choices, metavar=metavar, **kwargs)


def add_group(
    parser: argparse.ArgumentParser, config_class: type, prefix: str = "", title: str | None = None
) -> argparse._ArgumentGroup:
    """add_flags in an argument group titled by the class's docstring (its first line)."""
    doc = (config_class.__doc__ or "").strip().splitlines()
    group = parser.add_argument_group(title or config_class.__name__, doc[0] if doc else None)
    add_flags(group, config_class, prefix)
    return group


def from_args(args: argparse.Namespace, config_class: type, prefix: str = "", **fixed: Any) -> Any:
    """The `config_class` instance the parsed flags describe (fields without a flag keep their defaults)."""
    values = {
        flag.field.name: getattr(args, flag.dest)
        for flag in config_flags(config_class, prefix)
        if hasattr(args, flag.dest)
    }
    return config_class(**{**values, **fixed})
