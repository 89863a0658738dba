"""Cycler exports no parser knows, read through a column-mapping file (YAML) -> unified rows.

A mapping says which source column becomes which unified column, in which unit, and where cell and cycle
come from. An Arbin MITS Pro CSV export, for example::

    format: msenc-column-mapping        # marks the document
    cell_key: file                      # the file name without extension; or {column: Barcode}, {value: cell-7}
    columns:                            # source column -> unified column (or {to, unit, scale, offset})
      Cycle_Index: cycle_number
      Test_Time(s): {to: time, unit: s}
      Current(A): {to: current, unit: A}
      Voltage(V): voltage
      Charge_Capacity(Ah): {to: charge_capacity, unit: Ah}
      Discharge_Capacity(Ah): {to: discharge_capacity, unit: Ah}
      Aux_Temperature_1(C): {to: temperature, unit: degC}
      Internal_Resistance(Ohm): {to: internal_resistance, unit: ohm}
    step_column: Step_Index             # optional: kept as 'step_index'; cycles from it when no cycle column
    current_sign: charge_positive       # or discharge_positive (the sign is flipped then)
    charge_policy: 3.6C(80%)-3.6C       # optional: the charge_policy_Q1..Q4 columns
    metadata: {dataset: my-lab, chemistry: LFP, nominal_capacity: 1.1, form_factor: cylindrical_18650,
               ambient_temperature: 30}
    csv: {delimiter: ",", decimal: ".", skip_rows: 0, encoding: utf-8}

Values are converted to the unified units (time s, current A, voltage V, capacities Ah, temperature °C,
resistance ohm): ``value * unit factor * scale + offset``. Without a cycle column, ``step_column`` gives the
cycles: a new cycle starts whenever the step index goes down (the schedule starts over). Unmapped unified
columns are empty (null). ``msenc ingest --mapping FILE``, or a file named ``msenc-mapping.yaml`` among the
inputs, applies it to every CSV-like input whose header has the mapped columns.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from msenc_lib.data.metadata import constant, metadata_arrays
from msenc_lib.data.policy import parse_charge_policy
from msenc_lib.data.schema import IR_COLUMN, METADATA_COLUMNS, UNIFIED_COLUMNS
from msenc_lib.errors import ConfigError, InputDataError

MAPPING_FORMAT = "msenc-column-mapping"
MAPPING_FILE = "msenc-mapping.yaml"
STEP_COLUMN = "step_index"
# target -> (unified unit, {unit name: factor to the unified unit})
UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "time": ("s", {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}),
    "current": ("A", {"A": 1.0, "mA": 1e-3, "uA": 1e-6}),
    "voltage": ("V", {"V": 1.0, "mV": 1e-3}),
    "charge_capacity": ("Ah", {"Ah": 1.0, "mAh": 1e-3, "As": 1 / 3600.0, "C": 1 / 3600.0}),
    "discharge_capacity": ("Ah", {"Ah": 1.0, "mAh": 1e-3, "As": 1 / 3600.0, "C": 1 / 3600.0}),
    "temperature": ("degC", {"degC": 1.0, "C": 1.0, "K": 1.0}),
    IR_COLUMN: ("ohm", {"ohm": 1.0, "mohm": 1e-3}),
    "cycle_number": ("", {"": 1.0}),
    "cycle_life": ("", {"": 1.0}),
    "discharge_dQdV": ("Ah/V", {"Ah/V": 1.0, "mAh/V": 1e-3}),
}
KELVIN_OFFSET = -273.15
TARGETS = list(UNITS)
NEEDED = ["time", "current", "voltage", "charge_capacity", "discharge_capacity"]


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(description="unified column: " + ", ".join(TARGETS))
    unit: str | None = Field(None, description="the source's unit (default: the unified one)")
    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="after")
    def _known(self) -> "ColumnSpec":
        if self.to not in UNITS:
            raise ValueError(f"unknown target column {self.to!r} (choose from {TARGETS})")
        unified, units = UNITS[self.to]
        if self.unit is not None and self.unit not in units:
            raise ValueError(f"unit {self.unit!r} of {self.to!r}: choose from {sorted(units)} (converted to "
                             f"{unified or 'a plain number'})")
        return self

    def convert(self, values: np.ndarray) -> np.ndarray:
        unified, units = UNITS[self.to]
        unit = self.unit if self.unit is not None else unified
        out = values * units[unit] * self.scale + self.offset
        return out + KELVIN_OFFSET if unit == "K" else out


class CsvOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delimiter: str = ","
    decimal: str = "."
    skip_rows: int = Field(0, ge=0, description="lines before the header line")
    encoding: str = "utf-8"


class ColumnMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["msenc-column-mapping"] = MAPPING_FORMAT
    name: str | None = None
    cell_key: str | dict[str, str] = "file"
    columns: dict[str, ColumnSpec]
    step_column: str | None = None
    current_sign: Literal["charge_positive", "discharge_positive"] = "charge_positive"
    charge_policy: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    csv: CsvOptions = Field(default_factory=CsvOptions)

    @field_validator("columns", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ({"to": t} if isinstance(t, str) else t) for k, t in v.items()}
        return v

    @field_validator("cell_key")
    @classmethod
    def _cell_key(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "file":
            raise ValueError("cell_key is 'file', {column: NAME} or {value: ID}")
        if isinstance(v, dict) and (len(v) != 1 or next(iter(v)) not in ("column", "value")):
            raise ValueError("cell_key is 'file', {column: NAME} or {value: ID}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in v if k not in METADATA_COLUMNS]
        if unknown:
            raise ValueError(f"unknown metadata {unknown} (choose from {METADATA_COLUMNS})")
        return v

    @model_validator(mode="after")
    def _complete(self) -> "ColumnMapping":
        targets = [c.to for c in self.columns.values()]
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise ValueError(f"several source columns map to {dupes}")
        missing = [t for t in NEEDED if t not in targets]
        if "cycle_number" not in targets and not self.step_column:
            missing.insert(0, "cycle_number (or a step_column)")
        if missing:
            raise ValueError(f"no source column for {missing}")
        if self.charge_policy is not None:
            parse_charge_policy(self.charge_policy)
        return self

    def source_columns(self) -> list[str]:
        cols = list(self.columns)
        if self.step_column:
            cols.append(self.step_column)
        if isinstance(self.cell_key, dict) and "column" in self.cell_key:
            cols.append(self.cell_key["column"])
        return list(dict.fromkeys(cols))

    def matches(self, header: list[str]) -> bool:
        return all(c in header for c in self.source_columns())


def load_mapping(text: str, source: str) -> ColumnMapping:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a column mapping is a YAML mapping (see msenc_lib/data/mapping.py)")
    try:
        return ColumnMapping.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'mapping'}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors())
        raise ConfigError(f"{source}: invalid column mapping: {problems}") from None
    except InputDataError as e:
        raise ConfigError(f"{source}: invalid column mapping: {e}") from None


def read_header(path: str | os.PathLike, mapping: ColumnMapping, source: str) -> list[str]:
    reader = _open(path, mapping, source, block_size=1 << 16)
    names = list(reader.schema.names)
    reader.close()
    return names


def _open(path, mapping: ColumnMapping, source: str, block_size: int, include: list[str] | None = None):
    opts = mapping.csv
    try:
        return pacsv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(skip_rows=opts.skip_rows, encoding=opts.encoding, block_size=block_size),
            parse_options=pacsv.ParseOptions(delimiter=opts.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=include, null_values=[""],
                                                 column_types={c: pa.string() for c in include or []},
                                                 strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError, LookupError) as e:
        raise InputDataError(f"{source}: cannot read as a CSV with the mapping's options: {e}") from None


class MappedReader:
    """Reads one CSV with a :class:`ColumnMapping`, batch by batch, into unified tables."""

    def __init__(self, mapping: ColumnMapping, source: str):
        self.mapping = mapping
        self.source = source
        stem = source.rsplit("/", 1)[-1]
        for ext in (".gz", ".bz2", ".zst"):
            stem = stem.removesuffix(ext)
        self.file_key = stem.rsplit(".", 1)[0] if "." in stem else stem
        self.quartiles = (parse_charge_policy(mapping.charge_policy) if mapping.charge_policy
                          else [None] * 4)
        self._last_step: float | None = None
        self._cycle = 0

    def _numbers(self, col: pa.ChunkedArray, name: str, offset: int) -> np.ndarray:
        text = pc.utf8_trim_whitespace(col)
        if self.mapping.csv.decimal != ".":
            text = pc.replace_substring(text, self.mapping.csv.decimal, ".")
        try:
            return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            values = text.to_pylist()
            for i, v in enumerate(values):
                try:
                    float(v) if v is not None else None
                except ValueError:
                    raise InputDataError(f"{self.source}: row {offset + i + 1} (1-based data row of the file), "
                                         f"column {name!r}: non-numeric value {v!r}") from None
            raise

    def _cycles_from_steps(self, steps: np.ndarray) -> np.ndarray:
        out = np.empty(steps.size)
        for i, s in enumerate(steps):
            if self._last_step is not None and np.isfinite(s) and s < self._last_step:
                self._cycle += 1
            if np.isfinite(s):
                self._last_step = s
            out[i] = self._cycle
        return out

    def convert(self, batch: pa.RecordBatch, offset: int) -> pa.Table:
        m = self.mapping
        n = batch.num_rows
        values: dict[str, np.ndarray] = {}
        for src, spec in m.columns.items():
            values[spec.to] = spec.convert(self._numbers(batch.column(src), src, offset))
        step = self._numbers(batch.column(m.step_column), m.step_column, offset) if m.step_column else None
        if "cycle_number" not in values:
            values["cycle_number"] = self._cycles_from_steps(step)
        if m.current_sign == "discharge_positive":
            values["current"] = -values["current"]
        if isinstance(m.cell_key, dict) and "column" in m.cell_key:
            keys = pc.utf8_trim_whitespace(batch.column(m.cell_key["column"]).cast(pa.string()))
        else:
            key = m.cell_key["value"] if isinstance(m.cell_key, dict) else self.file_key
            keys = constant(key, n, pa.string())

        def col(name: str, integer: bool = False) -> pa.Array:
            if name not in values:
                return pa.nulls(n, pa.int64() if integer else pa.float64())
            v = values[name]
            finite = np.isfinite(v)
            if integer and np.all(v[finite] == np.round(v[finite])):
                return pa.array(np.where(finite, v, 0).astype(np.int64), mask=~finite)
            return pa.array(v, mask=np.isnan(v) if name not in ("time", "current", "voltage", "charge_capacity",
                                                                "discharge_capacity") else None)

        data = {"cell_key": keys, "cycle_number": col("cycle_number", integer=True), "time": col("time"),
                "cycle_life": col("cycle_life", integer=True), "discharge_policy": pa.nulls(n, pa.int64())}
        for name in ("current", "voltage", "charge_capacity", "discharge_capacity", "temperature"):
            data[name] = col(name)
        data["batch_number"] = pa.nulls(n, pa.int64())
        data["discharge_dQdV"] = col("discharge_dQdV")
        for i, q in enumerate(self.quartiles, 1):
            data[f"charge_policy_Q{i}"] = constant(q, n, pa.float64())
        assert list(data) == UNIFIED_COLUMNS
        data.update(metadata_arrays(n, m.metadata))
        if IR_COLUMN in values:
            data[IR_COLUMN] = col(IR_COLUMN)
        if step is not None:
            data[STEP_COLUMN] = col_step = pa.array(step, mask=np.isnan(step))
            if np.all(step[np.isfinite(step)] == np.round(step[np.isfinite(step)])):
                data[STEP_COLUMN] = col_step.cast(pa.int64())
        return pa.table(data)

    def read(self, path: str | os.PathLike, block_size: int = 8 << 20):
        """Unified tables of the file, in row order (batches of about ``block_size`` bytes of CSV)."""
        header = read_header(path, self.mapping, self.source)
        missing = [c for c in self.mapping.source_columns() if c not in header]
        if missing:
            raise InputDataError(f"{self.source}: column(s) {missing} named by the column mapping are not in the "
                                 f"file (header: {header})")
        offset = 0
        reader = _open(path, self.mapping, self.source, block_size, include=self.mapping.source_columns())
        try:
            for batch in reader:
                yield self.convert(batch, offset)
                offset += batch.num_rows
        except pa.ArrowInvalid as e:
            raise InputDataError(f"{self.source}: malformed or truncated CSV after row {offset}: {e}") from None


__all__ = ["ColumnMapping", "ColumnSpec", "MappedReader", "load_mapping", "read_header", "MAPPING_FILE",
           "MAPPING_FORMAT", "STEP_COLUMN"]
