"""BatteryML / BatteryLife processed cells and the restricted unpickler, on files built to their layout."""

import io
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from battery_files import (batteryml_cell, hust_protocols, matr_protocols, write_cell, write_labels)
from msenc_lib.data import safe_pickle
from msenc_lib.data.schema import METADATA_COLUMNS, UNIFIED_COLUMNS
from msenc_lib.errors import InputDataError
from msenc_lib.ingest import IngestConfig, run_ingest
from msenc_lib.layout import read_unified_manifest

CFG = IngestConfig(progress=False)


def _points(cell: dict) -> int:
    return sum(len(c["current_in_A"]) for c in cell["cycle_data"])


@pytest.fixture
def processed(tmp_path):
    """A BatteryML folder (MATR, HUST) and a BatteryLife folder (MATR, with its life labels)."""
    charge, discharge = matr_protocols()
    bml = {"MATR_b1c0": batteryml_cell("MATR_b1c0", seed=1, charge_protocol=charge, discharge_protocol=discharge),
           "HUST_1-1": batteryml_cell("HUST_1-1", seed=2, temperature=False, charge_protocol=hust_protocols()[0],
                                      discharge_protocol=hust_protocols()[1])}
    bl = {"MATR_b2c5": batteryml_cell("MATR_b2c5", seed=3, flavour="batterylife", charge_protocol=charge,
                                      discharge_protocol=discharge)}
    for cell in bml.values():
        write_cell(tmp_path / "batteryml" / "processed", cell, numpy1=True)
    assert b"cnumpy.core.multiarray\nscalar" in (tmp_path / "batteryml" / "processed" / "MATR_b1c0.pkl").read_bytes()
    for cell in bl.values():
        write_cell(tmp_path / "batterylife" / "MATR", cell, numpy1=True)
    write_labels(tmp_path / "batterylife" / "Life labels", "MATR", {"MATR_b2c5": 812})
    return tmp_path, bml, bl


# ------------------------------------------------------------------------------------ restricted unpickler
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_restricted_unpickler_refuses_code_and_names_the_global(tmp_path):
    path = tmp_path / "MATR_b1c0.pkl"
    path.write_bytes(pickle.dumps({"cell_id": "MATR_b1c0", "cycle_data": [_Evil()]}))
    with pytest.raises(InputDataError, match=r"MATR_b1c0\.pkl: refused to unpickle: the file needs (posix|nt)\.system"):
        safe_pickle.load(path)
    assert not (tmp_path / "pwned.txt").exists()
    path.write_bytes(pickle.dumps(pd.DataFrame({"a": [1]})))
    with pytest.raises(InputDataError, match=r"refused to unpickle: the file needs pandas\."):
        safe_pickle.load(path)


def test_restricted_unpickler_loads_numpy_arrays_and_scalars_of_numpy_1_and_2(tmp_path):
    data = {"a": np.arange(5.0), "s": np.float64(0.5), "i": np.int16(3), "l": [np.float32(1.5)], "t": (1, None)}
    for proto in (2, 4, 5):
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=proto))
        back = safe_pickle.load(path)
        np.testing.assert_array_equal(back["a"], data["a"])
        assert back["s"] == 0.5 and back["i"] == 3 and back["l"] == [1.5] and back["t"] == (1, None)
    old = pickle.dumps(data, protocol=0).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in old
    (tmp_path / "numpy1.pkl").write_bytes(old)
    np.testing.assert_array_equal(safe_pickle.load(tmp_path / "numpy1.pkl")["a"], data["a"])


def test_restricted_unpickler_names_truncated_and_foreign_files(tmp_path):
    full = pickle.dumps(batteryml_cell("HUST_1-1"), protocol=4)
    (tmp_path / "cut.pkl").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputDataError, match=r"cut\.pkl: truncated pickle"):
        safe_pickle.load(tmp_path / "cut.pkl")
    (tmp_path / "text.pkl").write_text("voltage,current\n")
    with pytest.raises(InputDataError, match=r"text\.pkl: not a pickle file"):
        safe_pickle.load(tmp_path / "text.pkl")
    # pickle's own loader would happily run the stream; nothing was executed here either way
    assert pickle.load(io.BytesIO(full))["cell_id"] == "HUST_1-1"


# ------------------------------------------------------------------------------------------------ ingest
def test_batteryml_and_batterylife_cells_round_trip_into_the_unified_table(processed, tmp_path):
    root, bml, bl = processed
    result = run_ingest(CFG, str(root / "batteryml" / "processed"), str(tmp_path / "u-bml"))
    assert result.format == "batteryml" and result.n_cells == 2
    df = pd.read_parquet(tmp_path / "u-bml")
    assert list(df.columns) == UNIFIED_COLUMNS + METADATA_COLUMNS
    assert sorted(df.cell_key.unique()) == ["HUST_1-1", "MATR_b1c0"]  # ids kept as they are
    for key, cell in bml.items():
        part = df[df.cell_key == key]
        assert len(part) == _points(cell)
        want = np.concatenate([c["voltage_in_V"] for c in cell["cycle_data"]])
        np.testing.assert_array_equal(part.voltage.to_numpy(), want)
        np.testing.assert_array_equal(part.time.to_numpy(), np.concatenate([c["time_in_s"] for c in cell["cycle_data"]]))
        assert sorted(part.cycle_number.unique()) == [c["cycle_number"] for c in cell["cycle_data"]]
    matr, hust = df[df.cell_key == "MATR_b1c0"], df[df.cell_key == "HUST_1-1"]
    assert set(matr.batch_number) == {1} and set(matr.discharge_policy) == {400}
    # BatteryML's percent-SOC bug read right: 3.6C to 80 %, 3.6C to 100 %
    assert matr[["charge_policy_Q1", "charge_policy_Q2", "charge_policy_Q3", "charge_policy_Q4"]].iloc[0].tolist() \
        == [3.6, 3.6, 3.6, 3.6]
    assert hust[["charge_policy_Q1", "charge_policy_Q4"]].iloc[0].tolist() == [5.0, 1.8]  # 5C to 80 %, then 1C
    assert hust.temperature.isna().all() and hust.batch_number.isna().all()
    assert matr.iloc[0][METADATA_COLUMNS].tolist() == ["MATR", "LFP", 1.1, "cylindrical_18650", 30.0]
    assert df.cycle_life.isna().all()
    kinds = {w.kind: w for w in result.warnings}
    assert kinds["missing_cycle_life"].count == 2 and "no BatteryLife" in kinds["missing_cycle_life"].message
    assert kinds["unmeasured_values"].count == _points(bml["HUST_1-1"])

    result = run_ingest(CFG, str(root / "batterylife"), str(tmp_path / "u-bl"))  # cells + Life labels/
    assert result.format == "batteryml" and result.n_cells == 1
    df = pd.read_parquet(tmp_path / "u-bl")
    assert set(df.cycle_life) == {812} and set(df.batch_number) == {2}
    assert len(df) == _points(bl["MATR_b2c5"])
    assert df.time.is_monotonic_increasing and df.time.max() > 60 * 60  # BatteryLife: seconds, cumulative
    assert any("batterylife processed cells" in w.message for w in result.warnings)


def test_capacity_normalised_by_nominal_and_metadata_defaults(processed, tmp_path):
    root, bml, _ = processed
    cell = batteryml_cell("CALCE_CS2_33", nominal=None, cathode="LCO", seed=5)
    write_cell(tmp_path / "calce", cell)
    with pytest.raises(InputDataError, match=r"cell 'CALCE_CS2_33' has no nominal capacity"):
        run_ingest(IngestConfig(progress=False, normalize_capacity=True), str(tmp_path / "calce"),
                   str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    cfg = IngestConfig(progress=False, normalize_capacity=True, metadata={"nominal_capacity": 1.1})
    run_ingest(cfg, str(tmp_path / "calce"), str(tmp_path / "out"))
    df = pd.read_parquet(tmp_path / "out")
    raw = np.concatenate([c["charge_capacity_in_Ah"] for c in cell["cycle_data"]])
    np.testing.assert_allclose(df.charge_capacity.to_numpy(), raw / 1.1)
    assert set(df.nominal_capacity) == {1.1} and set(df.chemistry) == {"LCO"}


def test_time_reset_in_a_processed_cell_is_rebased_and_counted_and_strict_refuses_it(tmp_path):
    cell = batteryml_cell("HUST_2-3", seed=7)
    times = cell["cycle_data"][1]["time_in_s"]
    cut = 5
    reset = [t - times[cut] for t in times[cut:]]  # the clock restarts from 0 in the middle of cycle 2
    cell["cycle_data"][1]["time_in_s"] = times[:cut] + reset
    write_cell(tmp_path / "in", cell)
    with pytest.raises(InputDataError, match=r"HUST_2-3\.pkl: row \d+ .*cell 'HUST_2-3', column 'time'.*strict"):
        run_ingest(IngestConfig(progress=False, strict=True), str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    result = run_ingest(CFG, str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.repair_counts["time_reset"] == 1
    [rec] = [r for r in result.repairs if r.kind == "time_reset"]
    assert (rec.cell_key, rec.action, rec.cycles) == ("HUST_2-3", "rebased", {"2": 1})
    df = pd.read_parquet(tmp_path / "out")
    cycle2 = df[df.cycle_number == 2].time.to_numpy()
    assert np.all(np.diff(cycle2) >= 0)
    assert cycle2[cut] == pytest.approx(times[cut - 1])  # continues from the previous row
    manifest = read_unified_manifest(str(tmp_path / "out"))
    assert {"kind": "time_reset", "action": "rebased", "cell_key": "HUST_2-3", "rows": 1,
            "cycles": {"2": 1}} in manifest["repairs"]


def test_bad_processed_files_fail_naming_the_file_and_leave_nothing(tmp_path):
    good = batteryml_cell("HUST_1-2")
    write_cell(tmp_path / "a", good)
    no_cycles = {k: v for k, v in good.items() if k != "cycle_data"}
    (tmp_path / "a" / "HUST_1-3.pkl").write_bytes(pickle.dumps(no_cycles))
    with pytest.raises(InputDataError, match=r"HUST_1-3\.pkl: not a BatteryML/BatteryLife processed cell: missing "
                                             r"key\(s\) \['cycle_data'\]"):
        run_ingest(CFG, str(tmp_path / "a"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

    ragged = batteryml_cell("HUST_1-4")
    ragged["cycle_data"][2]["voltage_in_V"] = ragged["cycle_data"][2]["voltage_in_V"][:-3]
    write_cell(tmp_path / "b", ragged)
    with pytest.raises(InputDataError, match=r"HUST_1-4\.pkl: cell HUST_1-4, cycle 3: \{'voltage_in_V': \d+\} values"):
        run_ingest(CFG, str(tmp_path / "b"), str(tmp_path / "out"))

    full = (tmp_path / "a" / "HUST_1-2.pkl").read_bytes()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "HUST_1-2.pkl").write_bytes(full[: len(full) - 200])
    with pytest.raises(InputDataError, match=r"HUST_1-2\.pkl: truncated pickle"):
        run_ingest(CFG, str(tmp_path / "c"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "MATR_labels.json").write_text(json.dumps({"MATR_b1c0.pkl": 100}))
    with pytest.raises(InputDataError, match=r"no files of a known format"):
        run_ingest(CFG, str(tmp_path / "d"), str(tmp_path / "out"))


def test_writer_quirks_text_cycle_numbers_numpy_scalars_and_text_rates(tmp_path):
    """BatteryML's ARBIN preprocessor (cycle numbers as text, numpy float32/int16 elements), BatteryLife's XJTU
    (numpy float64 elements) and CALB (the rate 'stepcharge') load and map like plain values."""
    arbin = batteryml_cell("ARBIN_cellA", seed=8, charge_protocol=[{"rate_in_C": "stepcharge", "start_soc": 0.0,
                                                                  "end_soc": 1.0}])
    for c in arbin["cycle_data"]:
        c["cycle_number"] = str(c["cycle_number"])
        c["voltage_in_V"] = [np.float32(v) for v in c["voltage_in_V"]]
        c["step_index"] = [np.int16(1)] * len(c["current_in_A"])
        c["internal_resistance_in_ohm"] = np.float32(0.02)
    xjtu = batteryml_cell("XJTU_2C_battery-6", seed=9, flavour="batterylife", temperature=False)
    for c in xjtu["cycle_data"]:
        c["time_in_s"] = [np.float64(t) for t in c["time_in_s"]]
    write_cell(tmp_path / "in", arbin, numpy1=True)
    write_cell(tmp_path / "in", xjtu, numpy1=True)
    result = run_ingest(IngestConfig(progress=False, include_internal_resistance=True), str(tmp_path / "in"),
                        str(tmp_path / "out"))
    assert result.n_cells == 2
    df = pd.read_parquet(tmp_path / "out")
    a = df[df.cell_key == "ARBIN_cellA"]
    assert a.cycle_number.dtype == "int64" and sorted(a.cycle_number.unique()) == [1, 2, 3, 4]
    np.testing.assert_allclose(a.voltage, np.concatenate([c["voltage_in_V"] for c in arbin["cycle_data"]]))
    assert a.charge_policy_Q1.isna().all()  # no numeric rate: unknown, not guessed
    assert set(a.internal_resistance.round(6)) == {0.02}
    x = df[df.cell_key == "XJTU_2C_battery-6"]
    np.testing.assert_allclose(x.time, np.concatenate([c["time_in_s"] for c in xjtu["cycle_data"]]))
    assert set(x.dataset) == {"XJTU"}
