"""Input side of ``msenc preprocess``: find the input files, read their columns, and scan each file for its
cells and row counts (after the time cutoff).

A Parquet file holding one cell is left where it is and read directly later. CSV files and multi-cell
Parquet files are streamed in blocks (``CSV_BLOCK`` bytes / ``PARQUET_BATCH`` rows) and split per cell into
temporary Arrow IPC files (only the needed columns, rows passing the cutoff; :mod:`msenc_lib.data.spill`), so
memory holds one block, whatever the file size. Files are read by the reader layer of ingest
(:mod:`msenc_lib.data.readers`): CSV types follow the file like polars in the original (inferred from the first
block, the file scanned once as text when a later block does not fit). Across files one type per column is
chosen (:func:`resolve_types`).
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msenc_lib.data.readers import read_csv
from msenc_lib.data.spill import CellSpiller, group_rows
from msenc_lib.data.unified import unify_types
from msenc_lib.errors import InputDataError

CSV_BLOCK = 8 << 20
PARQUET_BATCH = 1 << 18


@dataclass
class Piece:
    """Rows of one cell in one place: a single-cell Parquet input, or a spilled Arrow IPC file."""

    path: str
    kind: str  # "parquet" | "ipc"
    source: str  # the input URI it came from
    types: dict[str, Any]  # column -> pa.DataType as read


@dataclass
class CellInfo:
    cell_key: str
    pieces: list[Piece] = field(default_factory=list)
    rows_in: int = 0
    rows: int = 0


@dataclass
class FileScan:
    index: int
    source: str
    cells: dict[str, CellInfo]
    minima: dict[str, Any]


# ----------------------------------------------------------------------------------------------- input
def input_files(input_uri: str, tmp: Path) -> tuple[list[str], list[str], str]:
    """(local paths, original URIs, format); s3:// inputs are downloaded into ``tmp`` first."""
    from msenc_lib import storage
    from msenc_lib.data.readers import resolve_inputs

    uris, fmt, _ = resolve_inputs(input_uri)
    if fmt not in ("csv", "parquet"):
        raise InputDataError(f"{input_uri}: preprocess reads unified CSV or Parquet files, found {fmt} files; "
                             "convert them with 'msenc ingest' first")
    if not any(storage.is_s3(u) for u in uris):
        return uris, uris, fmt
    local = []
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        futs = []
        for i, u in enumerate(uris):
            dest = tmp / "input" / f"{i:06d}-{storage.basename(u)}"
            futs.append(pool.submit(storage.download, u, dest) if storage.is_s3(u) else None)
            local.append(str(dest) if storage.is_s3(u) else u)
        for f in futs:
            if f is not None:
                f.result()
    return local, uris, fmt


def cutoff_mask(table, cutoffs: list[tuple[str, float]], source: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = None
    for col, cut in cutoffs:
        arr = table.column(col)
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)):
            raise InputDataError(f"{source}: --time-cutoff needs a numeric column, but {col!r} is {arr.type}")
        m = pc.fill_null(pc.less_equal(arr, pa.scalar(cut)), False) if not pa.types.is_null(arr.type) else \
            pa.array(np.zeros(len(arr), bool))
        mask = m if mask is None else pc.and_(mask, m)
    return mask


def _minima(table, columns: list[str]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for c in columns:
        arr = table.column(c)
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            v = pc.min(arr).as_py()
            if v is not None:
                out[c] = v
    return out


def merge_minima(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = v if k not in out else min(out[k], v)
    return out


def _split_batch(batch, id_column: str, cutoffs, spiller: CellSpiller, cells: dict[str, CellInfo], source: str,
                 keep: list[str]) -> dict[str, Any]:
    """Count, filter and spill one batch (rows of any cells, in file order)."""
    import pyarrow as pa

    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if table.num_rows == 0:
        return {}
    keys = table.column(id_column)
    if keys.null_count:
        bad = int(np.flatnonzero(np.asarray(keys.is_null().to_numpy(zero_copy_only=False)))[0])
        raise InputDataError(f"{source}: empty {id_column!r} in a data row (row {bad + 1} of a block)")
    names, idx = group_rows(keys)
    rows_in = np.bincount(idx, minlength=len(names))
    minima = _minima(table, [c for c, _ in cutoffs])
    if cutoffs:
        mask = np.asarray(cutoff_mask(table, cutoffs, source).to_numpy(zero_copy_only=False), bool)
        idx = idx[mask]
        table = table.filter(pa.array(mask))
    rows_kept = np.bincount(idx, minlength=len(names))
    for i, name in enumerate(names):
        info = cells.setdefault(name, CellInfo(name))
        info.rows_in += int(rows_in[i])
        info.rows += int(rows_kept[i])
    if table.num_rows:
        spiller.write_grouped(table.select(keep), names, idx)
    return minima


def _spilled(spiller: CellSpiller, cells: dict[str, CellInfo], source: str) -> dict[str, CellInfo]:
    """The scanned cells with their spill files as pieces."""
    spiller.close()
    for part in spiller.parts:
        types = {f.name: f.type for f in part.schema}
        cells[part.cell_key].pieces.append(Piece(str(part.path), "ipc", source, types))
    return cells


def _types(pf, needed: list[str]) -> dict[str, Any]:
    return {f.name: f.type for f in pf.schema_arrow if f.name in needed}


def _single_key_from_statistics(pf, id_column: str) -> str | None:
    """The one cell key of a Parquet file, when its column statistics prove it (min == max, no nulls, in
    every row group); None when they do not (the column is then read)."""
    meta = pf.metadata
    if meta.num_rows == 0 or meta.num_row_groups == 0:
        return None
    try:
        idx = pf.schema_arrow.names.index(id_column)
    except ValueError:
        return None
    if len(meta.schema) != len(pf.schema_arrow.names):  # nested columns: leaf indices differ
        return None
    found = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(idx).statistics
        if stats is None or not stats.has_min_max or stats.null_count != 0 or stats.min != stats.max:
            return None
        value = stats.min.decode() if isinstance(stats.min, bytes) else str(stats.min)
        if found is not None and value != found:
            return None
        found = value
    return found


def scan_file(args: tuple) -> FileScan:
    """Phase 1 for one input file: find its cells and row counts; spill it per cell unless it is a
    single-cell Parquet file (read directly later)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index, path, source, fmt, id_column, needed, cutoffs, spill_dir = args
    keep = list(needed)
    read_cols = list(dict.fromkeys([id_column, *needed]))
    cut_cols = [c for c, _ in cutoffs]
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
            key = _single_key_from_statistics(pf, id_column)
            cols = list(dict.fromkeys(cut_cols if key is not None else [id_column, *cut_cols]))
            head = pq.read_table(path, columns=cols) if cols else None
        except (pa.ArrowInvalid, OSError) as e:
            raise InputDataError(f"{source}: not a readable Parquet file: {e}") from None
        if key is None:
            keys = head.column(id_column)
            if keys.null_count:
                raise InputDataError(f"{source}: empty {id_column!r} in {keys.null_count} row(s)")
            uniq = keys.unique() if keys.num_chunks else pa.array([])
            key = str(uniq[0].as_py()) if len(uniq) == 1 else None
        if key is not None:
            if head is None:  # no cutoff: the footer has all we need
                info = CellInfo(key, [Piece(path, "parquet", source, _types(pf, needed))], pf.metadata.num_rows,
                                pf.metadata.num_rows)
                return FileScan(index, source, {key: info}, {})
            rows = head.num_rows
            if cutoffs:
                rows = int(np.asarray(cutoff_mask(head, cutoffs, source).to_numpy(zero_copy_only=False), bool).sum())
            info = CellInfo(key, [Piece(path, "parquet", source, _types(pf, needed))] if rows else [],
                            head.num_rows, rows)
            return FileScan(index, source, {key: info}, _minima(head, cut_cols))
        spiller = CellSpiller(spill_dir, prefix=f"{index:06d}-")
        cells: dict[str, CellInfo] = {}
        minima: dict[str, Any] = {}
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=read_cols):
            minima = merge_minima(minima, _split_batch(batch, id_column, cutoffs, spiller, cells, source, keep))
        return FileScan(index, source, _spilled(spiller, cells, source), minima)

    spiller = CellSpiller(spill_dir, prefix=f"{index:06d}-")
    scanned: dict[str, Any] = {"cells": {}, "minima": {}}

    def take(batch) -> None:
        minima = _split_batch(batch, id_column, cutoffs, spiller, scanned["cells"], source, keep)
        scanned["minima"] = merge_minima(scanned["minima"], minima)

    def restart() -> None:
        spiller.rollback()
        scanned.update(cells={}, minima={})

    # text as the original reads it: dates stay text; the workers already run in parallel
    read_csv(path, source, take, fixed={id_column: pa.string()}, block_size=CSV_BLOCK, include=read_cols,
             on_retry=restart, use_threads=False, parse_timestamps=False)
    return FileScan(index, source, _spilled(spiller, scanned["cells"], source), scanned["minima"])


# ------------------------------------------------------------------------------------------ type unify
def resolve_types(cells: dict[str, CellInfo], columns: list[str]):
    """One Arrow type per needed column over all pieces (:func:`msenc_lib.data.unified.unify_types`); types
    that do not mix are an error naming the inputs."""
    import pyarrow as pa

    fields = []
    for c in columns:
        found: dict[str, tuple[Any, str]] = {}  # type name -> (type, first source)
        for info in cells.values():
            for piece in info.pieces:
                t = piece.types.get(c)
                if t is not None:
                    found.setdefault(str(t), (t, piece.source))
        typ = unify_types([t for t, _ in found.values()])
        if typ is None:
            where = ", ".join(f"{name} in {src}" for name, (_, src) in found.items())
            raise InputDataError(f"column {c!r} has incompatible types across the inputs ({where}); "
                                 "unify the files (e.g. with 'msenc ingest') or exclude the column")
        fields.append(pa.field(c, typ))
    return pa.schema(fields)


__all__ = ["Piece", "CellInfo", "FileScan", "input_files", "scan_file", "resolve_types", "cutoff_mask",
           "merge_minima"]
