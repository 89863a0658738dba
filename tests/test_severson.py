"""Severson .mat (MATLAB v7.3 / HDF5) and batch-pickle readers on small files with the real structure."""

import itertools
import pickle

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msenc_lib.data import severson
from msenc_lib.data.schema import IR_COLUMN, METADATA_COLUMNS, UNIFIED_COLUMNS
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError
from msenc_lib.ingest import IngestConfig, run_ingest

POLICIES = {1: "3.6C(80%)-3.6C", 2: "5.4C(40%)-3.6C", 3: "5.4C(15%)-1.6C(75%)-2C-newstructure"}
N_CELLS = {1: 9, 2: 17, 3: 4}  # enough channels for b1c8, b2c7..b2c16, b3c2
DQDV_LEN = 5


def make_cell(batch: int, channel: int, n_cycles: int = 3, rows: int = 7) -> dict:
    """A cell in the pickle layout of the BuildPkl notebooks (original-workflow.md §1.1)."""
    rng = np.random.default_rng([batch, channel])
    cycles = {}
    for j in range(n_cycles):
        n = rows + j  # cycles of different lengths
        t = np.cumsum(rng.uniform(0.1, 1.0, n)) - 0.1
        cycles[str(j)] = {
            "I": rng.uniform(-4, 6, n), "Qc": rng.uniform(0, 1.1, n), "Qd": rng.uniform(0, 1.1, n),
            "Qdlin": rng.uniform(0, 1.1, 1000), "T": rng.uniform(30, 36, n), "Tdlin": rng.uniform(30, 36, 1000),
            "V": rng.uniform(2.0, 3.6, n), "dQdV": np.empty(0) if j == 0 else rng.uniform(-5, 0, DQDV_LEN),
            "t": t,
        }
    life = np.nan if (batch, channel) in {(1, 8), (3, 3)} else float(300 + 37 * channel + 1000 * (batch == 1))
    summary = {k: rng.uniform(0, 1, n_cycles) for k in ["IR", "QC", "QD", "Tavg", "Tmin", "Tmax", "chargetime"]}
    summary["cycle"] = np.arange(1, n_cycles + 1, dtype=float)
    return {"cycle_life": np.array([[life]]), "charge_policy": POLICIES[batch], "summary": summary, "cycles": cycles}


def make_batch(batch: int) -> dict:
    return {f"b{batch}c{i}": make_cell(batch, i) for i in range(N_CELLS[batch])}


def write_pickle(path, batch: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)


def write_mat(path, batch: dict) -> None:
    """A MATLAB v7.3 batch file: struct array 'batch' whose fields hold one object reference per cell."""
    counter = itertools.count()
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def dataset(data, matlab_class="double"):
            name = f"r{next(counter)}"
            data = np.asarray(data)
            if data.size == 0:  # how MATLAB stores an empty array
                ds = refs.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                ds = refs.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            return ds

        def column(values):  # a MATLAB column vector is stored as shape (1, n)
            return dataset(np.asarray(values, dtype=np.float64).reshape(1, -1)).ref

        def struct(fields: dict) -> h5py.Reference:
            g = refs.create_group(f"s{next(counter)}")
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in fields.items():
                g[k] = v
            return g.ref

        cells = list(batch.values())
        n = len(cells)
        fields = {k: np.empty((n, 1), dtype=h5py.ref_dtype) for k in ["cycle_life", "policy_readable", "summary",
                                                                     "cycles"]}
        for i, cell in enumerate(cells):
            fields["cycle_life"][i, 0] = dataset(np.asarray(cell["cycle_life"], dtype=np.float64)).ref
            codes = np.array([ord(c) for c in cell["charge_policy"]], dtype=np.uint16).reshape(-1, 1)
            fields["policy_readable"][i, 0] = dataset(codes, "char").ref
            names = {"IR": "IR", "QC": "QCharge", "QD": "QDischarge", "Tavg": "Tavg", "Tmin": "Tmin",
                     "Tmax": "Tmax", "chargetime": "chargetime", "cycle": "cycle"}
            fields["summary"][i, 0] = struct({names[k]: np.asarray(v, dtype=np.float64).reshape(1, -1)
                                              for k, v in cell["summary"].items()})
            cyc = list(cell["cycles"].values())
            per_field = {}
            for mat_name, key in severson.MAT_CYCLE_FIELDS.items():
                r = np.empty((len(cyc), 1), dtype=h5py.ref_dtype)
                for j, c in enumerate(cyc):
                    r[j, 0] = column(c[key])
                per_field[mat_name] = r
            fields["cycles"][i, 0] = struct(per_field)
        g = f.create_group("batch")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in fields.items():
            g.create_dataset(k, data=v, dtype=h5py.ref_dtype)
    with open(path, "r+b") as fh:  # the MATLAB header in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by msenc tests HDF5 schema 1.00 .")


@pytest.fixture(scope="module")
def batches():
    return {b: make_batch(b) for b in (1, 2, 3)}


@pytest.fixture(scope="module")
def mat_dir(tmp_path_factory, batches):
    d = tmp_path_factory.mktemp("mat")
    names = {1: "2017-05-12_batchdata_updated_struct_errorcorrect.mat",
             2: "2017-06-30_batchdata_updated_struct_errorcorrect.mat",
             3: "2018-04-12_batchdata_updated_struct_errorcorrect.mat"}
    for b, batch in batches.items():
        write_mat(d / names[b], batch)
    return d


@pytest.fixture(scope="module")
def pkl_dir(tmp_path_factory, batches):
    d = tmp_path_factory.mktemp("pkl")
    for b, batch in batches.items():
        write_pickle(d / f"batch{b}.pkl", batch)
    return d


def expected_rows(cell: dict, key: str, batch: int) -> pd.DataFrame:
    """The unified rows by the letter of original-workflow.md §1.2 (row by row, like the original loop)."""
    quart = {"3.6C(80%)-3.6C": [3.6] * 4, "5.4C(40%)-3.6C": [5.4, 4.68, 3.6, 3.6],
             "5.4C(15%)-1.6C(75%)-2C-newstructure": [3.88, 1.6, 1.6, 2.0]}[cell["charge_policy"]]
    life = cell["cycle_life"][0][0]
    rows = []
    for cnum, c in cell["cycles"].items():
        for idx in range(len(c["I"])):
            rows.append([key, int(cnum), c["t"][idx], None if np.isnan(life) else int(life), 400, c["I"][idx],
                         c["V"][idx], c["Qc"][idx], c["Qd"][idx], c["T"][idx], batch,
                         c["dQdV"][idx] if idx < len(c["dQdV"]) else None, *quart])
    df = pd.DataFrame(rows, columns=UNIFIED_COLUMNS)
    df["cycle_life"] = df["cycle_life"].astype("Int64")
    return df


# --------------------------------------------------------------------------------------------- the tests
def test_mat_reader_gives_the_pickle_structure(mat_dir, batches):
    path = next(mat_dir.glob("2017-05-12*.mat"))
    mb = severson.MatBatch(str(path), 1, with_lin=True)
    try:
        assert list(mb) == list(batches[1])
        cell, want = mb["b1c3"], batches[1]["b1c3"]
        assert cell["charge_policy"] == want["charge_policy"]
        assert cell["cycle_life"].tolist() == [want["cycle_life"][0][0]]
        assert set(cell["summary"]) == set(want["summary"])
        np.testing.assert_array_equal(cell["summary"]["IR"], want["summary"]["IR"])
        assert list(cell["cycles"]) == ["0", "1", "2"]
        for j in cell["cycles"]:
            for k, v in want["cycles"][j].items():
                np.testing.assert_array_equal(cell["cycles"][j][k], v)
        assert cell["cycles"]["0"]["dQdV"].size == 0  # MATLAB empty array
    finally:
        mb.close()


def test_batch_numbers_from_file_names():
    assert severson.batch_number_from_name("2017-05-12_batchdata_updated_struct_errorcorrect.mat") == 1
    assert severson.batch_number_from_name("2018-04-12_batchdata_updated_struct_errorcorrect.mat") == 3
    assert severson.batch_number_from_name("batch2.pkl") == 2
    assert severson.batch_number_from_name("mydata.mat") is None


def test_cleaning_drops_and_merges_like_the_original(batches):
    report = ValidationReport(source="test")
    out = list(severson.clean_batches(batches, report))
    keys = [k for _, k, _ in out]
    assert not {"b1c8", "b2c7", "b2c8", "b2c9", "b2c15", "b2c16", "b3c2"} & set(keys)
    assert keys[:8] == [f"b1c{i}" for i in range(8)] and "b2c10" in keys and keys[-1] == "b3c3"
    merged = dict((k, c) for _, k, c in out)
    for b2, b1, offset in severson.CARRY_OVER:
        cell = merged[b1]
        assert cell["cycle_life"][0][0] == batches[1][b1]["cycle_life"][0][0] + offset
        assert list(cell["cycles"]) == [str(i) for i in range(6)]  # batch-2 cycles renumbered 3, 4, 5
        np.testing.assert_array_equal(cell["cycles"]["4"]["V"], batches[2][b2]["cycles"]["1"]["V"])
        np.testing.assert_array_equal(cell["summary"]["cycle"], [1, 2, 3, 4, 5, 6])  # offset by len(batch 1)
        assert cell["summary"]["IR"].size == 6
    assert batches[1]["b1c0"]["cycle_life"][0][0] == 1300  # inputs are not modified
    counts = report.counts()
    assert counts["severson_dropped_cells"] == 1 + 1 and counts["severson_merged_cells"] == 5


def test_cleaning_without_batch_two(batches):
    report = ValidationReport(source="test")
    out = {k: c for _, k, c in severson.clean_batches({1: batches[1]}, report)}
    assert out["b1c0"]["cycle_life"][0][0] == 1300 + 662 and len(out["b1c0"]["cycles"]) == 3
    assert report.count("severson_carry_over_missing") == 5
    report = ValidationReport(source="test")
    out = {k for _, k, _ in severson.clean_batches({2: batches[2]}, report)}
    assert "b2c7" not in out and report.count("severson_carry_over_dropped") == 5


def test_cleaning_can_be_switched_off(batches):
    keys = [k for _, k, _ in severson.clean_batches(batches, ValidationReport(source="t"), cleaning=False)]
    assert len(keys) == sum(N_CELLS.values())


def test_rows_follow_the_unified_csv_rule(batches):
    report = ValidationReport(source="t")
    cell = batches[3]["b3c1"]
    table = severson.cell_to_table("b3c1", cell, 3, "batch3.pkl", report)
    assert table.column_names == UNIFIED_COLUMNS + METADATA_COLUMNS
    assert table.select(METADATA_COLUMNS).to_pylist()[0] == {
        "dataset": "MATR", "chemistry": "LFP", "nominal_capacity": 1.1, "form_factor": "cylindrical_18650",
        "ambient_temperature": 30.0}
    got = table.select(UNIFIED_COLUMNS).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    want = expected_rows(cell, "b3c1", 3)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # empty dQdV past the array: cycle 0 has none, later cycles 5 of 8 / 9 rows
    assert table.column("discharge_dQdV").null_count == 7 + (8 - 5) + (9 - 5)
    assert table.schema.field("cycle_number").type == pa.int64()


def test_missing_cycle_life_becomes_null_with_a_warning(batches):
    report = ValidationReport(source="t")
    table = severson.cell_to_table("b3c3", batches[3]["b3c3"], 3, "batch3.pkl", report)
    assert table.column("cycle_life").null_count == table.num_rows
    assert report.count("missing_cycle_life") == 1


def test_internal_resistance_column_on_request(batches):
    cell = batches[1]["b1c5"]
    table = severson.cell_to_table("b1c5", cell, 1, "b.pkl", ValidationReport(source="t"), include_ir=True)
    assert table.column_names == UNIFIED_COLUMNS + METADATA_COLUMNS + [IR_COLUMN]
    df = table.to_pandas()
    for j, ir in enumerate(cell["summary"]["IR"]):
        assert set(df.loc[df.cycle_number == j, IR_COLUMN]) == {ir}


def test_bad_policy_and_bad_arrays_name_the_cell(batches):
    cell = dict(batches[1]["b1c1"], charge_policy="fast please")
    report = ValidationReport(source="t")
    table = severson.cell_to_table("b1c1", cell, 1, "batch1.pkl", report)
    assert table.column("charge_policy_Q1").null_count == table.num_rows
    assert "cell b1c1: charge policy 'fast please'" in report.warnings[0].message
    cycles = {k: dict(v) for k, v in batches[1]["b1c1"]["cycles"].items()}
    cycles["2"]["t"] = cycles["2"]["t"][:3]
    cell = dict(batches[1]["b1c1"], cycles=cycles)
    with pytest.raises(InputDataError, match=r"cell b1c1, cycle 2: array 't' has 3 values but 'I' has 9"):
        severson.cell_to_table("b1c1", cell, 1, "batch1.pkl", ValidationReport(source="t"))


def test_ingest_mat_and_pickle_give_identical_parquet(mat_dir, pkl_dir, batches, tmp_path):
    r_mat = run_ingest(IngestConfig(progress=False), str(mat_dir), str(tmp_path / "from-mat"))
    r_pkl = run_ingest(IngestConfig(progress=False), str(pkl_dir), str(tmp_path / "from-pkl"))
    assert r_mat.format == "severson-mat" and r_pkl.format == "severson-pickle"
    assert r_mat.n_cells == r_pkl.n_cells == sum(N_CELLS.values()) - 5 - 1 - 1  # 5 merged, b1c8, b3c2
    files = sorted(p.name for p in (tmp_path / "from-mat").glob("*.parquet"))
    assert files == sorted(p.name for p in (tmp_path / "from-pkl").glob("*.parquet"))
    for name in files:
        assert (tmp_path / "from-mat" / name).read_bytes() == (tmp_path / "from-pkl" / name).read_bytes(), name
    df = pd.read_parquet(tmp_path / "from-mat")
    b1c0 = df[df.cell_key == "b1c0"]
    assert sorted(b1c0.cycle_number.unique()) == list(range(6))
    assert set(b1c0.cycle_life) == {1300 + 662}
    assert set(df.batch_number) == {1, 2, 3} and set(df.discharge_policy) == {400}
    assert set(df[df.batch_number == 2].charge_policy_Q2) == {4.68}
    kinds = {w.kind for w in r_mat.warnings}
    assert {"severson_dropped_cells", "severson_merged_cells", "missing_cycle_life", "empty_discharge_dQdV"} <= kinds


def test_ingest_severson_bad_file_name_and_bad_file(tmp_path, batches):
    write_pickle(tmp_path / "mydata.pkl", {f"cell{i}": c for i, c in enumerate(batches[3].values())})
    with pytest.raises(InputDataError, match=r"mydata\.pkl: a pickle that is neither .* first key is 'cell0'"):
        run_ingest(IngestConfig(progress=False), str(tmp_path / "mydata.pkl"), str(tmp_path / "out"))
    with pytest.raises(InputDataError, match=r"mydata\.pkl: cannot tell which MATR batch"):
        run_ingest(IngestConfig(progress=False, format="severson-pickle"), str(tmp_path / "mydata.pkl"),
                   str(tmp_path / "out"))
    (tmp_path / "batch1.mat").write_bytes(b"not hdf5")
    with pytest.raises(InputDataError, match=r"batch1\.mat: not a MATLAB v7\.3"):
        run_ingest(IngestConfig(progress=False), str(tmp_path / "batch1.mat"), str(tmp_path / "out"))
    (tmp_path / "batch2.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputDataError, match=r"batch2\.pkl: not a pickle"):
        run_ingest(IngestConfig(progress=False, format="severson-pickle"), str(tmp_path / "batch2.pkl"),
                   str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ identity, repairs, refusals
BATTERYML_NAMES = {1: "MATR_batch_20170512.mat", 2: "MATR_batch_20170630.mat", 3: "MATR_batch_20180412.mat"}


def test_original_and_batteryml_file_names_give_the_same_cells(mat_dir, batches, tmp_path):
    renamed = tmp_path / "MATR"
    renamed.mkdir()
    for b, name in BATTERYML_NAMES.items():
        original = next(mat_dir.glob(f"{severson.RELEASE_BY_BATCH[b].date}_*.mat"))
        (renamed / name).write_bytes(original.read_bytes())
    r_orig = run_ingest(IngestConfig(progress=False), str(mat_dir), str(tmp_path / "orig"))
    r_bml = run_ingest(IngestConfig(progress=False), str(renamed), str(tmp_path / "bml"))
    assert r_orig.n_cells == r_bml.n_cells == sum(N_CELLS.values()) - 5 - 1 - 1
    assert r_orig.n_rows == r_bml.n_rows
    files = sorted(p.name for p in (tmp_path / "orig").glob("*.parquet"))
    assert files == sorted(p.name for p in (tmp_path / "bml").glob("*.parquet"))
    for name in files:  # same rows, same cycle lives, byte for byte
        assert (tmp_path / "orig" / name).read_bytes() == (tmp_path / "bml" / name).read_bytes(), name
    df = pd.read_parquet(tmp_path / "bml")
    assert set(df.batch_number) == {1, 2, 3} and "b1c0" in set(df.cell_key)
    assert set(df[df.cell_key == "b1c0"].cycle_life) == {1300 + 662}  # the carry-over merge happened
    described = [w.message for w in r_bml.warnings if w.kind == "severson_batch"]
    assert any("MATR_batch_20170512.mat: batch 1 (2017-05-12" in m for m in described)


def test_release_dates_in_any_spelling_and_conflicts():
    for name in ("2017-05-12_batchdata_updated_struct_errorcorrect.mat", "MATR_batch_20170512.mat",
                 "batch_2017_05_12.mat"):
        assert severson.identify(name).batch == 1
    assert severson.identify("MATR_batch_20190124.mat").release.date == "2019-01-24"
    assert severson.identify("anything.pkl", ["b3c0", "b3c1"]).batch == 3
    with pytest.raises(InputDataError, match=r"date 2017-05-13 in the file name is not a known MATR release"):
        severson.identify("MATR_batch_20170513.mat")
    with pytest.raises(InputDataError, match=r"batch1\.pkl: the file name says batch 1 but its cells are b2c"):
        severson.identify("batch1.pkl", ["b2c0"])


def test_closed_loop_batch_with_empty_cycle_lives(tmp_path):
    """The 2019-01-24 batch under BatteryML's name: CC1-CC4 policies as SOC windows, empty cycle lives null."""
    batch = {}
    for i in range(3):
        cell = make_cell(1, i)
        cell["charge_policy"] = "4.8-5.2-5.2-4.16"
        if i != 1:
            cell["cycle_life"] = np.empty((0, 0))  # MATLAB empty: h5py sees its dimensions [0, 0]
        batch[f"b4c{i}"] = cell
    write_mat(tmp_path / "MATR_batch_20190124.mat", batch)
    result = run_ingest(IngestConfig(progress=False), str(tmp_path / "MATR_batch_20190124.mat"), str(tmp_path / "out"))
    df = pd.read_parquet(tmp_path / "out")
    assert sorted(df.cell_key.unique()) == ["b4c0", "b4c1", "b4c2"] and set(df.batch_number) == {4}
    assert df[["charge_policy_Q1", "charge_policy_Q2", "charge_policy_Q3", "charge_policy_Q4"]].iloc[0].tolist() \
        == [4.88, 5.2, 4.576, 1.632]
    lives = df.groupby("cell_key").cycle_life.first()
    assert lives.isna().tolist() == [True, False, True] and lives["b4c1"] == batch["b4c1"]["cycle_life"][0][0]
    assert not (df.cycle_life == 0).any()
    missing = [w.message for w in result.warnings if w.kind == "missing_cycle_life"]
    assert len(missing) == 2 and any("b4c0" in m for m in missing) and any("b4c2" in m for m in missing)


def test_known_bad_cycles_and_time_resets_repaired_and_counted_strict_refuses(tmp_path, capsys):
    from msenc_cli import main as cli

    b1 = {f"b1c{i}": make_cell(1, i, n_cycles=13 if i == 0 else 3) for i in range(3)}
    t = b1["b1c1"]["cycles"]["2"]["t"]
    t[4:] = t[4:] - t[4] + 0.01  # the cycle's clock restarts after row 4
    (tmp_path / "in").mkdir()
    write_mat(tmp_path / "in" / "MATR_batch_20170512.mat", b1)
    out = tmp_path / "out"
    code = cli.main(["ingest", "--input-path", str(tmp_path / "in"), "--output-dir", str(out), "--strict",
                     "--progress", "false"])
    assert code != 0 and not out.exists()
    assert "b1c0, cycle 11: a known corrupt cycle" in capsys.readouterr().err
    result = run_ingest(IngestConfig(progress=False), str(tmp_path / "in"), str(out))
    assert result.repair_counts["known_bad_cycle"] == len(b1["b1c0"]["cycles"]["11"]["I"])
    assert result.repair_counts["time_reset"] == 1
    recs = {(r.kind, r.cell_key): r for r in result.repairs}
    assert recs[("known_bad_cycle", "b1c0")].cycles == {"11": len(b1["b1c0"]["cycles"]["11"]["I"])}
    assert recs[("time_reset", "b1c1")].cycles == {"2": 1} and recs[("time_reset", "b1c1")].action == "rebased"
    df = pd.read_parquet(out)
    assert 11 not in set(df[df.cell_key == "b1c0"].cycle_number)  # excluded; later cycles keep their numbers
    assert 12 in set(df[df.cell_key == "b1c0"].cycle_number)
    assert np.all(np.diff(df[(df.cell_key == "b1c1") & (df.cycle_number == 2)].time.to_numpy()) >= 0)
    unmatched = " ".join(w.message for w in result.warnings if w.kind == "cleaning_rule_unmatched")
    assert "b1c18" in unmatched and "b1c8" in unmatched  # rules with nothing to do are reported
    # without the corrupt cycle, the time reset alone is refused under --strict
    (tmp_path / "in2").mkdir()
    write_mat(tmp_path / "in2" / "MATR_batch_20170512.mat", {**b1, "b1c0": make_cell(1, 0)})
    with pytest.raises(InputDataError, match=r"cell 'b1c1', column 'time': time goes backwards inside cycle 2"):
        run_ingest(IngestConfig(progress=False, strict=True), str(tmp_path / "in2"), str(tmp_path / "out2"))


def test_legacy_notebook_pickles_are_refused(tmp_path, batches):
    legacy = {}
    for key, cell in list(batches[2].items())[:3]:
        cycles = {j: {**c, "I": c["Qc"].copy(), "Qd": c["Qc"].copy()} for j, c in cell["cycles"].items()}
        legacy[key] = {**cell, "cycles": cycles}
    write_pickle(tmp_path / "batch2.pkl", legacy)
    with pytest.raises(InputDataError, match=r"batch2\.pkl: cell b2c0: 'I' and 'Qd' are copies of 'Qc'.*d33d7ca"):
        run_ingest(IngestConfig(progress=False), str(tmp_path / "batch2.pkl"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_mat_file_is_named(mat_dir, tmp_path):
    data = next(mat_dir.glob("2017-06-30*.mat")).read_bytes()
    (tmp_path / "MATR_batch_20170630.mat").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputDataError, match=r"MATR_batch_20170630\.mat: (not a MATLAB v7\.3 \(HDF5\) file, or "
                                             r"truncated|cell b2c\d+: unexpected or truncated \.mat structure)"):
        run_ingest(IngestConfig(progress=False), str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
