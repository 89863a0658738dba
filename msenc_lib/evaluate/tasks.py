"""The per-task tables: targets, one feature matrix per feature set, subsets and exclusions.

Cycle life (battery level, one row per cell): y = cycle life; features from cycles ``min_cycle..N`` only:
the cell's embeddings aggregated over those cycles, the same aggregation of a seeded random table of the
embedding's shape (control), or Severson's feature sets from the unified data. Every feature set uses the
same cells: a cell that one set cannot describe (a needed cycle missing, no cycle life) is excluded from
all, with the reason recorded.

Capacity (cycle level, one row per (cell, cycle c)): y = capacity of cycle c+k (max of the capacity column
in that cycle); features = the embedding of cycle c, or the random control; the persistence baseline
predicts capacity(c).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from msenc_lib.errors import InputDataError
from msenc_lib.evaluate.config import SEVERSON_SETS, EvaluateConfig
from msenc_lib.evaluate.inputs import Embeddings, Split, UnifiedSummary


@dataclass
class TaskData:
    task: str
    target: str  # what y is, for people
    unit: str
    y: pd.Series  # index: cell_key (cycle life) or (cell_key, cycle_number) (capacity)
    features: dict[str, pd.DataFrame]  # feature set -> matrix aligned with y
    cell: pd.Series  # row -> cell key
    subset: pd.Series  # row -> subset name
    log_target: bool  # fit log10(y), report in y's unit
    baselines: dict[str, pd.Series] = field(default_factory=dict)  # model-free predictions aligned with y
    excluded: list[dict] = field(default_factory=list)  # {"cell_key", "subset", "reason"}
    subset_order: list[str] = field(default_factory=list)  # the split config's order

    def subset_names(self) -> list[str]:
        """Subsets with at least one row, in the split config's order."""
        present = set(self.subset.tolist())
        return [s for s in self.subset_order if s in present] + sorted(present - set(self.subset_order))


def random_like(emb: Embeddings, seed: int) -> pd.DataFrame:
    """The embeddings table with every val_* replaced by seeded N(0, 1) noise (the random-feature control)."""
    out = emb.table.copy()
    rng = np.random.default_rng([seed, 0x5EED])
    out[emb.val_columns] = rng.standard_normal((len(out), emb.dim))
    return out


# ------------------------------------------------------------------------------------------ aggregation
def aggregate_embeddings(table: pd.DataFrame, val_columns: list[str], *, min_cycle: int, last_cycle: int,
                         methods: list[str], window: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """One vector per cell from its embeddings of cycles ``min_cycle..last_cycle`` (see EvaluateConfig).

    A cell needs at least one embedded cycle in the early window ``[min_cycle, min_cycle+window)`` and in
    the late window ``(last_cycle-window, last_cycle]``; otherwise it is returned in the reasons dict.
    """
    part = table[(table["cycle_number"] >= min_cycle) & (table["cycle_number"] <= last_cycle)]
    cycles = part["cycle_number"].to_numpy(dtype=np.float64)
    early = part.loc[cycles < min_cycle + window]
    late = part.loc[cycles > last_cycle - window]
    reasons: dict[str, str] = {}
    last_seen = table.groupby("cell_key", sort=True)["cycle_number"].max()
    late_cells = set(late["cell_key"])
    for cell in last_seen.index:
        if cell not in late_cells:
            reasons[cell] = (f"no embedded cycle in {last_cycle - window + 1}..{last_cycle} (its embeddings end at "
                             f"cycle {last_seen[cell]:g}): the cell does not cover the first {last_cycle} cycles")
    early_cells = set(early["cell_key"])
    for cell in last_seen.index:
        if cell not in reasons and cell not in early_cells:
            reasons[cell] = f"no embedded cycle in {min_cycle}..{min_cycle + window - 1} (the early window)"
    ok = part[~part["cell_key"].isin(reasons)]
    blocks = []
    for method in methods:
        if method == "mean":
            agg = ok.groupby("cell_key", sort=True)[val_columns].mean()
        elif method == "std":
            agg = ok.groupby("cell_key", sort=True)[val_columns].std(ddof=0)
        elif method in ("first", "last", "delta"):
            first = early[early["cell_key"].isin(ok["cell_key"])].groupby("cell_key", sort=True)[val_columns].mean()
            last = late[late["cell_key"].isin(ok["cell_key"])].groupby("cell_key", sort=True)[val_columns].mean()
            agg = {"first": first, "last": last, "delta": last - first}[method]
        else:
            raise ValueError(f"unknown aggregation {method!r}")
        blocks.append(agg.add_prefix(f"{method}_"))
    feats = pd.concat(blocks, axis=1) if blocks else pd.DataFrame(index=ok["cell_key"].unique())
    feats.index.name = "cell_key"
    return feats, reasons


# --------------------------------------------------------------------------------------------- Severson
def severson_feature_table(early_rows: pd.DataFrame, feature_set: str, first_cycles: int,
                           cells: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Severson's ``feature_set`` per cell (msenc_lib.data.features); cells it cannot describe -> reasons."""
    from msenc_lib.data.features import severson_features

    rows, reasons = [], {}
    groups = dict(tuple(early_rows.groupby("cell_key", sort=True)))
    for cell in cells:
        part = groups.get(cell)
        if part is None or part.empty:
            reasons[cell] = f"no rows in cycles 0..{first_cycles} of the unified data"
            continue
        try:
            feats = severson_features(part, feature_set, first_cycles=first_cycles)
        except InputDataError as e:
            reasons[cell] = str(e)
            continue
        feats = feats.drop(columns=["cycle_life"], errors="ignore")
        bad = [c for c in feats.columns if not np.isfinite(float(feats[c].iloc[0]))]
        if bad:
            reasons[cell] = f"Severson feature(s) {bad} not finite (e.g. dQ(V) is identically 0)"
            continue
        rows.append(feats)
    table = pd.concat(rows) if rows else pd.DataFrame()
    table.index.name = "cell_key"
    return table.astype(np.float64), reasons


# ------------------------------------------------------------------------------------------- cycle life
def build_cycle_life(cfg: EvaluateConfig, split: Split, emb: Embeddings, random_table: pd.DataFrame,
                     unified: UnifiedSummary) -> TaskData:
    cells = split.cells
    subset_of = split.subset_of()
    reasons: dict[str, list[str]] = {c: [] for c in cells}

    life = unified.cycle_life.reindex(cells)
    for cell, value in life.items():
        if not np.isfinite(value):
            reasons[cell].append("no cycle_life value in the unified data")
        elif value <= 0:
            reasons[cell].append(f"cycle_life {value:g} <= 0")

    features: dict[str, pd.DataFrame] = {}
    emb_rows = emb.table[emb.table["cell_key"].isin(cells)]
    for fs in cfg.feature_sets:
        if fs in ("embedding", "random"):
            source = emb_rows if fs == "embedding" else random_table[random_table["cell_key"].isin(cells)]
            feats, why = aggregate_embeddings(source, emb.val_columns, min_cycle=cfg.min_cycle,
                                              last_cycle=cfg.first_cycles, methods=cfg.aggregation,
                                              window=cfg.delta_window)
            for cell in cells:
                if cell not in feats.index and cell not in why:
                    why[cell] = "no embeddings for this cell"
            if fs == "random":
                why = {}  # same rows as the embedding table: its reasons are already recorded
        elif fs in SEVERSON_SETS:
            if unified.early_rows is None:
                raise RuntimeError("Severson features requested but the unified early rows were not read")
            feats, why = severson_feature_table(unified.early_rows, fs, cfg.first_cycles, cells)
        else:
            raise ValueError(f"unknown feature set {fs!r}")
        features[fs] = feats
        for cell, reason in why.items():
            if cell in reasons:
                reasons[cell].append(f"{fs}: {reason}" if fs in SEVERSON_SETS else reason)

    usable = [c for c in cells if not reasons[c]]
    excluded = [{"cell_key": c, "subset": subset_of[c], "reason": "; ".join(dict.fromkeys(reasons[c]))}
                for c in cells if reasons[c]]
    if not usable:
        raise InputDataError(f"cycle life: no usable cell left ({len(excluded)} excluded; first: "
                             f"{excluded[0]['cell_key']}: {excluded[0]['reason']})")
    index = pd.Index(usable, name="cell_key")
    return TaskData(
        task="cycle_life", target="cycle life (cycles to 80 % capacity)", unit="cycles",
        y=life.reindex(index).astype(np.float64),
        features={fs: f.reindex(index) for fs, f in features.items()},
        cell=pd.Series(usable, index=index), subset=pd.Series([subset_of[c] for c in usable], index=index),
        log_target=True, excluded=excluded, subset_order=list(split.subsets),
    )


# --------------------------------------------------------------------------------------------- capacity
def build_capacity(cfg: EvaluateConfig, split: Split, emb: Embeddings, random_table: pd.DataFrame,
                   unified: UnifiedSummary) -> TaskData:
    cells = split.cells
    subset_of = split.subset_of()
    k = cfg.horizon
    cap = unified.per_cycle[["cell_key", "cycle_number", "capacity"]].copy()
    cap["cycle_number"] = cap["cycle_number"].astype(np.float64)
    cap = cap.dropna(subset=["capacity"])
    rows = emb.table.loc[emb.table["cell_key"].isin(cells) & (emb.table["cycle_number"] >= cfg.min_cycle),
                         ["cell_key", "cycle_number"]].copy()
    rows["row"] = rows.index
    rows["cycle_number"] = rows["cycle_number"].astype(np.float64)
    if cfg.capacity_stride > 1:
        rows = rows[((rows["cycle_number"] - cfg.min_cycle) % cfg.capacity_stride) == 0]
    now = cap.rename(columns={"capacity": "capacity_now"})
    future = cap.assign(cycle_number=cap["cycle_number"] - k).rename(columns={"capacity": "capacity_future"})
    rows = rows.merge(now, on=["cell_key", "cycle_number"], how="inner")
    rows = rows.merge(future, on=["cell_key", "cycle_number"], how="inner")
    rows = rows.sort_values(["cell_key", "cycle_number"], kind="stable")

    have = set(rows["cell_key"])
    excluded = []
    for cell in cells:
        if cell not in have:
            last = cap.loc[cap["cell_key"] == cell, "cycle_number"]
            span = f"cycles {last.min():g}..{last.max():g}" if len(last) else "no capacity values"
            excluded.append({"cell_key": cell, "subset": subset_of[cell],
                             "reason": f"no embedded cycle c >= {cfg.min_cycle} with capacity at c and c+{k} "
                                       f"(unified data: {span})"})
    if rows.empty:
        raise InputDataError(f"capacity: no (cell, cycle) pair with capacity {k} cycles later; every cell excluded")
    index = pd.MultiIndex.from_arrays([rows["cell_key"].to_numpy(), rows["cycle_number"].to_numpy()],
                                      names=["cell_key", "cycle_number"])
    src_rows = rows["row"].to_numpy()
    emb_x = pd.DataFrame(emb.table.loc[src_rows, emb.val_columns].to_numpy(), index=index,
                         columns=emb.val_columns)
    features = {}
    for fs in cfg.capacity_feature_sets:
        if fs == "embedding":
            features[fs] = emb_x
        elif fs == "random":
            features[fs] = pd.DataFrame(random_table.loc[src_rows, emb.val_columns].to_numpy(), index=index,
                                        columns=emb.val_columns)
    y = pd.Series(rows["capacity_future"].to_numpy(dtype=np.float64), index=index, name="capacity")
    cells_col = rows["cell_key"].to_numpy()
    return TaskData(
        task="capacity", target=f"capacity {k} cycles ahead (max {cfg.capacity_column} of cycle c+{k})",
        unit=_capacity_unit(cfg.capacity_column), y=y, features=features,
        cell=pd.Series(cells_col, index=index),
        subset=pd.Series([subset_of[c] for c in cells_col], index=index), log_target=False,
        baselines={"persistence": pd.Series(rows["capacity_now"].to_numpy(dtype=np.float64), index=index)},
        excluded=excluded, subset_order=list(split.subsets),
    )


def _capacity_unit(column: str) -> str:
    return "Ah" if "capacity" in column else column
