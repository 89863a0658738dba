"""Reading the evaluation inputs: split config, embeddings table, and what is needed of the unified data.

Every problem is an :class:`InputDataError` naming the file, cell/cycle and field.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from msenc_lib import layout, storage
from msenc_lib.data.features import CellCycles
from msenc_lib.data.schema import IR_COLUMN
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.progress import progress_bar

_VAL_RX = re.compile(rf"^{layout.VALUE_PREFIX}(\d+)$")
# Unified columns the Severson features read (msenc_lib.data.features); IR is optional.
SEVERSON_COLUMNS = ["cell_key", "cycle_number", "time", "current", "voltage", "discharge_capacity", "temperature"]


# ------------------------------------------------------------------------------------------------- split
@dataclass
class Split:
    """Subset name -> cell keys, in the config's order (train/validation/test first, then extras); ``groups``
    are evaluation-only cell sets inside a subset (a preset's test_seen / test_unseen)."""

    subsets: dict[str, list[str]]
    source: str
    groups: dict[str, list[str]] = field(default_factory=dict)
    preset: dict | None = None  # name, citation, description, missing cells ... of a split preset

    @property
    def cells(self) -> list[str]:
        return [c for cells in self.subsets.values() for c in cells]

    def subset_of(self) -> dict[str, str]:
        return {c: name for name, cells in self.subsets.items() for c in cells}


def read_split(uri: str) -> Split:
    """A ``split_cfg.json`` file, or a split directory holding one (parsed as ``msenc split`` does)."""
    path = layout.split_config_path(str(uri))
    try:
        doc = layout.read_split_document(path)
        parsed = layout.parse_split_config(doc, f"split config {path}")
    except ConfigError as e:
        raise InputDataError(str(e)) from None
    if "train" not in doc:
        raise InputDataError(f"split config {path}: no 'train' subset (keys: {sorted(doc)})")
    if not parsed["train"]:
        raise InputDataError(f"split config {path}: the 'train' subset is empty")
    order = [k for k in layout.SUBSETS if k in doc] + [k for k in doc if k not in layout.SUBSETS]
    return Split(subsets={name: parsed[name] for name in order}, source=path)


def preset_split(name: str, cells: dict[str, str | None], allow_missing: bool, warn) -> Split:
    """The split preset ``name`` resolved against ``cells`` (cell key -> dataset value or None)."""
    from msenc_lib.split_presets import get_preset, resolve_preset

    preset = get_preset(name)
    resolved = resolve_preset(name, cells, allow_missing=allow_missing, warn=warn)
    info = {"name": name, "family": preset.family, "citation": preset.citation, "description": preset.description,
            "early_cycles": preset.early_cycles, "eol_soh": preset.eol_soh,
            "missing": resolved.missing, "cells_outside": resolved.outside}
    return Split(subsets=resolved.subsets, source=f"preset:{name}", groups=resolved.groups, preset=info)


# -------------------------------------------------------------------------------------------- embeddings
@dataclass
class Embeddings:
    table: pd.DataFrame  # cell_key, cycle_number, val_0..; sorted by cell then cycle
    val_columns: list[str]
    source: str
    dropped_empty_rows: int = 0  # rows whose val_* are all null (the original's left-join rows)

    @property
    def dim(self) -> int:
        return len(self.val_columns)


def _read_parquet_uri(uri: str) -> pd.DataFrame:
    try:
        return storage.read_parquet(uri).to_pandas()
    except FileNotFoundError:
        raise InputDataError(f"embeddings file not found: {uri}") from None
    except Exception as e:  # pyarrow raises several types for corrupt files
        if isinstance(e, InputDataError):
            raise
        raise InputDataError(f"{uri}: cannot read as Parquet: {e}") from None


def embedding_files(uri: str) -> list[str]:
    """``embeddings.parquet`` of an embeddings dir, or the given Parquet file, or the dir's Parquet files."""
    uri = str(uri)
    if uri.endswith(".parquet") and storage.exists(uri) and not storage.is_dir(uri):
        return [uri]
    main = storage.join(uri, layout.EMBEDDINGS_FILE)
    if storage.exists(main):
        return [main]
    files = [f for f in storage.list_files(uri, suffix=".parquet")
             if not storage.basename(f).startswith("_")]
    if not files:
        raise InputDataError(f"no embeddings found at {uri} (expected {layout.EMBEDDINGS_FILE})")
    return files


def read_embeddings(uri: str) -> Embeddings:
    files = embedding_files(uri)
    frames = [_read_parquet_uri(f) for f in files]
    source = files[0] if len(files) == 1 else f"{uri} ({len(files)} files)"
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    for col in ("cell_key", "cycle_number"):
        if col not in df.columns:
            raise InputDataError(f"embeddings {source}: no '{col}' column (columns: {list(df.columns)[:12]}...)")
    vals = sorted((int(m.group(1)), c) for c in df.columns if (m := _VAL_RX.match(str(c))))
    if not vals:
        raise InputDataError(f"embeddings {source}: no embedding columns val_0..val_<d-1> (columns: "
                             f"{list(df.columns)[:12]})")
    idx = [i for i, _ in vals]
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise InputDataError(f"embeddings {source}: embedding columns are not val_0..val_{max(idx)}: missing "
                             f"{[f'val_{i}' for i in missing[:5]]}")
    val_cols = [c for _, c in vals]
    df = df[["cell_key", "cycle_number", *val_cols]].copy()
    df["cell_key"] = df["cell_key"].astype(str)
    if df["cycle_number"].isna().any():
        row = int(np.flatnonzero(df["cycle_number"].isna().to_numpy())[0])
        raise InputDataError(f"embeddings {source}: row {row} (cell {df['cell_key'].iloc[row]!r}) has no "
                             "cycle_number")
    try:
        values = df[val_cols].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputDataError(f"embeddings {source}: val_* columns are not numeric: {e}") from None
    nan = np.isnan(values)
    all_nan = nan.all(axis=1)
    partial = nan.any(axis=1) & ~all_nan
    if partial.any() or np.isinf(values).any():
        row = int(np.flatnonzero(partial | np.isinf(values).any(axis=1))[0])
        col = val_cols[int(np.flatnonzero(~np.isfinite(values[row]))[0])]
        raise InputDataError(f"embeddings {source}: cell {df['cell_key'].iloc[row]!r}, cycle "
                             f"{df['cycle_number'].iloc[row]}: field '{col}' is not a finite number")
    dropped = int(all_nan.sum())
    if dropped:
        df = df.loc[~all_nan]
    dup = df.duplicated(["cell_key", "cycle_number"])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise InputDataError(f"embeddings {source}: {int(dup.sum())} duplicate (cell_key, cycle_number) rows, "
                             f"e.g. cell {first['cell_key']!r}, cycle {first['cycle_number']}")
    df[val_cols] = df[val_cols].astype(np.float64)
    df = df.sort_values(["cell_key", "cycle_number"], kind="stable").reset_index(drop=True)
    return Embeddings(table=df, val_columns=val_cols, source=source, dropped_empty_rows=dropped)


# ------------------------------------------------------------------------------------------ unified data
@dataclass
class UnifiedSummary:
    """What evaluation needs of the unified data, read one cell file at a time."""

    source: str
    files: dict[str, str]  # cell_key -> file
    cycle_life: pd.Series  # per cell (float; NaN where the file has none)
    nominal_capacity: pd.Series  # per cell (float; NaN where the data has no nominal_capacity column/value)
    per_cycle: pd.DataFrame  # cell_key, cycle_number, capacity (max of the capacity column), discharge_max
    cycles: dict[str, CellCycles]  # per cell: Severson per-cycle summaries up to max_cycle (empty if unused)
    coarse_curves: dict[str, tuple[np.ndarray, np.ndarray]]  # cell -> (cycles, Qd(V) on COARSE_POINTS) if asked
    has_ir: bool = False


COARSE_STEP = 10  # the sequence models' Qd(V): every 10th of the 1000 grid points


def cell_files(uri: str, cells: list[str]) -> dict[str, str]:
    """cell key -> unified file for ``cells``; cells absent from the data are an error naming them."""
    import pyarrow.compute as pc

    files = layout.unified_files(uri)
    if not files:
        raise InputDataError(f"unified data {uri}: no cell Parquet files found")
    wanted = set(cells)
    by_cell = {layout.cell_key_from_file(f): f for f in files}  # the file name is the cell key
    missing = sorted(wanted - set(by_cell))
    if missing:
        # File names may not be the keys (e.g. one file of many cells): read every file's cell_key column.
        by_cell = {}
        for f in files:
            pf = storage.parquet_file(f)
            if "cell_key" not in pf.schema_arrow.names:
                raise InputDataError(f"unified file {f}: no 'cell_key' column")
            for k in pc.unique(pf.read(columns=["cell_key"]).column("cell_key")).to_pylist():
                by_cell[str(k)] = f
        missing = sorted(wanted - set(by_cell))
    if missing:
        raise InputDataError(f"the split names {len(missing)} cell(s) absent from the unified data {uri}: "
                             f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
    return {c: by_cell[c] for c in cells}


def cell_datasets(uri: str, cells: list[str]) -> dict[str, str | None]:
    """cell key -> its ``dataset`` value (None where the data has no such column); cells absent -> None."""
    import pyarrow.compute as pc

    files = cell_files(uri, cells)
    out: dict[str, str | None] = {c: None for c in cells}
    for cell, f in files.items():
        pf = storage.parquet_file(f)
        if "dataset" not in pf.schema_arrow.names:
            continue
        table = pf.read(columns=["cell_key", "dataset"])
        if len(set(files.values())) != len(files):
            table = table.filter(pc.equal(table.column("cell_key"), cell))
        values = table.column("dataset").drop_null()
        out[cell] = str(values[0].as_py()) if len(values) else None
    return out


def read_unified_summary(
    uri: str,
    cells: list[str],
    *,
    need_cycle_life: bool,
    capacity_column: str | None,
    severson_last_cycle: int | None,
    curve_cycles: set[float] | None = None,
    coarse_last_cycle: int | None = None,
    progress: bool = False,
) -> UnifiedSummary:
    """Per-cycle capacities, cycle life, nominal capacity and, up to ``severson_last_cycle``, the per-cycle
    summaries of Severson's features (Qd(V) curves at ``curve_cycles``; coarse Qd(V) of every cycle up to
    ``coarse_last_cycle`` for the sequence models).

    ``cells``: the cells to read; cells absent from the data are an error naming them. A needed column
    absent from a cell file is an error naming the file and the column.
    """
    import pyarrow.compute as pc

    from msenc_lib.data.features import cell_cycles, voltage_grid

    by_cell = cell_files(uri, cells)
    needed = ["cell_key", "cycle_number"]
    if need_cycle_life:
        needed.append("cycle_life")
    if capacity_column:
        needed.append(capacity_column)
    sev_cols = list(SEVERSON_COLUMNS) if severson_last_cycle is not None else []
    shared_files = Counter(by_cell.values())
    life: dict[str, float] = {}
    nominal: dict[str, float] = {}
    per_cycle: list[pd.DataFrame] = []
    cycles: dict = {}
    coarse: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    has_ir_all = severson_last_cycle is not None
    grid = voltage_grid()
    last = max(severson_last_cycle or 0, coarse_last_cycle or 0)
    for cell in progress_bar(list(by_cell), len(by_cell), "reading unified data", progress):
        f = by_cell[cell]
        pf = storage.parquet_file(f)
        names = pf.schema_arrow.names
        for col in dict.fromkeys(needed + sev_cols):
            if col not in names:
                why = ("the cycle-life target" if col == "cycle_life" else
                       "the capacity target" if col == capacity_column else "Severson's features")
                raise InputDataError(f"unified file {f} (cell {cell!r}) has no column '{col}', needed for {why} "
                                     f"(columns: {names})")
        has_ir = IR_COLUMN in names
        has_ir_all = has_ir_all and has_ir
        extra = [c for c in ("discharge_capacity", "nominal_capacity") if c in names]
        if "cycle_life" in names and "cycle_life" not in needed:
            extra.append("cycle_life")  # not required, but colours the plots
        cols = list(dict.fromkeys(needed + sev_cols + extra + ([IR_COLUMN] if has_ir and sev_cols else [])))
        table = pf.read(columns=cols)
        if shared_files[f] > 1:
            table = table.filter(pc.equal(table.column("cell_key"), cell))
        if table.num_rows == 0:
            raise InputDataError(f"unified file {f}: no rows for cell {cell!r}")
        if "cycle_life" in table.column_names:
            lives = table.column("cycle_life").drop_null()
            life[cell] = float(lives[0].as_py()) if len(lives) else float("nan")
        if "nominal_capacity" in table.column_names:
            noms = table.column("nominal_capacity").drop_null()
            nominal[cell] = float(noms[0].as_py()) if len(noms) else float("nan")
        aggs = []
        if capacity_column:
            aggs.append((capacity_column, "max"))
        if "discharge_capacity" in table.column_names:
            aggs.append(("discharge_capacity", "max"))
        if aggs:
            grouped = table.group_by("cycle_number").aggregate(aggs).to_pandas()
            grouped = grouped.rename(columns={f"{capacity_column}_max": "capacity",
                                              "discharge_capacity_max": "discharge_max"})
            grouped.insert(0, "cell_key", cell)
            per_cycle.append(grouped)
        if sev_cols or coarse_last_cycle is not None:
            part = table.filter(pc.less_equal(table.column("cycle_number"), last))
            keep = [c for c in part.column_names if c in sev_cols or c in (IR_COLUMN, "cycle_life")]
            frame = part.select(keep).to_pandas()
            want = None if coarse_last_cycle is not None else curve_cycles
            cc = cell_cycles(frame, grid, max_cycle=last, curve_cycles=want)
            if coarse_last_cycle is not None:
                sel = cc.cycles <= coarse_last_cycle
                coarse[cell] = (cc.cycles[sel], cc.curves[sel, ::COARSE_STEP].astype(np.float32))
                if curve_cycles is not None:  # keep full curves only where features need them
                    drop = ~np.isin(cc.cycles, list(curve_cycles))
                    cc.curves[drop] = np.nan
            cycles[cell] = cc
        del table
    per_cycle_df = (pd.concat(per_cycle, ignore_index=True) if per_cycle
                    else pd.DataFrame(columns=["cell_key", "cycle_number", "capacity", "discharge_max"]))
    per_cycle_df = per_cycle_df.sort_values(["cell_key", "cycle_number"], kind="stable").reset_index(drop=True)
    if not has_ir_all:
        for cc in cycles.values():
            cc.ir = None  # IR features only where every cell has IR
    return UnifiedSummary(
        source=str(uri), files=by_cell,
        cycle_life=pd.Series(life, dtype=np.float64, name="cycle_life"),
        nominal_capacity=pd.Series(nominal, dtype=np.float64, name="nominal_capacity"),
        per_cycle=per_cycle_df, cycles=cycles, coarse_curves=coarse,
        has_ir=bool(sev_cols) and has_ir_all,
    )

