"""Reading raw tables: the one reader layer of ingest and preprocess.

* :func:`resolve_inputs`: a file, a folder or a glob (local or s3://) -> the input files and their format.
* :func:`read_csv`: a CSV streamed with ``pyarrow.csv.open_csv`` in blocks (``block_size``), each handed on
  right away, so a CSV larger than memory can be read. pyarrow infers types from the first block; if a later
  block does not fit (e.g. ``1.5`` in a column that started with integers) the file is scanned once as text
  to decide the types (or to report the first non-numeric value with its row) and then re-read.
* :func:`read_csv_file` / :func:`read_parquet_file`: one file of the unified table, validated and normalised
  batch by batch (ingest). Types follow the file like the polars-based original: integer columns stay int64
  (also with empty cells), the unified float columns are always float64, ``cell_key`` is a string. Parquet
  is read in row batches with the file's own types (a pandas index column is dropped).

Files on S3 are read from a local copy (``storage.local_copy``).
"""

from __future__ import annotations

import os
from typing import Callable, Collection

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msenc_lib import layout, storage
from msenc_lib.data.repair import RepairLog
from msenc_lib.data.schema import FLOAT_COLUMNS, ID_COLUMN, NUMERIC_COLUMNS, UNIFIED_COLUMNS
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


def list_inputs(input_uri: str) -> list[str]:
    """Files named by a path/folder/glob (local or s3://). In a folder, names starting with ``_`` or ``.``
    (manifests, the ``_csv`` export, staging folders) are skipped, so a unified output directory can itself be
    an input."""
    input_uri = str(input_uri)
    files = storage.expand(input_uri)
    if not files:
        raise InputDataError(f"no input files found at {input_uri}")
    if storage.is_dir(input_uri):
        files = [f for f in files if not layout.is_hidden(layout.relative_to(f, input_uri))]
    return files


def resolve_inputs(input_uri: str, fmt: str = "auto") -> tuple[list[str], str, list[str]]:
    """Files named by a path/folder/glob (:func:`list_inputs`), their format, and files of other formats."""
    if fmt not in FORMATS:
        raise InputDataError(f"unknown input format {fmt!r} (choose from {FORMATS})")
    input_uri = str(input_uri)
    files = list_inputs(input_uri)
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
def open_csv(path: str | os.PathLike, types: dict[str, pa.DataType], block_size: int = DEFAULT_CSV_BLOCK,
             include: list[str] | None = None, use_threads: bool = True, parse_timestamps: bool = True):
    """A streaming reader of a (possibly compressed) CSV: ``types`` for some columns, pyarrow's inference from
    the first block for the rest; empty fields are nulls. ``parse_timestamps=False`` keeps dates as text."""
    read = pacsv.ReadOptions(block_size=block_size, use_threads=use_threads)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=include, null_values=[""],
                                   strings_can_be_null=True, quoted_strings_can_be_null=True,
                                   **({} if parse_timestamps else {"timestamp_parsers": []}))
    return pacsv.open_csv(pa.input_stream(str(path), compression="detect"), read_options=read,
                          convert_options=convert)


def read_columns(path: str | os.PathLike, fmt: str, source: str) -> list[str]:
    """Column names of an input file (CSV header or Parquet schema)."""
    try:
        if fmt == "parquet":
            return list(pq.read_schema(str(path)).names)
        reader = open_csv(path, {}, 1 << 16)
        names = list(reader.schema.names)
        reader.close()
        return names
    except (pa.ArrowInvalid, OSError) as e:
        raise InputDataError(f"{source}: cannot read the {fmt} file: {e}") from None


def _first_non_numeric(values: list) -> int | None:
    """Index of the first value Python cannot read as a number (None: all can)."""
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            float(str(v))
        except ValueError:
            return i
    return None


def csv_types_by_scan(path: str | os.PathLike, source: str, block_size: int = DEFAULT_CSV_BLOCK,
                      include: list[str] | None = None, strict: Collection[str] = (), use_threads: bool = True,
                      parse_timestamps: bool = True) -> dict[str, pa.DataType]:
    """Types that fit every value of a CSV, read once as text: int64, else float64, else text. A value that is
    not a number in a ``strict`` column is an error naming its row and cell. Columns holding only empty
    values are left to pyarrow's inference."""
    kinds: dict[str, str] = {}
    names = read_columns(path, "csv", source) if include is None else include
    offset = 0
    try:
        for batch in open_csv(path, {n: pa.string() for n in names}, block_size, include, use_threads,
                              parse_timestamps):
            for name in batch.schema.names:
                col = batch.column(name)
                if kinds.get(name) == "text" or col.null_count == len(col):
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
                    first = _first_non_numeric(col.to_pylist()) if name in strict else 0
                    if first is not None and name in strict:
                        cell = batch.column(ID_COLUMN)[first].as_py() if ID_COLUMN in batch.schema.names else None
                        raise InputDataError(
                            f"{source}: row {offset + first + 1} ({ROW_MEANING}), cell {cell!r}, column {name!r}: "
                            f"non-numeric value {col[first].as_py()!r} in a numeric column")
                    kinds[name] = "text" if first is not None else "float"
            offset += batch.num_rows
    except pa.ArrowInvalid as e:
        raise InputDataError(f"{source}: malformed CSV: {e}") from None
    types = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
    return {n: types[k] for n, k in kinds.items()}


def read_csv(path: str | os.PathLike, source: str, sink: Sink, *, fixed: dict[str, pa.DataType],
             block_size: int = DEFAULT_CSV_BLOCK, include: list[str] | None = None, strict: Collection[str] = (),
             on_retry: Callable[[], None] | None = None, use_threads: bool = True,
             parse_timestamps: bool = True) -> None:
    """Stream a CSV into ``sink`` batch by batch: ``fixed`` types for some columns, pyarrow's inference from the
    first block for the rest. When a later block does not fit the inferred types (e.g. ``1.5`` in a column
    that started with integers), the file is scanned once as text (:func:`csv_types_by_scan`) and read
    again; ``on_retry`` is called first, so the caller can discard what the first attempt handed on."""
    types = dict(fixed)
    for attempt in range(2):
        try:
            for batch in open_csv(path, types, block_size, include, use_threads, parse_timestamps):
                sink(batch)
            return
        except pa.ArrowInvalid as e:
            if attempt == 1:
                raise InputDataError(f"{source}: cannot convert CSV values: {e}") from None
            if on_retry:
                on_retry()
            types = {**csv_types_by_scan(path, source, block_size, include, strict, use_threads, parse_timestamps),
                     **fixed}


def base_csv_types(names: list[str]) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {ID_COLUMN: pa.string()}
    types.update({c: pa.float64() for c in FLOAT_COLUMNS})
    return {n: t for n, t in types.items() if n in names}


class _Validated:
    """A sink that validates and normalises the batches of one read attempt before handing them on."""

    def __init__(self, source: str, names: list[str], sink: Sink, allow_nan: bool, strict: bool):
        self.source, self.names, self.sink, self.allow_nan, self.strict = source, names, sink, allow_nan, strict
        self.restart()

    def restart(self) -> None:
        self.validator = UnifiedValidator(self.source, allow_nan=self.allow_nan, strict=self.strict)
        self.validator.check_columns(self.names)
        self.offset = 0

    def __call__(self, batch: pa.RecordBatch) -> None:
        self.sink(self.validator.validate_batch(batch, self.offset))
        self.offset += batch.num_rows


def read_csv_file(path: str | os.PathLike, source: str, sink: Sink, *, allow_nan: bool = False,
                  strict: bool = False, repairs: RepairLog | None = None, block_size: int = DEFAULT_CSV_BLOCK,
                  on_retry: Callable[[], None] | None = None) -> ValidationReport:
    """Stream one unified CSV into ``sink`` (validated, repaired, normalised batches; repairs added to
    ``repairs``, or an error under ``strict``). ``on_retry`` is called before a re-read so the caller can discard
    what the first attempt handed on."""
    names = read_columns(path, "csv", source)
    validated = _Validated(source, names, sink, allow_nan, strict)  # fails on missing columns before reading any data

    def retry() -> None:
        if on_retry:
            on_retry()
        validated.restart()

    # extra columns as text: the validator turns them into numbers only where no digit is lost (identifiers)
    extras = {n: pa.string() for n in names if n not in UNIFIED_COLUMNS}
    read_csv(path, source, validated, fixed={**base_csv_types(names), **extras}, block_size=block_size,
             strict=NUMERIC_COLUMNS, on_retry=retry)
    if repairs is not None:
        repairs.merge(validated.validator.repairs)
    return validated.validator.report


# ------------------------------------------------------------------------------------------- Parquet
def _pandas_index_columns(pf: pq.ParquetFile) -> list[str]:
    meta = pf.schema_arrow.pandas_metadata or {}
    return [c for c in meta.get("index_columns", []) if isinstance(c, str)]


def read_parquet_file(path: str | os.PathLike, source: str, sink: Sink, *, allow_nan: bool = False,
                      strict: bool = False, repairs: RepairLog | None = None,
                      batch_size: int = DEFAULT_PARQUET_BATCH) -> ValidationReport:
    """Stream one Parquet file (unified columns) into ``sink`` in row batches (as :func:`read_csv_file`)."""
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputDataError(f"{source}: not a readable Parquet file: {e}") from None
    drop = set(_pandas_index_columns(pf))
    names = [n for n in pf.schema_arrow.names if n not in drop]
    validator = UnifiedValidator(source, allow_nan=allow_nan, strict=strict)
    validator.check_columns(names)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=names):
        sink(validator.validate_batch(batch, offset))
        offset += batch.num_rows
    if repairs is not None:
        repairs.merge(validator.repairs)
    return validator.report


__all__ = [
    "FORMATS", "FORMAT_EXTENSIONS", "format_of", "list_inputs", "resolve_inputs", "open_csv", "read_columns", "read_csv",
    "csv_types_by_scan", "read_csv_file", "read_parquet_file",
]
