"""Validation of the unified table: fail on what makes data unusable, repair what is safely repairable (and
count it, :mod:`msenc_lib.data.repair`), report (never drop silently) what real files hold.

Errors (:class:`~msenc_lib.errors.InputDataError`) name the source file, the FIRST bad row, the cell and
the column. "row N" is the N-th data row of the source, counted from 1: for CSV the N-th record after the
header line (not the line number: quoted values may span lines), for Parquet the N-th row of the file, for
Severson batch files the N-th row of that cell in cycle order.

* missing required column; duplicate column names;
* a non-numeric value in a numeric column (quoted in the message);
* an empty ``cell_key``.

Repaired and counted per cell and cycle (``strict`` turns each into an error naming its row):

* a row with an empty / NaN / inf value in a required numeric column is dropped (``allow_nan`` keeps NaN/inf
  rows as they are, with a warning); ``temperature`` may be empty where the source did not measure it (kept
  as null, counted);
* ``time`` going backwards inside one (cell, cycle): the rest of the cycle is re-based to continue from the
  previous row.

Warnings (:class:`ValidationWarning`, with counts; the rows are kept as they are): cycle-0 all-zero rest
rows, repeated timestamps (also counted per cell and cycle), empty ``discharge_dQdV``, float
``cycle_number``, absent optional columns, extra columns (kept after the canonical ones), numbers stored as
text. Extra text columns become numbers only where that loses nothing: identifiers such as 20-digit codes or
numbers with leading zeros stay text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from msenc_lib.data.repair import DUPLICATE_TIMESTAMPS, NON_FINITE, TIME_RESET, RepairLog
from msenc_lib.data.schema import (
    CYCLE_COLUMN,
    ID_COLUMN,
    INTEGER_COLUMNS,
    METADATA_COLUMNS,
    METADATA_FLOAT_COLUMNS,
    METADATA_TEXT_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TIME_COLUMN,
    UNIFIED_COLUMNS,
    UNMEASURED_OK,
    canonical_order,
)
from msenc_lib.errors import InputDataError

# Warning kinds.
CYCLE0_ZERO_ROWS = "cycle0_zero_rows"
REPEATED_TIMESTAMPS = "repeated_timestamps"
EMPTY_DQDV = "empty_discharge_dQdV"
FLOAT_CYCLE_NUMBER = "float_cycle_number"
MISSING_OPTIONAL = "missing_optional_columns"
EXTRA_COLUMNS = "extra_columns"
NAN_VALUES = "nan_values"
NUMERIC_TEXT = "numeric_as_text"
UNMEASURED = "unmeasured_values"
DROPPED_ROWS = "dropped_rows"
REBASED_TIME = "rebased_time"

ROW_MEANING = "1-based data row of the file"


class ValidationWarning(BaseModel):
    kind: str = Field(description="warning kind, e.g. 'repeated_timestamps'")
    count: int = Field(description="how many rows (or, for column warnings, sources) it concerns")
    message: str = Field(description="what was found and what was done (always: kept)")


class ValidationReport(BaseModel):
    source: str
    n_rows: int = 0
    n_cells: int = 0
    warnings: list[ValidationWarning] = Field(default_factory=list)

    def add(self, kind: str, count: int, message: str) -> None:
        if count <= 0:
            return
        for w in self.warnings:
            if w.kind == kind and w.message == message:
                w.count += count
                return
        self.warnings.append(ValidationWarning(kind=kind, count=count, message=message))

    def count(self, kind: str) -> int:
        return sum(w.count for w in self.warnings if w.kind == kind)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.warnings:
            out[w.kind] = out.get(w.kind, 0) + w.count
        return out

    def merge(self, other: "ValidationReport") -> None:
        """Add another report's rows and warnings (cells are counted by the caller; see ``n_cells``)."""
        self.n_rows += other.n_rows
        for w in other.warnings:
            self.add(w.kind, w.count, w.message)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


_NAN_TEXT = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
# Text of an extra column becomes int64 / float64 only when no value changes: no leading zeros, no integer
# literal beyond what the type holds exactly (identifiers such as 20-digit policy codes stay text).
_INT_TEXT = r"^[+-]?(0|[1-9][0-9]{0,17})$"
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_LOSSY_FLOAT_TEXT = r"^[+-]?(0[0-9]|[0-9]{16,}(\.0*)?$)"


def lossless_numbers(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A text column as int64 or float64 when every value converts without change, else as it is."""
    text = pc.utf8_trim_whitespace(col)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    valid = pc.drop_null(text)
    if len(valid) == 0:
        return col
    if pc.all(pc.match_substring_regex(valid, _INT_TEXT)).as_py():
        return pc.cast(text, pa.int64())
    floats = pc.match_substring_regex(valid, _FLOAT_TEXT)
    lossy = pc.match_substring_regex(valid, _LOSSY_FLOAT_TEXT)
    if pc.all(pc.and_(floats, pc.invert(lossy))).as_py():
        return pc.cast(text, pa.float64())
    return col


class UnifiedValidator:
    """Validates a unified table fed in batches (streaming); keeps the state needed across batches.

    ``check_columns`` once, then ``validate_batch`` for each batch in source order. Each call returns the
    batch normalised and repaired: ``cell_key`` as string, numbers stored as text converted, columns in
    canonical order, rows with unusable values dropped, time resets re-based (:attr:`repairs` counts them).
    ``strict``: every repair is an error instead.
    """

    def __init__(self, source: str, allow_nan: bool = False, row_meaning: str = ROW_MEANING,
                 strict: bool = False):
        self.source = source
        self.allow_nan = allow_nan
        self.strict = strict
        self.row_meaning = row_meaning
        self.report = ValidationReport(source=source)
        self.repairs = RepairLog()
        self._cells: set[str] = set()
        # (cell, cycle) -> (last raw time, offset added to the cycle's later times)
        self._last_time: dict[tuple[str, float], tuple[float, float]] = {}
        self._columns: list[str] | None = None

    # ------------------------------------------------------------------ helpers
    def _fail(self, row: int, cell: Any, column: str, what: str) -> InputDataError:
        where = f"row {row} ({self.row_meaning})"
        cell_txt = f", cell {cell!r}" if cell is not None else ""
        return InputDataError(f"{self.source}: {where}{cell_txt}, column {column!r}: {what}")

    @staticmethod
    def _cell_at(batch: pa.Table, i: int) -> Any:
        if ID_COLUMN not in batch.column_names:
            return None
        return batch.column(ID_COLUMN)[i].as_py()

    # ------------------------------------------------------------------ columns
    def check_columns(self, names: list[str]) -> list[str]:
        """Fail on missing required / duplicate columns; warn on absent optional and extra columns."""
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputDataError(f"{self.source}: duplicate column(s) {dupes}")
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InputDataError(
                f"{self.source}: required column(s) {missing} missing "
                f"(file has {names}; required: {REQUIRED_COLUMNS})"
            )
        absent = [c for c in OPTIONAL_COLUMNS if c not in names]
        if absent:
            self.report.add(MISSING_OPTIONAL, 1, f"optional column(s) {absent} absent (left absent)")
        extra = [c for c in names if c not in UNIFIED_COLUMNS and c not in METADATA_COLUMNS]
        if extra:
            self.report.add(EXTRA_COLUMNS, 1, f"extra column(s) {extra} kept after the canonical columns")
        self._columns = canonical_order(list(names))
        return self._columns

    # ------------------------------------------------------------------ values
    def _numeric(self, batch: pa.Table, name: str, offset: int) -> pa.ChunkedArray:
        col = batch.column(name)
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return col
        if pa.types.is_null(t):
            return col.cast(pa.float64() if name not in INTEGER_COLUMNS else pa.int64())
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
            t = col.type
        if not _is_text(t):  # bool, date, binary...: no value of it is a number
            nonnull = np.flatnonzero(~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool))
            if nonnull.size == 0:
                return pa.nulls(len(col), pa.float64() if name not in INTEGER_COLUMNS else pa.int64())
            i = int(nonnull[0])
            raise self._fail(offset + i + 1, self._cell_at(batch, i), name,
                             f"non-numeric value {col[i].as_py()!r} (type {t}) in a numeric column")
        text = col.to_numpy(zero_copy_only=False)
        valid = np.array([v is not None and str(v).strip() != "" for v in text], dtype=bool)
        stripped = np.where(valid, text, "0")
        parsed = np.full(len(text), np.nan)
        bad = np.zeros(len(text), dtype=bool)
        as_int = name in INTEGER_COLUMNS
        for i in np.flatnonzero(valid):
            s = str(stripped[i]).strip()
            try:
                parsed[i] = float(s)
                if as_int and not float(s).is_integer():
                    as_int = False
            except ValueError:
                bad[i] = True
            if s.lower() in _NAN_TEXT:
                as_int = False
        first_bad = _first(bad)
        if first_bad is not None:
            raise self._fail(offset + first_bad + 1, self._cell_at(batch, first_bad), name,
                             f"non-numeric value {str(text[first_bad])!r} in a numeric column")
        self.report.add(NUMERIC_TEXT, int(valid.sum()),
                        f"numbers stored as text in column {name!r} converted to numbers")
        arr = pa.array(parsed, mask=~valid)
        return pa.chunked_array([arr.cast(pa.int64()) if as_int else arr])

    def _extra(self, batch: pa.Table, name: str, offset: int) -> pa.ChunkedArray:
        """Metadata columns get their type; other extra text columns become numbers where nothing is lost."""
        col = batch.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if name in METADATA_TEXT_COLUMNS:
            return col if pa.types.is_string(col.type) else col.cast(pa.string())
        if name in METADATA_FLOAT_COLUMNS:
            return self._numeric(batch.set_column(batch.column_names.index(name), name, col), name,
                                 offset).cast(pa.float64())
        if _is_text(col.type):
            return lossless_numbers(col)
        return col

    def _unusable_rows(self, cols: dict[str, pa.ChunkedArray], key: pa.ChunkedArray, offset: int) -> np.ndarray:
        """Rows with an empty / NaN / inf value in a required numeric column (an error when strict); empty
        ``temperature`` values are kept as null (NaN there becomes null)."""
        n = len(key)
        drop = np.zeros(n, dtype=bool)
        for name in REQUIRED_COLUMNS:
            if name == ID_COLUMN or name not in cols:
                continue
            col = cols[name]
            nulls = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
            nonfinite = np.zeros(n, dtype=bool)
            if pa.types.is_floating(col.type):
                values = col.to_numpy()
                nonfinite = ~np.isfinite(values) & ~nulls
            if name in UNMEASURED_OK:
                missing = nulls | nonfinite
                if missing.any():
                    self.report.add(UNMEASURED, int(missing.sum()),
                                    f"empty or non-finite {name!r} values kept as null (not measured)")
                    if nonfinite.any():
                        cols[name] = pa.chunked_array([pa.array(col.to_numpy(), mask=missing)])
                continue
            if self.allow_nan and nonfinite.any():
                self.report.add(NAN_VALUES, int(nonfinite.sum()),
                                f"NaN/inf values in required column {name!r} kept (allow_nan)")
                nonfinite[:] = False
            bad = nulls | nonfinite
            i = _first(bad)
            if i is None:
                continue
            if self.strict:
                what = ("empty value in a required numeric column" if nulls[i] else
                        f"value {float(col[i].as_py())!r} (NaN/inf) in a required numeric column")
                raise self._fail(offset + i + 1, key[i].as_py(), name, what + " (strict: not dropped)")
            drop |= bad
        return drop

    def validate_batch(self, batch: pa.Table | pa.RecordBatch, row_offset: int = 0) -> pa.Table:
        """Check one batch (rows ``row_offset+1 ...`` of the source); return it normalised and repaired."""
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if self._columns is None:
            self.check_columns(batch.column_names)
        cols: dict[str, pa.ChunkedArray] = {}

        # cell_key: string, never empty.
        key = batch.column(ID_COLUMN)
        if pa.types.is_dictionary(key.type):
            key = key.cast(key.type.value_type)
        if key.type != pa.string():  # ints, large_string, string_view...
            key = key.cast(pa.string())
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(key), ""), True)
        empty = np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
        i = _first(empty)
        if i is not None:
            raise self._fail(row_offset + i + 1, None, ID_COLUMN, "empty cell_key")
        cols[ID_COLUMN] = key
        batch = batch.set_column(batch.column_names.index(ID_COLUMN), ID_COLUMN, key)

        for name in batch.column_names:
            if name == ID_COLUMN:
                continue
            cols[name] = (self._numeric(batch, name, row_offset) if name in NUMERIC_COLUMNS
                          else self._extra(batch, name, row_offset))
        drop = self._unusable_rows(cols, key, row_offset)
        table = pa.table({c: cols[c] for c in self._columns})
        if drop.any():
            cycles = table.column(CYCLE_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)
            dropped = np.flatnonzero(drop)
            self.repairs.add_rows(NON_FINITE, key.take(pa.array(dropped)).to_pylist(), cycles[dropped])
            self.report.add(DROPPED_ROWS, int(drop.sum()),
                            "rows with an empty, NaN or inf value in a required column dropped (see repairs)")
            table = table.filter(pa.array(~drop))
            key = table.column(ID_COLUMN)
        n = table.num_rows

        # Row-level facts.
        cycle = table.column(CYCLE_COLUMN)
        if pa.types.is_floating(cycle.type):
            self.report.add(FLOAT_CYCLE_NUMBER, n, "cycle_number stored as float (kept as float)")
        if "discharge_dQdV" in self._columns:
            dq = table.column("discharge_dQdV")
            n_empty = dq.null_count
            if pa.types.is_floating(dq.type):
                n_empty += int(pc.sum(pc.is_nan(dq)).as_py() or 0)
            self.report.add(EMPTY_DQDV, n_empty,
                            "empty discharge_dQdV (past the source's dQdV array) kept as it is")
        table = self._check_time(table, row_offset)
        self._cells.update(pc.unique(key).to_pylist())
        self.report.n_rows += n
        self.report.n_cells = len(self._cells)
        return table

    def _check_time(self, table: pa.Table, offset: int) -> pa.Table:
        """Count repeated timestamps; re-base time resets inside a (cell, cycle) (strict: fail on them)."""
        n = table.num_rows
        if n == 0:
            return table
        key = table.column(ID_COLUMN)
        cyc = table.column(CYCLE_COLUMN).to_numpy().astype(np.float64)
        time = table.column(TIME_COLUMN).to_numpy().astype(np.float64)
        cur = table.column("current").to_numpy().astype(np.float64)
        volt = table.column("voltage").to_numpy().astype(np.float64)
        consecutive = np.zeros(n, dtype=bool)
        if n > 1:
            same_key = pc.equal(key.slice(1), key.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            consecutive[1:] = np.asarray(same_key, dtype=bool) & (cyc[1:] == cyc[:-1])
        same = consecutive.copy()
        prev = np.empty(n)
        prev[1:] = time[:-1]
        prev[0] = np.nan
        # Runs of one (cell, cycle); a run may continue one seen before (previous batch or earlier in the file).
        starts = np.flatnonzero(~consecutive)
        keys = key.take(pa.array(starts)).to_pylist()
        base = np.zeros(starts.size)
        for r, (s, k) in enumerate(zip(starts, keys)):
            last = self._last_time.get((k, cyc[s]))
            if last is not None:
                prev[s], base[r] = last
                same[s] = True
        backwards = same & (time < prev)
        i = _first(backwards)
        if i is not None and self.strict:
            raise self._fail(offset + i + 1, key[i].as_py(), TIME_COLUMN,
                             f"time goes backwards inside cycle {cyc[i]:g} "
                             f"({float(time[i])!r} after {float(prev[i])!r}; strict: not re-based)")
        run = np.cumsum(~consecutive) - 1
        shift = base[run]
        if i is not None:
            # From a reset on, the cycle continues from the previous row's (re-based) time.
            delta = np.where(backwards, prev - time, 0.0)
            cum = np.cumsum(delta)
            shift = shift + cum - (cum[starts] - delta[starts])[run]
            rows = np.flatnonzero(backwards)
            self.repairs.add_rows(TIME_RESET, key.take(pa.array(rows)).to_pylist(), cyc[rows])
            self.report.add(REBASED_TIME, int(rows.size), "time resets inside a cycle re-based to continue from "
                            "the previous row (see repairs)")
            table = table.set_column(table.column_names.index(TIME_COLUMN), TIME_COLUMN,
                                     pa.array(time + shift, pa.float64()))
        zero_rest = (cyc == 0) & (cur == 0) & (volt == 0)
        self.report.add(CYCLE0_ZERO_ROWS, int(zero_rest.sum()),
                        "cycle-0 all-zero rest rows (current 0, voltage 0) kept")
        repeated = same & (time == prev) & ~zero_rest
        if repeated.any():
            rows = np.flatnonzero(repeated)
            self.repairs.add_rows(DUPLICATE_TIMESTAMPS, key.take(pa.array(rows)).to_pylist(), cyc[rows])
            self.report.add(REPEATED_TIMESTAMPS, int(rows.size),
                            "rows repeating the previous row's timestamp within a cycle kept")
        ends = np.append(starts[1:] - 1, n - 1)
        end_keys = key.take(pa.array(ends)).to_pylist()
        for r, (e, k) in enumerate(zip(ends, end_keys)):
            self._last_time[(k, cyc[e])] = (time[e], shift[e])
        return table


__all__ = ["ValidationWarning", "ValidationReport", "UnifiedValidator", "lossless_numbers"]
