"""Acceptance on the demo synthetic data (issue 6): Severson's variance feature predicts cycle life on held-out
cells (R² >= 0.7), and the full default evaluation puts every model and feature set side by side."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import evaluate_fixtures as fx
from msenc_lib.evaluate import EvaluateConfig, run_evaluate
from msenc_lib.evaluate.regressors import regression_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    root = tmp_path_factory.mktemp("demo")
    run_generate_data(GenerateDataConfig(size="demo", seed=0, progress=False), str(root / "unified"))
    fx.write_embeddings(root / "emb", fx.cycle_summary_embeddings(root / "unified", dim=16))
    cells = sorted(p.stem for p in (root / "unified").glob("*.parquet"))
    np.random.default_rng(0).shuffle(cells)
    return root, cells


def test_variance_feature_predicts_cycle_life_on_every_held_out_quarter(demo):
    """4 rotations: each quarter of the 56 cells is the test subset once, the rest train."""
    root, cells = demo
    cfg = EvaluateConfig(tasks=["cycle_life"], rows=["variance/elastic_net"], seeds=1, plots=False, progress=False)
    held_out = []
    for i, test in enumerate(np.array_split(cells, 4)):
        train = [c for c in cells if c not in set(test)]
        split = fx.write_split(root / f"rot{i}.json", train=train, test=list(test))
        res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(root / f"rot{i}"))
        assert res.headline["cycle_life/test/variance/elastic_net/r2"] >= 0.7, i
        preds = pd.read_csv(root / f"rot{i}" / "predictions_cycle_life.csv")
        held_out.append(preds[preds["subset"] == "test"])
    pooled = pd.concat(held_out)
    assert len(pooled) == len(cells)
    assert regression_metrics(pooled["true"].to_numpy(), pooled["variance/elastic_net"].to_numpy())["r2"] >= 0.75


def test_default_evaluation_side_by_side(demo):
    """BatteryML's rows, Severson's and the embedding heads on every task; cheaper networks, three Ns of the curve
    and a RUL prediction every 30 cycles instead of 10 keep it in minutes (the rows and tasks are the defaults)."""
    root, cells = demo
    n = len(cells)
    split = fx.write_split(root / "split.json", train=cells[: n - 17], validation=cells[n - 17: n - 14],
                           test=cells[n - 14:])
    cfg = EvaluateConfig(progress=False, seeds=2, seq_epochs=40, early_cycles=[20, 60, 100], rul_stride=30)
    res = run_evaluate(cfg, str(root / "emb"), str(root / "unified"), str(split), str(root / "eval"))
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    life = doc["tasks"]["cycle_life"]
    assert life["n_cells"] == {"train": 39, "validation": 3, "test": 14} and not life["excluded"]
    assert [f"{r['feature_set']}/{r['model']}" for r in life["results"]] == cfg.rows
    h = res.headline
    # the stand-in embeddings carry the fade physics; the random control carries nothing
    best_emb = min(h[f"cycle_life/test/embedding/{m}/rmse"] for m in ("elastic_net", "random_forest"))
    best_rand = min(h[f"cycle_life/test/random/{m}/rmse"] for m in ("elastic_net", "random_forest"))
    assert best_emb < 0.5 * best_rand
    assert max(h[f"cycle_life/test/random/{m}/r2"] for m in ("elastic_net", "random_forest")) < 0.3
    assert h["cycle_life/test/variance/linear/r2"] > 0.7  # Severson's signal in the demo data
    assert h["cycle_life/test/none/dummy/r2"] < 0.05
    assert h["capacity/test/embedding/elastic_net/rmse"] < h["capacity/test/none/persistence/rmse"]
    # the early-prediction curve: the same cells at every N (the dummy's error is the same), Severson's variance
    # feature ahead of the dummy at each N
    curve = {p["n"]: p for p in doc["tasks"]["early_curve"]["curve"]}

    def rmse(n: int, spec: str) -> float:
        return next(r for r in curve[n]["results"] if f"{r['feature_set']}/{r['model']}" == spec)[
            "subsets"]["test"]["rmse"]

    assert sorted(curve) == [20, 60, 100]
    assert len({round(rmse(n, "none/dummy"), 6) for n in curve}) == 1
    assert all(rmse(n, "variance/linear") < rmse(n, "none/dummy") for n in curve)
    page = (root / "eval" / "report.html").read_text()
    assert page.count("<img") == 9 and page.count("<tr") > 60
