import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msenc_lib.data import synthetic
from msenc_lib.data.features import FEATURE_SETS, discharge_q_of_v, severson_features, voltage_grid
from msenc_lib.errors import InputDataError

V_POINTS = np.linspace(3.5, 2.0, 16)


def known_cell(key: str, life: int, last: int = 100, ir: bool = False) -> pd.DataFrame:
    """Cycles 0..last with closed-form answers: Qd(V) = k_n (3.5 - V), k_n * 1.5 = 1.1 - 0.001 n,
    charge for 10 min (current > 0), temperature 30 everywhere."""
    recs = []
    for n in range(last + 1):
        k = (1.1 - 0.001 * n) / 1.5
        for i, t in enumerate([0.0, 5.0, 10.0]):  # charge; the last charge row has Qd = 0 at 3.5 V
            recs.append((key, n, t, 1.0, 3.3 + 0.1 * i, 0.0))
        for j, v in enumerate(V_POINTS[1:], 1):  # discharge
            recs.append((key, n, 10.0 + j, -4.0, v, k * (3.5 - v)))
    df = pd.DataFrame(recs, columns=["cell_key", "cycle_number", "time", "current", "voltage",
                                     "discharge_capacity"])
    df["temperature"] = 30.0
    df["charge_capacity"] = 0.5
    df["cycle_life"] = life
    if ir:
        df["internal_resistance"] = 0.02 + 1e-4 * df["cycle_number"]
    return df


def test_known_answers_all_feature_sets():
    df = pd.concat([known_cell("a", 500, ir=True), known_cell("b", 900, ir=True)], ignore_index=True)
    grid = voltage_grid()
    dq = (-0.09 / 1.5) * (3.5 - grid)  # k_100 - k_10 = -0.09 / 1.5
    c = dq - dq.mean()
    kurt = np.mean(c**4) / np.mean(c**2) ** 2
    full = severson_features(df, "full")
    assert list(full.columns) == FEATURE_SETS["full"] + ["cycle_life"]
    row = full.loc["a"]
    assert row.dq_log_min == pytest.approx(np.log10(0.09))
    assert row.dq_log_var == pytest.approx(np.log10(np.var(dq, ddof=1)))
    assert row.qd_early == pytest.approx(1.098)
    assert row.qd_fade_slope == pytest.approx(-0.001) and row.qd_fade_intercept == pytest.approx(1.1)
    assert row.charge_time_mean == pytest.approx(10.0)
    span = 10.0 + len(V_POINTS) - 1  # each cycle lasts from t=0 to its last discharge row
    assert row.temperature_integral == pytest.approx(30.0 * span * 99)
    assert row.ir_min == pytest.approx(0.0202) and row.ir_change == pytest.approx(98e-4)
    assert full.loc["b", "cycle_life"] == 900
    disc = severson_features(df, "discharge")
    assert list(disc.columns) == FEATURE_SETS["discharge"] + ["cycle_life"]
    assert disc.loc["a", "dq_log_kurt"] == pytest.approx(np.log10(kurt))
    assert disc.loc["a", "qd_max_minus_early"] == pytest.approx(0.0)
    var = severson_features(pa.Table.from_pandas(df, preserve_index=False), "variance")
    assert list(var.columns) == ["dq_log_var", "cycle_life"] and var.index.name == "cell_key"


def test_ir_features_only_with_an_ir_column():
    full = severson_features(known_cell("a", 500), "full")
    assert list(full.columns) == [f for f in FEATURE_SETS["full"] if not f.startswith("ir_")] + ["cycle_life"]


def test_configurable_cycles():
    df = known_cell("a", 500, last=50)
    feats = severson_features(df, "discharge", first_cycles=50, ref_cycle=5, early_cycle=3)
    dq = (-0.045 / 1.5) * (3.5 - voltage_grid())
    assert feats.loc["a", "dq_log_var"] == pytest.approx(np.log10(np.var(dq, ddof=1)))
    assert feats.loc["a", "qd_early"] == pytest.approx(1.097)


def test_missing_cycle_names_the_cell():
    df = pd.concat([known_cell("good", 500), known_cell("short", 300, last=60)])
    with pytest.raises(InputDataError, match=r"cell 'short' has no cycle 100"):
        severson_features(df, "variance")


def test_cycle_without_discharge_names_the_cell_and_cycle():
    df = known_cell("x", 500)
    df = df[~((df.cycle_number == 10) & (df.current < 0))]
    with pytest.raises(InputDataError, match=r"cell 'x', cycle 10: no discharge rows"):
        severson_features(df, "variance")


def test_q_of_v_handles_noise_and_clamps():
    v = np.array([3.4, 3.2, 3.1, 3.105, 3.0, 2.5, 2.0])  # a small upward blip
    q = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0])
    i = np.array([0, -4, -4, -4, -4, -4, -4.0])
    grid = np.array([3.5, 3.4, 3.0, 2.0])
    out = discharge_q_of_v(v, q, i, grid)
    assert out[0] == 0 and out[1] == 0 and out[-1] == 1.0
    assert np.all(np.diff(out) >= 0)
    assert discharge_q_of_v(v, q, np.zeros(7), grid) is None


def test_features_on_synthetic_tiny():
    table = pa.concat_tables([t for _, t in synthetic.generate("tiny", seed=0)])
    full = severson_features(table, "full")
    assert len(full) == 8 and full.notna().all().all()
    assert (full.qd_fade_slope < 0).all() and (full.charge_time_mean > 0).all()
