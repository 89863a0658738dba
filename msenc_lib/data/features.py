"""Severson et al. (2019) early-life features from a unified table, per cell.

Qd(V): the discharge segment of a cycle (rows with current < 0, plus the row just before it, where
Qd = 0) as discharge capacity versus voltage, made monotone (running minimum of V) and interpolated on a
fixed voltage grid, 3.5 -> 2.0 V in 1000 points (Severson's ``Qdlin``). dQ(V) = Qd_late(V) - Qd_ref(V)
with late = ``first_cycles`` (100) and ref = ``ref_cycle`` (10); cycle numbers are the table's
``cycle_number`` values.

Feature sets (design.md §7; "log" = log10 of the absolute value):

* ``variance`` (1): dq_log_var
* ``discharge`` (6): dq_log_min, dq_log_var, dq_log_skew, dq_log_kurt, qd_early (discharge capacity of
  cycle ``early_cycle`` = 2), qd_max_minus_early (max discharge capacity over cycles early..late minus it)
* ``full`` (9 with IR, else 7): dq_log_min, dq_log_var, qd_fade_slope and qd_fade_intercept (linear fit of
  the discharge capacity over cycles early..late), qd_early, charge_time_mean (mean duration of the
  current > 0 part of cycles ``charge_time_cycles``, default 1-5, the first five after cycle 0),
  temperature_integral (sum over cycles early..late of the trapezoid integral of temperature over time,
  in the source units: degC x min for Severson), and only when the table has an ``internal_resistance``
  column: ir_min (minimum over cycles early..late) and ir_change (cycle late minus cycle early).

Variance uses ddof=1, skewness and kurtosis the biased moment ratios (kurtosis 3 for a normal), as
MATLAB's ``var``, ``skewness``, ``kurtosis`` that Severson used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from msenc_lib.data.schema import IR_COLUMN
from msenc_lib.errors import InputDataError

FeatureSet = Literal["variance", "discharge", "full"]
FEATURE_SETS: dict[str, list[str]] = {
    "variance": ["dq_log_var"],
    "discharge": ["dq_log_min", "dq_log_var", "dq_log_skew", "dq_log_kurt", "qd_early", "qd_max_minus_early"],
    "full": ["dq_log_min", "dq_log_var", "qd_fade_slope", "qd_fade_intercept", "qd_early", "charge_time_mean",
             "temperature_integral", "ir_min", "ir_change"],
}
IR_FEATURES = ["ir_min", "ir_change"]
V_GRID = (3.5, 2.0, 1000)
_NEEDED = ["cell_key", "cycle_number", "time", "current", "voltage", "discharge_capacity", "temperature"]


def voltage_grid(start: float = V_GRID[0], stop: float = V_GRID[1], n: int = V_GRID[2]) -> np.ndarray:
    return np.linspace(start, stop, n)


def discharge_q_of_v(voltage: np.ndarray, capacity: np.ndarray, current: np.ndarray,
                     grid: np.ndarray) -> np.ndarray | None:
    """Qd on ``grid`` from one cycle's rows (time order); None when the cycle has no discharge rows."""
    dis = np.flatnonzero(current < 0)
    if dis.size == 0:
        return None
    first = dis[0]
    idx = dis if first == 0 or capacity[first - 1] > capacity[first] else np.concatenate([[first - 1], dis])
    v = np.minimum.accumulate(voltage[idx])
    q = capacity[idx]
    v_rev, q_rev = v[::-1], q[::-1]
    v_unique, pos = np.unique(v_rev, return_index=True)
    return np.interp(grid, v_unique, q_rev[pos])


def _log_abs(x: float) -> float:
    with np.errstate(divide="ignore"):
        return float(np.log10(np.abs(x)))


def delta_q_stats(dq: np.ndarray) -> dict[str, float]:
    centered = dq - dq.mean()
    m2 = np.mean(centered**2)
    m3 = np.mean(centered**3)
    m4 = np.mean(centered**4)
    skew = m3 / m2**1.5 if m2 > 0 else 0.0
    kurt = m4 / m2**2 if m2 > 0 else 0.0
    return {
        "dq_log_min": _log_abs(dq.min()),
        "dq_log_var": _log_abs(np.var(dq, ddof=1)),
        "dq_log_skew": _log_abs(skew),
        "dq_log_kurt": _log_abs(kurt),
    }


def _to_pandas(df: Any, columns: list[str]) -> pd.DataFrame:
    import pyarrow as pa

    if isinstance(df, pa.Table):
        return df.select([c for c in columns if c in df.column_names]).to_pandas()
    return df[[c for c in columns if c in df.columns]]


@dataclass
class CellCycles:
    """Per-cycle summaries of one cell, from which Severson's features follow at any cycle N.

    ``curves[i]`` is Qd(V) of cycle ``cycles[i]`` on the voltage grid (NaN where the cycle has no
    discharge rows or its curve was not asked for).
    """

    cell: str
    cycles: np.ndarray  # sorted cycle numbers (float64)
    qd_max: np.ndarray  # max discharge capacity per cycle
    charge_time: np.ndarray  # duration of the current > 0 rows (0 where none)
    temperature_integral: np.ndarray  # trapezoid integral of temperature over time within the cycle
    ir: np.ndarray | None  # median internal resistance per cycle (None without the column)
    curves: np.ndarray  # (len(cycles), grid points) Qd(V)
    has_discharge: np.ndarray  # bool per cycle
    cycle_life: float = float("nan")

    def index_of(self, n: float) -> int | None:
        i = int(np.searchsorted(self.cycles, float(n)))
        return i if i < self.cycles.size and self.cycles[i] == float(n) else None

    def require(self, n: float, what: str) -> int:
        i = self.index_of(n)
        if i is None:
            raise InputDataError(f"severson features: cell {self.cell!r} has no cycle {n:g} (needed for {what})")
        return i

    def curve(self, n: float, what: str) -> np.ndarray:
        i = self.require(n, what)
        if not self.has_discharge[i]:
            raise InputDataError(f"severson features: cell {self.cell!r}, cycle {n:g}: no discharge rows (current < 0)")
        if np.isnan(self.curves[i, 0]):
            raise ValueError(f"cell {self.cell!r}: the Qd(V) curve of cycle {n:g} was not computed")
        return self.curves[i]


def cell_cycles(part: pd.DataFrame, grid: np.ndarray | None = None, *, max_cycle: float | None = None,
                curve_cycles: set[float] | None = None) -> CellCycles:
    """:class:`CellCycles` of one cell's unified rows (``_NEEDED`` columns, optional IR and cycle_life).

    ``max_cycle`` drops later cycles; ``curve_cycles`` limits the Qd(V) curves computed (None: every cycle).
    """
    grid = voltage_grid() if grid is None else grid
    cell = str(part["cell_key"].iloc[0]) if len(part) else "?"
    cyc = part["cycle_number"].to_numpy(dtype=np.float64)
    keep = cyc >= 0 if max_cycle is None else (cyc >= 0) & (cyc <= max_cycle)
    t, cur, volt, qd, temp = (part[c].to_numpy(dtype=np.float64)[keep]
                              for c in ("time", "current", "voltage", "discharge_capacity", "temperature"))
    ir_all = part[IR_COLUMN].to_numpy(dtype=np.float64)[keep] if IR_COLUMN in part.columns else None
    cyc = cyc[keep]
    order = np.argsort(cyc, kind="stable")  # rows of a cycle stay in file order
    cyc, t, cur, volt, qd, temp = (a[order] for a in (cyc, t, cur, volt, qd, temp))
    if ir_all is not None:
        ir_all = ir_all[order]
    bounds = np.flatnonzero(np.diff(cyc)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64) if cyc.size else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [cyc.size]]).astype(np.int64) if cyc.size else np.zeros(0, np.int64)
    n = starts.size
    qd_max, charge_time, t_int = np.zeros(n), np.zeros(n), np.zeros(n)
    ir = np.full(n, np.nan) if ir_all is not None else None
    curves = np.full((n, grid.size), np.nan)
    has_dis = np.zeros(n, dtype=bool)
    for i, (s, e) in enumerate(zip(starts, ends)):
        qd_max[i] = qd[s:e].max()
        ch = np.flatnonzero(cur[s:e] > 0)
        charge_time[i] = t[s:e][ch[-1]] - t[s:e][ch[0]] if ch.size else 0.0
        t_int[i] = float(np.sum(0.5 * (temp[s + 1:e] + temp[s:e - 1]) * np.diff(t[s:e])))
        if ir is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cycles stay NaN
                ir[i] = np.nanmedian(ir_all[s:e])
        has_dis[i] = bool((cur[s:e] < 0).any())
        if has_dis[i] and (curve_cycles is None or float(cyc[s]) in curve_cycles):
            curves[i] = discharge_q_of_v(volt[s:e], qd[s:e], cur[s:e], grid)
    life = float("nan")
    if "cycle_life" in part.columns and len(part):
        v = part["cycle_life"].iloc[0]
        life = float(v) if pd.notna(v) else float("nan")
    return CellCycles(cell=cell, cycles=cyc[starts] if n else np.zeros(0), qd_max=qd_max, charge_time=charge_time,
                      temperature_integral=t_int, ir=ir, curves=curves, has_discharge=has_dis, cycle_life=life)


def severson_at(cc: CellCycles, feature_set: FeatureSet, late: int, *, ref_cycle: int = 10, early_cycle: int = 2,
                charge_time_cycles: tuple[int, int] = (1, 5)) -> dict[str, float]:
    """Severson's ``feature_set`` of one cell from its cycles up to ``late`` (dQ = Qd_late(V) - Qd_ref(V))."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r} (choose from {list(FEATURE_SETS)})")
    if not early_cycle < late or not ref_cycle < late:
        raise ValueError(f"need early_cycle ({early_cycle}) and ref_cycle ({ref_cycle}) < first_cycles ({late})")
    what = f"dQ_{late}-{ref_cycle}(V)"
    feats: dict[str, float] = dict(delta_q_stats(cc.curve(late, what) - cc.curve(ref_cycle, what)))
    i0 = cc.require(early_cycle, "the early discharge capacity")
    in_span = (cc.cycles >= early_cycle) & (cc.cycles <= late)
    qmax = cc.qd_max[in_span]
    feats["qd_early"] = float(cc.qd_max[i0])
    feats["qd_max_minus_early"] = float(qmax.max() - qmax[0])
    if feature_set == "full":
        slope, intercept = np.polyfit(cc.cycles[in_span], qmax, 1)
        feats["qd_fade_slope"], feats["qd_fade_intercept"] = float(slope), float(intercept)
        times = [cc.charge_time[cc.require(n, "the average charge time")]
                 for n in range(charge_time_cycles[0], charge_time_cycles[1] + 1)]
        feats["charge_time_mean"] = float(np.mean(times))
        feats["temperature_integral"] = float(np.sum(cc.temperature_integral[in_span]))
        if cc.ir is not None:
            i_late = cc.require(late, "the internal resistance change")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                feats["ir_min"] = float(np.nanmin(cc.ir[in_span]))
            feats["ir_change"] = float(cc.ir[i_late] - cc.ir[i0])
    names = [n for n in FEATURE_SETS[feature_set] if cc.ir is not None or n not in IR_FEATURES]
    return {n: feats[n] for n in names}


def severson_features(
    df: Any,
    feature_set: FeatureSet = "variance",
    first_cycles: int = 100,
    *,
    ref_cycle: int = 10,
    early_cycle: int = 2,
    charge_time_cycles: tuple[int, int] = (1, 5),
    grid: tuple[float, float, int] = V_GRID,
) -> pd.DataFrame:
    """Severson features per cell (index ``cell_key``), plus ``cycle_life`` when the table has it.

    ``df``: a unified table (pandas DataFrame or pyarrow Table) holding at least cycles up to
    ``first_cycles``. A cell lacking a needed cycle (or its discharge rows) is an :class:`InputDataError`
    naming the cell and the cycle.
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r} (choose from {list(FEATURE_SETS)})")
    late = int(first_cycles)
    if not early_cycle < late or not ref_cycle < late:
        raise ValueError(f"need early_cycle ({early_cycle}) and ref_cycle ({ref_cycle}) < first_cycles ({late})")
    cols = _NEEDED + [c for c in ("cycle_life", IR_COLUMN) if c not in _NEEDED]
    table = _to_pandas(df, cols)
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise InputDataError(f"severson features: the table lacks column(s) {missing}")
    v_grid = voltage_grid(*grid)
    rows = []
    for cell, part in table.groupby("cell_key", sort=True):
        cc = cell_cycles(part, v_grid, max_cycle=max(late, charge_time_cycles[1]),
                         curve_cycles={float(late), float(ref_cycle)})
        row = {"cell_key": cell, **severson_at(cc, feature_set, late, ref_cycle=ref_cycle, early_cycle=early_cycle,
                                              charge_time_cycles=charge_time_cycles)}
        if "cycle_life" in part.columns:
            row["cycle_life"] = cc.cycle_life
        rows.append(row)
    if not rows:
        raise InputDataError("severson features: the table has no cells")
    return pd.DataFrame(rows).set_index("cell_key")


__all__ = ["FEATURE_SETS", "CellCycles", "cell_cycles", "severson_at", "severson_features", "discharge_q_of_v",
           "delta_q_stats", "voltage_grid"]
