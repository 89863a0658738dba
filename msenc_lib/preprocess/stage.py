"""``msenc preprocess``: unified table -> token sequences in the original workflow's text form.

Text rules (the original ``beep_preprocessor.preprocess``, ../shared/original-workflow.md §2.1):

* rows with ``time_columns[k] <= time_cutoff[k]`` are kept (all given cutoffs, AND; nulls fail);
* ``--smooth-charge-capacity``: ``charge_capacity`` clipped to [0, 1.1], then per cell each row gets the
  maximum over itself and every later row (a running maximum from the end backwards);
* rows are sorted by ``time_columns`` (ascending, nulls first; rows with equal keys keep their input order,
  which the original leaves open);
* a time step = every column except ``id_column``, ``exclude_features`` and the per-cell metadata columns
  (unless ``metadata_features``), in table column order, floats as ``str(round(x, decimal_precision))``,
  integers as ``str(x)``, nulls as the unk token, joined by ``value_sep``; time steps joined by the time
  separator;
* training mode (``--is-training-shuffled``, default): one sequence per cell; the time steps of every cell
  are reordered by ONE permutation of ``range(max_len)`` (``max_len`` = the longest cell; indices beyond a
  cell's length are dropped), drawn from ``numpy.random.default_rng(seed)``;
* embedding mode: one sequence per (cell, ``time_columns[0]`` value), in value order; the time steps of
  each group are shuffled: ``numpy.random.default_rng([seed, zlib.crc32(cell_key)]).random(n)`` gives one
  key per row of the cell (rows in time order) and a group's rows are ordered by their keys (the original's
  shuffle is unseeded).

Output (``design.md`` §2)::

    OUT/sequences/part-00000.parquet ...  cell_key, [cycle_number], input_ids list<uint8>, n_tokens int32
                                          (ids: the narrowest integer type for the vocabulary, token_id_type)
    OUT/tokenizer/                        AutoTokenizer.from_pretrained(OUT/tokenizer)
    OUT/preprocess_config.yaml, OUT/manifest.json, [OUT/text/<cell>.csv  (the original per-cell CSV)]

How it scales: input files are scanned first (in parallel, :mod:`msenc_lib.preprocess.scan`). A Parquet
file holding one cell (known from its footer statistics) is read directly when its shard is processed;
CSV files and multi-cell Parquet files are streamed in blocks and split per cell into temporary Arrow
files (filtered by the cutoff), so one big multi-cell CSV needs memory for one block, not the file (and
local disk for its needed columns). Cells are then grouped, in ``cell_key`` order, into shards of about
``shard_rows`` input rows; each shard is one task for the ``--workers`` processes and holds one cell in
memory at a time. Shard boundaries depend only on the data, so the output is identical for any number of
workers. Workers start with allocator settings that make them reuse their memory from cell to cell
(:data:`WORKER_ENV`). Text is made by :mod:`msenc_lib.preprocess.textformat` (vectorised, exact); for the built-in
tokenizer it is written directly as token ids, without a tokenizer call. Token ids are stored in the narrowest
integer type the vocabulary allows and delta-encoded (:data:`PARQUET_OPTIONS`); readers get them as integers
of any width. s3:// inputs are downloaded to a temporary folder first; the output goes through
``storage.publish`` (nothing is left at the output URI on failure).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from msenc_lib import layout
from msenc_lib.config import StageConfig
from msenc_lib.data.readers import read_columns
from msenc_lib.data.schema import METADATA_COLUMNS
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.progress import progress_bar
from msenc_lib.preprocess.scan import (CellInfo, FileScan, cutoff_mask, input_files, merge_minima, resolve_types,
                                       scan_file)

log = logging.getLogger(__name__)

STREAM_COLUMN = "battery_stream"  # the original's text column name
SMOOTH_COLUMN = "charge_capacity"  # hard-coded in the original
SMOOTH_MAX = 1.1
# A training sequence is one Parquet value of millions of token ids, so its page holds them all: dictionary
# encoding would buffer one int32 index per id (grown by copying), delta encoding streams them.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": ["cell_key", "cycle_number"],
    "column_encoding": {"input_ids.list.element": "DELTA_BINARY_PACKED"},
    "write_statistics": ["cell_key", "cycle_number", "n_tokens"],
    "data_page_size": 1 << 20,
}


# --------------------------------------------------------------------------------------------- config
class PreprocessConfig(StageConfig):
    stage = "preprocess"
    renamed = {"column_id": "id_column", "column_time": "time_columns"}  # the original CLI's names

    tokenizer_id: str | None = Field(
        None, description="tokenizer: omit (or 'msenc-numeric') for the built-in numeric tokenizer (23 tokens, "
        "one per character); or a local folder / s3:// prefix holding a saved Hugging Face tokenizer, patched "
        "with missing sep/unk/pad/mask tokens like the original. Hub ids cannot be downloaded here")
    id_column: str = Field("cell_key", description="column naming the time series (one cell)")
    time_sep: str = Field("<|sep|>", description="separator between time steps, added as the tokenizer's sep "
                          "token; a tokenizer that already has a sep token uses its own (as the original). "
                          "Empty: time steps are joined with nothing")
    value_sep: str = Field(",", description="separator between the values of one time step")
    time_columns: list[str] = Field(["cycle_number", "time"], description="time columns, coarse to fine "
                                   "(comma-separated): rows are sorted by them; the first one groups the "
                                   "sequences in embedding mode")
    smooth_charge_capacity: bool = Field(True, description="clip charge_capacity to [0, 1.1] and replace each "
                                         "value by the maximum over it and all later rows of the cell")
    exclude_features: list[str] = Field(default_factory=list, description="columns left out of the text "
                                        "(comma-separated)")
    metadata_features: bool = Field(False, description="put the per-cell metadata columns (dataset, chemistry, "
                                    "nominal_capacity, form_factor, ambient_temperature) in the text; by default "
                                    "they are left out like the id column")
    decimal_precision: int = Field(4, ge=0, le=30, description="floats are written as str(round(x, N))")
    time_cutoff: list[float] | None = Field(None, description="keep rows with time_columns[k] <= cutoff[k] "
                                            "(comma-separated, matched to time_columns in order)")
    is_training_shuffled: bool = Field(True, description="true: training mode, one sequence per cell with the "
                                       "time steps permuted by one seeded permutation shared by all cells; "
                                       "false: embedding mode, one sequence per (cell, first time column value)")
    seed: int = Field(24, description="seed of the permutations (24 = the original's training-mode seed)")
    workers: int = Field(1, ge=1, description="processes working on cells in parallel (output is identical "
                         "for any number)")
    text: bool = Field(False, description="also write the original per-cell text CSVs to OUT/text/<cell>.csv")
    shard_rows: int = Field(250_000, gt=0, description="about this many input rows (whole cells) per output "
                            "shard sequences/part-NNNNN.parquet")
    progress: bool = Field(True, description="progress bars on stderr")

    @field_validator("time_columns")
    @classmethod
    def _time_not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one time column is needed")
        return v


class SkippedCell(BaseModel):
    cell_key: str
    rows_in: int
    reason: str


class PreprocessResult(BaseModel):
    output_uri: str
    mode: str
    n_input_files: int
    n_cells: int
    n_sequences: int
    n_rows_in: int
    n_rows: int
    n_tokens: int
    max_len: int | None
    n_shards: int
    skipped_cells: list[SkippedCell]
    warnings: list[str]
    tokenizer: str
    vocab_size: int
    lossless: bool
    manifest_uri: str
    seconds: float


# --------------------------------------------------------------------------------------------- workers
@dataclass
class Plan:
    """Everything a worker needs (picklable)."""

    mode: str
    text_columns: list[str]
    time_columns: list[str]
    cutoffs: list[tuple[str, float]]
    smooth: bool
    precision: int
    value_sep: bytes
    time_sep: str
    unk_text: str
    seed: int
    max_len: int
    schema: Any  # pa.Schema of the needed columns (resolved types)
    staging: str
    write_text: bool
    id_column: str
    alphabet: Any  # textformat.Alphabet: token ids (built-in tokenizer) or text (TEXT)
    id_type: Any  # pa.DataType of the token ids (token_id_type)
    builtin: bool
    tokenizer_dir: str | None
    tokenizer_name: str


_WORKER_CACHE: dict[str, Any] = {}


def _permutation(seed: int, max_len: int) -> np.ndarray:
    key = f"perm:{seed}:{max_len}"
    perm = _WORKER_CACHE.get(key)
    if perm is None:
        _WORKER_CACHE.clear()
        perm = np.random.default_rng(seed).permutation(max_len)
        _WORKER_CACHE[key] = perm
    return perm


def _hf_tokenizer(directory: str):
    tok = _WORKER_CACHE.get(f"tok:{directory}")
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(directory)
        _WORKER_CACHE[f"tok:{directory}"] = tok
    return tok


def _load_cell(info: CellInfo, plan: Plan):
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    names = plan.schema.names
    tables = []
    for piece in info.pieces:
        if piece.kind == "parquet":
            t = pq.read_table(piece.path, columns=names)
        else:
            with pa.memory_map(piece.path) as src:
                t = ipc.open_file(src).read_all()
        cols = []
        for f in plan.schema:
            col = t.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise InputDataError(f"{piece.source}: cell {info.cell_key!r}, column {f.name!r}: "
                                         f"cannot convert {col.type} to {f.type}: {e}") from None
            cols.append(col)
        t = pa.Table.from_arrays(cols, schema=plan.schema)
        if piece.kind == "parquet" and plan.cutoffs:
            t = t.filter(cutoff_mask(t, plan.cutoffs, piece.source))
        tables.append(t)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return table.combine_chunks()


def _sort_rows(table, time_columns: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = pc.sort_indices(table, sort_keys=[(c, "ascending", "at_start") for c in time_columns])
    order = np.asarray(idx.to_numpy(zero_copy_only=False))
    if np.array_equal(order, np.arange(len(order))):
        return table
    return table.take(pa.array(order))


def smooth_capacity(arr):
    """Clip to [0, 1.1], then each value = max of itself and all later values (nulls/NaN kept, ignored)."""
    import pyarrow as pa

    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool) & ~np.isnan(values)
    clipped = np.clip(values, 0.0, SMOOTH_MAX)
    run = np.maximum.accumulate(np.where(valid, clipped, -np.inf)[::-1])[::-1]
    out = np.where(valid, run, values)
    return pa.array(out, mask=~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool))


def _group_starts(col) -> np.ndarray:
    """Start index of each run of equal values (nulls equal to nulls, NaN to NaN) in a sorted column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    if n == 0:
        return np.zeros(0, np.int64)
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        v = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
        same = (v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))
        same = np.where(valid[1:] & valid[:-1], same, ~valid[1:] & ~valid[:-1])
    else:
        eq = pc.equal(col.slice(1), col.slice(0, n - 1))
        both_null = pc.and_(col.slice(1).is_null(), col.slice(0, n - 1).is_null())
        same = np.asarray(pc.fill_null(pc.or_kleene(eq, both_null), False).to_numpy(zero_copy_only=False), bool)
    return np.concatenate([[0], np.flatnonzero(~same) + 1]).astype(np.int64)


def _check_encodable(table, plan: Plan, cell: str) -> None:
    """For a tokenizer other than the built-in one: text-like columns must encode without unk tokens and
    decode back unchanged; the error names the column. (The built-in alphabet checks while formatting.)"""
    import pyarrow as pa

    if plan.builtin:
        return
    tok = _hf_tokenizer(plan.tokenizer_dir)
    for name in plan.text_columns:
        col = table.column(name)
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t):
            continue
        for v in [v for v in col.unique().to_pylist() if v is not None][:10_000]:
            text = str(v)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if tok.unk_token_id in ids or tok.decode(ids) != text:
                raise _unencodable(name, text, cell, plan.tokenizer_name)


def _unencodable(column: str | None, example: str | None, cell: str, tokenizer: str) -> InputDataError:
    return InputDataError(
        f"column {column!r} holds text the tokenizer {tokenizer!r} cannot encode (e.g. {example!r} in cell "
        f"{cell!r}); leave it out with --exclude-features {column}, or use a tokenizer that covers it")


def token_id_type(vocab_size: int):
    """The narrowest integer type that holds every token id: uint8 for the built-in vocabulary (23 tokens),
    uint16 up to 65,536 tokens, else int32."""
    import pyarrow as pa

    if vocab_size <= 1 << 8:
        return pa.uint8()
    if vocab_size <= 1 << 16:
        return pa.uint16()
    return pa.int32()


def _encode(flat: np.ndarray, seq_bounds: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the formatted codes and the offsets of each sequence in them.

    ``seq_bounds``: offsets of the sequences in ``flat`` (len = n_sequences + 1). A tokenizer other than
    the built-in one gets the text in pieces of ~4k time steps cut at the time separator (its sep token, a
    special token that tokenizers split on first), all pieces of all sequences in one batched call."""
    from msenc_lib.preprocess.textformat import SEP_BYTE, to_text

    if plan.builtin:  # the codes are the token ids, already uint8
        return flat, seq_bounds.astype(np.int64)
    tok = _hf_tokenizer(plan.tokenizer_dir)
    texts: list[str] = []
    counts: list[int] = []
    for s, e in zip(seq_bounds[:-1].tolist(), seq_bounds[1:].tolist()):
        seq = flat[s:e]
        bounds = [0, len(seq) + 1]
        if plan.time_sep:
            cuts = np.flatnonzero(seq == SEP_BYTE)[4095::4096]
            bounds = [0, *(cuts + 1).tolist(), len(seq) + 1]
        pieces = [to_text(seq[a: b - 1], plan.time_sep, plan.unk_text) for a, b in zip(bounds[:-1], bounds[1:])]
        texts += pieces
        counts.append(len(pieces))
    encoded = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    sep = [tok.sep_token_id]
    ids: list[int] = []
    offsets = [0]
    k = 0
    for c in counts:
        for j in range(c):
            if j:
                ids += sep
            ids += encoded[k]
            k += 1
        offsets.append(len(ids))
    return np.asarray(ids, dtype=np.int32), np.asarray(offsets, np.int64)


# Not the csv module: with "\n" line ends it leaves a lone "\r" unquoted, which the original (polars) quotes.
def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_text_csv(path: Path, plan: Plan, cell: str, flat: np.ndarray, bounds: np.ndarray,
                    groups: list[str] | None) -> None:
    from msenc_lib.preprocess.textformat import to_text

    group_col = plan.time_columns[0]
    header = [plan.id_column, group_col, STREAM_COLUMN] if groups is not None else [plan.id_column, STREAM_COLUMN]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(_csv_field(h) for h in header) + "\n")
        for i, (s, e) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            stream = to_text(flat[s:e], plan.time_sep, plan.unk_text, plan.alphabet)
            fields = [cell, groups[i], stream] if groups is not None else [cell, stream]
            fh.write(",".join(_csv_field(f) for f in fields) + "\n")


def process_cell(info: CellInfo, plan: Plan, check_roundtrip: bool = False):
    """One cell -> (Arrow table of its sequences, stats, text-CSV payload). ``check_roundtrip``: for a
    non-built-in tokenizer, record in the stats whether decode(input_ids) gives the first sequence's text."""
    import pyarrow as pa

    from msenc_lib.preprocess.textformat import UnformattableValue, format_rows, format_value

    table = _load_cell(info, plan)
    n = table.num_rows
    table = _sort_rows(table, plan.time_columns)
    if plan.smooth:
        i = table.schema.get_field_index(SMOOTH_COLUMN)
        table = table.set_column(i, pa.field(SMOOTH_COLUMN, pa.float64()), smooth_capacity(table.column(i)))
    _check_encodable(table, plan, info.cell_key)

    group_values = None
    if plan.mode == "training":
        perm = _permutation(plan.seed, plan.max_len)
        order = perm[perm < n]
        table = table.take(pa.array(order))
        seq_row_starts = np.array([0, n], np.int64)
    else:
        starts = _group_starts(table.column(plan.time_columns[0]))
        rng = np.random.default_rng([plan.seed, zlib.crc32(info.cell_key.encode("utf-8"))])
        group_id = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
        order = np.lexsort((rng.random(n), group_id))
        group_values = table.column(plan.time_columns[0]).take(pa.array(starts))
        table = table.take(pa.array(order))
        seq_row_starts = np.append(starts, n)

    sep_after = None
    if plan.time_sep:
        sep_after = np.ones(n, dtype=bool)
        sep_after[seq_row_starts[1:] - 1] = False
    try:
        flat, lengths = format_rows([table.column(c) for c in plan.text_columns], plan.precision,
                                    plan.value_sep, sep_after, plan.alphabet, want_lengths=plan.mode != "training",
                                    names=plan.text_columns)
    except UnformattableValue as e:
        if e.column is not None:
            raise _unencodable(e.column, e.example, info.cell_key, plan.tokenizer_name) from None
        raise InputDataError(f"cell {info.cell_key!r}: {e}") from None
    if plan.mode == "training":
        byte_bounds = np.array([0, len(flat)], np.int64)
    else:
        row_end = np.concatenate([[0], np.cumsum(lengths)])
        byte_bounds = row_end[seq_row_starts]
    ids, offsets = _encode(flat, byte_bounds, plan)
    if offsets[-1] >= 2 ** 31:
        raise InputDataError(f"cell {info.cell_key!r}: {offsets[-1]} tokens exceed the 2**31 limit of one shard "
                             "column; use a --time-cutoff or embedding mode")
    n_seq = len(offsets) - 1
    list_arr = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids).cast(plan.id_type))
    cols: dict[str, Any] = {"cell_key": pa.array([info.cell_key] * n_seq, pa.string())}
    if group_values is not None:
        gtype = group_values.type
        if pa.types.is_integer(gtype):
            gv = group_values.cast(pa.int64())
        elif pa.types.is_floating(gtype):
            gv = group_values.cast(pa.float64())
        else:
            gv = group_values.cast(pa.string())
        cols["cycle_number"] = gv
    cols["input_ids"] = list_arr
    cols["n_tokens"] = pa.array(np.diff(offsets).astype(np.int32), pa.int32())
    out = pa.table(cols)
    text = None
    if plan.write_text:
        groups = None if group_values is None else [format_value(v, plan.precision, plan.unk_text)
                                                     for v in group_values.to_pylist()]
        text = (flat, byte_bounds, groups)
    stats = {"cell_key": info.cell_key, "rows_in": info.rows_in, "rows": n, "n_sequences": n_seq,
             "n_tokens": int(offsets[-1])}
    if check_roundtrip and not plan.builtin:
        from msenc_lib.preprocess.textformat import to_text

        tok = _hf_tokenizer(plan.tokenizer_dir)
        first = to_text(flat[byte_bounds[0]: byte_bounds[1]], plan.time_sep, plan.unk_text)
        stats["lossless"] = tok.decode(ids[offsets[0]: offsets[1]].tolist()) == first
    return out, stats, text


def process_shard(task: tuple) -> dict[str, Any]:
    """Phase 2: one shard file (its cells in order, one in memory at a time)."""
    import pyarrow.parquet as pq

    shard_index, cells, plan = task
    staging = Path(plan.staging)
    path = staging / layout.SEQUENCES_DIR / layout.shard_name(shard_index)
    writer = None
    stats = []
    try:
        for info in cells:
            table, st, text = process_cell(info, plan, check_roundtrip=info is cells[0])
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, **PARQUET_OPTIONS)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            st["shard"] = path.name
            stats.append(st)
            if text is not None:
                fname = layout.cell_file_name(info.cell_key, suffix=".csv")
                _write_text_csv(staging / layout.TEXT_DIR / fname, plan, info.cell_key, *text)
            del table, text
    finally:
        if writer is not None:
            writer.close()
    return {"shard": path.name, "index": shard_index, "cells": stats}


# The environment a worker process starts with, so that it reuses its memory from cell to cell. A worker
# allocates and frees the same few hundred MB for every cell; with Arrow's default allocator (mimalloc, which
# returns freed pages to the kernel) and numpy's huge-page advice on large arrays, every cell's buffers were
# faulted in and zero-filled anew, and on VMs with transparent_hugepage/defrag = madvise the kernel also
# compacted memory for each 2 MiB page: on a 2-core Intel Xeon KVM guest that system time was as large as the
# work itself. Arrow reads ARROW_DEFAULT_MEMORY_POOL and numpy NUMPY_MADVISE_HUGEPAGE when imported, glibc its
# MALLOC_* settings at start (32 MiB is the largest mmap threshold it accepts); values set by the user win.
# A worker is one core's work: no OpenBLAS thread pool spinning beside it.
WORKER_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "NUMPY_MADVISE_HUGEPAGE": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` added to ``os.environ`` (where not set already) inside the block, for child processes."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _worker_init() -> None:
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(2)


# With one worker, inputs of this many rows still go to a worker process, so that they run with WORKER_ENV
# (about 1 s of start-up, against about 1.5 us of system time per row saved on the Intel Xeon VM).
SPAWN_MIN_ROWS = 1_000_000


@contextlib.contextmanager
def _worker_pool(workers: int, spawn_one: bool = False):
    """Spawned worker processes for ``workers > 1``, or one for ``spawn_one`` (None: run in this process)."""
    if workers <= 1 and not spawn_one:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")
    # Workers are spawned as tasks are submitted, so the environment stays set while the pool lives.
    with _environment(WORKER_ENV), \
            cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield pool


def _run_tasks(func, tasks: list, pool, desc: str, progress: bool, weights: list[int] | None = None,
               unit: str = "row") -> list:
    """Run ``func`` over ``tasks`` (in this process when ``pool`` is None); results in task order. The
    first failure cancels the rest and is raised."""
    weights = weights or [1] * len(tasks)
    bar = progress_bar(total=sum(weights), desc=desc, enabled=progress, unit=unit, unit_scale=True)
    results: list = [None] * len(tasks)
    try:
        if pool is None or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                results[i] = func(t)
                bar.update(weights[i])
            return results
        futs = {pool.submit(func, t): i for i, t in enumerate(tasks)}
        try:
            for fut in cf.as_completed(futs):
                i = futs[fut]
                results[i] = fut.result()
                bar.update(weights[i])
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        return results
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- stage
def _suggest(name: str, columns: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, columns, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_columns(config: PreprocessConfig, columns: list[str], source: str) -> list[str]:
    """Validate the column options against the data; returns warnings."""
    warnings = []
    if config.id_column not in columns:
        raise ConfigError(f"--column-id {config.id_column!r} is not a column of {source}"
                          f"{_suggest(config.id_column, columns)}; columns: {columns}")
    for c in config.time_columns:
        if c not in columns:
            raise ConfigError(f"--column-time {c!r} is not a column of {source}{_suggest(c, columns)}; "
                              f"columns: {columns}")
    if config.smooth_charge_capacity and SMOOTH_COLUMN not in columns:
        raise ConfigError(f"--smooth-charge-capacity needs a {SMOOTH_COLUMN!r} column, which {source} lacks; "
                          "pass --no-smooth-charge-capacity (or --smooth-charge-capacity false)")
    unknown = [c for c in config.exclude_features if c not in columns]
    if unknown:
        warnings.append(f"--exclude-features names columns the data does not have (ignored): {unknown}")
    if config.time_cutoff is not None and len(config.time_cutoff) != len(config.time_columns):
        if len(config.time_cutoff) > len(config.time_columns):
            raise ConfigError(f"--time-cutoff has {len(config.time_cutoff)} values for "
                              f"{len(config.time_columns)} time column(s) {config.time_columns}")
        warnings.append(f"--time-cutoff has fewer values than --column-time: "
                        f"{config.time_columns[len(config.time_cutoff):]} are not filtered")
    return warnings


def _plan_shards(cells: list[CellInfo], shard_rows: int) -> list[list[CellInfo]]:
    shards: list[list[CellInfo]] = []
    current: list[CellInfo] = []
    acc = 0
    for info in cells:
        current.append(info)
        acc += info.rows
        if acc >= shard_rows:
            shards.append(current)
            current, acc = [], 0
    if current:
        shards.append(current)
    return shards


def run_preprocess(config: PreprocessConfig, input_uri: str, output_uri: str,
                   overwrite: bool = False) -> PreprocessResult:
    """Unified CSV/Parquet (file, folder or glob; local or s3://) -> the preprocessed dataset at
    ``output_uri`` (see the module doc). Nothing is left at ``output_uri`` if it fails."""
    import pyarrow as pa

    from msenc_lib import __version__, storage
    from msenc_lib.preprocess.textformat import INVALID, TEXT
    from msenc_lib.tokenizer import load_tokenizer, tokenizer_info

    start = time.perf_counter()
    mode = "training" if config.is_training_shuffled else "embedding"
    loaded = load_tokenizer(config.tokenizer_id, config.time_sep)
    warnings: list[str] = list(loaded.notes)
    value_sep = config.value_sep.encode("utf-8")
    if loaded.builtin and value_sep and (loaded.alphabet.table[np.frombuffer(value_sep, np.uint8)] == INVALID).any():
        raise ConfigError(f"--value-sep {config.value_sep!r} has characters the built-in tokenizer cannot encode; "
                          "use ',' or a tokenizer folder that covers it")

    with tempfile.TemporaryDirectory(prefix="msenc-preprocess-") as tmpdir, _worker_pool(config.workers) as pool:
        tmp = Path(tmpdir)
        local_files, uris, fmt = input_files(str(input_uri), tmp)
        columns = read_columns(local_files[0], fmt, uris[0])
        warnings += _check_columns(config, columns, uris[0])
        for path, uri in zip(local_files[1:], uris[1:]):
            other = read_columns(path, fmt, uri)
            if set(other) != set(columns):
                raise InputDataError(
                    f"{uri}: columns differ from {uris[0]} (missing {sorted(set(columns) - set(other))}, extra "
                    f"{sorted(set(other) - set(columns))}); all inputs need the same columns ('msenc ingest' "
                    "unifies them)")
        excluded = set(config.exclude_features) | {config.id_column}
        if not config.metadata_features:
            excluded |= set(METADATA_COLUMNS)
        text_columns = [c for c in columns if c not in excluded]
        if not text_columns:
            raise ConfigError("no column left for the text: every column is the id or excluded")
        needed = list(dict.fromkeys([*text_columns, *config.time_columns,
                                     *([SMOOTH_COLUMN] if config.smooth_charge_capacity else [])]))
        cutoffs = list(zip(config.time_columns, config.time_cutoff or []))

        spill = tmp / "spill"
        spill.mkdir()
        scan_tasks = [(i, p, u, fmt, config.id_column, needed, cutoffs, str(spill))
                      for i, (p, u) in enumerate(zip(local_files, uris))]
        scans: list[FileScan] = _run_tasks(scan_file, scan_tasks, pool, "scanning inputs",
                                           config.progress, unit="file")

        cells: dict[str, CellInfo] = {}
        minima: dict[str, Any] = {}
        for scan in scans:
            minima = merge_minima(minima, scan.minima)
            for key, info in scan.cells.items():
                agg = cells.setdefault(key, CellInfo(key))
                agg.pieces += info.pieces
                agg.rows_in += info.rows_in
                agg.rows += info.rows
        n_rows_in = sum(c.rows_in for c in cells.values())
        if n_rows_in == 0:
            raise InputDataError(f"{input_uri}: the input holds no data rows")
        skipped = [SkippedCell(cell_key=k, rows_in=c.rows_in, reason="no rows left after --time-cutoff")
                   for k, c in sorted(cells.items()) if c.rows == 0]
        kept = [cells[k] for k in sorted(cells) if cells[k].rows > 0]
        if not kept:
            lows = ", ".join(f"{c} >= {minima[c]!r}" for c, _ in cutoffs if c in minima)
            raise InputDataError(
                f"--time-cutoff {config.time_cutoff} on {config.time_columns[:len(cutoffs)]} leaves no rows in any "
                f"of the {len(cells)} cell(s) (the data has {lows or 'no values there'})")
        if skipped:
            warnings.append(f"{len(skipped)} cell(s) have no rows left after --time-cutoff and were skipped: "
                            f"{[s.cell_key for s in skipped][:20]}")
        schema = resolve_types({c.cell_key: c for c in kept}, needed)
        if loaded.builtin:
            for f in schema:
                if f.name in text_columns and not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                                                   or pa.types.is_null(f.type) or pa.types.is_string(f.type)
                                                   or pa.types.is_large_string(f.type)):
                    raise InputDataError(
                        f"column {f.name!r} ({f.type}) holds values the tokenizer {loaded.name!r} cannot encode; "
                        f"leave it out with --exclude-features {f.name}, or use a tokenizer that covers it")
        max_len = max(c.rows for c in kept)

        with storage.publish(str(output_uri), overwrite=overwrite) as staging:
            (staging / layout.SEQUENCES_DIR).mkdir()
            if config.text:
                (staging / layout.TEXT_DIR).mkdir()
            tok_dir = staging / layout.TOKENIZER_DIR
            loaded.save(tok_dir)
            plan = Plan(
                mode=mode, text_columns=text_columns, time_columns=list(config.time_columns), cutoffs=cutoffs,
                smooth=config.smooth_charge_capacity, precision=config.decimal_precision, value_sep=value_sep,
                time_sep=loaded.time_sep, unk_text=loaded.unk_text, seed=config.seed, max_len=max_len,
                schema=schema, staging=str(staging), write_text=config.text, id_column=config.id_column,
                alphabet=loaded.alphabet or TEXT, id_type=token_id_type(loaded.vocab_size()), builtin=loaded.builtin,
                tokenizer_dir=None if loaded.builtin else str(tok_dir),
                tokenizer_name=loaded.name,
            )
            shards = _plan_shards(kept, config.shard_rows)
            shard_tasks = [(i, s, plan) for i, s in enumerate(shards)]
            rows = sum(c.rows for c in kept)
            with _worker_pool(1, spawn_one=pool is None and rows >= SPAWN_MIN_ROWS) as one:
                results = _run_tasks(process_shard, shard_tasks, pool or one, f"preprocess ({mode})",
                                     config.progress, weights=[sum(c.rows for c in s) for s in shards])
            cell_stats = [st for r in results for st in r["cells"]]
            checks = [st.pop("lossless", True) for st in cell_stats]
            lossless = loaded.builtin or all(checks)
            if not lossless:
                warnings.append(f"the tokenizer {loaded.name!r} does not give the text back exactly "
                                "(decode(input_ids) != text)")
            n_tokens = sum(s["n_tokens"] for s in cell_stats)
            n_sequences = sum(s["n_sequences"] for s in cell_stats)
            n_rows = sum(s["rows"] for s in cell_stats)
            config.save(str(staging / layout.PREPROCESS_CONFIG))
            manifest = {
                "format": layout.DATASET_FORMAT,
                "format_version": layout.DATASET_FORMAT_VERSION,
                "created_by": f"msenc {__version__} preprocess",
                "mode": mode,
                "id_column": config.id_column,
                "group_column": config.time_columns[0] if mode == "embedding" else None,
                "text_columns": text_columns,
                "column_types": {f.name: str(f.type) for f in schema},
                "time_columns": list(config.time_columns),
                "time_cutoff": config.time_cutoff,
                "smooth_charge_capacity": config.smooth_charge_capacity,
                "decimal_precision": config.decimal_precision,
                "value_sep": config.value_sep,
                "permutation": {"seed": config.seed, "max_len": max_len if mode == "training" else None,
                                "rule": "numpy.random.default_rng(seed).permutation(max_len)" if mode == "training"
                                else "numpy.random.default_rng([seed, crc32(cell_key)]) per cell"},
                "tokenizer": {**tokenizer_info(loaded), "lossless": lossless},
                "n_input_files": len(uris),
                "n_cells": len(cell_stats),
                "n_sequences": n_sequences,
                "n_rows_in": n_rows_in,
                "n_rows": n_rows,
                "n_tokens": n_tokens,
                "skipped_cells": [s.model_dump() for s in skipped],
                "warnings": warnings,
                "inputs": [storage.stat(u) for u in uris],
                "shards": [{"file": f"{layout.SEQUENCES_DIR}/{r['shard']}", "n_cells": len(r["cells"]),
                            "n_sequences": sum(s["n_sequences"] for s in r["cells"]),
                            "n_tokens": sum(s["n_tokens"] for s in r["cells"])} for r in results],
                "cells": cell_stats,
                "text_dir": layout.TEXT_DIR if config.text else None,
            }
            layout.write_json(staging / layout.MANIFEST, manifest)

    for w in warnings:
        log.warning(w)
    return PreprocessResult(
        output_uri=str(output_uri), mode=mode, n_input_files=len(uris), n_cells=len(cell_stats),
        n_sequences=n_sequences, n_rows_in=n_rows_in, n_rows=n_rows, n_tokens=n_tokens,
        max_len=max_len if mode == "training" else None, n_shards=len(results), skipped_cells=skipped,
        warnings=warnings, tokenizer=loaded.name, vocab_size=loaded.vocab_size(), lossless=lossless,
        manifest_uri=storage.join(str(output_uri), layout.MANIFEST), seconds=round(time.perf_counter() - start, 3),
    )


__all__ = ["PreprocessConfig", "PreprocessResult", "SkippedCell", "run_preprocess", "smooth_capacity",
           "PARQUET_OPTIONS"]
