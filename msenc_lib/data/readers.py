"""Input readers for the unified table: CSV (one file with many cells, one file per cell, a folder, a
glob) and Parquet. Files on S3 are read from a local copy (``storage.local_copy``).

CSV is streamed with ``pyarrow.csv.open_csv`` in blocks (``block_size``); each block is validated and
handed on right away (the ingest stage spills it per cell), so a CSV larger than memory can be ingested.
Types follow the file like the polars-based original: integer columns stay int64 (also with empty
cells), the unified float columns are always float64, ``cell_key`` is a string. pyarrow infers types from
the first block; if a later block does not fit (e.g. ``1.5`` in a column that started with integers) the
file is scanned once as text to decide the types (or to report the first non-numeric value with its row)
and then re-read.

Parquet is read in row batches with the file's own types (a pandas index column is dropped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msenc_lib import storage
from msenc_lib.data.schema import FLOAT_COLUMNS, ID_COLUMN, INTEGER_COLUMNS, NUMERIC_COLUMNS
from msenc_lib.data.validate import ROW_MEANING, UnifiedValidator, ValidationReport
from msenc_lib.errors import InputDataError

Sink = Callable[[pa.Table], None]

FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "csv": (".csv", ".csv.gz", ".csv.bz2", ".csv.zst"),
    "parquet": (".parquet", ".pq"),
    "severson-mat": (".mat",),
    "severson-pickle": (".pkl", ".pickle"),
}
FORMATS = ["auto", *FORMAT_EXTENSIONS]

DEFAULT_CSV_BLOCK = 8 << 20
DEFAULT_PARQUET_BATCH = 1 << 18


def format_of(path: str) -> str | None:
    low = path.lower()
    for fmt, exts in FORMAT_EXTENSIONS.items():
        if low.endswith(exts):
            return fmt
    return None


def _hidden(rel: str) -> bool:
    return any(part[:1] in ("_", ".") for part in rel.split("/") if part)


def resolve_inputs(input_uri: str, fmt: str = "auto") -> tuple[list[str], str, list[str]]:
    """Files named by a path/folder/glob, their format, and files skipped (other formats, ``_*``/``.*``).

    In a folder, names starting with ``_`` or ``.`` (manifests, the ``_csv`` export, staging folders)
    are skipped, so a unified output directory can itself be an input.
    """
    if fmt not in FORMATS:
        raise InputDataError(f"unknown input format {fmt!r} (choose from {FORMATS})")
    input_uri = str(input_uri)
    files = storage.expand(input_uri)
    if not files:
        raise InputDataError(f"no input files found at {input_uri}")
    if storage.is_dir(input_uri):
        base = input_uri.rstrip("/") + "/"
        files = [f for f in files if not _hidden(f[len(base):] if f.startswith(base) else storage.basename(f))]
    kinds = {f: format_of(f) for f in files}
    if fmt == "auto":
        found = sorted({k for k in kinds.values() if k})
        if not found:
            raise InputDataError(
                f"{input_uri}: no file with a known extension "
                f"({', '.join(e for exts in FORMAT_EXTENSIONS.values() for e in exts)}); use --format"
            )
        if len(found) > 1:
            raise InputDataError(f"{input_uri}: files of several formats {found}; choose one with --format")
        fmt = found[0]
    single = len(files) == 1 and not storage.is_dir(input_uri)
    chosen = [f for f in files if kinds[f] == fmt or single]
    skipped = [f for f in files if f not in chosen]
    if not chosen:
        raise InputDataError(f"{input_uri}: no {fmt} files (found {[storage.basename(f) for f in files][:10]})")
    return chosen, fmt, skipped


# ----------------------------------------------------------------------------------------------- CSV
def _csv_options(types: dict[str, pa.DataType], block_size: int):
    read = pacsv.ReadOptions(block_size=block_size, use_threads=True)
    convert = pacsv.ConvertOptions(
        column_types=types,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    return read, convert


def _open_csv(path: Path, types: dict[str, pa.DataType], block_size: int):
    read, convert = _csv_options(types, block_size)
    return pacsv.open_csv(pa.input_stream(str(path), compression="detect"), read_options=read,
                          convert_options=convert)


def _csv_header(path: Path, source: str, block_size: int) -> list[str]:
    try:
        reader = _open_csv(path, {}, min(block_size, 1 << 16))
    except pa.ArrowInvalid as e:
        raise InputDataError(f"{source}: cannot read CSV: {e}") from None
    names = reader.schema.names
    reader.close()
    return names


def _classify_text(values: list) -> tuple[str, int | None]:
    """('int' | 'float' | 'text', index of the first non-numeric value or None)."""
    kind = "int"
    for i, v in enumerate(values):
        if v is None:
            continue
        s = str(v)
        try:
            int(s)
            continue
        except ValueError:
            pass
        try:
            float(s)
            kind = "float"
        except ValueError:
            return "text", i
    return kind, None


def _diagnose_csv(path: Path, source: str, names: list[str], block_size: int) -> dict[str, pa.DataType]:
    """Scan the file as text: report the first non-numeric value of a numeric column, or return the
    types that fit every block (int64 / float64 / string)."""
    kinds: dict[str, str] = {}
    try:
        reader = _open_csv(path, {n: pa.string() for n in names}, block_size)
        offset = 0
        for batch in reader:
            for name in batch.schema.names:
                if kinds.get(name) == "text":
                    continue
                col = batch.column(name)
                try:
                    col.cast(pa.int64())
                    kinds.setdefault(name, "int")
                    continue
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass
                try:
                    col.cast(pa.float64())
                    kinds[name] = "float"
                    continue
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass
                kind, first = _classify_text(col.to_pylist())
                if kind == "text" and name in NUMERIC_COLUMNS:
                    cell = batch.column(ID_COLUMN)[first].as_py() if ID_COLUMN in batch.schema.names else None
                    raise InputDataError(
                        f"{source}: row {offset + first + 1} ({ROW_MEANING}), cell {cell!r}, column {name!r}: "
                        f"non-numeric value {col[first].as_py()!r} in a numeric column"
                    )
                kinds[name] = "text" if kind == "text" else ("float" if kind == "float" else kinds.get(name, "int"))
            offset += batch.num_rows
    except pa.ArrowInvalid as e:
        raise InputDataError(f"{source}: malformed CSV: {e}") from None
    types = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
    return {n: types[k] for n, k in kinds.items()}


def base_csv_types(names: list[str]) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {ID_COLUMN: pa.string()}
    types.update({c: pa.float64() for c in FLOAT_COLUMNS})
    return {n: t for n, t in types.items() if n in names}


def read_csv_file(path: str | os.PathLike, source: str, sink: Sink, *, allow_nan: bool = False,
                  block_size: int = DEFAULT_CSV_BLOCK, on_retry: Callable[[], None] | None = None) -> ValidationReport:
    """Stream one unified CSV into ``sink`` (validated, normalised batches). ``on_retry`` is called before a
    re-read so the caller can discard what the first attempt handed on."""
    path = Path(path)
    names = _csv_header(path, source, block_size)
    UnifiedValidator(source).check_columns(names)  # fail on missing columns before reading any data
    types = base_csv_types(names)
    for attempt in range(2):
        validator = UnifiedValidator(source, allow_nan=allow_nan)
        validator.check_columns(names)
        try:
            reader = _open_csv(path, types, block_size)
            offset = 0
            for batch in reader:
                sink(validator.validate_batch(batch, offset))
                offset += batch.num_rows
            return validator.report
        except pa.ArrowInvalid as e:
            if attempt == 1:
                raise InputDataError(f"{source}: cannot convert CSV values: {e}") from None
            if on_retry:
                on_retry()
            found = _diagnose_csv(path, source, names, block_size)
            for name, t in found.items():
                if name == ID_COLUMN:
                    continue
                if name in FLOAT_COLUMNS:
                    types[name] = pa.float64()
                elif name in INTEGER_COLUMNS:
                    types[name] = pa.float64() if t == pa.float64() else pa.int64()
                else:
                    types[name] = t
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------- Parquet
def _pandas_index_columns(pf: pq.ParquetFile) -> list[str]:
    meta = pf.schema_arrow.pandas_metadata or {}
    return [c for c in meta.get("index_columns", []) if isinstance(c, str)]


def read_parquet_file(path: str | os.PathLike, source: str, sink: Sink, *, allow_nan: bool = False,
                      batch_size: int = DEFAULT_PARQUET_BATCH) -> ValidationReport:
    """Stream one Parquet file (unified columns) into ``sink`` in row batches."""
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputDataError(f"{source}: not a readable Parquet file: {e}") from None
    drop = set(_pandas_index_columns(pf))
    names = [n for n in pf.schema_arrow.names if n not in drop]
    validator = UnifiedValidator(source, allow_nan=allow_nan)
    validator.check_columns(names)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=names):
        sink(validator.validate_batch(batch, offset))
        offset += batch.num_rows
    return validator.report


def read_table_file(path: str | os.PathLike, source: str | None = None, fmt: str | None = None,
                    allow_nan: bool = False) -> tuple[pa.Table, ValidationReport]:
    """One CSV/Parquet file as a validated, normalised table (convenience for small files and tests)."""
    pieces: list[pa.Table] = []
    fmt = fmt or format_of(str(path))
    source = source or str(path)
    if fmt == "csv":
        report = read_csv_file(path, source, pieces.append, allow_nan=allow_nan, on_retry=pieces.clear)
    elif fmt == "parquet":
        report = read_parquet_file(path, source, pieces.append, allow_nan=allow_nan)
    else:
        raise InputDataError(f"{source}: not a CSV or Parquet file")
    if not pieces:
        if fmt == "csv":
            names = _csv_header(Path(path), source, 1 << 16)
        else:
            names = pq.ParquetFile(str(path)).schema_arrow.names
        return pa.table({n: pa.array([], pa.null()) for n in names}), report
    return pa.concat_tables(pieces, promote_options="permissive"), report


__all__ = [
    "FORMATS", "FORMAT_EXTENSIONS", "format_of", "resolve_inputs", "read_csv_file", "read_parquet_file",
    "read_table_file",
]
