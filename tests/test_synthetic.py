import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msenc_cli import main as cli
from msenc_lib.data import synthetic
from msenc_lib.data.features import severson_features
from msenc_lib.data.policy import parse_charge_policy
from msenc_lib.data.schema import UNIFIED_COLUMNS
from msenc_lib.data.synthetic import SIZES, GenerateDataConfig, run_generate_data
from msenc_lib.errors import EXIT_ENVIRONMENT, StorageError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "tiny"
    result = run_generate_data(GenerateDataConfig(size="tiny", seed=0, progress=False), str(out))
    return out, result


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return pd.read_parquet(tiny_dir[0])


def test_same_seed_gives_identical_files(tiny_dir, tmp_path):
    out, _ = tiny_dir
    again = tmp_path / "again"
    run_generate_data(GenerateDataConfig(size="tiny", seed=0, progress=False), str(again))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir()) and "_manifest.json" in names
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    run_generate_data(GenerateDataConfig(size="tiny", seed=1, progress=False), str(other))
    assert (other / "b1c0.parquet").read_bytes() != (out / "b1c0.parquet").read_bytes()


def test_tiny_layout_and_size(tiny_dir, tiny):
    out, result = tiny_dir
    assert list(tiny.columns) == UNIFIED_COLUMNS
    assert result.n_cells == SIZES["tiny"].n_cells == tiny.cell_key.nunique() == 8
    assert result.n_rows == len(tiny) <= 50_000
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["n_rows"] == len(tiny) and len(manifest["cells"]) == 8
    assert {c["file"] for c in manifest["cells"]} == {p.name for p in out.glob("*.parquet")}
    assert tiny.groupby("cell_key").cycle_number.max().eq(120).all()
    assert str(tiny.cycle_number.dtype) == "int64" and str(tiny.cycle_life.dtype) == "int64"


def test_cycle_life_varies_and_matches_the_80_percent_rule(tiny):
    lives = tiny.groupby("cell_key").cycle_life.first()
    assert lives.max() / lives.min() > 2
    assert lives.min() >= 100 and lives.max() <= 2500
    # the recorded capacity follows the model: first cycle below 0.88 Ah == cycle_life (full-life cell)
    plan = min(synthetic.plan_cells(8, 0), key=lambda p: p.target_life)
    spec = synthetic.SizeSpec(n_cells=8, last_cycle=None, resolution=synthetic.NORMAL)
    cell = synthetic.generate_cell(plan, spec, 0).to_pandas()
    qd = cell[cell.cycle_number >= 1].groupby("cycle_number").discharge_capacity.max()
    assert qd.iloc[0] > 1.0
    assert int(qd.index[np.flatnonzero(qd.to_numpy() < 0.88)[0]]) == plan.cycle_life == cell.cycle_life.iloc[0]
    assert cell.cycle_number.max() == plan.cycle_life


def test_values_are_plausible(tiny):
    zero = (tiny.cycle_number == 0) & (tiny.voltage == 0)
    assert zero.sum() == 2 * 8  # two all-zero rows open cycle 0 of each cell
    first_rows = tiny.groupby("cell_key").head(2)
    assert (first_rows.voltage == 0).all() and (first_rows.time == 0).all() and (first_rows.temperature == 0).all()
    rest = tiny[~zero]
    assert rest.voltage.between(2.0, 3.6).all()
    assert rest.temperature.between(25, 45).all()
    assert rest.current.between(-4.1, 8.1).all()
    assert (rest.current < 0).any() and (rest.current > 3).any()
    assert rest.time.max() < 120  # minutes
    per_cycle = tiny.groupby(["cell_key", "cycle_number"]).size()
    assert per_cycle.between(20, 60).all()  # tens of samples per cycle
    # discharge_dQdV is empty past its per-cycle array, present before it
    pos = tiny.groupby(["cell_key", "cycle_number"]).cumcount()
    assert tiny.discharge_dQdV[pos >= SIZES["tiny"].resolution.dqdv_len].isna().all()
    assert tiny.discharge_dQdV[pos < SIZES["tiny"].resolution.dqdv_len].notna().all()
    # temperature rises while charging or discharging fast
    t_charge = rest[rest.current > 3].temperature.mean()
    assert t_charge > rest[rest.current == 0].temperature.mean() + 1


def test_policies_are_strings_turned_into_quartiles(tiny_dir, tiny):
    manifest = json.loads((tiny_dir[0] / "_manifest.json").read_text())
    for cell in manifest["cells"]:
        assert "C" in cell["charge_policy"]
        q = parse_charge_policy(cell["charge_policy"])
        got = tiny.loc[tiny.cell_key == cell["cell_key"], [f"charge_policy_Q{k}" for k in range(1, 5)]].iloc[0]
        assert list(got) == q


def estimate_rows(plans, spec) -> int:
    """Rows the generator writes, counted from its plan and resolution without generating (for the sizes
    too large to generate in a test)."""
    res = spec.resolution
    fixed_points = (1 + int(round(0.8 / res.charge_soc_step)) + res.cc1c_points + res.cv_points + res.rest_points
                    + 1 + res.rest_points)
    total = 0
    for p in plans:
        n = np.arange(synthetic.recorded_cycles(p, spec))
        total += int(np.sum(synthetic._discharge_counts(synthetic.capacity_curve(p, n), res)))
        total += len(n) * fixed_points + res.zero_rows
    return total


def test_row_estimates(tiny):
    assert estimate_rows(synthetic.plan_cells(8, 0), SIZES["tiny"]) == len(tiny)
    demo_plans = synthetic.plan_cells(SIZES["demo"].n_cells, 0)
    assert 48 <= len(demo_plans) <= 64
    assert 200_000 <= estimate_rows(demo_plans, SIZES["demo"]) <= 300_000
    bench_plans = synthetic.plan_cells(SIZES["bench"].n_cells, 0)
    assert estimate_rows(bench_plans, SIZES["bench"]) >= 10_000_000
    # one bench cell (the shortest-lived) is generated exactly as estimated
    plan = min(bench_plans, key=lambda p: p.target_life)
    table = synthetic.generate_cell(plan, SIZES["bench"], 0)
    assert table.num_rows == estimate_rows([plan], SIZES["bench"])
    assert table.column("cycle_number").to_numpy().max() == plan.cycle_life


def test_demo_carries_the_severson_signal():
    tables = [t for _, t in synthetic.generate("demo", seed=0)]
    feats = severson_features(pa.concat_tables(tables), "variance")
    r = np.corrcoef(feats["dq_log_var"], np.log10(feats["cycle_life"]))[0, 1]
    assert r <= -0.8, r
    assert feats["cycle_life"].min() < 250 and feats["cycle_life"].max() > 1500


def test_cli_generate_data(tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["generate-data", "--size", "tiny", "--seed", "2", "--n-cells", "3", "--last-cycle", "12",
            "--output-dir", str(out), "--progress", "false"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_cells"] == 3 and result["n_cycles"] == 3 * 13
    assert len(list(out.glob("*.parquet"))) == 3
    assert cli.main(args) == EXIT_ENVIRONMENT  # existing output is not replaced
    assert "already exists" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def test_existing_output_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(StorageError):
        run_generate_data(GenerateDataConfig(progress=False, n_cells=1, last_cycle=3), str(tmp_path / "x"))
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_generate_to_s3_matches_local(tmp_path, s3):
    from msenc_lib import storage

    cfg = GenerateDataConfig(n_cells=2, last_cycle=3, seed=4, progress=False)
    run_generate_data(cfg, str(tmp_path / "local"))
    result = run_generate_data(cfg, s3.uri("raw"))
    assert result.manifest_uri == s3.uri("raw", "_manifest.json")
    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(k.split("/", 1)[1] for k in s3.keys("raw/")) == local
    for name in local:
        assert storage.read_bytes(s3.uri("raw", name)) == (tmp_path / "local" / name).read_bytes()
