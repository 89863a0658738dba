"""The tasks: which rows (cell, cycle n) are predicted, their target, unit and exclusions.

A row (cell, n) means "predict from what is known of the cell after its first n cycles"; the feature sets
(:mod:`.featuresets`) turn rows into inputs.

* ``cycle_life`` (one row per cell, n = first_cycles): y = the cell's cycle life (cycles to 80 % of nominal
  capacity, the dataset's ``cycle_life`` column), in cycles, fitted as log10 (Severson, BatteryML).
  Excluded: cells without a cycle life, and cells whose life is <= n (they end before the prediction is
  made; BatteryML drops labels <= 100 the same way).
* ``early_curve``: the same task at every n of ``early_cycles`` (10, 20, ... 100), each scored separately.
* ``rul`` (rows n = rul_min_cycle, +rul_stride, ... rul_max_cycle): y = EOL - n, cycles until the capacity
  falls below ``eol_fraction`` x nominal. EOL = the first cycle whose max discharge capacity is below that
  threshold; nominal = the ``nominal_capacity`` column, else the cell's initial capacity (median max
  discharge capacity of its first 5 cycles from ``min_cycle``; recorded per cell). A cell whose recorded
  cycles never cross the threshold takes its ``cycle_life`` label as EOL when it has one (same 80 %
  definition); otherwise it is excluded. Rows at n >= EOL or past the cell's last recorded cycle are dropped.
* ``capacity`` (rows every ``capacity_stride`` cycles): y = capacity of cycle n + horizon (max of the
  capacity column), in Ah; the persistence baseline predicts capacity(n). Rows need both capacities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from msenc_lib.errors import InputDataError
from msenc_lib.evaluate.config import EvaluateConfig
from msenc_lib.evaluate.inputs import Split, UnifiedSummary

Row = tuple[str, float]


@dataclass
class Problem:
    """The rows of one task (before feature-set exclusions), their target and subsets."""

    task: str
    target: str
    unit: str
    log_target: bool  # fit log10(y), report in y's unit
    rows: list[Row]
    y: np.ndarray
    subset: np.ndarray  # per row
    excluded: list[dict] = field(default_factory=list)  # {"cell_key", "subset", "reason"}: whole cells
    exclusion_rules: str = ""
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # model-free predictions per row
    extra: dict = field(default_factory=dict)  # task facts for metrics.json

    def keep(self, mask: np.ndarray) -> "Problem":
        """The rows where ``mask``; cells losing every row are added to ``excluded`` by the caller."""
        idx = np.flatnonzero(mask)
        return Problem(task=self.task, target=self.target, unit=self.unit, log_target=self.log_target,
                       rows=[self.rows[i] for i in idx], y=self.y[idx], subset=self.subset[idx],
                       excluded=list(self.excluded), exclusion_rules=self.exclusion_rules,
                       baselines={k: v[idx] for k, v in self.baselines.items()}, extra=dict(self.extra))

    @property
    def cells(self) -> np.ndarray:
        return np.array([c for c, _ in self.rows], dtype=object)


def _finish(task: str, rows: list[Row], y: list[float], split: Split, excluded: list[dict], **kw) -> Problem:
    subset_of = split.subset_of()
    if not rows:
        first = f" (first: {excluded[0]['cell_key']}: {excluded[0]['reason']})" if excluded else ""
        raise InputDataError(f"{task}: no usable cell left ({len(excluded)} excluded){first}")
    return Problem(task=task, rows=rows, y=np.asarray(y, dtype=np.float64),
                   subset=np.array([subset_of[c] for c, _ in rows], dtype=object), excluded=excluded, **kw)


def cycle_life(cfg: EvaluateConfig, split: Split, unified: UnifiedSummary, n: int, task: str = "cycle_life"
               ) -> Problem:
    subset_of = split.subset_of()
    life = unified.cycle_life.reindex(split.cells)
    rows, y, excluded = [], [], []
    for cell, value in life.items():
        reason = None
        if not np.isfinite(value):
            reason = "no cycle_life value in the unified data"
        elif value <= n:
            reason = f"cycle life {value:g} <= {n}: the cell reaches end of life before the prediction"
        if reason:
            excluded.append({"cell_key": cell, "subset": subset_of[cell], "reason": reason})
        else:
            rows.append((cell, float(n)))
            y.append(float(value))
    return _finish(task, rows, y, split, excluded,
                   target=f"cycle life from the first {n} cycles (the dataset's cycle_life: cycles to 80 % of "
                          "nominal capacity)", unit="cycles", log_target=True,
                   exclusion_rules=f"cells without a cycle life, and cells whose life is <= {n} (their end comes "
                                   "before the prediction)")


def end_of_life(cfg: EvaluateConfig, unified: UnifiedSummary, cell: str) -> tuple[float | None, dict]:
    """(EOL cycle or None, facts: nominal capacity and where it and the EOL came from)."""
    pc = unified.per_cycle[unified.per_cycle["cell_key"] == cell]
    pc = pc[pc["cycle_number"] >= cfg.min_cycle].dropna(subset=["discharge_max"])
    facts: dict = {}
    nominal = float(unified.nominal_capacity.get(cell, np.nan))
    if np.isfinite(nominal) and nominal > 0:
        facts["nominal_capacity"], facts["nominal_from"] = nominal, "nominal_capacity column"
    elif len(pc):
        nominal = float(np.median(pc["discharge_max"].to_numpy()[:5]))
        facts["nominal_capacity"], facts["nominal_from"] = nominal, "initial capacity (median of the first 5 cycles)"
    else:
        return None, {"reason": "no discharge capacity per cycle"}
    threshold = cfg.eol_fraction * nominal
    below = pc.loc[pc["discharge_max"] < threshold, "cycle_number"]
    facts["last_cycle"] = float(pc["cycle_number"].max()) if len(pc) else float("nan")
    if len(below):
        facts["eol_from"] = "capacity"
        return float(below.iloc[0]), facts
    label = float(unified.cycle_life.get(cell, np.nan))
    if np.isfinite(label) and label > 0:
        facts["eol_from"] = "cycle_life label (the recorded cycles end before the threshold)"
        return label, facts
    facts["reason"] = (f"capacity never falls below {cfg.eol_fraction:g} x {nominal:.4g} in the recorded cycles "
                       f"(up to {facts['last_cycle']:g}) and the cell has no cycle_life label")
    return None, facts


def rul(cfg: EvaluateConfig, split: Split, unified: UnifiedSummary) -> Problem:
    subset_of = split.subset_of()
    rows, y, excluded = [], [], []
    eol_info: dict[str, dict] = {}
    grid = range(cfg.rul_min_cycle, cfg.rul_max_cycle + 1, cfg.rul_stride)
    for cell in split.cells:
        eol, facts = end_of_life(cfg, unified, cell)
        if eol is None:
            excluded.append({"cell_key": cell, "subset": subset_of[cell], "reason": facts["reason"]})
            continue
        eol_info[cell] = {"eol": eol, **facts}
        last = facts["last_cycle"]
        ns = [n for n in grid if n < eol and n <= last]
        if not ns:
            excluded.append({"cell_key": cell, "subset": subset_of[cell],
                             "reason": f"no prediction cycle in {cfg.rul_min_cycle}..{cfg.rul_max_cycle} before its "
                                       f"end of life ({eol:g}) and within its recorded cycles (up to {last:g})"})
            continue
        for n in ns:
            rows.append((cell, float(n)))
            y.append(eol - n)
    sources = sorted({v["nominal_from"] for v in eol_info.values()})
    return _finish("rul", rows, y, split, excluded,
                   target=f"remaining useful life at cycle n = {cfg.rul_min_cycle}, {cfg.rul_min_cycle + cfg.rul_stride}"
                          f", ... {cfg.rul_max_cycle}: cycles until the max discharge capacity falls below "
                          f"{cfg.eol_fraction:g} x nominal (nominal from: {', '.join(sources) or '-'})",
                   unit="cycles", log_target=False,
                   exclusion_rules="cells with no end of life (never below the threshold and no cycle_life label); "
                                   "rows at or after end of life or after the last recorded cycle",
                   extra={"end_of_life": eol_info, "eol_fraction": cfg.eol_fraction})


def capacity(cfg: EvaluateConfig, split: Split, unified: UnifiedSummary) -> Problem:
    subset_of = split.subset_of()
    k = cfg.horizon
    cap = unified.per_cycle[["cell_key", "cycle_number", "capacity"]].dropna(subset=["capacity"])
    cap = cap[cap["cell_key"].isin(set(split.cells))]
    now = cap.rename(columns={"capacity": "now"})
    now = now[(now["cycle_number"] >= cfg.min_cycle)
              & (((now["cycle_number"] - cfg.min_cycle) % cfg.capacity_stride) == 0)]
    future = cap.assign(cycle_number=cap["cycle_number"] - k).rename(columns={"capacity": "future"})
    pairs = now.merge(future, on=["cell_key", "cycle_number"], how="inner")
    pairs = pairs.sort_values(["cell_key", "cycle_number"], kind="stable")
    have = set(pairs["cell_key"])
    excluded = []
    for cell in split.cells:
        if cell not in have:
            mine = cap.loc[cap["cell_key"] == cell, "cycle_number"]
            span = f"cycles {mine.min():g}..{mine.max():g}" if len(mine) else "no capacity values"
            excluded.append({"cell_key": cell, "subset": subset_of[cell],
                             "reason": f"no cycle c >= {cfg.min_cycle} with capacity at c and c+{k} ({span})"})
    rows = list(zip(pairs["cell_key"].astype(str), pairs["cycle_number"].astype(np.float64)))
    return _finish("capacity", rows, pairs["future"].tolist(), split, excluded,
                   target=f"capacity {k} cycles ahead (max {cfg.capacity_column} of cycle c+{k})",
                   unit=_capacity_unit(cfg.capacity_column), log_target=False,
                   exclusion_rules=f"rows without the capacity of cycle c or c+{k}; cells left without rows",
                   baselines={"persistence": pairs["now"].to_numpy(dtype=np.float64)},
                   extra={"horizon": k, "capacity_column": cfg.capacity_column, "stride": cfg.capacity_stride})


def capacity_history(unified: UnifiedSummary, rows: list[Row]) -> tuple[np.ndarray, list[str], dict[int, str]]:
    """Hand features of the capacity task: capacity at c, its change over the last 10 cycles, and c."""
    pc = unified.per_cycle.dropna(subset=["capacity"])
    lookup = {(str(c), float(n)): v for c, n, v in zip(pc["cell_key"], pc["cycle_number"], pc["capacity"])}
    X = np.full((len(rows), 3), np.nan)
    reasons = {}
    for i, (cell, n) in enumerate(rows):
        now = lookup.get((cell, n))
        back = next((lookup[(cell, n - d)] for d in range(10, 0, -1) if (cell, n - d) in lookup), now)
        if now is None:
            reasons[i] = f"no capacity at cycle {n:g}"
            continue
        X[i] = (now, now - back, n)
    return X, ["capacity", "capacity_change_10", "cycle"], reasons


def per_cycle_embedding(table: pd.DataFrame, val_columns: list[str], rows: list[Row]
                        ) -> tuple[np.ndarray, dict[int, str]]:
    """The embedding of each row's cycle (the capacity task's input)."""
    index = {(str(c), float(n)): i for i, (c, n) in enumerate(zip(table["cell_key"], table["cycle_number"]))}
    values = table[val_columns].to_numpy(dtype=np.float64)
    X = np.full((len(rows), len(val_columns)), np.nan)
    reasons = {}
    for i, row in enumerate(rows):
        j = index.get((row[0], float(row[1])))
        if j is None:
            reasons[i] = f"no embedding of cycle {row[1]:g}"
        else:
            X[i] = values[j]
    return X, reasons


def _capacity_unit(column: str) -> str:
    return "Ah" if "capacity" in column else column
