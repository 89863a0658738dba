"""A faithful polars re-implementation of the original preprocessing (the benchmark's reference).

It follows the original algorithm step by step (../shared/original-workflow.md §2.1): read everything
into one DataFrame, cutoff filter, smoothing by sorting the whole frame by time DESCENDING and looping over
the cells with a filter each, sort ascending, format EVERY value with a Python callback
(``str(round(x, 4))``, nulls -> unk), concatenate each row's values, group rows into lists per cell and
apply one permutation. Two deliberate, documented departures so that its text can be compared with msenc:

* the permutation is passed in (msenc's ``numpy.random.default_rng(seed).permutation(max_len)``) instead
  of polars' ``sample(seed=24)``;
* rows with equal time keys keep their input order in the ascending sort and the reverse of it in the
  descending sort of the smoothing (a row-number tie-breaker); the original leaves the order of ties open.

Requires ``polars`` (the ``bench`` extra). Written for this project from the algorithm description.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

SMOOTH_COLUMN = "charge_capacity"


def _formatter(precision: int, unk: str) -> Callable:
    def fmt(value):
        if value is None:
            return unk
        if isinstance(value, float):
            return f"{round(value, precision)}"
        return str(value)

    return fmt


def read_all(paths: Sequence[str]):
    """All rows of the input files in one DataFrame (the original reads a CSV glob the same way)."""
    import polars as pl

    frames = [pl.read_parquet(p) if str(p).endswith(".parquet") else pl.read_csv(p) for p in paths]
    return pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]


def smooth_loop(df, column_id: str):
    """Per-cell running maximum of the clipped capacity on a frame sorted by time descending (one filter
    pass over the frame per cell, like the original)."""
    import polars as pl

    parts = []
    rest = df.lazy()
    for cell in df.get_column(column_id).unique(maintain_order=True).to_list():
        part = rest.filter(pl.col(column_id) == cell).with_columns(
            pl.col(SMOOTH_COLUMN).clip(0, 1.1).cum_max()).collect()
        rest = rest.filter(pl.col(column_id) != cell)
        parts.append(part)
    return pl.concat(parts)


def reference_preprocess(paths: Sequence[str], column_id: str = "cell_key",
                         column_time: Sequence[str] = ("cycle_number", "time"), time_sep: str = "<|sep|>",
                         value_sep: str = ",", unk: str = "<|UNK|>", smooth_charge_capacity: bool = True,
                         exclude_features: Sequence[str] = (), decimal_precision: int = 4,
                         time_cutoff: Sequence[float] | None = None, permutation: np.ndarray | None = None,
                         seed: int = 24) -> dict[str, str]:
    """Training-mode text per cell: ``{cell_key: battery_stream}``."""
    import polars as pl

    time_cols = list(column_time)
    df = read_all(paths).with_row_index("__row")
    if time_cutoff is not None:
        df = df.filter([pl.col(c) <= v for c, v in zip(time_cols, time_cutoff)])
    if smooth_charge_capacity:
        df = df.sort([*time_cols, "__row"], descending=True)
        df = smooth_loop(df, column_id)
    df = df.sort([*time_cols, "__row"]).drop("__row")
    formatted = df.select(pl.all().map_elements(_formatter(decimal_precision, unk), skip_nulls=False,
                                                return_dtype=pl.Utf8))
    features = [c for c in df.columns if c != column_id and c not in set(exclude_features)]
    grouped = (formatted.select(pl.col(column_id), pl.concat_str(features, separator=value_sep).alias("row"))
               .group_by(column_id, maintain_order=True).agg(pl.col("row")))
    max_len = grouped.select(pl.col("row").list.len().max()).item()
    if permutation is None:
        permutation = np.random.default_rng(seed).permutation(max_len)
    order = pl.Series("order", np.asarray(permutation, dtype=np.int64))
    out = grouped.select(
        pl.col(column_id),
        pl.col("row").list.gather(pl.lit(order).implode(), null_on_oob=True).list.drop_nulls().list.join(time_sep).alias("stream"),
    )
    return dict(zip(out.get_column(column_id).to_list(), out.get_column("stream").to_list()))


__all__ = ["reference_preprocess", "read_all", "smooth_loop"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reference end to end like the original: read, preprocess, write ``<cell>.csv`` per cell."""
    import argparse
    import glob
    import os

    import polars as pl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", nargs="+", required=True, help="unified Parquet/CSV files or globs")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--time-cutoff", type=float, nargs="*", default=None)
    args = p.parse_args(argv)
    paths = sorted(f for pattern in args.input for f in (glob.glob(pattern) or [pattern]))
    streams = reference_preprocess(paths, seed=args.seed, time_cutoff=args.time_cutoff)
    os.makedirs(args.output_dir, exist_ok=True)
    for cell, stream in streams.items():
        pl.DataFrame({"cell_key": [cell], "battery_stream": [stream]}).write_csv(f"{args.output_dir}/{cell}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
