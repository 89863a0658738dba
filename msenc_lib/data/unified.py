"""The unified data directory: one ``<cell_key>.parquet`` per cell plus ``_manifest.json``.

Layout (helper_rules "Artifact layouts")::

    DIR/<cell_key>.parquet     the unified columns in canonical order, extras after; one schema for all files
    DIR/_manifest.json         counts, dtypes, warnings, source (input fingerprints or generator parameters)
    DIR/_csv/unified.csv       optional: the beep-data-utils unified CSV (all cells, one header)

Names starting with ``_`` or ``.`` are skipped by ``pandas.read_parquet(DIR)`` (pyarrow's default ignore
prefixes), so ``pandas.read_parquet(DIR)`` reads exactly the cells. Cell keys that are not safe file names
are percent-encoded in the file name; the ``cell_key`` column always holds the real key.

Parquet bytes are deterministic: the same rows give the same file (fixed writer options, no timestamps,
no pandas metadata), so a run on S3 and a local run produce byte-identical files.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from msenc_lib import storage
from msenc_lib.data.schema import FLOAT_COLUMNS, ID_COLUMN, INTEGER_COLUMNS, UNIFIED_COLUMNS, canonical_order
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError

MANIFEST_NAME = "_manifest.json"
CSV_DIR = "_csv"
CSV_NAME = "unified.csv"
FORMAT_NAME = "msenc-unified"
FORMAT_VERSION = 1
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_size": 1 << 20,
}
DEFAULT_ROW_GROUP = 1 << 20

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@,-]*$")


def cell_file_name(cell_key: str) -> str:
    """``b1c0`` -> ``b1c0.parquet``; unsafe characters (and a leading ``_``/``.``) percent-encoded."""
    name = cell_key if _SAFE.match(cell_key) else urllib.parse.quote(cell_key, safe="")
    if name[:1] in ("_", "."):
        name = "%{:02X}".format(ord(name[0])) + name[1:]
    return name + ".parquet"


def cell_key_from_file(name: str) -> str:
    return urllib.parse.unquote(storage.basename(name)[: -len(".parquet")])


def resolve_type(column: str, types: list[pa.DataType]) -> pa.DataType:
    """One Arrow type for a column seen with ``types`` in different inputs (ints stay ints if all are)."""
    if column == ID_COLUMN:
        return pa.string()
    if column in FLOAT_COLUMNS:
        return pa.float64()
    real = [t for t in types if not pa.types.is_null(t)]
    if column in INTEGER_COLUMNS:
        return pa.int64() if all(pa.types.is_integer(t) for t in real) else pa.float64()
    if not real:
        return pa.null()
    if all(pa.types.is_integer(t) for t in real):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in real):
        return pa.float64()
    if all(t == real[0] for t in real):
        return real[0]
    return pa.string()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast/extend ``table`` to ``schema`` (absent columns become nulls), in schema order, no metadata."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=pa.schema(list(schema)))


def write_cell_parquet(table: pa.Table, path: str | os.PathLike, row_group_size: int = DEFAULT_ROW_GROUP) -> None:
    pq.write_table(table.replace_schema_metadata(None), str(path), row_group_size=row_group_size,
                   **PARQUET_OPTIONS)


def progress_bar(iterable, total: int | None, desc: str, enabled: bool = True, unit: str = "cell"):
    """A tqdm bar on stderr (the stages' progress display)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)


class UnifiedWriter:
    """Collects cells (in pieces, any order) and writes the unified directory into a staging folder.

    Pieces are spilled to Arrow IPC files in a temporary folder, so memory holds one piece at a time
    while reading and one cell at a time while writing; the dataset-wide schema (e.g. ``cycle_number``
    float if any input has float cycles) is decided at :meth:`finish`, when all inputs have been seen.
    """

    def __init__(self, staging: str | os.PathLike, row_group_size: int = DEFAULT_ROW_GROUP,
                 progress: bool = True):
        self.staging = Path(staging)
        self.row_group_size = row_group_size
        self.progress = progress
        self._tmp = tempfile.TemporaryDirectory(prefix="msenc-spill-")
        self._log: list[tuple[str, Path, pa.Schema]] = []  # spilled parts, in order
        self._open: tuple[str, pa.Schema, ipc.RecordBatchFileWriter, Any] | None = None
        self._n_parts = 0

    # ------------------------------------------------------------------ input side
    def add(self, cell_key: str, piece: pa.Table) -> None:
        """Append rows of one cell (rows keep their order; pieces of a cell are concatenated in order)."""
        if piece.num_rows == 0:
            return
        piece = piece.replace_schema_metadata(None)
        if self._open is not None and (self._open[0] != cell_key or self._open[1] != piece.schema):
            self._close_open()
        if self._open is None:
            path = Path(self._tmp.name) / f"{self._n_parts:08d}.arrow"
            self._n_parts += 1
            sink = pa.OSFile(str(path), "wb")
            writer = ipc.new_file(sink, piece.schema)
            self._open = (cell_key, piece.schema, writer, sink)
            self._log.append((cell_key, path, piece.schema))
        self._open[2].write_table(piece)

    def add_rows(self, table: pa.Table) -> None:
        """Append a batch holding any cells: split into runs of equal ``cell_key`` (order kept)."""
        n = table.num_rows
        if n == 0:
            return
        import numpy as np
        import pyarrow.compute as pc

        keys = table.column(ID_COLUMN)
        change = np.ones(n, dtype=bool)
        if n > 1:
            change[1:] = ~np.asarray(pc.equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False),
                                     dtype=bool)
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], n)
        names = keys.take(pa.array(starts)).to_pylist()
        for s, e, k in zip(starts, ends, names):
            self.add(k, table.slice(int(s), int(e - s)))

    def _close_open(self) -> None:
        if self._open is not None:
            self._open[2].close()
            self._open[3].close()
            self._open = None

    def mark(self) -> int:
        """A point to :meth:`rollback` to (e.g. the start of an input file that may have to be re-read)."""
        self._close_open()
        return len(self._log)

    def rollback(self, mark: int) -> None:
        """Forget every piece added after :meth:`mark` returned ``mark``."""
        self._close_open()
        for _, path, _ in self._log[mark:]:
            path.unlink(missing_ok=True)
        del self._log[mark:]

    def _parts(self) -> dict[str, list[Path]]:
        parts: dict[str, list[Path]] = {}
        for cell, path, _ in self._log:
            parts.setdefault(cell, []).append(path)
        return parts

    @property
    def cells(self) -> list[str]:
        return list(self._parts())

    # ------------------------------------------------------------------ output side
    def schema(self) -> pa.Schema:
        """The dataset-wide schema: canonical columns first, one resolved type per column."""
        order: list[str] = []
        types: dict[str, list[pa.DataType]] = {}
        for _, _, schema in self._log:
            for f in schema:
                if f.name not in types:
                    order.append(f.name)
                types.setdefault(f.name, []).append(f.type)
        return pa.schema([pa.field(c, resolve_type(c, types[c])) for c in canonical_order(order)])

    def partial_columns(self) -> list[str]:
        """Columns that some pieces lack (they are filled with nulls there)."""
        seen: dict[str, int] = {}
        for _, _, schema in self._log:
            for name in schema.names:
                seen[name] = seen.get(name, 0) + 1
        return sorted(c for c, k in seen.items() if k < len(self._log))

    def finish(self, manifest: dict[str, Any], report: ValidationReport | None = None,
               write_csv: bool = False) -> dict[str, Any]:
        """Write every cell's Parquet (+ optional CSV) and the manifest; returns the manifest written."""
        self._close_open()
        all_parts = self._parts()
        if not all_parts:
            raise InputDataError("no rows to write: the input holds no data rows")
        schema = self.schema()
        partial = self.partial_columns()
        if report is not None and partial:
            report.add("column_filled_null", len(partial),
                       f"column(s) {sorted(partial)} absent from some inputs: filled with nulls there")
        self.staging.mkdir(parents=True, exist_ok=True)
        csv_path = self.staging / CSV_DIR / CSV_NAME if write_csv else None
        csv_writer = _CsvWriter(csv_path, schema) if csv_path else None
        cells_info = []
        names_seen: dict[str, str] = {}
        n_rows = 0
        try:
            for cell in progress_bar(all_parts, len(all_parts), "writing cells", self.progress):
                parts = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in all_parts[cell]]
                table = conform(parts[0], schema) if len(parts) == 1 else pa.concat_tables(
                    [conform(p, schema) for p in parts])
                fname = cell_file_name(cell)
                if fname in names_seen:
                    raise InputDataError(f"cell keys {names_seen[fname]!r} and {cell!r} map to the same file name")
                names_seen[fname] = cell
                write_cell_parquet(table, self.staging / fname, self.row_group_size)
                if csv_writer:
                    csv_writer.write(table)
                cells_info.append({"cell_key": cell, "file": fname, "rows": table.num_rows})
                n_rows += table.num_rows
                del parts, table
                for p in all_parts[cell]:
                    p.unlink(missing_ok=True)
        finally:
            if csv_writer:
                csv_writer.close()
        out = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **manifest,
            "n_cells": len(cells_info),
            "n_rows": n_rows,
            "columns": schema.names,
            "dtypes": {f.name: str(f.type) for f in schema},
            "csv": f"{CSV_DIR}/{CSV_NAME}" if write_csv else None,
            "warnings": [w.model_dump() for w in report.warnings] if report else [],
            "cells": cells_info,
        }
        (self.staging / MANIFEST_NAME).write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
        return out

    def close(self) -> None:
        self._close_open()
        self._tmp.cleanup()

    def __enter__(self) -> "UnifiedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CsvWriter:
    """The beep-data-utils unified CSV: pandas ``to_csv`` formatting (ints as ints, floats as repr, nulls empty)."""

    def __init__(self, path: Path, schema: pa.Schema):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.header = True

    def write(self, table: pa.Table) -> None:
        import pandas as pd

        mapping = {pa.int64(): pd.Int64Dtype()}
        for batch in table.to_batches(max_chunksize=500_000):
            df = batch.to_pandas(types_mapper=mapping.get)
            df.to_csv(self.fh, index=False, header=self.header, lineterminator="\n")
            self.header = False

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------------------------------------- reading
def read_manifest(uri: str) -> dict[str, Any] | None:
    path = storage.join(uri, MANIFEST_NAME)
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None


def unified_files(uri: str) -> list[str]:
    """The cell Parquet files of a unified directory (or ``[uri]`` for one file), sorted."""
    uri = str(uri)
    files = storage.list_files(uri, suffix=".parquet")
    if len(files) == 1 and files[0] == uri:
        return files
    base = uri.rstrip("/") + "/"
    out = []
    for f in files:
        rel = f[len(base):] if f.startswith(base) else storage.basename(f)
        if any(part[:1] in ("_", ".") for part in rel.split("/")):
            continue
        out.append(f)
    return out


def _read_parquet(uri: str, columns: list[str] | None) -> pa.Table:
    if storage.is_s3(uri):
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)
    return pq.read_table(uri, columns=columns)


def iter_unified_cells(uri: str, columns: list[str] | None = None,
                       cells: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """``(cell_key, table)`` for each cell file of a unified directory, in file-name order."""
    files = unified_files(uri)
    if not files:
        raise InputDataError(f"{uri}: no unified Parquet files found")
    wanted = set(cells) if cells is not None else None
    for f in files:
        key = cell_key_from_file(f)
        if wanted is not None and key not in wanted:
            continue
        cols = None if columns is None else list(dict.fromkeys([ID_COLUMN, *columns]))
        table = _read_parquet(f, cols)
        if table.num_rows and ID_COLUMN in table.column_names:
            key = table.column(ID_COLUMN)[0].as_py()
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        yield key, table


def read_unified_table(uri: str, columns: list[str] | None = None, cells: list[str] | None = None) -> pa.Table:
    """All (or some) cells of a unified directory (or one Parquet file) as one Arrow table."""
    tables = [t for _, t in iter_unified_cells(uri, columns, cells)]
    if not tables:
        raise InputDataError(f"{uri}: none of the requested cells {cells} found")
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def read_unified(uri: str, columns: list[str] | None = None, cells: list[str] | None = None):
    """A unified directory as a pandas DataFrame (int columns without nulls stay int64)."""
    return read_unified_table(uri, columns, cells).to_pandas()


__all__ = [
    "UnifiedWriter", "read_unified", "read_unified_table", "iter_unified_cells", "read_manifest",
    "unified_files", "cell_file_name", "cell_key_from_file", "write_cell_parquet", "resolve_type", "conform",
    "MANIFEST_NAME", "CSV_DIR", "CSV_NAME", "UNIFIED_COLUMNS",
]
