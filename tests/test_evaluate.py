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
from msenc_lib.evaluate.featuresets import PerCycle, aggregate

# Small grids, few rows, 2 seeds: the behaviour under test does not need the default search.
FAST = dict(en_alphas=[0.001, 0.01, 0.1], en_l1_ratios=[0.5, 1.0], rf_n_estimators=[20], rf_min_samples_leaf=[1],
            rf_max_features=["1.0"], seeds=2, seq_epochs=5, early_cycles=[20, 40],
            rows=["none/dummy", "variance/linear", "embedding/elastic_net"],
            curve_rows=["variance/linear", "embedding/elastic_net"],
            capacity_rows=["none/persistence", "embedding/elastic_net"], progress=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ["rmse", "mae", "mape", "r2", "acc10", "acc15"]


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
E2E_ROWS = ["none/dummy", "variance/linear", "discharge/linear", "full/linear", "qdv/plsr", "qdv_seq/cnn",
            "embedding/elastic_net", "embedding/random_forest", "embedding_seq/lstm", "random/elastic_net"]


def _table_numbers(page: str, task: str) -> dict[str, list[list[float | None]]]:
    """The report's metric table of ``task``: row spec -> the numbers of its cells (mean, std) in order."""
    table = re.search(rf'<table class="metrics" data-task="{re.escape(task)}">(.*?)</table>', page, re.S).group(1)
    out = {}
    for spec, body in re.findall(r'<tr data-row="([^"]+)"[^>]*>(.*?)</tr>', table, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)[3:]  # after feature set, model, features
        parsed = []
        for c in cells:
            if c == "–":
                parsed.append([None, None])
                continue
            mean, _, std = c.replace(",", "").partition(" ± ")
            parsed.append([float(mean), float(std) if std else 0.0])
        out[spec] = parsed
    return out


def test_end_to_end_on_synthetic_data(tiny, tmp_path):
    root, split = tiny
    cfg = fast_config(cv_folds=3, rows=E2E_ROWS, rul_min_cycle=20, rul_max_cycle=100, rul_stride=20,
                      capacity_rows=["none/persistence", "capacity_history/linear", "embedding/elastic_net",
                                     "random/elastic_net"])
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "eval"))
    out = tmp_path / "eval"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["format"] == "msenc-evaluation" and doc["seeds"] == [42, 43] and doc["metrics"] == METRICS
    assert list(doc["tasks"]) == ["cycle_life", "early_curve", "rul", "capacity"]

    life = doc["tasks"]["cycle_life"]
    assert life["n_cells"] == {"train": 5, "validation": 1, "test": 2} and life["excluded"] == []
    assert life["unit"] == "cycles" and "cycle life" in life["target"] and life["exclusion_rules"]
    assert [f"{r['feature_set']}/{r['model']}" for r in life["results"]] == E2E_ROWS
    sizes = {"none": 0, "variance": 1, "discharge": 6, "full": 7, "qdv": 1000, "qdv_seq": 100, "embedding": 6 * 2 + 1,
             "embedding_seq": 6, "random": 13}  # mean + delta of 6 dims + delta_norm; no IR
    for r in life["results"]:
        assert r["n_features"] == sizes[r["feature_set"]], r["feature_set"]
        assert set(r["subsets"]) == {"train", "validation", "test"}
        for s, m in r["subsets"].items():
            assert set(m) == {"n_cells", "n_rows", *METRICS, *(f"{k}_std" for k in METRICS)}
            for k in METRICS:  # every figure is the mean (and std) over the seeds
                runs = [v for v in r["per_seed"][s][k] if v is not None]
                assert len(r["per_seed"][s][k]) == 2
                if runs:
                    assert m[k] == pytest.approx(np.mean(runs)) and m[f"{k}_std"] == pytest.approx(np.std(runs))
            assert m["mae"] <= m["rmse"] + 1e-9 and 0 <= m["acc10"] <= m["acc15"] <= 100
        assert len(r["hyperparameters"]) == 2
    assert _result(doc, "cycle_life", "embedding", "elastic_net")["hyperparameters"][0]["alpha"] in FAST["en_alphas"]
    assert _result(doc, "cycle_life", "variance", "linear")["feature_names"] == ["dq_log_var"]
    assert _result(doc, "cycle_life", "variance", "linear")["subsets"]["validation"]["r2"] is None  # one cell

    # metrics.json agrees with the written predictions (deterministic rows: the seeds agree)
    preds = pd.read_csv(out / "predictions_cycle_life.csv", index_col="cell_key")
    test = preds[preds["subset"] == "test"]
    for col in ("variance/linear", "none/dummy"):
        expect = regression_metrics(test["true"].to_numpy(), test[col].to_numpy())
        got = _result(doc, "cycle_life", *col.split("/"))["subsets"]["test"]
        assert got["rmse"] == pytest.approx(expect["rmse"]) and got["acc15"] == pytest.approx(expect["acc15"])
        assert got["rmse_std"] == pytest.approx(0.0, abs=1e-9)
    train_mean = 10 ** np.log10(preds.loc[preds["subset"] == "train", "true"]).mean()
    assert np.allclose(preds["none/dummy"], train_mean)  # the dummy predicts the train mean (log space)
    from msenc_lib.data.unified import read_unified

    lives = read_unified(str(root / "unified"), columns=["cell_key", "cycle_life"])
    lives = lives.groupby("cell_key")["cycle_life"].first()
    assert (preds["true"] == lives.reindex(preds.index)).all()

    # early curve: one scored table per N; RUL: EOL from the cycle_life label (the tiny cells end before it)
    curve = doc["tasks"]["early_curve"]
    assert [p["n"] for p in curve["curve"]] == [20, 40]
    assert all(len(p["results"]) == 2 and p["n_cells"]["train"] == 5 for p in curve["curve"])
    rul = doc["tasks"]["rul"]
    rp = pd.read_parquet(out / "predictions_rul.parquet")
    assert set(rp["n"]) == {20.0, 40.0, 60.0, 80.0, 100.0}
    assert np.allclose(rp["true"], lives.reindex(rp["cell_key"]).to_numpy() - rp["n"])
    assert {v["eol_from"] for v in rul["end_of_life"].values()} == {
        "cycle_life label (the recorded cycles end before the threshold)"}
    assert all(v["nominal_from"].startswith("initial capacity") for v in rul["end_of_life"].values())
    assert rul["n_rows"]["train"] == 25

    # capacity: persistence and target come straight from the unified per-cycle maxima
    cap = doc["tasks"]["capacity"]
    assert cap["horizon"] == 20 and cap["results"][0]["model"] == "persistence"
    cp = pd.read_parquet(out / "predictions_capacity.parquet")
    unified = read_unified(str(root / "unified"), columns=["cell_key", "cycle_number", "charge_capacity"])
    qmax = unified.groupby(["cell_key", "cycle_number"])["charge_capacity"].max()
    keys_now = list(zip(cp["cell_key"], cp["n"].astype(int)))
    keys_future = list(zip(cp["cell_key"], cp["n"].astype(int) + 20))
    assert np.allclose(cp["none/persistence"], qmax.loc[keys_now].to_numpy())
    assert np.allclose(cp["true"], qmax.loc[keys_future].to_numpy())
    assert ((cp["n"] - 1) % 5 == 0).all() and cp["n"].max() == 96  # stride 5; c+20 <= 120

    # result: headline (no train), key figures, best
    assert isinstance(res, EvaluateResult) and res.embedding_dim == 6 and res.seeds == 2
    assert res.headline["cycle_life/test/variance/linear/rmse"] == pytest.approx(
        _result(doc, "cycle_life", "variance", "linear")["subsets"]["test"]["rmse"])
    assert "early_curve@20/test/variance/linear/acc15" in res.headline
    assert not any("/train/" in k for k in res.headline) and res.headline == doc["headline"]
    assert res.key_figures == doc["key_figures"]
    kf = res.key_figures
    assert kf["rul/test/embedding_over_hand_rmse"] == pytest.approx(
        kf["rul/test/best_embedding_rmse"] / kf["rul/test/best_hand_feature_rmse"])
    for key, winner in res.best.items():
        task, subset = key.split("/")
        source = doc["tasks"][task] if "@" not in task else next(
            p for p in doc["tasks"]["early_curve"]["curve"] if p["n"] == int(task.split("@")[1]))
        rmses = {f"{r['feature_set']}/{r['model']}": r["subsets"][subset]["rmse"] for r in source["results"]}
        assert rmses[winner] == min(v for v in rmses.values() if v is not None)

    # plots: real PNGs; report: self-contained, every number of every table equal to metrics.json
    assert set(res.plots) == {"cycle_life_predictions", "cycle_life_rmse", "early_curve", "rul_predictions",
                              "rul_rmse", "capacity_fade", "embedding_pca", "capacity_predictions", "capacity_rmse"}
    import matplotlib.image

    for name in res.plots:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and min(matplotlib.image.imread(out / f"{name}.png").shape[:2]) > 250
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(res.plots) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<script|<link|@import|url\(|https?://", page.replace("data:image", ""))
    digits = {"cycles": {"rmse": 0, "mae": 0, "mape": 1, "r2": 3, "acc10": 1, "acc15": 1},
              "Ah": {"rmse": 4, "mae": 4, "mape": 1, "r2": 3, "acc10": 1, "acc15": 1}}
    checked = 0
    tables = [(t, doc["tasks"][t]) for t in ("cycle_life", "rul", "capacity")]
    tables += [(f"early_curve@{p['n']}", {**p, "unit": "cycles"}) for p in curve["curve"]]
    for name, task in tables:
        shown = _table_numbers(page, name)
        assert list(shown) == [f"{r['feature_set']}/{r['model']}" for r in task["results"]]
        subsets = [s for s in dict.fromkeys(s for r in task["results"] for s in r["subsets"]) if s != "train"]
        for r in task["results"]:
            cells = iter(shown[f"{r['feature_set']}/{r['model']}"])
            for s in subsets:
                for k in METRICS:
                    mean, std = next(cells)
                    want = r["subsets"][s][k]
                    tol = 0.51 * 10 ** -digits[task["unit"]][k]
                    if want is None:
                        assert mean is None
                        continue
                    assert abs(mean - want) <= tol and abs(std - r["subsets"][s][f"{k}_std"]) <= tol, (name, k)
                    checked += 1
    assert checked > 300
    summary = (out / "summary.md").read_text()
    assert "| variance/linear |" in summary and "early-prediction curve" in summary.lower()
    assert (out / "evaluate_config.yaml").exists()
    # names from the data are text, never markup
    from msenc_lib.evaluate.report import render_html

    doc["dataset"]["split"]["source"] = "<script>alert(1)</script>"
    page = render_html(doc, {}, out)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_same_inputs_same_metrics(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(cv_folds=3, first_cycles=40, tasks=["cycle_life", "rul"], rul_max_cycle=40, plots=False,
                      rows=["embedding/elastic_net", "random/random_forest", "variance/linear", "embedding_seq/lstm"])
    docs = []
    for name in ("a", "b"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / name))
        docs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    for task in docs[0]["tasks"]:
        strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in d["tasks"][task]["results"]]  # noqa
        assert strip(docs[0]) == strip(docs[1])
    other = run_evaluate(cfg.model_copy(update={"seed": 7}), str(root / "emb"), str(root / "unified"), str(split),
                         str(tmp_path / "c"))
    assert other.headline != docs[0]["headline"]  # the random control, CV folds and networks follow the seed


def test_signal_beats_random_control_and_noise_does_not(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, rows=["embedding/elastic_net", "random/elastic_net"],
                      cv_folds=4, plots=False)
    good = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "good")).headline
    noise = run_evaluate(cfg, str(root / "noise"), str(root / "unified"), str(split), str(tmp_path / "noise")).headline
    key = "cycle_life/test/{}/elastic_net/{}"
    assert good[key.format("embedding", "r2")] > 0.9
    assert good[key.format("embedding", "rmse")] < 0.3 * good[key.format("random", "rmse")]
    assert noise[key.format("embedding", "r2")] < 0.5


def test_capacity_task_horizon_stride_and_baseline(handbuilt, tmp_path):
    root, truth, split = handbuilt
    cfg = fast_config(tasks=["capacity"], horizon=7, capacity_stride=1, min_cycle=2, cv_folds=3)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "e"))
    cp = pd.read_parquet(tmp_path / "e" / "predictions_capacity.parquet")
    per_cell = cp.groupby("cell_key")["n"].agg(["min", "max", "count"])
    assert (per_cell["min"] == 2).all() and (per_cell["max"] == 45 - 7).all() and (per_cell["count"] == 37).all()
    assert set(res.plots) == {"capacity_fade", "embedding_pca", "capacity_predictions", "capacity_rmse"}
    # linear fade: capacity(c+7) = capacity(c) - 7 * rate; the embedding carries the rate, persistence cannot
    h = res.headline
    assert h["capacity/test/embedding/elastic_net/rmse"] < 0.5 * h["capacity/test/none/persistence/rmse"]
    expect_bias = 7 * truth.loc[cp["cell_key"][cp["subset"] == "test"], "rate"].to_numpy()
    got_bias = (cp["none/persistence"] - cp["true"])[cp["subset"] == "test"].to_numpy()
    assert np.allclose(got_bias, expect_bias, atol=1.5e-3)  # the fixture's per-cycle noise is 2e-4


def test_rul_end_of_life_from_capacity_and_nominal(tmp_path):
    """EOL = first cycle below 0.8 x nominal: nominal_capacity when the data has it, else initial capacity."""
    truth = fx.plan(10, seed=5)
    truth["cycle_life"] = np.linspace(30, 55, 10).round().astype(int)
    truth["rate"] = (truth["q0"] - 0.88) / truth["cycle_life"]
    cells = list(truth.index)
    fx.write_unified(tmp_path / "u", truth, last_cycle=70)
    fx.write_embeddings(tmp_path / "e", fx.embeddings(truth, last_cycle=70, dim=3))
    split = fx.write_split(tmp_path / "s.json", train=cells[:7], test=cells[7:])
    cfg = fast_config(tasks=["rul"], rows=["none/dummy", "embedding/elastic_net"], rul_min_cycle=10,
                      rul_max_cycle=60, rul_stride=5, cv_folds=3, plots=False)
    run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), str(split), str(tmp_path / "o"))
    rul = json.loads((tmp_path / "o" / "metrics.json").read_text())["tasks"]["rul"]
    for cell, info in rul["end_of_life"].items():
        q0 = truth.loc[cell, "q0"]
        # initial capacity: the median of cycles 1..5, i.e. cycle 3's
        assert info["eol_from"] == "capacity"
        assert info["nominal_capacity"] == pytest.approx(q0 - 3 * truth.loc[cell, "rate"], abs=1e-3)
        expect = (q0 - 0.8 * info["nominal_capacity"]) / truth.loc[cell, "rate"]  # q(c) = q0 - rate c crosses
        assert abs(info["eol"] - expect) <= 1.5
    preds = pd.read_parquet(tmp_path / "o" / "predictions_rul.parquet")
    assert (preds["true"] > 0).all() and preds.groupby("cell_key")["n"].max().max() < 60
    # with a nominal_capacity column of 1.0 Ah the threshold is 0.8 Ah: end of life comes later
    for f in (tmp_path / "u").glob("*.parquet"):
        pd.read_parquet(f).assign(nominal_capacity=1.0).to_parquet(f, index=False)
    run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), str(split), str(tmp_path / "o2"))
    rul2 = json.loads((tmp_path / "o2" / "metrics.json").read_text())["tasks"]["rul"]
    for cell, info in rul2["end_of_life"].items():
        assert info["nominal_from"] == "nominal_capacity column" and info["nominal_capacity"] == 1.0
        if info["eol_from"] == "capacity":
            assert info["eol"] > rul["end_of_life"][cell]["eol"]
        else:  # the recorded cycles end before 0.8 Ah: the cycle_life label stands in
            assert info["eol"] == truth.loc[cell, "cycle_life"]


def test_sequence_models_learn_from_the_cycles_they_may_see():
    from msenc_lib.evaluate.sequence import fit_predict_sequence

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 12, 4)).astype(np.float32)
    pos = np.full(30, 11)
    y = X[:, :, 0].mean(1) * 3  # a property of the whole visible history
    train = np.arange(30) < 22
    for model in ("lstm", "cnn"):
        fit = fit_predict_sequence(model, X, np.arange(30), pos, y, train, seed=0, epochs=150, hidden=16)
        err = np.sqrt(np.mean((fit.predictions[train] - y[train]) ** 2))
        assert err < 0.5 * y[train].std(), model
        again = fit_predict_sequence(model, X, np.arange(30), pos, y, train, seed=0, epochs=150, hidden=16)
        assert np.array_equal(fit.predictions, again.predictions)
    # causal: the LSTM's prediction at cycle 5 does not change when later cycles do
    X2 = X.copy()
    X2[:, 6:] = 0
    a = fit_predict_sequence("lstm", X, np.arange(30), np.full(30, 5), y, train, seed=1, epochs=3)
    b = fit_predict_sequence("lstm", X2, np.arange(30), np.full(30, 5), y, train, seed=1, epochs=3)
    assert np.allclose(a.predictions, b.predictions, atol=1e-5)


# ------------------------------------------------------------------------------------------- pieces
def test_aggregate_embeddings_mean_delta_and_missing_windows():
    def pc(cycles, extra=0.0):
        c = np.array(list(cycles), dtype=float)
        return PerCycle(c, np.column_stack([c, 2.0 * c + extra]))

    kw = dict(min_cycle=1, methods=["mean", "delta", "std", "delta_norm", "slope"], window=5)
    vec, why = aggregate(pc(range(0, 21), 1.0), 20, **kw)
    assert why is None
    assert vec[0] == pytest.approx(np.mean(range(1, 21))) and vec[1] == pytest.approx(2 * np.mean(range(1, 21)) + 1)
    assert vec[2] == pytest.approx(15.0) and vec[3] == pytest.approx(30.0)  # delta: last 5 minus first 5
    assert vec[4] == pytest.approx(np.std(range(1, 21)))
    assert vec[6] == pytest.approx(np.log10(np.hypot(15.0, 30.0)))
    assert vec[7:] == pytest.approx([1.0, 2.0])  # slope per cycle
    _, why = aggregate(pc(range(0, 12)), 20, **kw)
    assert "16..20" in why and "end at cycle 11" in why
    _, why = aggregate(pc(range(8, 21)), 20, **kw)
    assert "1..5" in why and "early window" in why


def test_regression_metrics_definitions():
    y = np.array([100.0, 200.0, 400.0])
    p = np.array([110.0, 180.0, 400.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx((100 + 400) / 3) and m["rmse"] == pytest.approx(math.sqrt(500 / 3))
    assert m["mae"] == pytest.approx(10.0) and m["mape"] == pytest.approx(100 * (0.1 + 0.1 + 0) / 3)
    ss_tot = np.sum((y - y.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - 500 / ss_tot)
    assert regression_metrics(np.array([5.0]), np.array([4.0]))["r2"] is None
    # alpha-accuracy: share within alpha x true (110 vs 100 is exactly 10 %: counted)
    assert m["acc10"] == pytest.approx(100.0) and m["acc15"] == pytest.approx(100.0)
    m = regression_metrics(y, np.array([120.0, 180.0, 300.0]), alphas=[0.1, 0.2])
    assert m["acc10"] == pytest.approx(100 / 3) and m["acc20"] == pytest.approx(200 / 3)


def test_cells_lacking_needed_cycles_are_excluded_and_reported(tmp_path):
    truth = fx.plan(12, seed=2)
    cells = list(truth.index)
    short, no_ref = cells[0], cells[7]
    fx.write_unified(tmp_path / "u", truth, last_cycle=45, skip={no_ref: (10,)})  # Severson needs cycle 10
    emb = fx.embeddings(truth, last_cycle=45, dim=4)
    emb = emb[~((emb["cell_key"] == short) & (emb["cycle_number"] > 30))]  # embeddings end at cycle 30
    fx.write_embeddings(tmp_path / "e", emb)
    split = fx.write_split(tmp_path / "s.json", train=cells[:8], test=cells[8:])
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, rows=["embedding/elastic_net", "variance/linear"],
                      cv_folds=3, plots=False)
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
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, rows=["full/elastic_net"], cv_folds=3, plots=False)
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
    cfg = fast_config(first_cycles=40, tasks=["cycle_life", "capacity"], rows=["embedding/elastic_net"], cv_folds=3)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "out"))
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for task in ("cycle_life", "capacity"):
        assert list(doc["tasks"][task]["n_cells"]) == ["train", "test", "secondary_test"]
        assert doc["tasks"][task]["skipped_subsets"] == {"validation": "empty in the split"}
    assert res.n_cells["cycle_life"]["secondary_test"] == 4
    assert "cycle_life/secondary_test/embedding/elastic_net/rmse" in res.headline
    assert "secondary_test (4 cells" in (tmp_path / "out" / "report.html").read_text()


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
    cfg = fast_config(tasks=["cycle_life"], first_cycles=40, rows=["embedding/elastic_net"], plots=False)
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
    cfg = fast_config(tasks=["cycle_life"], first_cycles=60, rows=["embedding/elastic_net"])  # data ends at 45
    with pytest.raises(InputDataError, match="no usable row left.*does not cover the first 60 cycles"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"))


def test_config_validation():
    cfg = EvaluateConfig.load({"first_cycles": 8})
    assert cfg.first_cycles == 8 and cfg.ref_for(8) == 4 and cfg.ref_for(100) == 10
    with pytest.raises(ConfigError, match="rf_max_features"):
        EvaluateConfig.load({"rf_max_features": ["most"]})
    for rows, msg in ((["magic/linear"], "feature set"), (["qdv/lstm"], "model"), (["qdv_seq/ridge"], "sequence"),
                      (["variance/dummy"], "dummy model takes the feature set 'none'"), (["embedding"], "<feature")):
        with pytest.raises(ConfigError, match=msg):
            EvaluateConfig.load({"rows": rows})
    with pytest.raises(ConfigError, match="capacity row"):
        EvaluateConfig.load({"capacity_rows": ["qdv/ridge"]})
    with pytest.raises(ConfigError, match="unknown split preset 'matr9'"):
        EvaluateConfig.load({"split_preset": "matr9"})
    with pytest.raises(ConfigError, match="alpha levels"):
        EvaluateConfig.load({"alphas": [15]})
    with pytest.raises(ConfigError, match="rul_max_cycle"):
        EvaluateConfig.load({"rul_min_cycle": 50, "rul_max_cycle": 40})


def test_existing_output_needs_overwrite(handbuilt, tmp_path):
    root, _, split = handbuilt
    cfg = fast_config(tasks=["capacity"], plots=False)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    with pytest.raises(StorageError, match="already exists"):
        run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"))
    assert (tmp_path / "o" / "keep.txt").exists()
    run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(tmp_path / "o"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [  # the published marker, then the files
        storage.PUBLISHED_MARKER, "evaluate_config.yaml", "metrics.json", "predictions_capacity.parquet",
        "report.html", "summary.md"]


# ------------------------------------------------------------------------------------------- CLI, S3
def test_cli(handbuilt, tmp_path, capsys):
    root, _, split = handbuilt
    argv = ["evaluate", "--embeddings-dir", str(root / "emb"), "--unified-dir", str(root / "unified"),
            "--split-config", str(split), "--output-dir", str(tmp_path / "o"), "--first-cycles", "40",
            "--tasks", "cycle_life", "--rows", "embedding/elastic_net,variance/linear", "--seeds", "1",
            "--en-alphas", "0.01,0.1", "--cv-folds", "3", "--plots", "false", "--progress", "false"]
    assert cli.main(argv) == 0
    result = EvaluateResult.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.tasks == ["cycle_life"] and "cycle_life/test/variance/linear/r2" in result.headline
    saved = EvaluateConfig.load(str(tmp_path / "o" / "evaluate_config.yaml"))
    assert saved.first_cycles == 40 and saved.en_alphas == [0.01, 0.1] and saved.cv_folds == 3
    missing_split = ["--output-dir", str(tmp_path / "o2"), "--split-config", str(tmp_path / "no.json")]
    assert cli.main(argv + missing_split) == EXIT_INPUT  # the last flag wins
    assert "split config not found" in capsys.readouterr().err
    both = ["--output-dir", str(tmp_path / "o3"), "--split-preset", "matr1"]
    assert cli.main(argv + both) == 2
    assert "either a split config or a split preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    help_text = capsys.readouterr().out
    assert "--first-cycles" in help_text and "--split-preset" in help_text and "matr1" in help_text


@pytest.fixture(scope="module")
def matr(tmp_path_factory):
    """Cells named like MATR-1's (raw keys b1c1 ...): 14 of its train cells and 8 of its test cells."""
    from msenc_lib.split_presets import get_preset

    preset = get_preset("matr1").listed
    keys = [c.removeprefix("MATR_") for c in preset["train"][:14] + preset["test"][:8]]
    truth = fx.plan(len(keys), seed=3)
    truth.index = pd.Index(keys, name="cell_key")
    root = tmp_path_factory.mktemp("matr")
    fx.write_unified(root / "unified", truth, last_cycle=45)
    fx.write_embeddings(root / "emb", fx.embeddings(truth, last_cycle=45, dim=4))
    return root, keys


def test_split_preset_matr1_gives_batterymls_rows(matr, tmp_path, capsys):
    root, keys = matr
    argv = ["evaluate", "--embeddings-dir", str(root / "emb"), "--unified-dir", str(root / "unified"),
            "--split-preset", "matr1", "--output-dir", str(tmp_path / "o"), "--tasks", "cycle_life",
            "--rows", "none/dummy,variance/linear,qdv/ridge,embedding/elastic_net", "--seeds", "2", "--cv-folds",
            "3", "--progress", "false", "--first-cycles", "40"]  # the data ends at cycle 45
    assert cli.main(argv) == EXIT_INPUT  # 61 of the preset's cells are not in the data
    assert "split preset 'matr1' names 61 cell(s) the data does not have" in capsys.readouterr().err
    assert cli.main(argv + ["--allow-missing-cells", "true"]) == 0
    result = EvaluateResult.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.split == "preset:matr1" and result.n_cells["cycle_life"] == {"train": 14, "test": 8}
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    preset = doc["dataset"]["split"]["preset"]
    assert preset["name"] == "matr1" and "BatteryML" in preset["citation"] and len(preset["missing"]["test"]) == 34
    assert doc["config"]["first_cycles"] == 40 and doc["config"]["eol_fraction"] == 0.8  # the preset's
    page = (tmp_path / "o" / "report.html").read_text()
    # BatteryML's published MATR-1 RMSE beside the matching rows
    assert "398 <span" in page and "(Dummy)" in page and "136 <span" in page and "116 <span" in page
    assert [r["feature_set"] for r in doc["tasks"]["cycle_life"]["results"]] == ["none", "variance", "qdv",
                                                                                 "embedding"]


def test_s3_inputs_and_output(handbuilt, s3, tmp_path):
    root, _, split = handbuilt
    storage.upload_dir(root / "emb", s3.uri("in/emb"))
    storage.upload_dir(root / "unified", s3.uri("in/unified"))
    storage.write_text(s3.uri("in/split/split_cfg.json"), split.read_text())
    cfg = fast_config(first_cycles=40, tasks=["cycle_life", "capacity"], rows=["embedding/elastic_net", "variance/linear"],
                      cv_folds=3)
    res = run_evaluate(cfg, s3.uri("in/emb"), s3.uri("in/unified"), s3.uri("in/split"), s3.uri("out/eval"))
    keys = s3.keys("out/eval/")
    assert {"out/eval/metrics.json", "out/eval/report.html", "out/eval/capacity_fade.png"} <= set(keys)
    assert res.metrics_uri == s3.uri("out/eval/metrics.json")
    doc = json.loads(storage.read_text(res.metrics_uri))
    assert doc["tasks"]["cycle_life"]["n_cells"]["test"] == 6
    assert "out/eval/summary.md" in keys


def test_batterylife_preset_scores_seen_and_unseen_test_cells(tmp_path):
    from msenc_lib.split_presets import get_preset

    p = get_preset("batterylife-matr")
    ids = list(p.listed["train"][:8]) + list(p.groups["test_seen"][:3]) + list(p.groups["test_unseen"][:3])
    keys = [c.removeprefix("MATR_") for c in ids]
    truth = fx.plan(len(keys), seed=6)
    truth.index = pd.Index(keys, name="cell_key")
    fx.write_unified(tmp_path / "u", truth, last_cycle=45)
    fx.write_embeddings(tmp_path / "e", fx.embeddings(truth, last_cycle=45, dim=3))
    cfg = fast_config(tasks=["cycle_life"], split_preset="batterylife-matr", allow_missing_cells=True, seeds=1,
                      first_cycles=40, rows=["none/dummy", "embedding/elastic_net"], cv_folds=3, plots=False)
    res = run_evaluate(cfg, str(tmp_path / "e"), str(tmp_path / "u"), None, str(tmp_path / "o"))
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    row = _result(doc, "cycle_life", "embedding", "elastic_net")
    assert {k: v["n_cells"] for k, v in row["subsets"].items()} == {"train": 8, "test": 6, "test_seen": 3,
                                                                    "test_unseen": 3}
    assert "cycle_life/test_unseen/embedding/elastic_net/acc15" in res.headline
    assert doc["dataset"]["split"]["groups"]["test_seen"] == keys[8:11]
    assert "split preset 'batterylife-matr'" in " ".join(doc["warnings"])
