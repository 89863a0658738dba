"""Command-line options built from a stage's pydantic config: one ``--field-name`` flag per field.

Hand-written on argparse rather than pydantic-settings' ``CliSettingsSource``, which cannot take a bool both
bare and with a value (``--smooth-charge-capacity`` and ``--is-training-shuffled false``, the original
workflow's spellings) nor a YAML mapping. The layering itself (file < environment < flags) is
:meth:`msenc_lib.config.StageConfig.load`, on pydantic-settings.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel

from msenc_lib.config import StageConfig

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _help(field) -> str:
    text = (field.description or "").strip()
    if field.is_required():
        return f"{text} (required)".strip()
    default = field.get_default(call_default_factory=True)
    return text if isinstance(default, BaseModel) else f"{text} (default: {default!r})".strip()


def add_config_options(parser: argparse.ArgumentParser, config_cls: type[StageConfig], *,
                       exclude: Sequence[str] = (), aliases: Mapping[str, Sequence[str]] | None = None,
                       config_flag: str = "--config") -> None:
    """Add ``config_flag FILE`` and one ``--field-name`` option per field of ``config_cls`` (plus ``aliases``:
    field -> more flags). Options default to "not given", so only the flags used replace the file's values."""
    group = parser.add_argument_group(f"{config_cls.__name__} options (also settable in {config_flag})")
    group.add_argument(config_flag, dest="config", metavar="FILE",
                       help="YAML/JSON config document (local path or s3:// URI); flags override it")
    aliases = aliases or {}
    for name, field in config_cls.model_fields.items():
        if name in exclude:
            continue
        flags = [_flag(name), *[a for a in aliases.get(name, ()) if a != _flag(name)]]
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
        tp = _unwrap_optional(field.annotation)
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif origin in (list, tuple, set) or tp in (list, tuple):
            kwargs.update(type=str, metavar="A,B,...")  # a string: StageConfig splits it
        elif origin is Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif tp in (int, float):
            kwargs.update(type=tp)
        elif isinstance(tp, type) and issubclass(tp, BaseModel) or origin is dict or tp is dict:
            kwargs.update(type=str, metavar="YAML")  # a string: StageConfig parses it
        else:
            kwargs.update(type=str)
        group.add_argument(*flags, **kwargs)
        if tp is bool:
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def config_from_args(config_cls: type[StageConfig], args: argparse.Namespace) -> StageConfig:
    """The config from ``--config`` + environment + the flags given on the command line."""
    given = {name: getattr(args, name) for name in config_cls.model_fields if hasattr(args, name)}
    return config_cls.load(getattr(args, "config", None), overrides=given)
