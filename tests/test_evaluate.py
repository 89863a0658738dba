"""The evaluate stage: tables, models, metrics, report, CLI, S3, and its bad inputs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

import evaluate_fixtures as fx
from msenc_cli import main as cli
from msenc_lib import storage
from msenc_lib.errors import EXIT_INPUT, ConfigError, InputDataError, StorageError
from msenc_lib.evaluate import EvaluateConfig, EvaluateResult, run_evaluate
from msenc_lib.evaluate.regressors import regression_metrics
from msenc_lib.evaluate.tasks import aggregate_embeddings

# Small grids: the behaviour under test does not need the default search.
FAST = dict(en_alphas=[0.001, 0.01, 0.1], en_l1_ratios=[0.5, 1.0], rf_n_estimators=[20], rf_min_samples_leaf=[1],
            rf_max_features=["1.0"], progress=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fast_config(**kw) -> EvaluateConfig:
    return EvaluateConfig(**{**FAST, **kw})


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The project's tiny synthetic dataset (8 cells, cycles 0-120) + stand-in embeddings + a split."""
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    root = tmp_path_factory.mktemp("tiny")
    run_generate_data(GenerateDataConfig(size="tiny", seed=0, progress=False), str(root / "unified"))
    emb = fx.cycle_summary_embeddings(root / "unified", dim=6)
    fx.write_embeddings(root / "emb", emb)
    cells = sorted(emb["cell_key"].unique())
    split = fx.write_split(root / "split_cfg.json", train=cells[:5], validation=cells[5:6], test=cells[6:])
    return root, split


@pytest.fixture(scope="module")
def handbuilt(tmp_path_factory):
    """24 linear-fade cells, cycles 0-45; embeddings carrying the fade (val_0: capacity, val_1: log rate)."""
    root = tmp_path_factory.mktemp("hb")
    truth = fx.plan(24, seed=0)
    fx.write_unified(root / "unified", truth, last_cycle=45)
    fx.write_embeddings(root / "emb", fx.embeddings(truth, last_cycle=45, dim=6))
    fx.write_embeddings(root / "noise", fx.embeddings(truth, last_cycle=45, dim=6, signal=0.0))
    split = fx.write_split(root / "split_cfg.json", **fx.split_cells(truth.index, 4, 6))
    return root, truth, split


def _result(doc: dict, task: str, fs: str, model: str) -> dict:
    return next(r for r in doc["tasks"][task]["results"] if r["feature_set"] == fs and r["model"] == model)


# --------------------------------------------------------------------------------------- end to end
def test_end_to_end_on_synthetic_data(tiny, tmp_path):
    root, split = tiny
    cfg = fast_config(cv_folds=3)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "eval"))
    out = tmp_path / "eval"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["format"] == "msenc-evaluation"

    life = doc["tasks"]["cycle_life"]
    assert life["n_cells"] == {"train": 5, "validation": 1, "test": 2} and life["excluded"] == []
    sizes = {"embedding": 12, "random": 12, "variance": 1, "discharge": 6, "full": 7}  # mean+delta of 6; no IR
    assert [(r["feature_set"], r["model"]) for r in life["results"]] == [
        (fs, m) for fs in sizes for m in ("elastic_net", "random_forest")]
    for r in life["results"]:
        assert r["n_features"] == sizes[r["feature_set"]]
        assert set(r["subsets"]) == {"train", "validation", "test"}
        for m in r["subsets"].values():
            assert set(m) == {"n_cells", "n_rows", "rmse", "mae", "mape", "mse", "r2"}
            assert math.isclose(m["mse"], m["rmse"] ** 2) and m["mae"] <= m["rmse"] + 1e-12
        if r["model"] == "elastic_net":
            assert r["hyperparameters"]["alpha"] in FAST["en_alphas"]
            assert r["hyperparameters"]["l1_ratio"] in FAST["en_l1_ratios"]
        else:
            assert r["hyperparameters"]["n_estimators"] == 20
    assert life["results"][4]["feature_names"] == ["dq_log_var"]
    # a validation subset of one cell has no R²
    assert _result(doc, "cycle_life", "variance", "elastic_net")["subsets"]["validation"]["r2"] is None

    # metrics.json agrees with the written predictions (battery level: one row per cell)
    preds = pd.read_csv(out / "predictions_cycle_life.csv", index_col="cell_key")
    test = preds[preds["subset"] == "test"]
    for col in ("variance/elastic_net", "embedding/random_forest"):
        expect = regression_metrics(test["true"].to_numpy(), test[col].to_numpy())
        got = _result(doc, "cycle_life", *col.split("/"))["subsets"]["test"]
        assert got["rmse"] == pytest.approx(expect["rmse"]) and got["r2"] == pytest.approx(expect["r2"])
    from msenc_lib.data.unified import read_unified

    lives = read_unified(str(root / "unified"), columns=["cell_key", "cycle_life"])
    lives = lives.groupby("cell_key")["cycle_life"].first()
    assert (preds["true"] == lives.reindex(preds.index)).all()

    # capacity: persistence and target come straight from the unified per-cycle maxima
    cap = doc["tasks"]["capacity"]
    assert cap["horizon"] == 20 and [r["feature_set"] for r in cap["results"]][0] == "persistence"
    cp = pd.read_parquet(out / "predictions_capacity.parquet")
    unified = read_unified(str(root / "unified"), columns=["cell_key", "cycle_number", "charge_capacity"])
    qmax = unified.groupby(["cell_key", "cycle_number"])["charge_capacity"].max()
    keys_now = list(zip(cp["cell_key"], cp["cycle_number"].astype(int)))
    keys_future = list(zip(cp["cell_key"], cp["cycle_number"].astype(int) + 20))
    assert np.allclose(cp["persistence/none"], qmax.loc[keys_now].to_numpy())
    assert np.allclose(cp["true"], qmax.loc[keys_future].to_numpy())
    assert ((cp["cycle_number"] - 1) % 5 == 0).all() and cp["cycle_number"].max() == 96  # stride 5; c+20 <= 120

    # result: headline (no train), best, counts
    assert isinstance(res, EvaluateResult) and res.embedding_dim == 6
    assert res.n_cells["cycle_life"] == {"train": 5, "validation": 1, "test": 2}
    assert res.headline["cycle_life/test/variance/elastic_net/rmse"] == pytest.approx(
        _result(doc, "cycle_life", "variance", "elastic_net")["subsets"]["test"]["rmse"])
    assert not any("/train/" in k for k in res.headline) and res.headline == doc["headline"]
    assert "cycle_life/validation/variance/elastic_net/r2" not in res.headline  # undefined for one cell
    for key, winner in res.best.items():
        task, subset = key.split("/")
        rmses = {f"{r['feature_set']}/{r['model']}": r["subsets"][subset]["rmse"]
                 for r in doc["tasks"][task]["results"]}
        assert rmses[winner] == min(rmses.values())

    # plots: real PNGs; report: one self-contained file with all of them inlined and every row compared
    assert set(res.plots) == {"cycle_life_predictions", "cycle_life_rmse", "capacity_fade", "embedding_pca",
                              "capacity_predictions", "capacity_rmse"}
    import matplotlib.image

    for name in res.plots:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and min(matplotlib.image.imread(out / f"{name}.png").shape[:2]) > 250
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(res.plots) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<script|<link|@import|url\(|https?://", page.replace("data:image", ""))
    for fs in sizes:
        assert f'<td class="l">{fs}</td>' in page
    assert page.count('class="best"') >= 4  # one highlighted row per held-out subset and task (4 cells each)
    assert (out / "evaluate_config.yaml").exists()
    # names from the data are text, never markup
    from msenc_lib.evaluate.report import render_html

    doc["dataset"]["split"]["source"] = "<script>alert(1)</script>"
    page = render_html(doc, {}, out)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_same_inputs_same_metrics(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(cv_folds=3, first_cycles=40, feature_sets=["embedding", "random", "variance"], plots=False)
    docs = []
    for name in ("a", "b"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / name))
        docs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert docs[0]["tasks"] == docs[1]["tasks"]
    other = run_evaluate(cfg.model_copy(update={"seed": 7}), str(root / "emb"), str(root / "unified"), str(split),
                         str(tmp_path / "c"))
    assert other.headline != docs[0]["headline"]  # the random control and CV folds follow the seed


def test_signal_beats_random_control_and_noise_does_not(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, feature_sets=["embedding", "random"],
                      models=["elastic_net"], cv_folds=4, plots=False)
    good = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "good")).headline
    noise = run_evaluate(cfg, str(root / "noise"), str(root / "unified"), str(split), str(tmp_path / "noise")).headline
    key = "cycle_life/test/{}/elastic_net/{}"
    assert good[key.format("embedding", "r2")] > 0.9
    assert good[key.format("embedding", "rmse")] < 0.3 * good[key.format("random", "rmse")]
    assert noise[key.format("embedding", "r2")] < 0.5


def test_capacity_task_horizon_stride_and_baseline(handbuilt, tmp_path):
    root, truth, split = handbuilt
    cfg = fast_config(tasks=["capacity"], horizon=7, capacity_stride=1, min_cycle=2, models=["elastic_net"],
                      capacity_feature_sets=["embedding"], cv_folds=3)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "e"))
    cp = pd.read_parquet(tmp_path / "e" / "predictions_capacity.parquet")
    per_cell = cp.groupby("cell_key")["cycle_number"].agg(["min", "max", "count"])
    assert (per_cell["min"] == 2).all() and (per_cell["max"] == 45 - 7).all() and (per_cell["count"] == 37).all()
    assert set(res.plots) == {"capacity_fade", "embedding_pca", "capacity_predictions", "capacity_rmse"}
    # linear fade: capacity(c+7) = capacity(c) - 7 * rate; the embedding carries the rate, persistence cannot
    h = res.headline
    assert h["capacity/test/embedding/elastic_net/rmse"] < 0.5 * h["capacity/test/persistence/none/rmse"]
    expect_bias = 7 * truth.loc[cp["cell_key"][cp["subset"] == "test"], "rate"].to_numpy()
    got_bias = (cp["persistence/none"] - cp["true"])[cp["subset"] == "test"].to_numpy()
    assert np.allclose(got_bias, expect_bias, atol=1.5e-3)  # the fixture's per-cycle noise is 2e-4


# ------------------------------------------------------------------------------------------- pieces
def test_aggregate_embeddings_mean_delta_and_missing_windows():
    rows = []
    for cell, cycles in {"a": range(0, 21), "b": range(0, 12), "c": range(8, 21)}.items():
        for c in cycles:
            rows.append({"cell_key": cell, "cycle_number": c, "val_0": float(c), "val_1": 2.0 * c + (cell == "a")})
    table = pd.DataFrame(rows)
    feats, reasons = aggregate_embeddings(table, ["val_0", "val_1"], min_cycle=1, last_cycle=20,
                                          methods=["mean", "delta", "std"], window=5)
    assert list(feats.index) == ["a"]
    a = feats.loc["a"]
    assert a["mean_val_0"] == pytest.approx(np.mean(range(1, 21)))
    assert a["mean_val_1"] == pytest.approx(2 * np.mean(range(1, 21)) + 1)
    assert a["delta_val_0"] == pytest.approx(np.mean(range(16, 21)) - np.mean(range(1, 6)))  # = 15
    assert a["std_val_0"] == pytest.approx(np.std(range(1, 21)))
    assert "16..20" in reasons["b"] and "end at cycle 11" in reasons["b"]
    assert "1..5" in reasons["c"] and "early window" in reasons["c"]


def test_regression_metrics_definitions():
    y = np.array([100.0, 200.0, 400.0])
    p = np.array([110.0, 180.0, 400.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx((100 + 400) / 3) and m["rmse"] == pytest.approx(math.sqrt(500 / 3))
    assert m["mae"] == pytest.approx(10.0) and m["mape"] == pytest.approx(100 * (0.1 + 0.1 + 0) / 3)
    ss_tot = np.sum((y - y.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - 500 / ss_tot)
    assert regression_metrics(np.array([5.0]), np.array([4.0]))["r2"] is None


def test_cells_lacking_needed_cycles_are_excluded_and_reported(tmp_path):
    truth = fx.plan(12, seed=2)
    cells = list(truth.index)
    short, no_ref = cells[0], cells[7]
    fx.write_unified(tmp_path / "u", truth, last_cycle=45, skip={no_ref: (10,)})  # Severson needs cycle 10
    emb = fx.embeddings(truth, last_cycle=45, dim=4)
    emb = emb[~((emb["cell_key"] == short) & (emb["cycle_number"] > 30))]  # embeddings end at cycle 30
    fx.write_embeddings(tmp_path / "e", emb)
    split = fx.write_split(tmp_path / "s.json", train=cells[:8], test=cells[8:])
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, feature_sets=["embedding", "variance"],
                      models=["elastic_net"], cv_folds=3, plots=False)
    res = run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), str(split), str(tmp_path / "out"))
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    excluded = {x["cell_key"]: x for x in doc["tasks"]["cycle_life"]["excluded"]}
    assert set(excluded) == {short, no_ref}
    assert "end at cycle 30" in excluded[short]["reason"]
    assert "variance" in excluded[no_ref]["reason"] and "cycle 10" in excluded[no_ref]["reason"]
    assert res.n_cells["cycle_life"] == {"train": 6, "test": 4} and res.n_excluded == {"cycle_life": 2}
    # every feature set is scored on the same cells
    assert {r["subsets"]["train"]["n_cells"] for r in doc["tasks"]["cycle_life"]["results"]} == {6}


@pytest.mark.parametrize("with_ir", ["all", "some"])
def test_full_feature_set_uses_internal_resistance_only_where_every_cell_has_it(tmp_path, with_ir):
    truth = fx.plan(10, seed=4)
    cells = list(truth.index)
    fx.write_unified(tmp_path / "u", truth, last_cycle=45, ir_cells=tuple(cells if with_ir == "all" else cells[:5]))
    fx.write_embeddings(tmp_path / "e", fx.embeddings(truth, last_cycle=45, dim=3))
    split = fx.write_split(tmp_path / "s.json", train=cells[:7], test=cells[7:])
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, feature_sets=["full"], models=["elastic_net"],
                      cv_folds=3, plots=False)
    run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), str(split), str(tmp_path / "o"))
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    full = _result(doc, "cycle_life", "full", "elastic_net")
    assert full["n_features"] == (9 if with_ir == "all" else 7)
    assert ("ir_change" in full["feature_names"]) == (with_ir == "all")
    assert doc["tasks"]["cycle_life"]["severson_ir_features"] == (with_ir == "all")


def test_empty_and_extra_subsets(handbuilt, tmp_path):
    root, truth, _ = handbuilt
    cells = list(truth.index)
    split = fx.write_split(tmp_path / "s.json", train=cells[:14], validation=[], test=cells[14:20],
                           secondary_test=cells[20:])
    cfg = fast_config(first_cycles=40, feature_sets=["embedding"], models=["elastic_net"], cv_folds=3)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "out"))
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for task in ("cycle_life", "capacity"):
        assert list(doc["tasks"][task]["n_cells"]) == ["train", "test", "secondary_test"]
        assert doc["tasks"][task]["skipped_subsets"] == {"validation": "empty in the split config"}
    assert res.n_cells["cycle_life"]["secondary_test"] == 4
    assert "cycle_life/secondary_test/embedding/elastic_net/rmse" in res.headline
    assert "secondary_test (4 cells)" in (tmp_path / "out" / "report.html").read_text()


# ------------------------------------------------------------------------------------------ bad inputs
def test_split_naming_missing_cells(handbuilt, tmp_path):
    root, truth, _ = handbuilt
    split = fx.write_split(tmp_path / "s.json", train=list(truth.index[:10]) + ["b9c99"], test=["b8c1"])
    with pytest.raises(InputDataError, match=r"absent from the embeddings.*b9c99.*b8c1"):
        run_evaluate(fast_config(), str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # present in the embeddings but not in the unified data
    emb = fx.embeddings(fx.plan(26, seed=0), last_cycle=45, dim=6)
    fx.write_embeddings(tmp_path / "e", emb)
    split = fx.write_split(tmp_path / "s2.json", train=list(truth.index[:10]) + ["b1c25"], test=list(truth.index[10:]))
    with pytest.raises(InputDataError, match=r"absent from the unified data.*b1c25"):
        run_evaluate(fast_config(), str(tmp_path / "e"), str(root / "unified"), str(split), str(tmp_path / "out"))


def test_split_config_errors(handbuilt, tmp_path):
    root, truth, _ = handbuilt
    cells = list(truth.index)
    bad = {"overlap.json": ({"train": cells[:5], "test": cells[4:8]}, r"'b1c4' is listed in both 'train' and 'test'"),
           "notrain.json": ({"test": cells[:5]}, "no 'train' subset"),
           "emptytrain.json": ({"train": [], "test": cells}, "'train' subset is empty")}
    for name, (subsets, msg) in bad.items():
        fx.write_split(tmp_path / name, **subsets)
        with pytest.raises(InputDataError, match=msg):
            run_evaluate(fast_config(), str(root / "emb"), str(root / "unified"), str(tmp_path / name),
                         str(tmp_path / "out"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        run_evaluate(fast_config(), str(root / "emb"), str(root / "unified"), str(tmp_path / "broken.json"),
                     str(tmp_path / "out"))


def test_embeddings_errors(handbuilt, tmp_path):
    root, truth, split = handbuilt
    emb = fx.embeddings(truth, last_cycle=45, dim=3)
    cases = {
        "noval": (emb.drop(columns=["val_0", "val_1", "val_2"]), r"no embedding columns val_0"),
        "gap": (emb.drop(columns=["val_1"]), r"missing \['val_1'\]"),
        "nan": (emb.assign(val_2=np.where(emb.index == 50, np.nan, emb["val_2"])),
                rf"cell '{emb.loc[50, 'cell_key']}', cycle {emb.loc[50, 'cycle_number']}: field 'val_2'"),
        "dup": (pd.concat([emb, emb.iloc[[3]]]), r"duplicate \(cell_key, cycle_number\)"),
        "nocell": (emb.drop(columns=["cell_key"]), r"no 'cell_key' column"),
    }
    for name, (table, msg) in cases.items():
        fx.write_embeddings(tmp_path / name, table)
        with pytest.raises(InputDataError, match=msg):
            run_evaluate(fast_config(), str(tmp_path / name), str(root / "unified"), str(split), str(tmp_path / "o"))
    with pytest.raises(InputDataError, match="no embeddings found"):
        run_evaluate(fast_config(), str(tmp_path / "nowhere"), str(root / "unified"), str(split), str(tmp_path / "o"))
    # rows whose values are all null (the original CSV's left-join rows) are dropped and counted, not fatal
    rows = emb.copy()
    rows.loc[rows["cycle_number"] == 44, ["val_0", "val_1", "val_2"]] = np.nan
    fx.write_embeddings(tmp_path / "holes", rows)
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, feature_sets=["embedding"], models=["elastic_net"],
                      plots=False)
    run_evaluate(cfg, str(tmp_path / "holes"), str(root / "unified"), str(split), str(tmp_path / "ok"))
    doc = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert doc["dataset"]["embeddings"]["dropped_empty_rows"] == 24


def test_missing_unified_columns(tmp_path):
    truth = fx.plan(8, seed=1)
    fx.write_unified(tmp_path / "u", truth, last_cycle=45, drop_columns=("cycle_life",))
    fx.write_embeddings(tmp_path / "e", fx.embeddings(truth, last_cycle=45, dim=3))
    split = fx.write_split(tmp_path / "s.json", train=list(truth.index[:6]), test=list(truth.index[6:]))
    with pytest.raises(InputDataError, match=r"b1c0\.parquet \(cell 'b1c0'\) has no column 'cycle_life', needed "
                                             r"for the cycle-life target"):
        run_evaluate(fast_config(first_cycles=40), str(tmp_path / "e"), str(tmp_path / "u"), str(split),
                     str(tmp_path / "o"))
    cfg = fast_config(tasks=["capacity"], capacity_column="max_capacity")
    with pytest.raises(InputDataError, match="no column 'max_capacity', needed for the capacity target"):
        run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), str(split), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_too_few_training_cells_for_cv(handbuilt, tmp_path):
    root, truth, _ = handbuilt
    split = fx.write_split(tmp_path / "s.json", train=list(truth.index[:3]), test=list(truth.index[3:8]))
    with pytest.raises(InputDataError, match=r"only 3 usable training cell\(s\), but 5-fold cross-validation"):
        run_evaluate(fast_config(first_cycles=40), str(root / "emb"), str(root / "unified"), str(split),
                     str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_no_usable_cell_left(handbuilt, tmp_path):
    root, truth, split = handbuilt
    cfg = fast_config(tasks=["cycle_life"], first_cycles=60, feature_sets=["embedding"])  # data ends at 45
    with pytest.raises(InputDataError, match="no usable cell left"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"))


def test_config_validation():
    with pytest.raises(ConfigError, match="first_cycles must be > 10"):
        EvaluateConfig.load({"first_cycles": 8})
    assert EvaluateConfig.load({"first_cycles": 8, "feature_sets": ["embedding"]}).first_cycles == 8
    with pytest.raises(ConfigError, match="rf_max_features"):
        EvaluateConfig.load({"rf_max_features": ["most"]})
    with pytest.raises(ConfigError, match="feature_sets"):
        EvaluateConfig.load({"feature_sets": ["magic"]})


def test_existing_output_needs_overwrite(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(tasks=["capacity"], models=["elastic_net"], capacity_feature_sets=["embedding"], plots=False)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    with pytest.raises(StorageError, match="already exists"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"))
    assert (tmp_path / "o" / "keep.txt").exists()
    run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [  # the published marker, then the files
        storage.PUBLISHED_MARKER, "evaluate_config.yaml", "metrics.json", "predictions_capacity.parquet",
        "report.html"]


# ------------------------------------------------------------------------------------------- CLI, S3
def test_cli(handbuilt, tmp_path, capsys):
    root, _, split = handbuilt
    argv = ["evaluate", "--embeddings-dir", str(root / "emb"), "--unified-dir", str(root / "unified"),
            "--split-config", str(split), "--output-dir", str(tmp_path / "o"), "--first-cycles", "40",
            "--tasks", "cycle_life", "--feature-sets", "embedding,variance", "--models", "elastic_net",
            "--en-alphas", "0.01,0.1", "--cv-folds", "3", "--plots", "false", "--progress", "false"]
    assert cli.main(argv) == 0
    result = EvaluateResult.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.tasks == ["cycle_life"] and "cycle_life/test/variance/elastic_net/r2" in result.headline
    saved = EvaluateConfig.load(str(tmp_path / "o" / "evaluate_config.yaml"))
    assert saved.first_cycles == 40 and saved.en_alphas == [0.01, 0.1] and saved.cv_folds == 3
    missing_split = ["--output-dir", str(tmp_path / "o2"), "--split-config", str(tmp_path / "no.json")]
    assert cli.main(argv + missing_split) == EXIT_INPUT  # the last flag wins
    assert "split config not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "--first-cycles" in capsys.readouterr().out


def test_s3_inputs_and_output(handbuilt, s3, tmp_path):
    root, _, split = handbuilt
    storage.upload_dir(root / "emb", s3.uri("in/emb"))
    storage.upload_dir(root / "unified", s3.uri("in/unified"))
    storage.write_text(s3.uri("in/split/split_cfg.json"), split.read_text())
    cfg = fast_config(first_cycles=40, feature_sets=["embedding", "variance"], models=["elastic_net"], cv_folds=3)
    res = run_evaluate(cfg, s3.uri("in/emb"), s3.uri("in/unified"), s3.uri("in/split"), s3.uri("out/eval"))
    keys = s3.keys("out/eval/")
    assert {"out/eval/metrics.json", "out/eval/report.html", "out/eval/capacity_fade.png"} <= set(keys)
    assert res.metrics_uri == s3.uri("out/eval/metrics.json")
    doc = json.loads(storage.read_text(res.metrics_uri))
    assert doc["tasks"]["cycle_life"]["n_cells"]["test"] == 6
