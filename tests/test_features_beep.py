"""Severson's features cross-checked against an independent implementation: TRI beep's DeltaQFastCharge.

beep (the optional extra ``cyclers``) structures a cycler run (Qd interpolated on a voltage grid per discharge
step, per-cycle summary) and computes the early-prediction features of Severson et al. We feed it the same
cells and compare feature by feature, converting the documented convention differences:

* beep indexes cycles by position (Q_100 - Q_10 is cycle_index 99 minus 9; "cycle 2" is position 1), so our
  features are asked for cycles 99, 9 and 1 of cells whose cycles are numbered from 0;
* beep's variance is numpy's (ddof 0), ours MATLAB's (ddof 1): log10 differs by log10(n / (n - 1));
* beep's kurtosis is scipy's excess kurtosis (Fisher), ours MATLAB's (Pearson) = excess + 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import evaluate_fixtures as fx
from msenc_lib.data.features import V_GRID, severson_features

beep_core = pytest.importorskip("beep.features.core", reason="TRI beep is not installed (pip install "
                                "'msenc[cyclers]'): the cross-check against its Severson featurizer is skipped")


def _beep_datapath(cell: pd.DataFrame):
    from beep.structure.base import BEEPDatapath

    class FrameDatapath(BEEPDatapath):  # beep's readers build one from a file; ours from a unified table
        @classmethod
        def from_file(cls, path):  # pragma: no cover - not used
            raise NotImplementedError

    t = cell["time"].to_numpy(dtype=np.float64)
    cyc = cell["cycle_number"].to_numpy()
    seconds = np.cumsum(np.r_[0.0, np.maximum(np.diff(t), 0)] + np.r_[0.0, (np.diff(cyc) != 0)]) * 60.0
    raw = pd.DataFrame({
        "cycle_index": cyc.astype(np.int64),
        "step_index": np.where(cell["current"].to_numpy() < 0, 2, 1).astype(np.int64),
        "test_time": seconds,
        "current": cell["current"].to_numpy(dtype=np.float64),
        "voltage": cell["voltage"].to_numpy(dtype=np.float64),
        "charge_capacity": cell["charge_capacity"].to_numpy(dtype=np.float64),
        "discharge_capacity": cell["discharge_capacity"].to_numpy(dtype=np.float64),
        "charge_energy": cell["charge_capacity"].to_numpy(dtype=np.float64) * 3.3,
        "discharge_energy": cell["discharge_capacity"].to_numpy(dtype=np.float64) * 3.0,
        "internal_resistance": np.full(len(cell), 0.02),
        "temperature": cell["temperature"].to_numpy(dtype=np.float64),
        "date_time_iso": (pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(seconds, unit="s")).strftime(
            "%Y-%m-%dT%H:%M:%S.%f%z"),
    })
    dp = FrameDatapath(raw, {})
    dp.structure(v_range=[V_GRID[1], V_GRID[0]], resolution=V_GRID[2])
    return dp


@pytest.mark.slow
def test_severson_features_agree_with_beep(tmp_path):
    truth = fx.plan(2, seed=7)
    fx.write_unified(tmp_path / "u", truth, last_cycle=101)
    for cell in truth.index:
        table = pd.read_parquet(tmp_path / "u" / f"{cell}.parquet")
        ours = severson_features(table, "discharge", first_cycles=99, ref_cycle=9, early_cycle=1).iloc[0]
        full = severson_features(table, "full", first_cycles=99, ref_cycle=9, early_cycle=1).iloc[0]
        featurizer = beep_core.DeltaQFastCharge(_beep_datapath(table))
        ok, why = featurizer.validate()
        assert ok, why
        featurizer.create_features()
        theirs = featurizer.features.iloc[0]
        n = V_GRID[2]
        assert ours["dq_log_var"] == pytest.approx(
            theirs["abs_variance_discharge_capacity_difference_cycles_2:100"] + np.log10(n / (n - 1)), abs=0.02)
        assert ours["dq_log_min"] == pytest.approx(
            theirs["abs_min_discharge_capacity_difference_cycles_2:100"], abs=0.02)
        assert ours["dq_log_skew"] == pytest.approx(
            theirs["abs_skew_discharge_capacity_difference_cycles_2:100"], abs=0.05)
        excess = 10 ** theirs["abs_kurtosis_discharge_capacity_difference_cycles_2:100"]  # |excess kurtosis|
        pearson = 10 ** ours["dq_log_kurt"]
        assert min(abs(pearson - (3 + excess)), abs(pearson - (3 - excess))) <= 0.05 * pearson
        assert ours["qd_early"] == pytest.approx(theirs["discharge_capacity_cycle_2"], rel=1e-6)
        assert full["qd_fade_slope"] == pytest.approx(theirs["slope_discharge_capacity_cycle_number_2:100"],
                                                      rel=1e-6)
        assert full["qd_fade_intercept"] == pytest.approx(
            theirs["intercept_discharge_capacity_cycle_number_2:100"], rel=1e-6)
