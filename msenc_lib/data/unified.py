"""The unified data directory: one ``<cell_key>.parquet`` per cell plus ``_manifest.json``.

Layout (:mod:`msenc_lib.layout`)::

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

import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from msenc_lib import layout, storage
from msenc_lib.data.schema import FLOAT_COLUMNS, ID_COLUMN, INTEGER_COLUMNS, canonical_order
from msenc_lib.data.spill import CellSpiller
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError
from msenc_lib.progress import progress_bar

FORMAT_VERSION = 1
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_size": 1 << 20,
}
DEFAULT_ROW_GROUP = 1 << 20


def unify_types(types: list[pa.DataType]) -> pa.DataType | None:
    """One Arrow type for a column seen with ``types`` in different inputs, or None when they do not mix:
    nulls defer to the others, integers stay int64 if every input has integers, integers mixed with floats
    become float64, strings of any width are string, equal types stay."""
    real = [t.value_type if pa.types.is_dictionary(t) else t for t in types if not pa.types.is_null(t)]
    if not real:
        return pa.null()
    if all(pa.types.is_integer(t) for t in real):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in real):
        return pa.float64()
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in real):
        return pa.string()
    if all(t == real[0] for t in real):
        return real[0]
    return None


def resolve_type(column: str, types: list[pa.DataType]) -> pa.DataType:
    """The unified table's type of a column seen with ``types``: the schema's for the unified columns
    (``cycle_number`` float64 if any input has float cycles), :func:`unify_types` else, text if they do not mix."""
    if column == ID_COLUMN:
        return pa.string()
    if column in FLOAT_COLUMNS:
        return pa.float64()
    if column in INTEGER_COLUMNS:
        real = [t for t in types if not pa.types.is_null(t)]
        return pa.int64() if all(pa.types.is_integer(t) for t in real) else pa.float64()
    return unify_types(types) or pa.string()


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


def write_unified_manifest(folder: str | os.PathLike, manifest: dict[str, Any], cells: list[dict[str, Any]],
                           schema: pa.Schema, warnings: list[Any], csv: bool = False) -> dict[str, Any]:
    """``_manifest.json`` of a unified directory: ``manifest`` (created_by, source) with the counts, columns,
    dtypes, warnings and ``cells`` (``{"cell_key", "file", "rows", ...}`` each). Returns what was written."""
    out = {
        "format": layout.UNIFIED_FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "n_cells": len(cells),
        "n_rows": sum(c["rows"] for c in cells),
        "columns": schema.names,
        "dtypes": {f.name: str(f.type) for f in schema},
        "csv": f"{layout.UNIFIED_CSV_DIR}/{layout.UNIFIED_CSV}" if csv else None,
        "warnings": [w.model_dump() for w in warnings],
        "cells": cells,
    }
    layout.write_json(Path(folder) / layout.UNIFIED_MANIFEST, out)
    return out


class UnifiedWriter:
    """Collects cells (in pieces, any order) and writes the unified directory into a staging folder.

    Pieces are spilled per cell (:class:`~msenc_lib.data.spill.CellSpiller`), so memory holds one piece at
    a time while reading and one cell at a time while writing; the dataset-wide schema (e.g.
    ``cycle_number`` float if any input has float cycles) is decided at :meth:`finish`, when all inputs
    have been seen.
    """

    def __init__(self, staging: str | os.PathLike, row_group_size: int = DEFAULT_ROW_GROUP,
                 progress: bool = True):
        self.staging = Path(staging)
        self.row_group_size = row_group_size
        self.progress = progress
        self.spiller = CellSpiller()

    # ------------------------------------------------------------------ input side
    def add(self, cell_key: str, piece: pa.Table) -> None:
        """Append rows of one cell (rows keep their order; pieces of a cell are concatenated in order)."""
        self.spiller.write(cell_key, piece)

    def add_rows(self, table: pa.Table) -> None:
        """Append a batch holding any cells (each cell's rows keep their order)."""
        self.spiller.write_rows(table, ID_COLUMN)

    def mark(self) -> int:
        """A point to :meth:`rollback` to (e.g. the start of an input file that may have to be re-read)."""
        return self.spiller.mark()

    def rollback(self, mark: int) -> None:
        """Forget every piece added after :meth:`mark` returned ``mark``."""
        self.spiller.rollback(mark)

    @property
    def cells(self) -> list[str]:
        return list(self.spiller.by_cell())

    # ------------------------------------------------------------------ output side
    def schema(self) -> pa.Schema:
        """The dataset-wide schema: canonical columns first, one resolved type per column."""
        order: list[str] = []
        types: dict[str, list[pa.DataType]] = {}
        for part in self.spiller.parts:
            for f in part.schema:
                if f.name not in types:
                    order.append(f.name)
                types.setdefault(f.name, []).append(f.type)
        return pa.schema([pa.field(c, resolve_type(c, types[c])) for c in canonical_order(order)])

    def partial_columns(self) -> list[str]:
        """Columns that some pieces lack (they are filled with nulls there)."""
        parts = self.spiller.parts
        seen: dict[str, int] = {}
        for part in parts:
            for name in part.schema.names:
                seen[name] = seen.get(name, 0) + 1
        return sorted(c for c, k in seen.items() if k < len(parts))

    def finish(self, manifest: dict[str, Any], report: ValidationReport | None = None,
               write_csv: bool = False) -> dict[str, Any]:
        """Write every cell's Parquet (+ optional CSV) and the manifest; returns the manifest written."""
        self.spiller.close()
        all_parts = self.spiller.by_cell()
        if not all_parts:
            raise InputDataError("no rows to write: the input holds no data rows")
        schema = self.schema()
        partial = self.partial_columns()
        if report is not None and partial:
            report.add("column_filled_null", len(partial),
                       f"column(s) {sorted(partial)} absent from some inputs: filled with nulls there")
        self.staging.mkdir(parents=True, exist_ok=True)
        csv_path = self.staging / layout.UNIFIED_CSV_DIR / layout.UNIFIED_CSV if write_csv else None
        csv_writer = _CsvWriter(csv_path) if csv_path else None
        cells_info = []
        names_seen: dict[str, str] = {}
        try:
            for cell in progress_bar(all_parts, len(all_parts), "writing cells", self.progress):
                table = pa.concat_tables([conform(part.read(), schema) for part in all_parts[cell]])
                fname = layout.cell_file_name(cell)
                if fname in names_seen:
                    raise InputDataError(f"cell keys {names_seen[fname]!r} and {cell!r} map to the same file name")
                names_seen[fname] = cell
                write_cell_parquet(table, self.staging / fname, self.row_group_size)
                if csv_writer:
                    csv_writer.write(table)
                cells_info.append({"cell_key": cell, "file": fname, "rows": table.num_rows})
                del table
                for part in all_parts[cell]:
                    part.path.unlink(missing_ok=True)
        finally:
            if csv_writer:
                csv_writer.close()
        return write_unified_manifest(self.staging, manifest, cells_info, schema,
                                      report.warnings if report else [], csv=write_csv)

    def close(self) -> None:
        self.spiller.cleanup()

    def __enter__(self) -> "UnifiedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CsvWriter:
    """The beep-data-utils unified CSV: pandas ``to_csv`` formatting (ints as ints, floats as repr, nulls empty)."""

    def __init__(self, path: Path):
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
def iter_unified_cells(uri: str, columns: list[str] | None = None,
                       cells: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """``(cell_key, table)`` for each cell file of a unified directory, in file-name order."""
    files = layout.unified_files(uri)
    if not files:
        raise InputDataError(f"{uri}: no unified Parquet files found")
    wanted = set(cells) if cells is not None else None
    for f in files:
        key = layout.cell_key_from_file(f)
        if wanted is not None and key not in wanted:
            continue
        cols = None if columns is None else list(dict.fromkeys([ID_COLUMN, *columns]))
        table = storage.read_parquet(f, cols)
        if table.num_rows and ID_COLUMN in table.column_names:
            key = table.column(ID_COLUMN)[0].as_py()
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        yield key, table


def read_unified(uri: str, columns: list[str] | None = None, cells: list[str] | None = None):
    """All (or some) cells of a unified directory (or one Parquet file) as a pandas DataFrame (int columns
    without nulls stay int64)."""
    tables = [t for _, t in iter_unified_cells(uri, columns, cells)]
    if not tables:
        raise InputDataError(f"{uri}: none of the requested cells {cells} found")
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table.to_pandas()
