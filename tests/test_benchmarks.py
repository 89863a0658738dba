"""The benchmark scripts run end to end in --quick mode and write reports with positive figures.

These check that the scripts work, not the figures themselves (performance targets are never timed tests).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MBLM_PYTHON = Path("/tmp/mblm040-venv/bin/python")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _positive(report: dict, *keys: str) -> None:
    for key in keys:
        value = report[key]
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}"


SMALL_CASES = "quick1k_v23,quick256_v23"  # 1,024 and 256 tokens: the --quick code path in seconds


def test_train_bench_quick_plans_the_16k_context_with_few_steps():
    plan = json.loads(_run("train_bench.py", "--list-cases").stdout)
    assert plan["mode"] == "quick"
    first = plan["cases"][0]
    assert (first["context_tokens"], first["vocab"], first["warmup"], first["steps"], first["rounds"]) == (
        16384, 23, 1, 2, 1)
    # a shorter context at the same vocabulary for the step-time ratio; both phases measured
    assert [c["context_tokens"] < 16384 and c["vocab"] == 23 for c in plan["cases"][1:]] == [True]
    assert all(c["phases"] == ["infer", "train"] for c in plan["cases"])


@pytest.mark.slow
@pytest.mark.skipif(not MBLM_PYTHON.exists(), reason=f"reference venv {MBLM_PYTHON} missing "
                    "(benchmarks/setup_mblm_venv.sh makes it)")
def test_train_bench_quick_with_reference(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out), "--cases", SMALL_CASES)
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["mblm_unavailable"] is None
    assert report["headline_case"] == "quick1k_v23" and report["step_time_ratio_contexts"] == [1024, 256]
    _positive(report, "msenc_train_tokens_per_s", "mblm_train_tokens_per_s", "ratio", "msenc_infer_tokens_per_s",
              "mblm_infer_tokens_per_s", "infer_ratio", "msenc_peak_rss_mib", "mblm_peak_rss_mib", "peak_rss_ratio",
              "msenc_step_time_ratio_long_vs_short", "mblm_step_time_ratio_long_vs_short",
              "msenc_infer_step_time_ratio_long_vs_short", "mblm_infer_step_time_ratio_long_vs_short",
              "msenc_infer_rss_over_build_mib", "mblm_infer_rss_over_build_mib")
    for name, case in report["cases"].items():
        _positive(case, "msenc_infer_tokens_per_s", "mblm_infer_tokens_per_s", "infer_ratio",
                  "msenc_train_tokens_per_s", "mblm_train_tokens_per_s", "ratio")
        assert case["ratio"] == pytest.approx(case["msenc_train_tokens_per_s"] / case["mblm_train_tokens_per_s"],
                                              rel=1e-2)
        assert case["infer_ratio"] == pytest.approx(
            case["msenc_infer_tokens_per_s"] / case["mblm_infer_tokens_per_s"], rel=1e-2)
        for impl in ("msenc", "mblm"):  # both ran the same context, inference gave hidden states, losses are numbers
            run = report["runs"][name][impl][0]
            assert run["train"]["tokens_per_step"] == run["infer"]["tokens_per_step"] == case["context_tokens"]
            assert run["train"]["loss_finite"] and len(run["infer"]["step_s"]) == 2
            assert run["infer"]["output_shape"][:2] == [1, case["context_tokens"]]
            assert run["infer"]["output_shape"][2] == report["model"]["hidden_sizes"][-1]


@pytest.mark.slow
def test_train_bench_reports_a_missing_reference_as_null_with_reason(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out), "--cases", "quick256_v23", "--mblm-python",
         str(tmp_path / "no-venv" / "bin" / "python"))
    report = json.loads(out.read_text())
    assert "no reference venv" in report["mblm_unavailable"]
    assert report["mblm_train_tokens_per_s"] is None and report["ratio"] is None
    assert report["mblm_infer_tokens_per_s"] is None and report["infer_ratio"] is None
    _positive(report, "msenc_train_tokens_per_s", "msenc_infer_tokens_per_s", "msenc_peak_rss_mib")


def test_embed_bench_quick(tmp_path):
    out = tmp_path / "embed.json"
    _run("embed_bench.py", "--output", str(out))
    report = json.loads(out.read_text())
    _positive(report, "cycles_per_s", "tokens_per_s", "cycles_per_s_median", "tokens_per_s_median", "peak_rss_mib")
    assert report["cycles"] == 2 * 6  # the quick data: 2 cells x cycles 0..5, one output row per cell and cycle
    assert len(report["runs"]) == 2 and report["tokens"] >= report["cycles"]


@pytest.mark.slow
def test_quality_bench_quick(tmp_path):
    out = tmp_path / "quality.json"
    _run("quality_bench.py", "--output", str(out), "--budget-minutes", "0.2")
    report = json.loads(out.read_text())
    assert report["pretrain"]["steps"] == 10 and report["embeddings"]["dim"] > 0
    life = report["figures"]["cycle_life"]
    assert "none/dummy" in life and "embedding/elastic_net" in life and "qdv_seq/lstm" in life
    assert set(life["variance/linear"]["test"]) == {"rmse", "mae", "mape", "r2", "acc10", "acc15"}
    assert set(report["target"]) >= {"cycle_life", "rul", "met"}
    assert report["target"]["cycle_life"]["ratio"] == pytest.approx(
        report["target"]["cycle_life"]["best_embedding"]["rmse"] / report["target"]["cycle_life"]["best_severson"]["rmse"])
    assert set(report["experiments"]["aggregation"]) == {"mean", "mean+delta", "mean+delta+delta_norm",
                                                         "mean+delta+delta_norm+slope", "last"}
    assert set(report["experiments"]["pooling"]) == {"max", "first"}
