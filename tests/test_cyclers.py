"""Cycler exports: a column mapping for layouts no parser knows (runs without beep), and beep's datapaths (the
optional ``cyclers`` extra; those tests skip, saying so, when beep is not installed)."""

import numpy as np
import pandas as pd
import pytest

from battery_files import (ARBIN_MAPPING, arbin_rows, write_arbin_mits, write_battery_archive, write_maccor,
                           write_tri_arbin)
from msenc_lib.data.cyclers import beep_available
from msenc_lib.data.detect import classify_inputs
from msenc_lib.data.mapping import load_mapping
from msenc_lib.data.schema import METADATA_COLUMNS, UNIFIED_COLUMNS
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.ingest import IngestConfig, run_ingest

needs_beep = pytest.mark.skipif(not beep_available(), reason="beep not installed: pip install 'msenc[cyclers]'")


@pytest.fixture
def arbin_export(tmp_path):
    rows = arbin_rows(n_cycles=3, rows=10, seed=1)
    write_arbin_mits(tmp_path / "in" / "cell-A7.csv", rows)
    (tmp_path / "arbin.yaml").write_text(ARBIN_MAPPING)
    return tmp_path, rows


def test_arbin_export_through_a_column_mapping(arbin_export):
    tmp_path, rows = arbin_export
    cfg = IngestConfig(progress=False, mapping=str(tmp_path / "arbin.yaml"), include_internal_resistance=True)
    result = run_ingest(cfg, str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.format == "mapped" and result.n_cells == 1 and result.n_rows == len(rows)
    df = pd.read_parquet(tmp_path / "out")
    assert list(df.columns) == UNIFIED_COLUMNS + METADATA_COLUMNS + ["internal_resistance", "step_index"]
    src = pd.DataFrame(rows, columns=["Data_Point", "Date_Time", "Test_Time(s)", "Step_Time(s)", "Cycle_Index",
                                      "Step_Index", "Current(A)", "Voltage(V)", "Charge_Capacity(Ah)",
                                      "Discharge_Capacity(Ah)", "ce", "de", "dvdt", "ir", "T"])
    assert set(df.cell_key) == {"cell-A7"}  # cell_key: file
    np.testing.assert_array_equal(df.cycle_number, src.Cycle_Index)
    np.testing.assert_array_equal(df.time, src["Test_Time(s)"])
    np.testing.assert_array_equal(df.current, src["Current(A)"])
    np.testing.assert_array_equal(df.charge_capacity, src["Charge_Capacity(Ah)"])
    np.testing.assert_array_equal(df.temperature, src["T"])
    np.testing.assert_array_equal(df.step_index, src.Step_Index)
    assert df.cycle_life.isna().all() and df.charge_policy_Q1.isna().all()
    assert df.iloc[0][METADATA_COLUMNS].tolist() == ["my-lab", "LFP", 1.1, "cylindrical_18650", 30.0]


def test_mapping_units_sign_and_cycles_from_steps(tmp_path):
    """mA / mAh / minutes / Kelvin converted, discharge-positive current flipped, cycles from step resets."""
    lines = ["Zeit[min];Strom[mA];Spannung[V];Ladung[mAh];Entladung[mAh];Temp[K];Schritt"]
    for cycle in range(2):
        for step, (cur, q) in enumerate([(0, 0), (-1500, 100), (2000, 0)], start=1):
            t = cycle * 3 + step
            lines.append(f"{t},0;{cur},0;3,{step};{q},5;{(2000 if cur > 0 else 0)},0;300,15;{step}")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zelle_3.txt").write_text("Messung 3\n" + "\n".join(lines) + "\n")
    (tmp_path / "in" / "msenc-mapping.yaml").write_text("""
format: msenc-column-mapping
cell_key: {value: Z3}
columns:
  Zeit[min]: {to: time, unit: min}
  Strom[mA]: {to: current, unit: mA}
  Spannung[V]: voltage
  Ladung[mAh]: {to: charge_capacity, unit: mAh}
  Entladung[mAh]: {to: discharge_capacity, unit: mAh}
  Temp[K]: {to: temperature, unit: K}
step_column: Schritt
current_sign: discharge_positive
charge_policy: 1C
csv: {delimiter: ";", decimal: ",", skip_rows: 1}
""")
    result = run_ingest(IngestConfig(progress=False), str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.format == "mapped"
    df = pd.read_parquet(tmp_path / "out")
    assert df.cycle_number.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(df.time, [60, 120, 180, 240, 300, 360])
    np.testing.assert_allclose(df.current, [0, 1.5, -2.0] * 2)
    np.testing.assert_allclose(df.charge_capacity, [0.0005, 0.1005, 0.0005] * 2)
    np.testing.assert_allclose(df.temperature, [27.0] * 6)
    assert set(df.cell_key) == {"Z3"} and set(df.charge_policy_Q4) == {1.0}


def test_bad_mappings_and_unmatched_exports_are_named(arbin_export):
    tmp_path, _ = arbin_export
    with pytest.raises(ConfigError, match=r"m\.yaml: invalid column mapping: mapping: no source column for \['voltage'\]"):
        load_mapping(ARBIN_MAPPING.replace("  Voltage(V): voltage\n", ""), "m.yaml")
    with pytest.raises(ConfigError, match=r"columns\.Current\(A\): unit 'kA' of 'current'"):
        load_mapping(ARBIN_MAPPING.replace("unit: A}", "unit: kA}"), "m.yaml")
    # without a mapping, --format auto names the file and what its header lacks
    with pytest.raises(InputDataError, match=r"cell-A7\.csv: cannot tell the format: .*missing \['cell_key', "
                                             r"'cycle_number', 'time'.*--mapping"):
        run_ingest(IngestConfig(progress=False), str(tmp_path / "in"), str(tmp_path / "out"))
    # a mapping whose columns are not in the export
    (tmp_path / "other.yaml").write_text(ARBIN_MAPPING.replace("Aux_Temperature_1(C)", "Temperature(C)"))
    with pytest.raises(InputDataError, match=r"the column mapping arbin-mits-pro needs \['Temperature\(C\)'\]"):
        run_ingest(IngestConfig(progress=False, mapping=str(tmp_path / "other.yaml")), str(tmp_path / "in"),
                   str(tmp_path / "out"))
    # a truncated export: the half row is an error naming the file
    text = (tmp_path / "in" / "cell-A7.csv").read_text()
    (tmp_path / "in" / "cell-A7.csv").write_text(text[: len(text) - 40])
    with pytest.raises(InputDataError, match=r"cell-A7\.csv"):
        run_ingest(IngestConfig(progress=False, mapping=str(tmp_path / "arbin.yaml")), str(tmp_path / "in"),
                   str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_auto_recognises_each_format_from_content(arbin_export, tmp_path):
    folder, _ = arbin_export
    write_tri_arbin(folder / "in" / "FastCharge_000025_CH8.csv")
    (folder / "in" / "notes.md").write_text("lab notes")
    inputs = classify_inputs(str(folder / "in"), "auto", str(folder / "arbin.yaml"))
    assert {k: [p.rsplit("/", 1)[-1] for p in v] for k, v in inputs.by_format.items()} == {
        "mapped": ["cell-A7.csv"], "arbin": ["FastCharge_000025_CH8.csv"]}
    assert [p.rsplit("/", 1)[-1] for p in inputs.skipped] == ["notes.md"]


@needs_beep
def test_tri_arbin_file_through_beep(tmp_path):
    path = write_tri_arbin(tmp_path / "in" / "FastCharge_000025_CH8.csv", n_cycles=3, rows=10, seed=2)
    result = run_ingest(IngestConfig(progress=False, include_internal_resistance=True), str(tmp_path / "in"),
                        str(tmp_path / "out"))
    assert result.format == "arbin" and result.n_cells == 1 and result.n_rows == 30
    df = pd.read_parquet(tmp_path / "out")
    src = pd.read_csv(path)
    assert set(df.cell_key) == {"FastCharge_000025_CH8"}
    np.testing.assert_array_equal(df.cycle_number, src.Cycle_Index.astype(int))
    np.testing.assert_allclose(df.time, src.Test_Time)
    np.testing.assert_allclose(df.voltage, src.Voltage)
    np.testing.assert_allclose(df.discharge_capacity, src.Discharge_Capacity)
    np.testing.assert_allclose(df.internal_resistance, src.Internal_Resistance)


@needs_beep
def test_battery_archive_file_through_beep_with_a_relative_path(tmp_path, monkeypatch):
    path = write_battery_archive(tmp_path / "in" / "SNL_18650_LFP_25C_0-100_0.5-1C_a_timeseries.csv", seed=3)
    monkeypatch.chdir(tmp_path)  # a relative input path stays valid while beep works in its scratch folder
    result = run_ingest(IngestConfig(progress=False), "in", "out")
    assert result.format == "battery-archive" and result.n_rows == 30
    df = pd.read_parquet(tmp_path / "out")
    src = pd.read_csv(path)
    assert set(df.cell_key) == {"SNL_18650_LFP_25C_0-100_0.5-1C_a"}  # the id BatteryML gives this cell
    np.testing.assert_allclose(df.time, src["Test_Time (s)"])
    np.testing.assert_allclose(df.current, src["Current (A)"])
    np.testing.assert_allclose(df.charge_capacity, src["Charge_Capacity (Ah)"])
    np.testing.assert_allclose(df.temperature, src["Cell_Temperature (C)"], rtol=1e-6)
    assert df.iloc[0][["dataset", "chemistry", "form_factor", "ambient_temperature"]].tolist() == [
        "SNL", "LFP", "cylindrical_18650", 25.0]


@needs_beep
def test_maccor_export_through_beep(tmp_path):
    write_maccor(tmp_path / "in" / "PredictionDiagnostics_000151_00001E.052", n_cycles=3, rows_per_step=4)
    result = run_ingest(IngestConfig(progress=False), str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.format == "maccor" and result.n_rows == 36
    df = pd.read_parquet(tmp_path / "out")
    assert df.cycle_number.tolist() == [c for c in (1, 2, 3) for _ in range(12)]
    np.testing.assert_allclose(df.time, np.arange(10, 370, 10))
    np.testing.assert_allclose(df.current[:12], [0.0] * 4 + [1.1] * 4 + [-1.1] * 4)
    # beep turns Maccor's per-step Amp-hr into charge / discharge capacity within the cycle
    np.testing.assert_allclose(df.charge_capacity[:12], [0] * 4 + [0.01, 0.02, 0.03, 0.04] + [0.04] * 4)
    np.testing.assert_allclose(df.discharge_capacity[:12], [0] * 8 + [0.01, 0.02, 0.03, 0.04])


@needs_beep
def test_beep_refusal_names_the_file(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x_CH1.csv").write_text("Data_Point,Test_Time\n0,1.0\n")
    with pytest.raises(InputDataError, match=r"x_CH1\.csv: beep's ArbinDatapath"):
        run_ingest(IngestConfig(progress=False, format="arbin"), str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_without_beep_cycler_files_fail_with_the_install_hint_and_mappings_still_work(arbin_export, monkeypatch):
    tmp_path, rows = arbin_export
    for name in ("beep", "beep.structure"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # as if beep were not installed
    assert not beep_available()
    write_tri_arbin(tmp_path / "tri" / "FastCharge_000025_CH8.csv")
    with pytest.raises(InputDataError, match=r"FastCharge_000025_CH8\.csv: reading arbin files needs the optional "
                                             r"beep package .*pip install 'msenc\[cyclers\]'"):
        run_ingest(IngestConfig(progress=False), str(tmp_path / "tri"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    result = run_ingest(IngestConfig(progress=False, mapping=str(tmp_path / "arbin.yaml")), str(tmp_path / "in"),
                        str(tmp_path / "out"))
    assert result.format == "mapped" and result.n_rows == len(rows)


@needs_beep
def test_cycler_files_through_ingest_and_preprocess(tmp_path):
    from msenc_lib.preprocess import PreprocessConfig, run_preprocess

    write_tri_arbin(tmp_path / "in" / "FastCharge_000025_CH8.csv", seed=5)
    write_maccor(tmp_path / "in" / "PredictionDiagnostics_000151_00001E.052")
    write_battery_archive(tmp_path / "in" / "HNEI_18650_NMC_LCO_25C_0-100_0.5-1.5C_a_timeseries.csv", seed=6)
    result = run_ingest(IngestConfig(progress=False), str(tmp_path / "in"), str(tmp_path / "unified"))
    assert result.format == "arbin+battery-archive+maccor"
    cells = sorted(pd.read_parquet(tmp_path / "unified").cell_key.unique())
    run_preprocess(PreprocessConfig(progress=False, is_training_shuffled=False), str(tmp_path / "unified"),
                   str(tmp_path / "seqs"))
    seqs = pd.read_parquet(tmp_path / "seqs" / "sequences")
    assert sorted(seqs.cell_key.unique()) == cells and len(seqs) == 9  # 3 cells x 3 cycles
    assert (seqs.n_tokens > 0).all()
