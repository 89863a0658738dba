"""The ``msenc`` command line: one subcommand per stage, each a thin wrapper over ``run_<stage>``.

Stage modules listed in :data:`COMMAND_MODULES` expose ``register(subparsers)``. Their options come from
the stage's pydantic config (:func:`add_config_options`), so the CLI, config files and KFP components
share one set of names, defaults and descriptions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
import typing
from typing import Any, Literal, Sequence

from pydantic import BaseModel

from msenc_lib import __version__
from msenc_lib.config import StageConfig
from msenc_lib.errors import MsencError

COMMAND_MODULES: list[str] = [
    "msenc_lib.data.synthetic",
    "msenc_lib.ingest",
    "msenc_lib.preprocess",
    "msenc_lib.split",
    "msenc_lib.train",
    "msenc_lib.embed",
    "msenc_lib.evaluate",
    "msenc_lib.launch",
    "msenc_pipelines.cli",
]

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


def _mapping_parser(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"expected YAML/JSON: {e}")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type[StageConfig],
                       exclude: Sequence[str] = ()) -> None:
    """Add ``--config FILE`` and one ``--field-name`` option per field of ``config_cls``.

    Options default to "not given", so a config file's values are only replaced by flags actually used.
    """
    group = parser.add_argument_group(f"{config_cls.__name__} options (also settable in --config)")
    group.add_argument("--config", dest="config", metavar="FILE",
                       help="YAML/JSON config document (local path or s3:// URI); flags override it")
    for name, field in config_cls.model_fields.items():
        if name in exclude:
            continue
        flags = [f"--{name.replace('_', '-')}"]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags += [a for a in extra.get("cli_aliases", []) if a not in flags]
        help_text = (field.description or "").strip()
        if field.is_required():
            help_text = f"{help_text} (required)".strip()
        else:
            default = field.get_default(call_default_factory=True)
            if not isinstance(default, BaseModel):
                help_text = f"{help_text} (default: {default!r})".strip()
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        tp = _unwrap_optional(field.annotation)
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif origin in (list, tuple, set) or tp in (list, tuple):
            kwargs.update(type=str, metavar="A,B,...")  # split by StageConfig
        elif origin is Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif tp in (int, float, str):
            kwargs.update(type=tp)
        elif isinstance(tp, type) and issubclass(tp, BaseModel) or origin is dict or tp is dict:
            kwargs.update(type=_mapping_parser, metavar="YAML")
        else:
            kwargs.update(type=str)
        group.add_argument(*flags, **kwargs)
        if tp is bool:
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def config_from_args(config_cls: type[StageConfig], args: argparse.Namespace) -> StageConfig:
    """Config from ``--config`` + environment + the flags given on the command line."""
    given = {name: getattr(args, name) for name in config_cls.model_fields if hasattr(args, name)}
    return config_cls.load(getattr(args, "config", None), overrides=given)


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty output instead of failing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msenc",
        description="Multiscale Encoder workflow for battery time-series: raw cycler data -> unified "
        "table -> token sequences -> split -> pretrained encoder -> embeddings -> evaluation report. "
        "Inputs and outputs are local paths or s3:// URIs (endpoint from AWS_ENDPOINT_URL).",
        epilog="Run 'msenc <command> --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"msenc {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
    except MsencError as e:
        print(f"msenc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msenc {args.command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, BaseModel):
        print(result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
