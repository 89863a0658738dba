"""The whole pipeline run by kfp.local: SubprocessRunner on the tiny data (artifacts checked one by one), the
same with input and output on s3:// (moto) and a warm start from the previous run's export, and one
component inside the msenc image through a Docker-API socket."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import msenc_lib.model  # noqa: F401  (registers the model with transformers' Auto* classes)
from msenc_lib import storage

# Every task, a few rows and one fitting seed: these runs are about the pipeline's wiring and artifacts (the
# default evaluation's 25 rows x 3 seeds take minutes per run; tests/test_evaluate_demo.py checks its quality).
LIGHT_EVALUATION = {"seeds": 1, "rows": ["none/dummy", "discharge/linear", "embedding/elastic_net"],
                    "curve_rows": ["none/dummy", "embedding/elastic_net"], "early_cycles": [50, 100],
                    "capacity_rows": ["none/persistence", "embedding/elastic_net"]}
TINY_ARGS = {"data_size": "tiny", "preset": "tiny", "max_steps": 30, "ratio_train": 0.6, "ratio_validation": 0.15,
             "train_config_yaml": "log_every: 1", "evaluate_config_yaml": json.dumps(LIGHT_EVALUATION)}


def _task_dirs(pipeline_root: str) -> dict[str, Path]:
    """kfp.local writes ``<root>/<run>/<task>/<output>``: task name -> its folder, for the newest run."""
    runs = sorted(Path(pipeline_root).iterdir(), key=lambda p: p.stat().st_mtime)
    return {p.name: p for p in runs[-1].iterdir() if p.is_dir()}


def _sequence_rows(folder: Path) -> pd.DataFrame:
    return pq.read_table(folder / "sequences", columns=["cell_key", "n_tokens"]).to_pandas()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from msenc_pipelines.cli import run_pipeline_locally

    out = tmp_path_factory.mktemp("tiny-run")
    result = run_pipeline_locally(out, runner="subprocess", arguments=dict(TINY_ARGS))
    return result, _task_dirs(result.pipeline_root)


@pytest.mark.slow
def test_subprocess_pipeline_artifacts(tiny_run):
    from transformers import AutoModel

    result, tasks = tiny_run
    assert {"data", "preprocess", "preprocess-2", "split", "train", "embed", "evaluate"} <= set(tasks)
    assert "export" not in tasks  # no export_uri, no export step

    unified = pd.read_parquet(tasks["data"] / "unified")
    cells = sorted(unified["cell_key"].unique())
    assert len(cells) == 8
    cycles = unified.groupby(["cell_key", "cycle_number"]).size()

    # training mode: one sequence per cell; embedding mode: one per cell and cycle
    training = _sequence_rows(tasks["preprocess"] / "sequences")
    embedding = _sequence_rows(tasks["preprocess-2"] / "sequences")
    assert sorted(training["cell_key"]) == cells
    assert len(embedding) == len(cycles)
    # the same rows in both modes: per cell, the training sequence holds every cycle's time steps
    # (the separators differ by one per cycle boundary at most)
    per_cell = embedding.groupby("cell_key")["n_tokens"].sum()
    n_cycles = cycles.groupby(level=0).size()
    for cell, row in training.set_index("cell_key").iterrows():
        assert abs(row["n_tokens"] - per_cell[cell]) <= n_cycles[cell]

    # split: disjoint cells covering all of them, the same in split_cfg.json and in the subset folders
    subsets = tasks["split"] / "subsets"
    split_cfg = json.loads((subsets / "split_cfg.json").read_text())
    named = {k: sorted(f.removesuffix(".csv") for f in v) for k, v in split_cfg.items() if k in
             ("train", "validation", "test")}
    assert sorted(sum(named.values(), [])) == cells
    assert len(named["train"]) >= 4 and named["validation"] and named["test"]
    for subset, members in named.items():
        if members:
            assert sorted(_sequence_rows(subsets / subset)["cell_key"]) == members

    # model: safetensors + config + tokenizer + metrics, loadable with AutoModel
    model_dir = tasks["train"] / "model"
    for name in ("config.json", "model.safetensors", "train_config.yaml", "metrics.jsonl", "tokenizer"):
        assert (model_dir / name).exists(), name
    train_rows = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert max(r["step"] for r in train_rows if "loss" in r) == TINY_ARGS["max_steps"]
    model = AutoModel.from_pretrained(model_dir)
    dim = model.config.hidden_sizes[-1]

    # embeddings: one row per (cell, cycle) of the unified table, targets joined, finite vectors
    emb = pd.read_parquet(tasks["embed"] / "embeddings" / "embeddings.parquet")
    assert len(emb) == len(cycles)
    assert set(map(tuple, emb[["cell_key", "cycle_number"]].itertuples(index=False))) == set(cycles.index)
    vals = [c for c in emb.columns if c.startswith("val_")]
    assert len(vals) == dim
    assert emb[vals].notna().all().all()
    assert {"charge_capacity", "charge_policy_Q1"} <= set(emb.columns)

    # evaluation: metrics for every task, the KFP Metrics artifact, the Markdown summary, the report
    evaluation = tasks["evaluate"]
    metrics = json.loads((evaluation / "evaluation" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"cycle_life", "early_curve", "rul", "capacity"}
    # evaluate_config_yaml reached the step: its rows, curve and seeds, the pipeline's first_cycles and horizon
    assert {k: metrics["config"][k] for k in LIGHT_EVALUATION} == LIGHT_EVALUATION
    assert [f"{r['feature_set']}/{r['model']}" for r in metrics["tasks"]["cycle_life"]["results"]] == \
        LIGHT_EVALUATION["rows"]
    assert [p["n"] for p in metrics["tasks"]["early_curve"]["curve"]] == LIGHT_EVALUATION["early_cycles"]
    assert (metrics["config"]["first_cycles"], metrics["config"]["horizon"]) == (100, 20)
    # the Metrics artifact (kfp.local keeps its values in the step's executor output): key figures + headline
    executor = json.loads((evaluation / "executor_output.json").read_text())
    kfp_metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert kfp_metrics == pytest.approx({**metrics["key_figures"], **metrics["headline"]})
    assert (evaluation / "summary").read_text().startswith("# msenc evaluation")
    assert any(k.startswith("cycle_life/test/") for k in kfp_metrics)
    assert any(k.startswith("capacity/test/") for k in kfp_metrics)
    report = Path(result.report).read_text()
    assert report.startswith("<!DOCTYPE html>") or "<html" in report[:500]
    assert Path(result.report).parent == Path(result.output_dir)
    assert Path(result.pipeline_root).is_relative_to(result.output_dir)


@pytest.mark.slow
def test_pipeline_on_s3_warm_started_from_an_export(tiny_run, s3, tmp_path):
    from msenc_lib.export import ExportConfig, resolve_model_uri, run_export
    from msenc_pipelines.cli import run_pipeline_locally

    _, first = tiny_run
    storage.upload_dir(first["data"] / "unified", s3.uri("raw"))
    exports = s3.uri("exports")
    run_export(ExportConfig(), {"model": str(first["train"] / "model")}, exports, "run-0")

    result = run_pipeline_locally(tmp_path, runner="subprocess", arguments={
        **TINY_ARGS, "data_source_uri": s3.uri("raw"), "init_model_uri": exports, "export_uri": exports,
        "max_steps": 5})
    tasks = _task_dirs(result.pipeline_root)
    assert "export" in tasks

    latest = storage.read_text(storage.join(exports, "LATEST")).strip()
    assert latest != "run-0"
    keys = s3.keys("exports/")
    for part in ("model/config.json", "model/model.safetensors", "embeddings/embeddings.parquet",
                 "evaluation/metrics.json"):
        assert f"exports/{latest}/{part}" in keys, part
    assert "exports/run-0/model/model.safetensors" in keys  # the earlier run is kept

    # ingested from s3: the same table as the first run's
    pd.testing.assert_frame_equal(pd.read_parquet(tasks["data"] / "unified"),
                                  pd.read_parquet(first["data"] / "unified"))
    # warm start: the second run's first loss is the first run's trained level, not a fresh model's
    def train_losses(model_dir: str) -> list[float]:
        rows = [json.loads(x) for x in storage.read_text(storage.join(model_dir, "metrics.jsonl")).splitlines() if x]
        return [r["loss"] for r in rows if "loss" in r]

    cold, warm = train_losses(str(first["train"] / "model")), train_losses(resolve_model_uri(exports))
    assert warm[0] < cold[0] - 0.5 * (cold[0] - cold[-1]), (cold, warm)


@pytest.mark.slow
@pytest.mark.container
def test_component_runs_in_the_msenc_image(docker_api, msenc_image, tmp_path):
    """The data component inside the msenc image through the Docker-API socket; its output read back here."""
    from kfp import local

    from msenc_components.data.component import build as build_data
    from msenc_pipelines.local import make_runner, reliable_docker_steps

    local.init(runner=make_runner("docker"), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with reliable_docker_steps():
        task = build_data(msenc_image)(size="tiny", seed=3)
    assert task.outputs["n_cells"] == 8
    unified = pd.read_parquet(task.outputs["unified"].path)
    assert unified["cell_key"].nunique() == 8 and len(unified) == task.outputs["n_rows"]
