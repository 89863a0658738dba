#!/usr/bin/env python3
"""Training and inference throughput of msenc's encoder against the reference mblm 0.4.0 at its best and in the
original's setting, beside the machine's own limits, same config, same run.

    python benchmarks/train_bench.py --cases ctx65k_v23   # the seed context: the headline (~20 min on 2 cores)
    python benchmarks/train_bench.py                      # 65,536 and 16,384 tokens, vocab 23 and 49,155
    python benchmarks/train_bench.py --quick              # 16,384 and 4,096 tokens, vocab 23, 2 steps: minutes
    python benchmarks/train_bench.py --quick --list-cases # print the plan (cases, steps, rounds) and exit
    python benchmarks/train_bench.py --impls msenc,mblm_flash --cases ctx16k_v23

Implementations (``--impls``), each a fresh subprocess per round:
  msenc       msenc in float32, layers compiled as ``msenc train`` does at that context (``--compile auto``)
  msenc_bf16  msenc under bf16 autocast (global attention kept in float32 when training): ``msenc train``'s
              default on CPUs with AMX/AVX512-BF16 and on CUDA
  msenc_bf16_mem08  the same with an activation-memory budget of 0.8 (``--activation-memory-budget``): the
              compiled backward recomputes cheap activations instead of keeping them
  msenc_wide_bf16  msenc_bf16 with the ``seed_wide`` preset (8 global heads of dim 32 instead of 32 of dim 8,
              same parameters): not the reference's model, its ratio says what the wider heads buy
  mblm_flash  mblm 0.4.0 with ``use_flash_attn=True`` (its SDPA path): the reference at its best
  mblm_orig   mblm 0.4.0 with ``use_flash_attn=False``, as the original workflow configured it (full 2,048 x 2,048
              attention matrices)
The ``headline`` compares msenc with the faster reference setting at the same precision (float32) by CPU seconds
per step (``cpu_ratio``, ``infer_cpu_ratio``; wall clock ``ratio`` / ``infer_ratio`` beside) and peak RSS
(``peak_rss_ratio``); ``*_vs_orig`` compare with the original's setting; ``bf16_*`` msenc's bf16 default with the
float32 reference.

One training step, for every implementation: ``zero_grad``, forward with the loss, backward, gradient clipping at
1.0, ``AdamW(lr=1e-3, weight_decay=0.01)`` step (msenc: fused, as its trainer); batch 1, the seed model's stage
sizes (hidden 256/64/64, layers 8/4/2, heads 32/16/4 of dim 8) on random tokens with 15% MLM masking. msenc's
loss is its own objective (0.7 CE + 0.3 number-token loss over the masked positions); mblm's is its CE. Vocabulary
23 is msenc's built-in numeric tokenizer; 49,155 is the original workflow's granite BPE + specials.

One inference step (run first, so its peak RSS is not hidden behind training's): the model in ``eval()``, under
``torch.inference_mode()``, the bare encoder's forward returning the last hidden states (embedding extraction),
batch 1, the same unmasked-length input; warm-up and timed steps as for training. msenc's warm-up steps include
its compilation (reported as ``first_step_s``); its ``*_peak_rss_sampled_mib`` cover the timed steps.

The machine's limits (``limits``, a worker of ``machine_limits.py`` per round): dense 2048^3 matmul throughput in
float32 and bfloat16, and ``scaled_dot_product_attention`` alone at the global stage's shape (1, 32, S0, 8). From
them: ``attention_floor_*_s`` (that kernel x the global stage's layers: the part of a step no implementation using
it can go below), the share of msenc's step it takes, the largest ratio against the reference that this floor
allows, and model FLOP utilisation (``mfu``: matmul FLOPs per step / step time / the measured matmul peak).

Each implementation runs in its own subprocess: msenc in this interpreter (``--worker``), mblm with the python of the
reference venv (``benchmarks/setup_mblm_venv.sh``) through the reference driver ``mblm_bench.py`` (called, never
copied; found at ``../shared/reference/`` beside the repository, or ``--reference``). The implementations take turns
within each round, the order rotating round by round, under the same environment variables, so load on a shared
machine hits all alike; each worker records the load average. Absolute figures are medians over rounds of each run's
median step; ratios, MFU and the attention share are computed within each round (``per_round``: runs minutes apart
see similar load) and their medians reported; ``*cpu_ratio`` compares CPU seconds per step, which other load on the
machine hardly changes. Without the reference venv or driver, the mblm figures are null and ``mblm_unavailable``
says why.

Environment (applied to all): ``--omp-wait-policy`` (default PASSIVE, msenc's own default; ``unset`` leaves
libgomp's default),
``--thp`` (torch's ``THP_MEM_ALLOC_ENABLE``), ``--ld-preload`` (e.g. jemalloc).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import machine_limits as ml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "train_bench.json"
DEFAULT_MBLM_PYTHON = "/tmp/mblm040-venv/bin/python"  # benchmarks/setup_mblm_venv.sh's default venv
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "mblm_bench.py"
MODEL = {"hidden_sizes": [256, 64, 64], "num_layers": [8, 4, 2], "num_attention_heads": [32, 16, 4], "head_dim": 8,
         "ff_multiplier": 2}
BUILTIN_VOCAB = 23  # msenc's numeric tokenizer: pad 0, unk 1, mask 2, sep 3, digits 4..13, then . - , e + n a i f
PAD_ID, MASK_ID, FIRST_REGULAR_ID = 0, 2, 4
DIGIT_IDS = list(range(4, 14))
ORIGINAL_VOCAB = 49155
MASK_PROBABILITY = 0.15

# implementation -> (kind, worker flags)
IMPLS = {"msenc": ("msenc", ["--precision", "fp32"]), "msenc_bf16": ("msenc", ["--precision", "bf16"]),
         "msenc_bf16_mem08": ("msenc", ["--precision", "bf16", "--memory-budget", "0.8"]),
         "msenc_wide_bf16": ("msenc", ["--precision", "bf16", "--preset", "seed_wide"]),
         "mblm_flash": ("mblm", ["--use-flash-attn"]), "mblm_orig": ("mblm", [])}
REFERENCES = ("mblm_flash", "mblm_orig")
WIDE_HEADS, WIDE_HEAD_DIM = 8, 32  # the seed_wide preset's global stage
MSENC_VARIANTS = (("", "msenc"), ("bf16_", "msenc_bf16"), ("bf16_mem08_", "msenc_bf16_mem08"),
                  ("wide_bf16_", "msenc_wide_bf16"))  # key prefix, impl
# mblm_gib: each reference setting's peak RSS there (GiB, measured on 2-core VMs; 65,536 x 49,155 float32 logits
# alone are 12.9 GB and mblm also keeps their softmax and gradient): it runs only with that much memory + 1 GiB free.
CASES = {
    "ctx65k_v23": {"seq_lens": [2048, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3,
                   "mblm_gib": {"mblm_flash": 3.0, "mblm_orig": 8.0}},
    "ctx16k_v23": {"seq_lens": [512, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 2, "steps": 5,
                   "mblm_gib": {"mblm_flash": 1.0, "mblm_orig": 1.5}},
    "ctx16k_v49155": {"seq_lens": [512, 8, 4], "vocab": ORIGINAL_VOCAB, "warmup": 1, "steps": 3,
                      "mblm_gib": {"mblm_flash": 10.5, "mblm_orig": 10.5}},
    "ctx65k_v49155": {"seq_lens": [2048, 8, 4], "vocab": ORIGINAL_VOCAB, "warmup": 1, "steps": 3,
                      "mblm_gib": {"mblm_flash": 40.0, "mblm_orig": 42.0}},
    "quick1k_v23": {"seq_lens": [32, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3,
                    "mblm_gib": {"mblm_flash": 0.5, "mblm_orig": 0.5}},
    "quick256_v23": {"seq_lens": [8, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3,
                     "mblm_gib": {"mblm_flash": 0.5, "mblm_orig": 0.5}},
    "ctx4k_v23": {"seq_lens": [128, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3,
                  "mblm_gib": {"mblm_flash": 0.5, "mblm_orig": 0.5}},
}
FULL_CASES = ["ctx65k_v23", "ctx16k_v23", "ctx16k_v49155", "ctx65k_v49155"]
# --quick: the 16k context (the spec's check in minutes) and a 4k one for the step-time ratio, few steps, one round
QUICK_CASES = ["ctx16k_v23", "ctx4k_v23"]
QUICK_WARMUP, QUICK_STEPS = 1, 2
HEADLINE = {"full": "ctx65k_v23", "quick": "ctx16k_v23"}  # else the first case run
PHASES = ("infer", "train")
NAME = "train_bench"


# ============================================================================ msenc worker (one subprocess)
def run_msenc_worker(a: argparse.Namespace) -> dict:
    env = bc.timing_env()  # as OpenMP sees it (child_env set OMP_WAIT_POLICY for this worker)
    if a.torch_first:
        import torch  # noqa: F401
    import msenc_lib
    import torch

    from msenc_lib.model import PRESETS, MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM
    from msenc_lib.model.hardware import compile_pays
    from msenc_lib.model.masking import MaskingSpec, mask_tokens

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model_sizes = {**MODEL, **{k: PRESETS[a.preset][k] for k in ("num_attention_heads", "head_dim")}}
    config = MultiscaleEncoderConfig(vocab_size=a.vocab, seq_lens=a.seq_lens, pad_token_id=PAD_ID,
                                     mask_token_id=MASK_ID, digit_token_ids=DIGIT_IDS, **model_sizes)
    t0 = time.perf_counter()
    model = MultiscaleEncoderForMaskedLM(config).train()
    length = config.max_context
    compiled = compile_pays(a.compile, "cpu", length)
    if compiled:
        model.compile_layers(memory_budget=a.memory_budget)
    build_s = time.perf_counter() - t0
    ids = torch.randint(FIRST_REGULAR_ID, a.vocab, (1, length), generator=gen)
    spec = MaskingSpec.create(MASK_ID, range(FIRST_REGULAR_ID), a.vocab, probability=MASK_PROBABILITY)
    masked, labels = mask_tokens(ids, spec, generator=gen)
    result = {"impl": "msenc", "msenc_version": msenc_lib.__version__, "torch_version": torch.__version__,
              "threads": torch.get_num_threads(), "params": model.num_parameters(), "build_s": round(build_s, 3),
              "precision": a.precision, "compiled": compiled, "memory_budget": a.memory_budget,
              "num_masked": int((labels != -100).sum()), "env": env,
              "rss_after_build_mib": round(bc.rss_mib(), 1),
              "preset": a.preset,
              "config": {"seq_lens": a.seq_lens, "vocab": a.vocab, **model_sizes, "batch_size": 1, "seq_len": length}}
    for phase in a.phases:  # infer first by default, as the reference does
        result[phase] = (msenc_infer(a, model, ids) if phase == "infer"
                         else msenc_train(a, model, masked, labels, length))
    result["peak_rss_mib"] = round(bc.maxrss_mib(), 1)
    return result


def _autocast(a: argparse.Namespace):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16")


def msenc_infer(a: argparse.Namespace, model, ids) -> dict:
    """Embedding extraction: the bare encoder's last hidden states, eval mode, under inference_mode."""
    import torch

    encoder = model.encoder.eval()
    times, shape, finite, first = [], None, True, None
    usage = bc.CpuUsage()
    rss = bc.PeakRss()
    with torch.inference_mode():
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                usage.start()
                rss.__enter__()
            t0 = time.perf_counter()
            with _autocast(a):
                hidden = encoder(ids).last_hidden_state
            dt = time.perf_counter() - t0
            first = dt if first is None else first
            shape, ok = list(hidden.shape), bool(torch.isfinite(hidden).all())
            finite = finite and ok
            del hidden
            bc.log(NAME, f"msenc infer {'warmup' if i < a.warmup else 'step'} {i}: {dt:.3f}s finite={ok}")
            if i >= a.warmup:
                times.append(dt)
    rss.__exit__()
    model.train()
    return {**bc.timing_summary(times, ids.numel()), **usage.per_step(a.steps), "output": "hidden",
            "output_shape": shape, "finite": finite, "first_step_s": round(first, 3),
            "peak_rss_sampled_mib": round(rss.peak, 1), "maxrss_after_mib": round(bc.maxrss_mib(), 1)}


def msenc_train(a: argparse.Namespace, model, masked, labels, length: int) -> dict:
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    times, losses, first = [], [], None
    parts: dict[str, list[float]] = {"forward_s": [], "backward_s": [], "optimizer_s": []}
    usage = bc.CpuUsage()
    rss = bc.PeakRss()
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            usage.start()
            rss.__enter__()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(a):
            loss = model(masked, labels=labels).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        t3 = time.perf_counter()
        first = t3 - t0 if first is None else first
        value = float(loss.detach())
        del loss
        bc.log(NAME, f"msenc train {'warmup' if i < a.warmup else 'step'} {i}: {t3 - t0:.3f}s "
               f"(fwd {t1 - t0:.2f} bwd {t2 - t1:.2f} opt {t3 - t2:.2f}) loss={value:.4f}")
        if i >= a.warmup:
            times.append(t3 - t0)
            losses.append(round(value, 4))
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[key].append(dt)
    rss.__exit__()
    return {**bc.timing_summary(times, length), **usage.per_step(a.steps), "losses": losses,
            "loss_finite": all(map(math.isfinite, losses)), "first_step_s": round(first, 3),
            **{f"{k}_median": round(statistics.median(v), 4) for k, v in parts.items()},
            "peak_rss_sampled_mib": round(rss.peak, 1), "maxrss_after_mib": round(bc.maxrss_mib(), 1)}


# ============================================================================ orchestration
def child_env(a: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD"):
        env.pop(key, None)
    if a.omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    if a.thp != "unset":
        env["THP_MEM_ALLOC_ENABLE"] = a.thp
    if a.ld_preload:
        env["LD_PRELOAD"] = a.ld_preload
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def mblm_unavailable(a: argparse.Namespace) -> str | None:
    """Why the reference cannot run here (None when it can)."""
    if not any(IMPLS[i][0] == "mblm" for i in a.impls):
        return "no reference implementation asked for (--impls)"
    if not Path(a.mblm_python).exists():
        return f"no reference venv: {a.mblm_python} missing (run benchmarks/setup_mblm_venv.sh)"
    if not Path(a.reference).exists():
        return (f"no reference driver: {a.reference} missing (it is ../shared/reference/mblm_bench.py beside the "
                "repository; --reference sets another)")
    return None


def run_worker(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """One worker run; its progress goes to our stderr, the last JSON line of its stdout is the result."""
    bc.log(NAME, "run: " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"exit code {proc.returncode}, no JSON result on stdout"}
    result = json.loads(lines[-1])
    if proc.returncode != 0:
        result.setdefault("error", f"exit code {proc.returncode}")
    return result


def _phase(run: dict, phase: str, key: str) -> float | None:
    """A number from one phase's record of a worker run (None when that phase failed or did not run)."""
    record = run.get(phase)
    value = record.get(key) if isinstance(record, dict) and "error" not in record else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _train(run: dict, key: str) -> float | None:
    return _phase(run, "train", key)


def _cpu_per_step(run: dict, phase: str) -> float | None:
    """User + system CPU seconds per timed step: unlike wall time, little changed by other load on the machine."""
    record = run.get(phase)
    if not isinstance(record, dict) or "error" in record:
        return None
    if "cpu_user_s_per_step" in record:  # msenc's worker
        return record["cpu_user_s_per_step"] + record["cpu_sys_s_per_step"]
    usage, steps = record.get("timed_steps_rusage"), len(record.get("step_s", []))  # the reference driver
    return (usage["cpu_user_s"] + usage["cpu_sys_s"]) / steps if usage and steps else None


def _median(values: list, digits: int = 4) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), digits) if values else None


def _ratio(m: float | None, b: float | None) -> float | None:
    return round(m / b, 3) if m and b else None


def summarise_impl(impl: str, runs: list[dict]) -> dict:
    """Medians over rounds of each run's median step, per phase; peaks; the first (compiling) step."""
    out: dict = {}
    for phase in PHASES:
        ok = [r for r in runs if _phase(r, phase, "tokens_per_s_median")]
        out[f"{impl}_{phase}_tokens_per_s"] = _median([_phase(r, phase, "tokens_per_s_median") for r in ok])
        out[f"{impl}_{phase}_tokens_per_s_best"] = max((_phase(r, phase, "tokens_per_s_best") for r in ok),
                                                       default=None)
        out[f"{impl}_{phase}_step_s"] = _median([_phase(r, phase, "step_s_median") for r in ok])
        out[f"{impl}_{phase}_peak_rss_sampled_mib"] = max(
            (v for r in ok if (v := _phase(r, phase, "peak_rss_sampled_mib"))), default=None)
        out[f"{impl}_{phase}_first_step_s"] = _median([_phase(r, phase, "first_step_s") for r in ok])
        out[f"{impl}_{phase}_cpu_s_per_step"] = _median([_cpu_per_step(r, phase) for r in ok])
    # the inference working set: its peak over the RSS after imports + model build (msenc's imports, transformers
    # included, weigh ~150 MiB more than mblm's, which would otherwise dominate at short contexts)
    growth = [v - base for r in runs if (v := _phase(r, "infer", "peak_rss_sampled_mib"))
              and isinstance(base := r.get("rss_after_build_mib"), (int, float))]
    out[f"{impl}_infer_rss_over_build_mib"] = round(max(growth), 1) if growth else None
    out[f"{impl}_peak_rss_mib"] = max((r["peak_rss_mib"] for r in runs if "peak_rss_mib" in r), default=None)
    out[f"{impl}_params"] = next((r["params"] for r in runs if "params" in r), None)
    out[f"{impl}_errors"] = [r["error"] for r in runs if "error" in r] + [
        f"{phase}: {r[phase]['error']}" for r in runs for phase in PHASES
        if isinstance(r.get(phase), dict) and "error" in r[phase]]
    return out


def summarise_limits(limit_runs: list[dict]) -> dict:
    """The matmul peaks and the attention kernel's times (medians over the given rounds' measurements)."""
    ok = [r for r in limit_runs if "error" not in r]

    def med(*path: str) -> float | None:
        values = []
        for r in ok:
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            values.append(v)
        return _median(values, 6)

    wide = f"attention_{WIDE_HEADS}x{WIDE_HEAD_DIM}"
    return {"matmul_tflops_float32": med("matmul", "float32", "tflops"),
            "matmul_tflops_bfloat16": med("matmul", "bfloat16", "tflops"),
            "matmul_tflops_per_cpu_s_float32": med("matmul", "float32", "tflops_per_cpu_s"),
            "matmul_tflops_per_cpu_s_bfloat16": med("matmul", "bfloat16", "tflops_per_cpu_s"),
            "attention_forward_cpu_s_float32": med("attention", "float32", "forward_cpu_s"),
            "attention_forward_backward_cpu_s_float32": med("attention", "float32", "forward_backward_cpu_s"),
            "attention_forward_cpu_s_bfloat16": med("attention", "bfloat16", "forward_cpu_s"),
            "attention_wide_forward_backward_cpu_s_float32": med(wide, "float32", "forward_backward_cpu_s"),
            "attention_wide_forward_cpu_s_bfloat16": med(wide, "bfloat16", "forward_cpu_s"),
            "attention_shape": ok[0]["attention"]["float32"]["shape"] if ok else None,
            "attention_forward_s_float32": med("attention", "float32", "forward_s"),
            "attention_forward_backward_s_float32": med("attention", "float32", "forward_backward_s"),
            "attention_forward_s_bfloat16": med("attention", "bfloat16", "forward_s"),
            "attention_forward_backward_s_bfloat16": med("attention", "bfloat16", "forward_backward_s"),
            "attention_wide_forward_backward_s_float32": med(wide, "float32", "forward_backward_s"),
            "attention_wide_forward_s_bfloat16": med(wide, "bfloat16", "forward_s"),
            "errors": [r["error"] for r in limit_runs if "error" in r]}


def round_figures(runs: dict[str, dict], limits: dict, best: dict[str, str | None], case: dict) -> dict:
    """One round's ratios and limits: msenc / reference tokens/s (wall clock) and CPU seconds per step; the attention
    floor (the global stage's kernel alone x its layers, under every implementation's step), msenc's share in it,
    model FLOP utilisation (FLOPs per CPU-second against the dense matmul's) and the ratio the floor allows if all else
    took no time, these three from CPU seconds so that other load on a shared machine hardly moves them."""
    layers = MODEL["num_layers"][0]
    tokens = math.prod(case["seq_lens"])
    flops = ml.forward_flops({"seq_lens": case["seq_lens"], **MODEL}, tokens,
                             labelled=round(tokens * MASK_PROBABILITY), vocab=case["vocab"])
    train_flops, infer_flops = 3 * flops["total"], flops["total"] - flops["lm_head"]
    row: dict = {"flops_train_step": train_flops, "flops_infer_step": infer_flops,
                 "flops_forward_attention": flops["attention"]}

    def floor(key: str) -> float | None:
        return round(layers * limits[key], 4) if limits.get(key) else None

    # the floors in wall seconds (what the kernel took in this round) and in CPU seconds (what the shares, the MFU
    # and the allowed ratio use: other load on the machine hardly changes them)
    for unit, mark in (("", ""), ("cpu_", "cpu_")):
        row[f"attention_floor_train_{unit}s"] = floor(f"attention_forward_backward_{mark}s_float32")  # trained in fp32
        row[f"attention_floor_infer_{unit}s_float32"] = floor(f"attention_forward_{mark}s_float32")
        row[f"attention_floor_infer_{unit}s_bfloat16"] = floor(f"attention_forward_{mark}s_bfloat16")
        row[f"attention_wide_floor_train_{unit}s"] = floor(f"attention_wide_forward_backward_{mark}s_float32")
        row[f"attention_wide_floor_infer_{unit}s_bfloat16"] = floor(f"attention_wide_forward_{mark}s_bfloat16")
    for phase, prefix in (("train", ""), ("infer", "infer_")):
        ref = runs.get(best[phase]) if best[phase] else None
        orig = runs.get("mblm_orig")
        for name, msenc in MSENC_VARIANTS:
            run = runs.get(msenc)
            if run is None:
                continue
            mine = _phase(run, phase, "tokens_per_s_median")
            row[f"{name}{prefix}ratio"] = _ratio(mine, ref and _phase(ref, phase, "tokens_per_s_median"))
            row[f"{name}{prefix}ratio_vs_orig"] = _ratio(mine, orig and _phase(orig, phase, "tokens_per_s_median"))
            row[f"{name}{prefix}cpu_ratio"] = _ratio(ref and _cpu_per_step(ref, phase), _cpu_per_step(run, phase))
            row[f"{name}{prefix}cpu_ratio_vs_orig"] = _ratio(orig and _cpu_per_step(orig, phase),
                                                             _cpu_per_step(run, phase))
    for impl, precision, wide in (("msenc", "float32", ""), ("msenc_bf16", "bfloat16", ""),
                                  ("msenc_bf16_mem08", "bfloat16", ""), ("msenc_wide_bf16", "bfloat16", "_wide"),
                                  ("mblm_flash", "float32", ""), ("mblm_orig", "float32", "")):
        run = runs.get(impl)
        if run is None:
            continue
        train, infer = _cpu_per_step(run, "train"), _cpu_per_step(run, "infer")
        floor_train = row[f"attention{wide}_floor_train_cpu_s"]
        floor_infer = row.get(f"attention{wide}_floor_infer_cpu_s_{precision}")
        if impl.startswith("msenc"):
            row[f"{impl}_attention_share_train"] = round(floor_train / train, 3) if train and floor_train else None
            row[f"{impl}_attention_share_infer"] = round(floor_infer / infer, 3) if infer and floor_infer else None
        peak = limits.get(f"matmul_tflops_per_cpu_s_{precision}")  # FLOPs per CPU-second of the dense matmul
        row[f"{impl}_mfu_train"] = round(train_flops / train / (peak * 1e12), 4) if train and peak else None
        row[f"{impl}_mfu_infer"] = round(infer_flops / infer / (peak * 1e12), 4) if infer and peak else None
    ref_train = runs.get(best["train"]) if best["train"] else None
    ref_infer = runs.get(best["infer"]) if best["infer"] else None
    ref_train_cpu = ref_train and _cpu_per_step(ref_train, "train")
    ref_infer_cpu = ref_infer and _cpu_per_step(ref_infer, "infer")
    row["max_train_ratio_at_attention_floor"] = _ratio(ref_train_cpu, row["attention_floor_train_cpu_s"])
    row["max_infer_ratio_at_attention_floor_float32"] = _ratio(ref_infer_cpu,
                                                               row["attention_floor_infer_cpu_s_float32"])
    row["max_infer_ratio_at_attention_floor_bfloat16"] = _ratio(ref_infer_cpu,
                                                                row["attention_floor_infer_cpu_s_bfloat16"])
    return row


def summarise_case(runs: dict[str, list[dict]], limit_runs: list[dict], case: dict) -> dict:
    """Per implementation and phase: medians over rounds and peaks; the reference at its best (the faster setting
    per phase); the ratios, limits and MFU computed round by round (``per_round``) and their medians (the headline
    figures; ``*_of_medians`` are the ratios of the medians)."""
    out: dict = {}
    for impl in IMPLS:
        if impl in runs:
            out.update(summarise_impl(impl, runs[impl]))
    best = {}
    for phase, prefix in (("train", ""), ("infer", "infer_")):
        measured = {r: out.get(f"{r}_{phase}_tokens_per_s") for r in REFERENCES}
        best[phase] = max((r for r in REFERENCES if measured[r]), key=lambda r: measured[r], default=None)
        out[f"{prefix}reference_best"] = best[phase]
        out[f"mblm_best_{phase}_tokens_per_s"] = measured.get(best[phase]) if best[phase] else None
        for name, msenc in MSENC_VARIANTS:
            out[f"{name}{prefix}ratio_of_medians"] = _ratio(out.get(f"{msenc}_{phase}_tokens_per_s"),
                                                            out[f"mblm_best_{phase}_tokens_per_s"])
    for name, msenc in MSENC_VARIANTS:  # memory: peaks are not load-sensitive, the largest of the rounds
        out[f"{name}peak_rss_ratio"] = _ratio(out.get(f"{msenc}_train_peak_rss_sampled_mib"),
                                              out.get(f"{best['train']}_train_peak_rss_sampled_mib"))
        out[f"{name}peak_rss_ratio_vs_orig"] = _ratio(out.get(f"{msenc}_train_peak_rss_sampled_mib"),
                                                      out.get("mblm_orig_train_peak_rss_sampled_mib"))
    out["infer_rss_over_build_ratio"] = _ratio(out.get("msenc_infer_rss_over_build_mib"),
                                               out.get(f"{best['infer']}_infer_rss_over_build_mib"))
    rounds = sorted({r["round"] for impl_runs in runs.values() for r in impl_runs})
    per_round = []
    for r in rounds:
        picked = {impl: x for impl, impl_runs in runs.items() for x in impl_runs if x["round"] == r}
        limits = summarise_limits([x for x in limit_runs if x["round"] == r])
        per_round.append({"round": r, "load_average": {i: x.get("load_average") for i, x in picked.items()},
                          **round_figures(picked, limits, best, case)})
    figures = {k for row in per_round for k in row if k not in ("round", "load_average")}
    out.update({k: _median([row.get(k) for row in per_round], 4) for k in sorted(figures)})
    for k in ("flops_train_step", "flops_infer_step", "flops_forward_attention"):
        out[k] = per_round[0][k] if per_round else None  # exact integers, the same every round
    out["limits"] = {**summarise_limits(limit_runs), **{k: out[k] for k in sorted(figures) if any(
        m in k for m in ("floor", "mfu", "attention_share", "flops"))}}
    out["per_round"] = per_round
    return out


HEADLINE_KEYS = (
    "reference_best", "infer_reference_best",
    "msenc_train_tokens_per_s", "mblm_best_train_tokens_per_s", "mblm_flash_train_tokens_per_s",
    "mblm_orig_train_tokens_per_s", "ratio", "ratio_of_medians", "ratio_vs_orig",
    "msenc_infer_tokens_per_s", "mblm_best_infer_tokens_per_s", "mblm_flash_infer_tokens_per_s",
    "mblm_orig_infer_tokens_per_s", "infer_ratio", "infer_ratio_of_medians", "infer_ratio_vs_orig",
    "msenc_bf16_train_tokens_per_s", "bf16_ratio", "bf16_ratio_of_medians", "bf16_ratio_vs_orig",
    "msenc_bf16_infer_tokens_per_s", "bf16_infer_ratio", "bf16_infer_ratio_of_medians", "bf16_infer_ratio_vs_orig",
    "cpu_ratio", "infer_cpu_ratio", "bf16_cpu_ratio", "bf16_infer_cpu_ratio", "cpu_ratio_vs_orig",
    "infer_cpu_ratio_vs_orig",
    "msenc_bf16_mem08_train_tokens_per_s", "bf16_mem08_ratio", "bf16_mem08_cpu_ratio",
    "msenc_train_peak_rss_sampled_mib", "msenc_bf16_train_peak_rss_sampled_mib",
    "msenc_bf16_mem08_train_peak_rss_sampled_mib",
    "mblm_flash_train_peak_rss_sampled_mib", "mblm_orig_train_peak_rss_sampled_mib",
    "peak_rss_ratio", "peak_rss_ratio_vs_orig", "bf16_peak_rss_ratio", "bf16_peak_rss_ratio_vs_orig",
    "bf16_mem08_peak_rss_ratio", "msenc_wide_bf16_train_tokens_per_s", "wide_bf16_ratio", "wide_bf16_cpu_ratio",
    "msenc_wide_bf16_infer_tokens_per_s", "wide_bf16_infer_ratio", "wide_bf16_infer_cpu_ratio",
    "msenc_peak_rss_mib", "msenc_bf16_peak_rss_mib", "mblm_flash_peak_rss_mib", "mblm_orig_peak_rss_mib",
    "msenc_infer_rss_over_build_mib", "mblm_flash_infer_rss_over_build_mib", "infer_rss_over_build_ratio",
    "msenc_train_first_step_s", "msenc_bf16_train_first_step_s", "limits")


def scaling_pair(names: list[str]) -> tuple[str, str] | None:
    """(long, short) cases of the step-time scaling ratio: among the cases run at the first case's vocabulary, the
    largest context and the next smaller one (ctx65k/ctx16k in the full run, ctx16k/ctx4k in --quick)."""
    if not names:
        return None
    vocab = CASES[names[0]]["vocab"]
    by_context = sorted({math.prod(CASES[n]["seq_lens"]): n for n in names if CASES[n]["vocab"] == vocab}.items())
    return (by_context[-1][1], by_context[-2][1]) if len(by_context) >= 2 else None


def headline(report: dict, mode: str) -> dict:
    """Top-level figures: the headline case's (the seed context at vocab 23 in the full run, 16k in --quick, else the
    first case run), and each implementation's long/short step-time ratio (linear scaling would give the ratio of
    the contexts)."""
    cases = report["cases"]
    name = HEADLINE[mode] if HEADLINE[mode] in cases else next(iter(cases), None)
    head = cases.get(name, {})
    report["headline_case"] = name
    for key in HEADLINE_KEYS:
        report[key] = head.get(key)
    report["headline"] = {
        "case": name, "reference": head.get("reference_best"), "precision": "float32, both",
        "basis": "CPU seconds per step (user + system, all threads) of the reference over msenc's, medians over "
                 "rounds: other jobs on a shared machine stretch each run's wall time differently, the CPU time of "
                 "the same work hardly; *_wall_clock: median over rounds of the same round's tokens/s ratio",
        "train_ratio": head.get("cpu_ratio"), "infer_ratio": head.get("infer_cpu_ratio"),
        "memory_ratio": head.get("peak_rss_ratio"),
        "train_ratio_wall_clock": head.get("ratio"), "infer_ratio_wall_clock": head.get("infer_ratio"),
        "msenc_bf16_default": {"train_ratio": head.get("bf16_cpu_ratio"),
                               "infer_ratio": head.get("bf16_infer_cpu_ratio"),
                               "memory_ratio": head.get("bf16_peak_rss_ratio")},
        "vs_original_setting": {"train_ratio": head.get("cpu_ratio_vs_orig"),
                                "infer_ratio": head.get("infer_cpu_ratio_vs_orig"),
                                "memory_ratio": head.get("peak_rss_ratio_vs_orig")},
        "load_average": head.get("load_average")}
    pair = scaling_pair(list(cases))
    report["step_time_ratio_cases"] = list(pair) if pair else None
    report["step_time_ratio_contexts"] = [math.prod(CASES[c]["seq_lens"]) for c in pair] if pair else None
    for impl in IMPLS:
        for phase, suffix in (("train", ""), ("infer", "_infer")):
            t_long, t_short = ((cases[c].get(f"{impl}_{phase}_step_s") for c in pair) if pair else (None, None))
            report[f"{impl}{suffix}_step_time_ratio_long_vs_short"] = _ratio(t_long, t_short)
    return report


def case_plan(a: argparse.Namespace) -> list[dict]:
    """What the run will do, case by case (``--list-cases`` prints it)."""
    plan = []
    for name in a.case_list:
        case = CASES[name]
        default_warmup, default_steps = (QUICK_WARMUP, QUICK_STEPS) if a.quick else (case["warmup"], case["steps"])
        plan.append({"name": name, "seq_lens": case["seq_lens"], "context_tokens": math.prod(case["seq_lens"]),
                     "vocab": case["vocab"], "warmup": default_warmup if a.warmup < 0 else a.warmup,
                     "steps": a.steps or default_steps, "rounds": a.rounds, "phases": list(a.phases),
                     "impls": list(a.impls), "limits": not a.no_limits})
    return plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"a check in minutes: {QUICK_CASES} (16,384 and 4,096 tokens, vocab 23), warm-up "
                   f"{QUICK_WARMUP}, {QUICK_STEPS} timed steps, one round (--cases picks other cases, same steps)")
    p.add_argument("--cases", default=None, help=f"comma list of {list(CASES)} (default: the full or quick set)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {list(IMPLS)} (default: all)")
    p.add_argument("--list-cases", action="store_true", help="print the plan (cases, steps, rounds) as JSON and exit")
    p.add_argument("--phases", default="infer,train",
                   help="comma list of infer,train for all implementations, in order (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of all implementations per case (default 3; "
                   "1 quick)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per run and phase (0 = the case's default)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps per run and phase (-1 = the case's default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="msenc's torch.compile of its layers (default: %(default)s, as msenc train)")
    p.add_argument("--no-limits", action="store_true", help="skip the machine-limit measurements")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "unset"], default="PASSIVE",
                   help="OMP_WAIT_POLICY of all implementations (default: %(default)s, msenc's default)")
    p.add_argument("--thp", choices=["unset", "0", "1"], default="unset",
                   help="THP_MEM_ALLOC_ENABLE of all (torch's transparent-huge-page allocations)")
    p.add_argument("--ld-preload", default="", help="LD_PRELOAD of all (e.g. libjemalloc.so.2)")
    p.add_argument("--mblm-python", default=DEFAULT_MBLM_PYTHON, help="python of the mblm==0.4.0 venv "
                   "(default: %(default)s, where setup_mblm_venv.sh makes it)")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                   help="the reference driver mblm_bench.py (default: ../shared/reference/ beside the repository)")
    p.add_argument("--no-mblm", action="store_true", help="measure msenc only (same as --impls msenc,msenc_bf16)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per worker run")
    # internal: one msenc measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-first", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--memory-budget", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset", choices=["seed", "seed_wide"], default="seed", help=argparse.SUPPRESS)
    p.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads <= 0:
        a.threads = os.cpu_count() or 1
    a.mode = "quick" if a.quick else "full"
    a.case_list = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else (
        QUICK_CASES if a.quick else FULL_CASES)
    if unknown := [c for c in a.case_list if c not in CASES]:
        p.error(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    a.impls = [s.strip() for s in a.impls.split(",") if s.strip()]
    if not a.impls or (unknown := [i for i in a.impls if i not in IMPLS]):
        p.error(f"--impls: a comma list of {list(IMPLS)}")
    if a.no_mblm:
        a.impls = [i for i in a.impls if IMPLS[i][0] == "msenc"]
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    a.phases = [s.strip() for s in a.phases.split(",") if s.strip()]
    if not a.phases or any(s not in PHASES for s in a.phases):
        p.error(f"--phases: a comma list of {list(PHASES)}")
    return a


def worker_commands(a: argparse.Namespace, name: str, steps: int, warmup: int, skipped: dict) -> dict[str, list[str]]:
    """The command of each implementation (and of the limits worker) for one case."""
    case = CASES[name]
    lens = ",".join(map(str, case["seq_lens"]))
    common = ["--seq-lens", lens, "--vocab", str(case["vocab"]), "--steps", str(steps), "--warmup", str(warmup),
              "--threads", str(a.threads), "--phases", ",".join(a.phases)]
    commands = {}
    for impl in a.impls:
        kind, flags = IMPLS[impl]
        if impl in skipped:
            continue
        if kind == "msenc":
            commands[impl] = ([sys.executable, str(Path(__file__).resolve()), "--worker", *common, *flags,
                               "--compile", a.compile] + (["--torch-first"] if a.omp_wait_policy == "unset" else []))
        else:
            commands[impl] = [a.mblm_python, a.reference, *common, "--hidden-dims", "256,64,64", "--num-layers",
                              "8,4,2", "--heads", "32,16,4", "--head-dim", "8", "--ff-mult", "2", "--pad-id",
                              str(PAD_ID), "--mask-id", str(MASK_ID), "--infer-return", "hidden", "--label", name,
                              *flags]
    if not a.no_limits:
        commands["limits"] = [sys.executable, str(Path(ml.__file__).resolve()), "--shapes",
                              f"{MODEL['num_attention_heads'][0]}x{MODEL['head_dim']},{WIDE_HEADS}x{WIDE_HEAD_DIM}",
                              "--seq", str(case["seq_lens"][0]), "--threads", str(a.threads)]
    return commands


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        a.steps = a.steps or 3
        a.warmup = max(a.warmup, 0)
        print(json.dumps(run_msenc_worker(a), separators=(",", ":")), flush=True)
        return 0
    if a.list_cases:
        print(json.dumps({"mode": a.mode, "cases": case_plan(a)}, indent=1))
        return 0

    env = child_env(a)
    unavailable = mblm_unavailable(a)
    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": a.mode,
                    "threads": a.threads, "rounds": a.rounds, "impls": a.impls, "model": MODEL,
                    "env": bc.timing_env(env), "reference_driver": a.reference, "machine_at_start": bc.machine(),
                    "mblm_unavailable": unavailable, "cases": {}, "runs": {}}
    for plan in case_plan(a):
        name, case, steps, warmup = plan["name"], CASES[plan["name"]], plan["steps"], plan["warmup"]
        skipped = {}
        for impl in a.impls:
            if IMPLS[impl][0] != "mblm":
                continue
            if unavailable:
                skipped[impl] = unavailable
            elif bc.mem_available_gib() < case["mblm_gib"][impl] + 1.0:
                skipped[impl] = (f"needs ~{case['mblm_gib'][impl]} GiB here, only {bc.mem_available_gib():.1f} GiB "
                                 "available")
        commands = worker_commands(a, name, steps, warmup, skipped)
        bc.log(NAME, f"case {name}: seq_lens {case['seq_lens']} vocab {case['vocab']} steps {steps} warmup {warmup}"
               + (f" (skipped: {skipped})" if skipped else ""))
        order = list(commands)
        runs: dict[str, list[dict]] = {impl: [] for impl in commands}
        for r in range(a.rounds):
            for impl in order[r % len(order):] + order[:r % len(order)]:  # a different one goes first each round
                result = run_worker(commands[impl], env, a.timeout)
                result["round"], result["load_average"] = r, [round(x, 2) for x in os.getloadavg()]
                runs[impl].append(result)
                if impl == "limits":
                    bc.log(NAME, f"{name} round {r} limits: {json.dumps(summarise_limits([result]))}")
                    continue
                bc.log(NAME, f"{name} round {r} {impl}: infer {_phase(result, 'infer', 'tokens_per_s_median')} "
                       f"tok/s, train {_train(result, 'tokens_per_s_median')} tok/s, peak "
                       f"{_train(result, 'peak_rss_sampled_mib')} MiB, load {result['load_average']}"
                       + (f" ERROR {result['error']}" if "error" in result else ""))
        limit_runs = runs.pop("limits", [])
        summary = summarise_case(runs, limit_runs, case)
        summary.update(seq_lens=case["seq_lens"], vocab=case["vocab"], context_tokens=math.prod(case["seq_lens"]),
                       steps=steps, warmup=warmup, skipped=skipped,
                       load_average={i: [r["load_average"] for r in runs[i]] for i in runs})
        report["cases"][name] = summary
        report["runs"][name] = {**runs, "limits": limit_runs}
        bc.write_json(a.output, headline(report, a.mode))  # after every case: a long run leaves partial results
    report["machine_at_end"] = bc.machine()
    bc.write_json(a.output, headline(report, a.mode))
    bc.log(NAME, f"wrote {a.output}: " + json.dumps({k: v for k, v in report["headline"].items()
                                                     if k not in ("basis", "load_average")}))
    failed = any(s.get(f"{i}_errors") for s in report["cases"].values() for i in IMPLS if IMPLS[i][0] == "msenc")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
