import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msenc_cli import main as cli
from msenc_lib import storage
from msenc_lib.data import synthetic
from msenc_lib.data.schema import UNIFIED_COLUMNS
from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data
from msenc_lib.data.unified import read_unified
from msenc_lib.layout import read_unified_manifest
from msenc_lib.errors import InputDataError, StorageError
from msenc_lib.ingest import IngestConfig, run_ingest

CFG = IngestConfig(progress=False)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    tables = [t for _, t in synthetic.generate("tiny", seed=5, n_cells=4, last_cycle=4)]
    return pa.concat_tables(tables).to_pandas()


@pytest.fixture
def csv_dir(small, tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    for key, part in small.groupby("cell_key", sort=False):
        part.to_csv(d / f"{key}.csv", index=False)
    return d


def test_directory_of_csvs_keeps_every_cell_and_row(small, csv_dir, tmp_path):
    result = run_ingest(CFG, str(csv_dir), str(tmp_path / "out"))
    assert result.n_cells == 4 and result.n_rows == len(small) and result.n_input_files == 4
    back = pd.read_parquet(tmp_path / "out")
    assert list(back.columns) == UNIFIED_COLUMNS
    back = back.sort_values(["cell_key"], kind="stable").reset_index(drop=True)
    want = small.sort_values(["cell_key"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, want)
    manifest = read_unified_manifest(str(tmp_path / "out"))
    assert manifest["n_rows"] == len(small) and manifest["columns"] == UNIFIED_COLUMNS
    assert [i["size"] for i in manifest["source"]["inputs"]] == [(csv_dir / f"{k}.csv").stat().st_size
                                                                 for k in sorted(small.cell_key.unique())]
    assert {w["kind"] for w in manifest["warnings"]} >= {"cycle0_zero_rows", "empty_discharge_dQdV"}


def test_one_big_csv_with_interleaved_cells_streamed(small, tmp_path):
    # cells interleaved in blocks of 50 rows (round robin): each cell must come out whole, in its order
    per_cell = [[g.iloc[i:i + 50] for i in range(0, len(g), 50)] for _, g in small.groupby("cell_key")]
    rounds = max(len(c) for c in per_cell)
    mixed = pd.concat([c[r] for r in range(rounds) for c in per_cell if r < len(c)], ignore_index=True)
    assert (mixed.cell_key != mixed.cell_key.shift()).sum() > 4 * 2
    mixed.to_csv(tmp_path / "all.csv", index=False)
    cfg = IngestConfig(progress=False, csv_block_size=8192)
    result = run_ingest(cfg, str(tmp_path / "all.csv"), str(tmp_path / "out"))
    assert result.n_rows == len(small)
    for key, part in small.groupby("cell_key"):
        got = read_unified(str(tmp_path / "out"), cells=[key]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, part.reset_index(drop=True))


def test_csv_without_voltage_fails_and_leaves_no_output(small, tmp_path, capsys):
    small.drop(columns=["voltage"]).to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out"
    code = cli.main(["ingest", "--input-path", str(tmp_path / "bad.csv"), "--output-dir", str(out),
                     "--progress", "false"])
    assert code != 0
    err = capsys.readouterr().err
    assert "voltage" in err and "bad.csv" in err
    assert not out.exists()
    out.mkdir()  # an existing empty output folder stays empty
    assert cli.main(["ingest", "--input-path", str(tmp_path / "bad.csv"), "--output-dir", str(out)]) != 0
    assert list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left over


def test_nan_row_in_a_folder_is_dropped_and_counted_and_strict_refuses_it(small, csv_dir, tmp_path):
    df = pd.read_csv(csv_dir / "b2c0.csv")
    df.loc[10, "time"] = float("nan")
    df.to_csv(csv_dir / "b2c0.csv", index=False)
    cycle = int(df.loc[10, "cycle_number"])
    with pytest.raises(InputDataError, match=r"b2c0\.csv: row 11 .*cell 'b2c0', column 'time'.*strict"):
        run_ingest(IngestConfig(progress=False, strict=True), str(csv_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    result = run_ingest(CFG, str(csv_dir), str(tmp_path / "out"))
    assert result.n_rows == len(small) - 1
    assert result.repair_counts["non_finite_values"] == 1
    [record] = [r for r in result.repairs if r.kind == "non_finite_values"]
    assert (record.cell_key, record.action, record.cycles) == ("b2c0", "dropped", {str(cycle): 1})
    manifest = read_unified_manifest(str(tmp_path / "out"))
    assert record.model_dump() in manifest["repairs"]
    assert manifest["repair_counts"] == result.repair_counts


def test_csv_export_matches_the_beep_data_utils_layout(small, tmp_path):
    small.to_csv(tmp_path / "beep.csv", index=False)
    result = run_ingest(IngestConfig(progress=False, csv=True), str(tmp_path / "beep.csv"), str(tmp_path / "out"))
    assert result.csv_uri.endswith("_csv/unified.csv")
    assert (tmp_path / "out" / "_csv" / "unified.csv").read_text() == (tmp_path / "beep.csv").read_text()
    assert len(pd.read_parquet(tmp_path / "out")) == len(small)  # the _csv folder is not read as data


def test_float_cycle_numbers_in_one_file_make_the_dataset_float(small, csv_dir, tmp_path):
    part = small[small.cell_key == "b2c1"].copy()
    assert len(part)
    part["cycle_number"] = part["cycle_number"].astype(float) + 0.5
    part.to_csv(csv_dir / "b2c1.csv", index=False)
    result = run_ingest(CFG, str(csv_dir), str(tmp_path / "out"))
    assert result.dtypes["cycle_number"] == "double"
    for f in (tmp_path / "out").glob("*.parquet"):
        assert pq.read_schema(f).field("cycle_number").type == pa.float64()
    df = pd.read_parquet(tmp_path / "out")
    assert df.cycle_number.dtype == "float64" and len(df) == len(small)
    assert any(w.kind == "float_cycle_number" for w in result.warnings)


def test_inputs_with_different_optional_columns(small, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    a = small[small.cell_key == "b1c0"]
    b = small[small.cell_key == "b1c1"].drop(columns=["batch_number", "discharge_dQdV"])
    b = b.assign(channel=3)
    a.to_csv(d / "a.csv", index=False)
    b.to_csv(d / "b.csv", index=False)
    result = run_ingest(CFG, str(d), str(tmp_path / "out"))
    assert result.columns == UNIFIED_COLUMNS + ["channel"]
    df = pd.read_parquet(tmp_path / "out")
    assert df.loc[df.cell_key == "b1c1", "batch_number"].isna().all()
    assert df.loc[df.cell_key == "b1c0", "channel"].isna().all()
    kinds = {w.kind for w in result.warnings}
    assert {"missing_optional_columns", "extra_columns", "column_filled_null"} <= kinds


def test_generated_data_ingests_to_identical_parquet(tmp_path):
    run_generate_data(GenerateDataConfig(n_cells=3, last_cycle=5, progress=False), str(tmp_path / "raw"))
    result = run_ingest(CFG, str(tmp_path / "raw"), str(tmp_path / "unified"))
    assert result.format == "parquet" and result.n_cells == 3
    for f in (tmp_path / "raw").glob("*.parquet"):
        assert (tmp_path / "unified" / f.name).read_bytes() == f.read_bytes()


def test_overwrite(csv_dir, tmp_path):
    run_ingest(CFG, str(csv_dir), str(tmp_path / "out"))
    with pytest.raises(StorageError, match="already exists"):
        run_ingest(CFG, str(csv_dir), str(tmp_path / "out"))
    (csv_dir / "b1c0.csv").unlink()
    result = run_ingest(CFG, str(csv_dir), str(tmp_path / "out"), overwrite=True)
    assert result.n_cells == 3 and not (tmp_path / "out" / "b1c0.parquet").exists()


def test_cli_prints_the_result(csv_dir, tmp_path, capsys):
    assert cli.main(["ingest", "--input-path", str(csv_dir / "*.csv"), "--output-dir", str(tmp_path / "o"),
                     "--format", "csv", "--progress", "false"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_cells"] == 4 and result["format"] == "csv"


def test_s3_ingest_is_byte_identical_to_local(small, csv_dir, tmp_path, s3):
    local = run_ingest(CFG, str(csv_dir), str(tmp_path / "local"))
    for f in sorted(csv_dir.iterdir()):
        storage.write_bytes(s3.uri("raw", f.name), f.read_bytes())
    remote = run_ingest(CFG, s3.uri("raw"), s3.uri("unified"))
    assert remote.n_rows == local.n_rows == len(small)
    keys = s3.keys("unified/")
    parquet = sorted(k for k in keys if k.endswith(".parquet"))
    assert [k.rsplit("/", 1)[1] for k in parquet] == sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    for k in parquet:
        assert storage.read_bytes(s3.uri(k)) == (tmp_path / "local" / k.rsplit("/", 1)[1]).read_bytes(), k
    assert "unified/_manifest.json" in keys
    table = read_unified(s3.uri("unified"), columns=["cell_key", "voltage"])
    assert len(table) == len(small) and list(table.columns) == ["cell_key", "voltage"]


def test_s3_failure_leaves_nothing(small, tmp_path, s3):
    storage.write_bytes(s3.uri("raw", "bad.csv"), small.drop(columns=["voltage"]).to_csv(index=False).encode())
    with pytest.raises(InputDataError, match="voltage"):
        run_ingest(CFG, s3.uri("raw"), s3.uri("unified"))
    assert s3.keys("unified/") == []


def test_reread_after_a_late_type_change_keeps_each_row_once(small, tmp_path):
    df = small.copy()
    df["cycle_number"] = df["cycle_number"].astype(object)
    df.loc[len(df) - 1, "cycle_number"] = 4.5  # the first blocks look like integers
    df.to_csv(tmp_path / "x.csv", index=False)
    result = run_ingest(IngestConfig(progress=False, csv_block_size=4096), str(tmp_path / "x.csv"),
                        str(tmp_path / "out"))
    back = pd.read_parquet(tmp_path / "out")
    assert result.n_rows == len(back) == len(df) and back.cycle_number.dtype == "float64"
    assert sorted(back.cycle_number.unique())[-1] == 4.5


def test_cell_keys_that_are_not_file_names(small, tmp_path):
    df = small[small.cell_key.isin(["b1c0", "b1c1", "b2c0"])].copy()
    df["cell_key"] = df["cell_key"].map({"b1c0": "cell/1", "b1c1": "_hidden", "b2c0": "x y"})
    df.to_csv(tmp_path / "x.csv", index=False)
    run_ingest(CFG, str(tmp_path / "x.csv"), str(tmp_path / "out"))
    names = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert names == ["%5Fhidden.parquet", "cell%2F1.parquet", "x%20y.parquet"]
    assert len(pd.read_parquet(tmp_path / "out")) == len(df)  # none hidden from pandas
    got = read_unified(str(tmp_path / "out"), cells=["_hidden"])
    assert set(got.cell_key) == {"_hidden"} and len(got) == int((df.cell_key == "_hidden").sum())


def test_identifier_codes_keep_every_digit_through_csv_and_parquet(small, tmp_path):
    df = small.copy()
    df["charge_policy"] = "12345678901234567890"  # beep-data-utils' 20-digit policy codes
    df["channel"] = "007"
    df["internal_resistance"] = 0.0155
    df.to_csv(tmp_path / "codes.csv", index=False)
    df.to_parquet(tmp_path / "codes.parquet")
    for name in ("codes.csv", "codes.parquet"):
        run_ingest(CFG, str(tmp_path / name), str(tmp_path / name.replace(".", "-")))
        back = pd.read_parquet(tmp_path / name.replace(".", "-"))
        assert set(back.charge_policy) == {"12345678901234567890"} and set(back.channel) == {"007"}, name
        assert back.internal_resistance.dtype == "float64" and set(back.internal_resistance) == {0.0155}, name
