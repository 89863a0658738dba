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
    names = list(FEATURE_SETS[feature_set])
    cols = _NEEDED + [c for c in ("cycle_life", IR_COLUMN) if c not in _NEEDED]
    table = _to_pandas(df, cols)
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise InputDataError(f"severson features: the table lacks column(s) {missing}")
    has_ir = IR_COLUMN in table.columns
    if not has_ir:
        names = [n for n in names if n not in IR_FEATURES]
    last_needed = max(late, charge_time_cycles[1])
    table = table[(table["cycle_number"] >= 0) & (table["cycle_number"] <= last_needed)]
    v_grid = voltage_grid(*grid)

    rows = []
    for cell, part in table.groupby("cell_key", sort=True):
        cyc = part["cycle_number"].to_numpy()
        t = part["time"].to_numpy(dtype=np.float64)
        cur = part["current"].to_numpy(dtype=np.float64)
        volt = part["voltage"].to_numpy(dtype=np.float64)
        qd = part["discharge_capacity"].to_numpy(dtype=np.float64)
        temp = part["temperature"].to_numpy(dtype=np.float64)
        order = np.argsort(cyc, kind="stable")  # rows of a cycle stay in file order
        cyc, t, cur, volt, qd, temp = (a[order] for a in (cyc, t, cur, volt, qd, temp))
        bounds = np.flatnonzero(np.diff(cyc)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [cyc.size]])
        by_cycle = {float(cyc[s]): (s, e) for s, e in zip(starts, ends)}

        def rows_of(n: int, what: str) -> tuple[int, int]:
            if float(n) not in by_cycle:
                raise InputDataError(f"severson features: cell {cell!r} has no cycle {n} (needed for {what})")
            return by_cycle[float(n)]

        def q_of_v(n: int) -> np.ndarray:
            s, e = rows_of(n, f"dQ_{late}-{ref_cycle}(V)")
            out = discharge_q_of_v(volt[s:e], qd[s:e], cur[s:e], v_grid)
            if out is None:
                raise InputDataError(f"severson features: cell {cell!r}, cycle {n}: no discharge rows (current < 0)")
            return out

        feats: dict[str, float] = {}
        feats.update(delta_q_stats(q_of_v(late) - q_of_v(ref_cycle)))
        span = [n for n in range(early_cycle, late + 1) if float(n) in by_cycle]
        rows_of(early_cycle, "the early discharge capacity")
        qmax = np.array([qd[slice(*by_cycle[float(n)])].max() for n in span])
        feats["qd_early"] = float(qmax[0])
        feats["qd_max_minus_early"] = float(qmax.max() - qmax[0])
        if feature_set == "full":
            slope, intercept = np.polyfit(np.asarray(span, dtype=np.float64), qmax, 1)
            feats["qd_fade_slope"], feats["qd_fade_intercept"] = float(slope), float(intercept)
            times = []
            for n in range(charge_time_cycles[0], charge_time_cycles[1] + 1):
                s, e = rows_of(n, "the average charge time")
                ch = np.flatnonzero(cur[s:e] > 0)
                times.append(t[s:e][ch[-1]] - t[s:e][ch[0]] if ch.size else 0.0)
            feats["charge_time_mean"] = float(np.mean(times))
            integral = 0.0
            for n in span:
                s, e = by_cycle[float(n)]
                integral += float(np.sum(0.5 * (temp[s + 1:e] + temp[s:e - 1]) * np.diff(t[s:e])))
            feats["temperature_integral"] = integral
            if has_ir:
                ir = part[IR_COLUMN].to_numpy(dtype=np.float64)[order]
                per_cycle = {n: np.nanmedian(ir[slice(*by_cycle[float(n)])]) for n in span}
                rows_of(late, "the internal resistance change")
                feats["ir_min"] = float(np.nanmin(list(per_cycle.values())))
                feats["ir_change"] = float(per_cycle[late] - per_cycle[early_cycle])
        row = {"cell_key": cell, **{n: feats[n] for n in names}}
        if "cycle_life" in part.columns:
            life = part["cycle_life"].iloc[0]
            row["cycle_life"] = float(life) if pd.notna(life) else np.nan
        rows.append(row)
    if not rows:
        raise InputDataError("severson features: the table has no cells")
    return pd.DataFrame(rows).set_index("cell_key")


__all__ = ["FEATURE_SETS", "severson_features", "discharge_q_of_v", "delta_q_stats", "voltage_grid"]
