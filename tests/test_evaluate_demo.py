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
    cfg = EvaluateConfig(tasks=["cycle_life"], feature_sets=["variance"], models=["elastic_net"], plots=False,
                         progress=False)
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
    root, cells = demo
    n = len(cells)
    split = fx.write_split(root / "split.json", train=cells[: n - 17], validation=cells[n - 17: n - 14],
                           test=cells[n - 14:])
    res = run_evaluate(EvaluateConfig(progress=False), str(root / "emb"), str(root / "unified"), str(split),
                       str(root / "eval"))
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    life = doc["tasks"]["cycle_life"]
    assert life["n_cells"] == {"train": 39, "validation": 3, "test": 14} and not life["excluded"]
    assert {(r["feature_set"], r["model"]) for r in life["results"]} == {
        (fs, m) for fs in ("embedding", "random", "variance", "discharge", "full")
        for m in ("elastic_net", "random_forest")}
    h = res.headline
    # the stand-in embeddings carry the fade physics; the random control carries nothing
    best_emb = min(h[f"cycle_life/test/embedding/{m}/rmse"] for m in ("elastic_net", "random_forest"))
    best_rand = min(h[f"cycle_life/test/random/{m}/rmse"] for m in ("elastic_net", "random_forest"))
    assert best_emb < 0.5 * best_rand
    assert max(h[f"cycle_life/test/random/{m}/r2"] for m in ("elastic_net", "random_forest")) < 0.3
    assert h["capacity/test/embedding/elastic_net/rmse"] < h["capacity/test/persistence/none/rmse"]
    page = (root / "eval" / "report.html").read_text()
    assert page.count("<img") == 6 and page.count("<tr") > 20
