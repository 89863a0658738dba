"""Reading the evaluation inputs: split config, embeddings table, and what is needed of the unified data.

Every problem is an :class:`InputDataError` naming the file, cell/cycle and field.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from msenc_lib import layout, storage
from msenc_lib.data.schema import IR_COLUMN
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.progress import progress_bar

_VAL_RX = re.compile(rf"^{layout.VALUE_PREFIX}(\d+)$")
# Unified columns the Severson features read (msenc_lib.data.features); IR is optional.
SEVERSON_COLUMNS = ["cell_key", "cycle_number", "time", "current", "voltage", "discharge_capacity", "temperature"]


# ------------------------------------------------------------------------------------------------- split
@dataclass
class Split:
    """Subset name -> cell keys, in the config's order (train/validation/test first, then extras)."""

    subsets: dict[str, list[str]]
    source: str

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
    per_cycle: pd.DataFrame  # cell_key, cycle_number, capacity (max of the capacity column), discharge_max
    early_rows: pd.DataFrame | None  # full rows of cycles <= severson_last_cycle, Severson columns (+IR)
    has_ir: bool = False


def read_unified_summary(
    uri: str,
    cells: list[str],
    *,
    need_cycle_life: bool,
    capacity_column: str | None,
    severson_last_cycle: int | None,
    progress: bool = False,
) -> UnifiedSummary:
    """Per-cycle capacities, cycle life and (optionally) the early rows for Severson's features.

    ``cells``: the cells to read; cells absent from the data are an error naming them. A needed column
    absent from a cell file is an error naming the file and the column.
    """
    import pyarrow.compute as pc

    files = layout.unified_files(uri)
    if not files:
        raise InputDataError(f"unified data {uri}: no cell Parquet files found")
    wanted = set(cells)
    by_cell: dict[str, str] = {}
    parquet_files = {}
    for f in files:  # the file name is the cell key (percent-encoded when unsafe)
        by_cell[layout.cell_key_from_file(f)] = f
    missing = sorted(wanted - set(by_cell))
    if missing:
        # File names may not be the keys (e.g. one file of many cells): read every file's cell_key column.
        by_cell = {}
        for f in files:
            pf = storage.parquet_file(f)
            parquet_files[f] = pf
            if "cell_key" not in pf.schema_arrow.names:
                raise InputDataError(f"unified file {f}: no 'cell_key' column")
            keys = pc.unique(pf.read(columns=["cell_key"]).column("cell_key")).to_pylist()
            for k in keys:
                by_cell[str(k)] = f
        missing = sorted(wanted - set(by_cell))
    if missing:
        raise InputDataError(f"the split names {len(missing)} cell(s) absent from the unified data {uri}: "
                             f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")

    needed = ["cell_key", "cycle_number"]
    if need_cycle_life:
        needed.append("cycle_life")
    if capacity_column:
        needed.append(capacity_column)
    sev_cols = list(SEVERSON_COLUMNS) if severson_last_cycle is not None else []
    shared_files = Counter(by_cell.values())
    life: dict[str, float] = {}
    per_cycle: list[pd.DataFrame] = []
    early: list[pd.DataFrame] = []
    has_ir_all = severson_last_cycle is not None
    for cell in progress_bar(sorted(wanted), len(wanted), "reading unified data", progress):
        f = by_cell[cell]
        pf = parquet_files.get(f) or storage.parquet_file(f)
        names = pf.schema_arrow.names
        for col in dict.fromkeys(needed + sev_cols):
            if col not in names:
                why = ("the cycle-life target" if col == "cycle_life" else
                       "the capacity target" if col == capacity_column else "Severson's features")
                raise InputDataError(f"unified file {f} (cell {cell!r}) has no column '{col}', needed for {why} "
                                     f"(columns: {names})")
        has_ir = IR_COLUMN in names
        has_ir_all = has_ir_all and has_ir
        extra = ["discharge_capacity"] if "discharge_capacity" in names else []
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
        aggs = []
        if capacity_column:
            aggs.append((capacity_column, "max"))
        if "discharge_capacity" in extra:
            aggs.append(("discharge_capacity", "max"))
        if aggs:
            grouped = table.group_by("cycle_number").aggregate(aggs).to_pandas()
            grouped = grouped.rename(columns={f"{capacity_column}_max": "capacity",
                                              "discharge_capacity_max": "discharge_max"})
            grouped.insert(0, "cell_key", cell)
            per_cycle.append(grouped)
        if sev_cols:
            part = table.filter(pc.less_equal(table.column("cycle_number"), severson_last_cycle))
            keep = [c for c in part.column_names if c in sev_cols or c == IR_COLUMN]
            early.append(part.select(keep).to_pandas())
        del table
    per_cycle_df = (pd.concat(per_cycle, ignore_index=True) if per_cycle
                    else pd.DataFrame(columns=["cell_key", "cycle_number", "capacity", "discharge_max"]))
    per_cycle_df = per_cycle_df.sort_values(["cell_key", "cycle_number"], kind="stable").reset_index(drop=True)
    early_df = None
    if sev_cols:
        early_df = pd.concat(early, ignore_index=True) if early else pd.DataFrame(columns=sev_cols)
        if not has_ir_all and IR_COLUMN in early_df.columns:
            early_df = early_df.drop(columns=[IR_COLUMN])  # IR features only where every cell has IR
    return UnifiedSummary(
        source=str(uri), files={c: by_cell[c] for c in sorted(wanted)},
        cycle_life=pd.Series(life, dtype=np.float64, name="cycle_life"),
        per_cycle=per_cycle_df, early_rows=early_df, has_ir=bool(sev_cols) and has_ir_all,
    )
