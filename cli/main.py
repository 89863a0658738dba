"""``msenc``: one subcommand per stage (:mod:`msenc_cli.stages`), ``msenc launch`` and ``msenc pipeline``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from pydantic import BaseModel

from msenc_lib import __version__
from msenc_lib.errors import EXIT_INTERRUPTED, report


def build_parser() -> argparse.ArgumentParser:
    from msenc_cli.launch import add_launch_command
    from msenc_cli.stages import STAGE_COMMANDS, add_stage_command
    from msenc_pipelines.cli import register as add_pipeline_command

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
    for command in STAGE_COMMANDS:
        add_stage_command(sub, command)
    add_launch_command(sub)
    add_pipeline_command(sub)
    return parser


def set_runtime_defaults() -> None:
    """Idle OpenMP threads sleep instead of spinning (read when torch starts: call before it loads; a value
    you set wins). Measured (benchmarks/README.md, runtime_env_bench.py): no cost on a free machine; on a loaded
    one (a second DDP rank, a pipeline step, another job) 4.6-5.9 s training steps against 8-17.6 s."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status says what kind of error stopped it (msenc_lib.errors, README)."""
    set_runtime_defaults()
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):  # their INFO lines only with -vv
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING) if args.verbose < 2 else level)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"msenc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = report(e, args.command)
        if code is None:  # a bug: the traceback helps
            raise
        return code
    if isinstance(result, BaseModel):
        print(result.model_dump_json())
    return 0
