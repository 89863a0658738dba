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
MBLM_PYTHON = Path("/tmp/mblm040-venv/bin/python")  # where benchmarks/setup_mblm_venv.sh makes it
REFERENCE = ROOT.parent / "shared" / "reference" / "mblm_bench.py"


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
    # the reference both ways (at its best and as the original set it), msenc float32 and bf16, the machine's limits
    assert {"msenc", "msenc_bf16", "mblm_flash", "mblm_orig"} <= set(first["impls"]) and first["limits"]


IMPLS = "msenc,msenc_bf16,mblm_flash,mblm_orig"


@pytest.mark.slow
@pytest.mark.skipif(not MBLM_PYTHON.exists(), reason=f"reference venv {MBLM_PYTHON} missing "
                    "(benchmarks/setup_mblm_venv.sh makes it)")
@pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference driver {REFERENCE} missing (../shared beside the repo)")
def test_train_bench_quick_with_reference_both_ways_and_the_machine_limits(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out), "--cases", SMALL_CASES, "--impls", IMPLS)
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["mblm_unavailable"] is None
    assert report["headline_case"] == "quick1k_v23" and report["step_time_ratio_contexts"] == [1024, 256]
    machine = report["machine_at_start"]
    assert machine["cpu"] and isinstance(machine["cpu_flags"], list) and len(machine["load_average"]) == 3
    _positive(report, "msenc_train_tokens_per_s", "mblm_flash_train_tokens_per_s", "mblm_orig_train_tokens_per_s",
              "ratio", "ratio_vs_orig", "msenc_infer_tokens_per_s", "infer_ratio", "bf16_ratio", "cpu_ratio",
              "msenc_train_peak_rss_sampled_mib", "peak_rss_ratio", "msenc_step_time_ratio_long_vs_short",
              "mblm_flash_step_time_ratio_long_vs_short", "msenc_infer_rss_over_build_mib")
    limits = report["limits"]
    _positive(limits, "matmul_tflops_float32", "matmul_tflops_bfloat16", "attention_forward_backward_s_float32",
              "attention_floor_train_s", "msenc_mfu_train", "mblm_flash_mfu_train", "flops_train_step")
    assert limits["attention_shape"] == [1, 32, 32, 8]  # the global stage of the quick1k case
    for name, case in report["cases"].items():
        best = case["reference_best"]
        assert best in ("mblm_flash", "mblm_orig")
        assert case[f"{best}_train_tokens_per_s"] == max(case["mblm_flash_train_tokens_per_s"],
                                                         case["mblm_orig_train_tokens_per_s"])
        assert case["ratio"] == pytest.approx(case["msenc_train_tokens_per_s"] / case[f"{best}_train_tokens_per_s"],
                                              rel=1e-2)
        assert case["ratio_vs_orig"] == pytest.approx(
            case["msenc_train_tokens_per_s"] / case["mblm_orig_train_tokens_per_s"], rel=1e-2)
        for impl in ("msenc", "msenc_bf16", "mblm_flash", "mblm_orig"):  # same context, hidden states, finite losses
            run = report["runs"][name][impl][0]
            assert run["train"]["tokens_per_step"] == run["infer"]["tokens_per_step"] == case["context_tokens"]
            assert run["train"]["loss_finite"] and len(run["infer"]["step_s"]) == 2
            assert run["infer"]["output_shape"] == [1, case["context_tokens"], report["model"]["hidden_sizes"][-1]]
            assert isinstance(run["load_average"], list)
        assert report["runs"][name]["mblm_flash"][0]["config"]["use_flash_attn"] is True
        assert report["runs"][name]["mblm_orig"][0]["config"]["use_flash_attn"] is False
        assert report["runs"][name]["msenc_bf16"][0]["precision"] == "bf16"


@pytest.mark.slow
def test_train_bench_reports_a_missing_reference_as_null_with_reason(tmp_path):
    out = tmp_path / "train.json"
    _run("train_bench.py", "--output", str(out), "--cases", "quick256_v23", "--impls", IMPLS, "--no-limits",
         "--mblm-python", str(tmp_path / "no-venv" / "bin" / "python"))
    report = json.loads(out.read_text())
    assert "no reference venv" in report["mblm_unavailable"]
    assert report["mblm_flash_train_tokens_per_s"] is None and report["ratio"] is None
    assert report["mblm_best_infer_tokens_per_s"] is None and report["infer_ratio"] is None
    _positive(report, "msenc_train_tokens_per_s", "msenc_infer_tokens_per_s", "msenc_peak_rss_mib")


def test_model_flop_count_matches_torch_flop_counter_on_the_linear_layers():
    """machine_limits.forward_flops against torch's FlopCounterMode (which counts the matmuls of the linear layers
    and not the CPU flash-attention kernel) on a small seed-shaped model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import machine_limits

    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderModel

    config = MultiscaleEncoderConfig.from_preset("seed_wide", seq_lens=[64, 8, 4], vocab_size=23)
    model = MultiscaleEncoderModel(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(4, 23, (1, config.max_context)))
    sizes = {k: getattr(config, k) for k in ("seq_lens", "hidden_sizes", "num_layers", "num_attention_heads",
                                             "head_dim", "ff_multiplier")}
    flops = machine_limits.forward_flops(sizes, config.max_context)
    assert flops["linear"] == counter.get_total_flops()
    assert flops["attention"] == sum(4 * h * s * s * d * n * l for h, s, d, n, l in zip(
        config.num_attention_heads, config.seq_lens, [32, 8, 8], [1, 64, 512], config.num_layers))


def test_embed_bench_quick(tmp_path):
    out = tmp_path / "embed.json"
    _run("embed_bench.py", "--output", str(out))
    report = json.loads(out.read_text())
    _positive(report, "cycles_per_s", "tokens_per_s", "cycles_per_s_best", "peak_rss_mib")
    assert report["cycles"] == 2 * 6  # the quick data: 2 cells x cycles 0..5, one output row per cell and cycle
    assert len(report["msenc_runs"]) == 1 and report["tokens"] >= report["cycles"]
    assert report["mblm_unavailable"] == "--no-mblm" and report["ratio"] is None


def test_embed_bench_models_mblm_per_cycle_time_from_timed_lengths():
    """mblm runs each cycle alone: its time is interpolated between the timed (padded length, seconds) points, in
    proportion beyond them, and summed over every cycle's chunks."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import embed_bench

    assert embed_bench.mblm_points([10, 40, 70, 100, 5000], 2, 4096, 32) == [64, 128]
    measured = {64: 0.2, 128: 0.3}
    total = embed_bench.mblm_seconds_total([64, 100, 4096 + 10], measured, 4096, 32)
    # 64 -> 0.2; 100 pads to 128 -> 0.3; 4106 = a 4096-token chunk (0.3 x 4096 / 128) + 10 padded to 32 (0.2 / 2)
    assert total == pytest.approx(0.2 + 0.3 + 0.3 * 32 + 0.1)
    assert embed_bench.mblm_seconds_total([80], measured, 4096, 32) == pytest.approx(0.2 + 0.1 * 32 / 64)


# ------------------------------------------------------------------------------------------- the GPU benchmark
def _gpu_bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_gpu_bench_refuses_clearly_without_cuda(tmp_path):
    proc = _gpu_bench("--output", str(tmp_path / "gpu.json"))
    assert proc.returncode == 2
    assert "refused: no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_bench_dry_run_runs_every_step_on_cpu(tmp_path):
    """The GPU script's plumbing on CPU at toy sizes: bf16 autocast check, SDPA backends, a 2-rank gloo rendezvous
    under torchrun, msenc's batch search and timed steps, and mblm's when its venv is here."""
    out = tmp_path / "gpu.json"
    extra = {"MBLM_PYTHON": str(MBLM_PYTHON)} if MBLM_PYTHON.exists() else {}
    skip = [] if MBLM_PYTHON.exists() else ["--skip", "mblm"]
    proc = _gpu_bench("--dry-run", "--output", str(out), "--steps", "2", "--warmup", "1", *skip, env=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    checks = report["checks"]
    assert checks["bf16_autocast"]["ok"] and checks["bf16_autocast"]["matmul_dtype"] == "torch.bfloat16"
    assert checks["sdpa"]["runs"]["flash"] is True and checks["sdpa"]["default"] == "flash"  # the CPU flash kernel
    _positive(checks, "matmul_tflops_bfloat16")
    assert report["nccl"]["ok"] and report["nccl"]["world_size"] == 2 and report["nccl"]["backend"] == "gloo"
    msenc = report["msenc"]
    assert msenc["batch"] == 2 and len(msenc["step_s"]) == 2 and msenc["context_tokens"] == 512
    _positive(report["summary"], "msenc_tokens_per_s", "msenc_mfu", "peak_tflops_bf16_used")
    if MBLM_PYTHON.exists():
        _positive(report["summary"], "mblm_tokens_per_s", "ratio")
        assert report["mblm"]["params"] > 0 and report["mblm"]["batch"] == 2


@pytest.mark.slow
def test_quality_bench_quick(tmp_path):
    out = tmp_path / "quality.json"
    _run("quality_bench.py", "--output", str(out), "--budget-minutes", "0.2")
    report = json.loads(out.read_text())
    assert report["pretrain"]["steps"] == 10 and report["embeddings"]["dim"] > 0
    life = report["figures"]["cycle_life"]
    assert "none/dummy" in life and "embedding/elastic_net" in life and "qdv_seq/lstm" in life
    held_out = next(iter(life["variance/linear"]))  # the tiny data's split: 7 train cells, 1 validation, no test
    assert set(life["variance/linear"][held_out]) == {"rmse", "mae", "mape", "r2", "acc10", "acc15"}
    assert set(report["target"]) >= {"cycle_life", "rul", "met"}
    assert report["target"]["cycle_life"]["ratio"] == pytest.approx(
        report["target"]["cycle_life"]["best_embedding"]["rmse"] / report["target"]["cycle_life"]["best_severson"]["rmse"])
    assert set(report["experiments"]["aggregation"]) == {"mean", "mean+delta", "mean+delta+delta_norm",
                                                         "mean+delta+delta_norm+slope", "last"}
    assert report["evaluate_settings"] == {"seeds": 1, "rf_max_features": ["sqrt"], "rul_stride": 20,
                                           "early_cycles": [20, 40]}
    for name in ("capacity", "capacity_change", "rows"):
        assert report["probe"][name]["rmse"] > 0 and report["probe"][name]["r2"] <= 1
    exp = report["experiments"]
    assert set(exp["pooling"]) == {"mean", "max", "first", "mean+max", "last_rows"}
    assert exp["pooling_pass_vs_embed"] < 1e-5  # the experiments' model pass pools as embed does
    assert exp["pooling"]["mean+max"]["probe"]["dim"] == 2 * report["embeddings"]["dim"]
    assert 0 < exp["checkpoint"]["step"] < report["pretrain"]["steps"]
    assert exp["mask"]["steps"] == exp["checkpoint"]["step"] and exp["mask"]["mask_probability"] == 0.3
    for group in ("pooling", "checkpoint", "mask"):
        for name in ("mean", exp["best_pooling"]):
            assert any(k.startswith("cycle_life/") for k in exp[group][name]["best"]), (group, name)


def test_quality_probe_finds_what_the_embedding_holds():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    import pandas as pd
    from quality_bench import probe

    rng = np.random.default_rng(0)
    cells = np.repeat([f"c{i}" for i in range(10)], 30)
    cycles = np.tile(np.arange(1, 31), 10)
    capacity = 1.1 - 0.002 * cycles * rng.uniform(0.5, 1.5, 300) + rng.normal(0, 0.01, 300)
    targets = pd.DataFrame({"cell_key": cells, "cycle_number": cycles, "capacity": capacity,
                            "rows": rng.integers(30, 40, 300)})
    targets["capacity_change"] = targets["capacity"] - targets.groupby("cell_key")["capacity"].transform("first")
    noise = rng.normal(size=(300, 8))
    holds = pd.DataFrame({"cell_key": cells, "cycle_number": cycles,
                          **{f"val_{i}": noise[:, i] for i in range(8)}, "val_8": capacity})
    found = probe(holds, targets)
    assert found["cells"] == 10 and found["cycles"] == 300 and found["folds"] == 5
    assert found["capacity"]["r2"] > 0.99 and found["rows"]["r2"] < 0.1
    blind = probe(holds.drop(columns="val_8"), targets)
    assert blind["capacity"]["r2"] < 0.1


@pytest.mark.slow
def test_ablation_bench_quick(tmp_path):
    out = tmp_path / "ablation.json"
    _run("ablation_bench.py", "--output", str(out), "--variants", "base,no_policy_columns")
    report = json.loads(out.read_text())
    base, lean = report["variants"]["base"], report["variants"]["no_policy_columns"]
    assert base["pretrain"]["steps"] == lean["pretrain"]["steps"] == 4
    assert set(lean["excluded_columns"]) - set(base["excluded_columns"]) == {
        "charge_policy_Q1", "charge_policy_Q2", "charge_policy_Q3", "charge_policy_Q4"}
    assert sum(lean["tokens"].values()) < 0.9 * sum(base["tokens"].values())  # the policy columns are gone
    for v in (base, lean):
        assert v["probe"]["capacity"]["rmse"] > 0 and v["probe"]["dim"] > 0
        assert 0 < v["cycle_life_rmse"] < float("inf") and 0 < v["rul_rmse"] < float("inf")
        assert set(v["figures"]) == {"cycle_life", "rul"}
