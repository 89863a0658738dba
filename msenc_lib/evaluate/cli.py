"""``msenc evaluate``: argument parsing only; the work is :func:`msenc_lib.evaluate.run_evaluate`."""

from __future__ import annotations

import argparse

_DESCRIPTION = """\
Evaluate embeddings on the downstream tasks of Severson et al. (design.md §7), all on ONE split:

  cycle life (battery level): features from cycles <= N (--first-cycles, default 100) -> log10 cycle life,
    elastic net and random forest (hyper-parameters by cross-validation on the train cells); feature sets:
    the encoder's embeddings aggregated per cell (--aggregation mean,delta), Severson's variance (1),
    discharge (6) and full (9; 7 without internal resistance) features computed from the unified data, and
    a seeded random-feature control of the embedding's size.
  capacity (cycle level): max capacity of cycle c+k (--horizon) from the embedding of cycle c, against the
    persistence baseline (capacity of cycle c) and the random control.

Inputs: --embeddings-dir (embeddings.parquet: cell_key, cycle_number, targets, val_0..val_{d-1}),
--unified-dir (<cell>.parquet per cell), --split-config (split_cfg.json, or a split dir holding it;
every subset present is reported, empty ones skipped). Cells lacking a needed cycle are reported and
excluded, not fatal. Output (--output-dir, local or s3://): metrics.json (RMSE, MAE, MAPE %, MSE, R² per
task, feature set, model and subset + chosen hyper-parameters), predictions_*.csv/parquet, PNG plots and
one self-contained report.html.
"""


def register(subparsers) -> None:
    from msenc_lib.cli import add_config_options, add_overwrite_option
    from msenc_lib.evaluate.config import EvaluateConfig

    p = subparsers.add_parser("evaluate", help="downstream evaluation: cycle life and capacity, report.html",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings-dir", required=True, metavar="DIR",
                   help="embeddings folder (embeddings.parquet) or Parquet file; local or s3://")
    p.add_argument("--unified-dir", required=True, metavar="DIR",
                   help="unified data folder (<cell_key>.parquet per cell); local or s3://")
    p.add_argument("--split-config", required=True, metavar="FILE",
                   help="split_cfg.json ({'train': ['<cell>.csv', ...], 'validation': [...], 'test': [...]}) "
                        "or a split folder holding it")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="output folder (local or s3://)")
    add_overwrite_option(p)
    add_config_options(p, EvaluateConfig)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace):
    from msenc_lib.cli import config_from_args
    from msenc_lib.evaluate import run_evaluate
    from msenc_lib.evaluate.config import EvaluateConfig

    config = config_from_args(EvaluateConfig, args)
    return run_evaluate(config, args.embeddings_dir, args.unified_dir, args.split_config, args.output_dir,
                        overwrite=args.overwrite)
