"""Input side of ``msenc preprocess``: find the input files, read their columns, and scan each file for its
cells and row counts (after the time cutoff).

A Parquet file holding one cell is left where it is and read directly later. CSV files and multi-cell
Parquet files are streamed in blocks (``CSV_BLOCK`` bytes / ``PARQUET_BATCH`` rows) and split per cell into
temporary Arrow IPC files (only the needed columns, rows passing the cutoff), so memory holds one block,
whatever the file size. CSV types follow the file like polars in the original: pyarrow infers them from the
first block; if a later block does not fit (``1.5`` after integers, values after an empty start), the file
is scanned once as text to find types that fit every value (int64, float64, else text) and read again.
Across files one type per column is chosen (:func:`resolve_types`).
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def _csv_convert(types: dict[str, Any], include: list[str] | None):
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types=types, include_columns=include, null_values=[""],
                                strings_can_be_null=True, quoted_strings_can_be_null=True,
                                timestamp_parsers=[])


def _open_csv(path: str, types: dict[str, Any], include: list[str] | None, block: int = CSV_BLOCK):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.open_csv(pa.input_stream(path, compression="detect"),
                          read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
                          convert_options=_csv_convert(types, include))


def read_columns(path: str, fmt: str, source: str) -> list[str]:
    """Column names of an input file (CSV header or Parquet schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        reader = _open_csv(path, {}, None, block=1 << 16)
        names = list(reader.schema.names)
        reader.close()
        return names
    except (pa.ArrowInvalid, OSError) as e:
        raise InputDataError(f"{source}: cannot read the {fmt} file: {e}") from None


def _csv_types_by_scan(path: str, source: str, include: list[str], id_column: str) -> dict[str, Any]:
    """Types that fit every value of a CSV (its first block guessed wrong): int64, float64, else text."""
    import pyarrow as pa

    kinds: dict[str, str] = {}
    reader = _open_csv(path, {c: pa.string() for c in include}, include)
    for batch in reader:
        for name in batch.schema.names:
            if name == id_column or kinds.get(name) == "text":
                continue
            col = batch.column(name)
            if col.null_count == len(col):
                continue
            for kind, typ in (("int", pa.int64()), ("float", pa.float64())):
                if kind == "int" and kinds.get(name) == "float":
                    continue
                try:
                    col.cast(typ)
                    kinds[name] = kind
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
            else:
                kinds[name] = "text"
    types = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
    out = {n: types[k] for n, k in kinds.items()}
    out[id_column] = pa.string()
    return out


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


class _Spiller:
    """Writes rows of each cell of one input file to its own Arrow IPC file (in first-seen order)."""

    def __init__(self, spill_dir: Path, file_index: int, source: str):
        self.dir = spill_dir
        self.file_index = file_index
        self.source = source
        self.cells: dict[str, CellInfo] = {}
        self._writers: dict[str, Any] = {}

    def count(self, key: str, rows_in: int, rows: int) -> None:
        info = self.cells.setdefault(key, CellInfo(key))
        info.rows_in += rows_in
        info.rows += rows

    def write(self, key: str, table) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        w = self._writers.get(key)
        if w is None:
            path = self.dir / f"{self.file_index:06d}-{len(self._writers):06d}.arrow"
            sink = pa.OSFile(str(path), "wb")
            options = ipc.IpcWriteOptions(compression="lz4")  # spill files are read once: cheap compression
            w = (ipc.new_file(sink, table.schema, options=options), sink, path, table.schema)
            self._writers[key] = w
            types = {f.name: f.type for f in table.schema}
            self.cells.setdefault(key, CellInfo(key)).pieces.append(Piece(str(path), "ipc", self.source, types))
        w[0].write_table(table.cast(w[3]) if table.schema != w[3] else table)

    def close(self) -> None:
        for w in self._writers.values():
            w[0].close()
            w[1].close()

    def discard(self) -> None:
        self.close()
        for w in self._writers.values():
            Path(w[2]).unlink(missing_ok=True)
        self._writers.clear()
        self.cells.clear()


def _split_batch(batch, id_column: str, cutoffs, spiller: _Spiller, keep: list[str]) -> dict[str, Any]:
    """Count, filter and spill one batch (rows of any cells, in file order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    if n == 0:
        return {}
    keys = table.column(id_column)
    if not pa.types.is_string(keys.type):
        keys = keys.cast(pa.string())
    if keys.null_count:
        bad = int(np.flatnonzero(np.asarray(keys.is_null().to_numpy(zero_copy_only=False)))[0])
        raise InputDataError(f"{spiller.source}: empty {id_column!r} in a data row (row {bad + 1} of a block)")
    enc = pc.dictionary_encode(keys).combine_chunks()
    idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False))
    names = enc.dictionary.to_pylist()
    rows_in = np.bincount(idx, minlength=len(names))
    minima = _minima(table, [c for c, _ in cutoffs])
    if cutoffs:
        mask = np.asarray(cutoff_mask(table, cutoffs, spiller.source).to_numpy(zero_copy_only=False), bool)
        idx_kept = idx[mask]
        table = table.filter(pa.array(mask))
    else:
        idx_kept = idx
    rows_kept = np.bincount(idx_kept, minlength=len(names))
    for i, name in enumerate(names):
        spiller.count(name, int(rows_in[i]), int(rows_kept[i]))
    if table.num_rows == 0:
        return minima
    table = table.select(keep)
    change = np.flatnonzero(np.diff(idx_kept)) + 1
    if len(change) + 1 > len(names):  # cells interleaved: group them, keeping each cell's row order
        order = np.argsort(idx_kept, kind="stable")
        table = table.take(pa.array(order))
        idx_kept = idx_kept[order]
        change = np.flatnonzero(np.diff(idx_kept)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(idx_kept)]])
    for s, e in zip(starts.tolist(), ends.tolist()):
        spiller.write(names[idx_kept[s]], table.slice(s, e - s))
    return minima


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
        spiller = _Spiller(Path(spill_dir), index, source)
        minima: dict[str, Any] = {}
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=read_cols):
                minima = merge_minima(minima, _split_batch(batch, id_column, cutoffs, spiller, keep))
        finally:
            spiller.close()
        return FileScan(index, source, spiller.cells, minima)

    types: dict[str, Any] = {id_column: pa.string()}
    for attempt in range(2):
        spiller = _Spiller(Path(spill_dir), index, source)
        minima = {}
        try:
            reader = _open_csv(path, types, read_cols)
            for batch in reader:
                minima = merge_minima(minima, _split_batch(batch, id_column, cutoffs, spiller, keep))
            spiller.close()
            return FileScan(index, source, spiller.cells, minima)
        except pa.ArrowInvalid as e:
            spiller.discard()
            if attempt == 1:
                raise InputDataError(f"{source}: cannot read the CSV values: {e}") from None
            types = _csv_types_by_scan(path, source, read_cols, id_column)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------ type unify
def resolve_types(cells: dict[str, CellInfo], columns: list[str]):
    """One Arrow type per needed column over all pieces: integers stay int64 if every piece has integers,
    integers mixed with floats become float64, nulls defer to the others; anything else must agree."""
    import pyarrow as pa

    fields = []
    for c in columns:
        found: dict[str, tuple[Any, str]] = {}  # type name -> (type, first source)
        for info in cells.values():
            for piece in info.pieces:
                t = piece.types.get(c)
                if t is not None:
                    if pa.types.is_dictionary(t):
                        t = t.value_type
                    found.setdefault(str(t), (t, piece.source))
        real = [t for t, _ in found.values() if not pa.types.is_null(t)]
        if not real:
            typ = pa.null()
        elif all(pa.types.is_integer(t) for t in real):
            typ = pa.int64()
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in real):
            typ = pa.float64()
        elif all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in real):
            typ = pa.string()
        elif all(t == real[0] for t in real):
            typ = real[0]
        else:
            where = ", ".join(f"{name} in {src}" for name, (_, src) in found.items())
            raise InputDataError(f"column {c!r} has incompatible types across the inputs ({where}); "
                                 "unify the files (e.g. with 'msenc ingest') or exclude the column")
        fields.append(pa.field(c, typ))
    return pa.schema(fields)


__all__ = ["Piece", "CellInfo", "FileScan", "input_files", "read_columns", "scan_file", "resolve_types",
           "cutoff_mask", "merge_minima"]
