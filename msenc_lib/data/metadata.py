"""Per-cell metadata columns (:data:`~msenc_lib.data.schema.METADATA_COLUMNS`) and capacity normalisation.

The readers fill what their source knows; ingest's ``--metadata`` fills what a source leaves empty (e.g. the
nominal capacity of unified CSVs from elsewhere); ``--normalize-capacity`` divides both capacity columns by the
cell's nominal capacity so cells of different datasets compare (fraction of nominal instead of Ah).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msenc_lib.data.schema import CAPACITY_COLUMNS, ID_COLUMN, METADATA_COLUMNS, METADATA_FLOAT_COLUMNS
from msenc_lib.errors import ConfigError, InputDataError


def metadata_type(name: str) -> pa.DataType:
    return pa.float64() if name in METADATA_FLOAT_COLUMNS else pa.string()


def constant(value: Any, n_rows: int, typ: pa.DataType) -> pa.Array:
    """``n_rows`` copies of ``value`` (nulls for None), built without a Python list."""
    return pa.nulls(n_rows, typ) if value is None else pa.repeat(pa.scalar(value, typ), n_rows)


def metadata_arrays(n_rows: int, values: Mapping[str, Any]) -> dict[str, pa.Array]:
    """The metadata columns of one cell, constant over its rows; null where unknown."""
    return {name: constant(values.get(name), n_rows, metadata_type(name)) for name in METADATA_COLUMNS}


def check_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validated ``--metadata`` values: known names, numbers where numbers belong."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in METADATA_COLUMNS:
            raise ConfigError(f"metadata: unknown column {name!r} (choose from {METADATA_COLUMNS})")
        if name in METADATA_FLOAT_COLUMNS:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"metadata: {name} must be a number, got {value!r}") from None
        else:
            value = str(value)
        out[name] = value
    return out


def fill_defaults(table: pa.Table, defaults: Mapping[str, Any]) -> pa.Table:
    """Empty metadata values (or absent metadata columns) set from ``defaults``; present values are kept."""
    for name, value in defaults.items():
        scalar = pa.scalar(value, metadata_type(name))
        if name in table.column_names:
            col = table.column(name)
            if col.type != scalar.type:
                col = col.cast(scalar.type)
            table = table.set_column(table.column_names.index(name), name, pc.fill_null(col, scalar))
        else:
            table = table.append_column(pa.field(name, scalar.type), constant(value, table.num_rows, scalar.type))
    return table


def normalize_capacity(table: pa.Table, source: str) -> pa.Table:
    """Both capacity columns divided by ``nominal_capacity``; a cell without one is an error naming it."""
    if "nominal_capacity" in table.column_names:
        nominal = table.column("nominal_capacity").cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        nominal = np.full(table.num_rows, np.nan)
    bad = ~(np.isfinite(nominal) & (nominal > 0))
    if bad.any():
        cell = table.column(ID_COLUMN)[int(np.flatnonzero(bad)[0])].as_py()
        raise InputDataError(f"{source}: cell {cell!r} has no nominal capacity to normalise by: give it with "
                             "--metadata nominal_capacity=<Ah>, or leave out --normalize-capacity")
    for name in CAPACITY_COLUMNS:
        if name in table.column_names:
            values = pc.divide(table.column(name).cast(pa.float64()), pa.array(nominal))
            table = table.set_column(table.column_names.index(name), name, values)
    return table


__all__ = ["constant", "metadata_arrays", "metadata_type", "check_defaults", "fill_defaults", "normalize_capacity"]
