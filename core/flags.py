"""Command-line flags and environment variables generated from the config models.

A setting is typed once, as a pydantic field of a config (core/config.py's
Settings) with its default, bounds and help text (`description`); `add_flags`
turns every field into a flag whose `--help` is that text, and `from_args`
reads the parsed flags back into the config, which checks them. Adding a field
therefore adds its flag and its environment variable, with no edit here or in
launch.py:

    field `few_shot_k` of ServeConfig          -> --few-shot-k,       env EXEMPLAR_FEW_SHOT_K
    field `epochs` of TrainConfig (prefix train) -> --train-epochs,   env EXEMPLAR_TRAIN_EPOCHS
    a bool field `few_shot`                    -> --few-shot / --no-few-shot

The flag's type comes from the annotation (`| None`: an empty value means None),
its choices from a Literal or an Enum; a field with `repr=False` is a secret,
whose default is never shown; `json_schema_extra={"metavar": ...}` names its value.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

ENV_PREFIX = "EXEMPLAR_"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH", bool: "{true,false}"}
Config = typing.TypeVar("Config", bound=BaseModel)


def option(prefix: str, name: str) -> str:
    """The flag of field `name` of a config whose flags start with `prefix`: --train-lora-r."""
    return "--" + (f"{prefix}_{name}" if prefix else name).replace("_", "-")


@dataclass(frozen=True)
class Flag:
    """One generated flag: the field it fills, its option string, its environment variable and its type."""

    name: str
    info: FieldInfo
    dest: str
    option: str
    env: str
    type: Any
    optional: bool
    choices: tuple[Any, ...] | None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without `| None` and Annotated bounds, whether None is allowed)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    optional = union and type(None) in typing.get_args(annotation)
    if optional:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def config_flags(config_class: type[BaseModel], only: tuple[str, ...] | None = None) -> list[Flag]:
    """The flags of `config_class`'s fields (those in `only`, when given), in declaration order."""
    prefix: str = getattr(config_class, "flag_prefix", "")
    flags = []
    for name, info in config_class.model_fields.items():
        if only is not None and name not in only:
            continue
        kind, optional = _unwrap(info.annotation)
        choices = None
        if typing.get_origin(kind) is typing.Literal:
            choices, kind = typing.get_args(kind), str
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = tuple(kind)
        dest = f"{prefix}_{name}" if prefix else name
        flags.append(Flag(name, info, dest, option(prefix, name), ENV_PREFIX + dest.upper(), kind, optional, choices))
    return flags


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return word in TRUE_WORDS


def _converter(flag: Flag) -> Any:
    """A function from the command-line (or environment) text to the field's type."""
    kind = flag.type
    if kind not in (bool, int, float, str, Path) and not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        raise TypeError(f"{flag.name}: no command-line form for the type {kind!r}; add one in core/flags.py")
    convert = _parse_bool if kind is bool else kind
    if flag.optional:
        return lambda text: None if text.strip() == "" else convert(text)
    return convert


def _help(flag: Flag, default: Any) -> str:
    shown = default.value if isinstance(default, enum.Enum) else default
    suffix = f"env {flag.env}" + ("" if default is None or not flag.info.repr else f"; default {shown}")
    # argparse formats help with %-style; a literal % in the text must be doubled.
    return f"{flag.info.description or ''} ({suffix})".replace("%", "%%")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type[BaseModel],
    only: tuple[str, ...] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of `config_class`; an environment variable, when set, replaces the default."""
    environ = os.environ if environ is None else environ
    for flag in config_flags(config_class, only):
        convert = _converter(flag)
        default = flag.info.get_default(call_default_factory=True)
        help_text = _help(flag, default)
        if environ.get(flag.env) is not None:
            text = environ[flag.env]
            try:
                default = convert(text)
                if flag.choices and default is not None and default not in flag.choices:
                    raise ValueError("use one of " + ", ".join(str(getattr(c, "value", c)) for c in flag.choices))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                print(f"error: environment variable {flag.env}={text!r}: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": default, "help": help_text}
        if flag.type is bool and not flag.optional:
            parser.add_argument(flag.option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        extra = flag.info.json_schema_extra
        metavar = str(extra["metavar"]) if isinstance(extra, dict) and "metavar" in extra else METAVARS.get(flag.type)
        if flag.choices:
            metavar = "{" + ",".join(str(getattr(c, "value", c)) for c in flag.choices) + "}"
        parser.add_argument(flag.option, type=convert, choices=flag.choices, metavar=metavar, **kwargs)


def add_group(parser: argparse.ArgumentParser, config_class: type[BaseModel], title: str | None = None) -> None:
    """add_flags in an argument group titled by the class's docstring (its first line)."""
    doc = (config_class.__doc__ or "").strip().splitlines()
    add_flags(parser.add_argument_group(title or config_class.__name__, doc[0] if doc else None), config_class)


def from_args(args: argparse.Namespace, config_class: type[Config], **fixed: Any) -> Config:
    """The `config_class` instance the parsed flags describe (fields without a flag keep their defaults);
    making it checks it (core/config.py: a ConfigError names every bad flag)."""
    values = {f.name: getattr(args, f.dest) for f in config_flags(config_class) if hasattr(args, f.dest)}
    return config_class(**{**values, **fixed})
