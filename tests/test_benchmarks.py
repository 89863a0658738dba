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


@pytest.mark.skipif(not MBLM_PYTHON.exists(), reason=f"reference venv {MBLM_PYTHON} missing "
                    "(benchmarks/setup_mblm_venv.sh makes it)")
def test_train_bench_quick_with_reference(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out))
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["mblm_unavailable"] is None
    _positive(report, "msenc_train_tokens_per_s", "mblm_train_tokens_per_s", "ratio", "msenc_peak_rss_mib",
              "mblm_peak_rss_mib", "peak_rss_ratio", "msenc_step_time_ratio_long_vs_short",
              "mblm_step_time_ratio_long_vs_short")
    case = report["cases"][report["headline_case"]]
    assert case["ratio"] == pytest.approx(case["msenc_train_tokens_per_s"] / case["mblm_train_tokens_per_s"], rel=1e-2)
    for impl in ("msenc", "mblm"):  # both trained the same context and their losses are real numbers
        run = report["runs"][report["headline_case"]][impl][0]
        assert run["train"]["tokens_per_step"] == case["context_tokens"] and run["train"]["loss_finite"]


def test_train_bench_reports_a_missing_reference_as_null_with_reason(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out), "--cases", "quick256_v23", "--mblm-python",
         str(tmp_path / "no-venv" / "bin" / "python"))
    report = json.loads(out.read_text())
    assert "no reference venv" in report["mblm_unavailable"]
    assert report["mblm_train_tokens_per_s"] is None and report["ratio"] is None
    _positive(report, "msenc_train_tokens_per_s", "msenc_peak_rss_mib")


def test_embed_bench_quick(tmp_path):
    out = tmp_path / "embed.json"
    _run("embed_bench.py", "--output", str(out))
    report = json.loads(out.read_text())
    _positive(report, "cycles_per_s", "tokens_per_s", "cycles_per_s_median", "tokens_per_s_median", "peak_rss_mib")
    assert report["cycles"] == 2 * 6  # the quick data: 2 cells x cycles 0..5, one output row per cell and cycle
    assert len(report["runs"]) == 2 and report["tokens"] >= report["cycles"]
