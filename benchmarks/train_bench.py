#!/usr/bin/env python3
"""Training and inference throughput of msenc's encoder against the reference mblm 0.4.0, same config, same run.

    python benchmarks/train_bench.py                      # 65,536 and 16,384 tokens, vocab 23 and 49,155
    python benchmarks/train_bench.py --quick              # 16,384 and 4,096 tokens, vocab 23, 2 steps: minutes
    python benchmarks/train_bench.py --quick --list-cases # print the plan (cases, steps, rounds) and exit
    python benchmarks/train_bench.py --no-mblm --cases ctx65k_v23 --omp-wait-policy unset

One training step, for both implementations: ``zero_grad``, forward with the loss, backward, gradient
clipping at 1.0, ``AdamW(lr=1e-3, weight_decay=0.01)`` step; batch 1, float32, the seed model's stage sizes
(hidden 256/64/64, layers 8/4/2, heads 32/16/4 of dim 8) on random tokens with 15% MLM masking. msenc's loss
is its own objective (0.7 CE + 0.3 number-token loss over the masked positions); mblm's is its CE.
Vocabulary 23 is msenc's built-in numeric tokenizer; 49,155 is the original workflow's granite BPE + specials.

One inference step (run first, so its peak RSS is not hidden behind training's): the model in ``eval()``, under
``torch.inference_mode()``, the bare encoder's forward returning the last hidden states (embedding extraction:
msenc's ``MultiscaleEncoderModel``, mblm's ``MBLMReturnType.HIDDEN_STATE``), batch 1, the same unmasked-length
input; warm-up and timed steps as for training.

Each implementation runs in its own subprocess: msenc in this interpreter (``--worker``), mblm with the
python of the reference venv (``benchmarks/setup_mblm_venv.sh``) through the reference driver
``/work/shared/reference/mblm_bench.py`` (called, never copied). The two alternate round by round (msenc first
in even rounds) under the same environment variables, so load on a shared machine hits both alike; the
summary takes medians over rounds of each run's median step. Without the reference venv or driver, the mblm
figures are null and ``mblm_unavailable`` says why.

Environment (applied to both): ``--omp-wait-policy`` (default PASSIVE, msenc's own default; ``unset`` leaves
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "train_bench.json"
DEFAULT_MBLM_PYTHON = "/tmp/mblm040-venv/bin/python"
DEFAULT_REFERENCE = "/work/shared/reference/mblm_bench.py"
MODEL = {"hidden_sizes": [256, 64, 64], "num_layers": [8, 4, 2], "num_attention_heads": [32, 16, 4], "head_dim": 8,
         "ff_multiplier": 2}
BUILTIN_VOCAB = 23  # msenc's numeric tokenizer: pad 0, unk 1, mask 2, sep 3, digits 4..13, then . - , e + n a i f
PAD_ID, MASK_ID, FIRST_REGULAR_ID = 0, 2, 4
DIGIT_IDS = list(range(4, 14))
ORIGINAL_VOCAB = 49155

# mblm_gib: mblm's peak RSS there (GiB, measured on the 2-core VM; 65,536 x 49,155 float32 logits alone are 12.9 GB
# and mblm also keeps their softmax and gradient): the case runs mblm only with that much memory + 1 GiB free.
CASES = {
    "ctx65k_v23": {"seq_lens": [2048, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 8.0},
    "ctx16k_v23": {"seq_lens": [512, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 2, "steps": 5, "mblm_gib": 1.5},
    "ctx16k_v49155": {"seq_lens": [512, 8, 4], "vocab": ORIGINAL_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 10.5},
    "ctx65k_v49155": {"seq_lens": [2048, 8, 4], "vocab": ORIGINAL_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 42.0},
    "quick1k_v23": {"seq_lens": [32, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 0.5},
    "quick256_v23": {"seq_lens": [8, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 0.5},
    "ctx4k_v23": {"seq_lens": [128, 8, 4], "vocab": BUILTIN_VOCAB, "warmup": 1, "steps": 3, "mblm_gib": 0.5},
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

    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM
    from msenc_lib.model.masking import MaskingSpec, mask_tokens

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    config = MultiscaleEncoderConfig(vocab_size=a.vocab, seq_lens=a.seq_lens, pad_token_id=PAD_ID,
                                     mask_token_id=MASK_ID, digit_token_ids=DIGIT_IDS, **MODEL)
    t0 = time.perf_counter()
    model = MultiscaleEncoderForMaskedLM(config).train()
    build_s = time.perf_counter() - t0
    length = config.max_context
    ids = torch.randint(FIRST_REGULAR_ID, a.vocab, (1, length), generator=gen)
    spec = MaskingSpec.create(MASK_ID, range(FIRST_REGULAR_ID), a.vocab)
    masked, labels = mask_tokens(ids, spec, generator=gen)
    result = {"impl": "msenc", "msenc_version": msenc_lib.__version__, "torch_version": torch.__version__,
              "threads": torch.get_num_threads(), "params": model.num_parameters(), "build_s": round(build_s, 3),
              "num_masked": int((labels != -100).sum()), "env": env, "rss_after_build_mib": round(bc.rss_mib(), 1),
              "config": {"seq_lens": a.seq_lens, "vocab": a.vocab, **MODEL, "batch_size": 1, "seq_len": length}}
    for phase in a.phases:  # infer first by default, as the reference does
        result[phase] = (msenc_infer(a, model, ids) if phase == "infer"
                         else msenc_train(a, model, masked, labels, length))
    result["peak_rss_mib"] = round(bc.maxrss_mib(), 1)
    return result


def msenc_infer(a: argparse.Namespace, model, ids) -> dict:
    """Embedding extraction: the bare encoder's last hidden states, eval mode, under inference_mode."""
    import torch

    encoder = model.encoder.eval()
    times, shape, finite = [], None, True
    usage = bc.CpuUsage()
    with bc.PeakRss() as rss, torch.inference_mode():
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                usage.start()
            t0 = time.perf_counter()
            hidden = encoder(ids).last_hidden_state
            dt = time.perf_counter() - t0
            shape, ok = list(hidden.shape), bool(torch.isfinite(hidden).all())
            finite = finite and ok
            del hidden
            bc.log(NAME, f"msenc infer {'warmup' if i < a.warmup else 'step'} {i}: {dt:.3f}s finite={ok}")
            if i >= a.warmup:
                times.append(dt)
    model.train()
    return {**bc.timing_summary(times, ids.numel()), **usage.per_step(a.steps), "output": "hidden",
            "output_shape": shape, "finite": finite, "peak_rss_sampled_mib": round(rss.peak, 1),
            "maxrss_after_mib": round(bc.maxrss_mib(), 1)}


def msenc_train(a: argparse.Namespace, model, masked, labels, length: int) -> dict:
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    times, losses, parts = [], [], {"forward_s": [], "backward_s": [], "optimizer_s": []}
    usage = bc.CpuUsage()
    with bc.PeakRss() as rss:
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                usage.start()
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = model(masked, labels=labels).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            t3 = time.perf_counter()
            value = float(loss.detach())
            del loss
            bc.log(NAME, f"msenc train {'warmup' if i < a.warmup else 'step'} {i}: {t3 - t0:.3f}s "
                   f"(fwd {t1 - t0:.2f} bwd {t2 - t1:.2f} opt {t3 - t2:.2f}) loss={value:.4f}")
            if i >= a.warmup:
                times.append(t3 - t0)
                losses.append(round(value, 4))
                for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                    parts[key].append(dt)
    return {**bc.timing_summary(times, length), **usage.per_step(a.steps), "losses": losses,
            "loss_finite": all(map(math.isfinite, losses)),
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
    if a.no_mblm:
        return "--no-mblm"
    if not Path(a.mblm_python).exists():
        return f"no reference venv: {a.mblm_python} missing (run benchmarks/setup_mblm_venv.sh)"
    if not Path(a.reference).exists():
        return f"no reference driver: {a.reference} missing"
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


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def _ratio(m: float | None, b: float | None) -> float | None:
    return round(m / b, 3) if m and b else None


def summarise_case(runs: dict[str, list[dict]]) -> dict:
    """Per implementation and phase: medians over rounds of each run's median step; msenc/mblm ratios (also paired
    by round). ``ratio`` is training's (tokens/s), ``infer_ratio`` inference's; peak RSS is the whole process's."""
    out: dict = {}
    for impl in ("msenc", "mblm"):
        impl_runs = runs.get(impl, [])  # a phase that failed (e.g. out of memory) leaves the other one's figures
        for phase in PHASES:
            ok = [r for r in impl_runs if _phase(r, phase, "tokens_per_s_median")]
            out[f"{impl}_{phase}_tokens_per_s"] = _median([_phase(r, phase, "tokens_per_s_median") for r in ok])
            out[f"{impl}_{phase}_tokens_per_s_best"] = max((_phase(r, phase, "tokens_per_s_best") for r in ok),
                                                           default=None)
            out[f"{impl}_{phase}_step_s"] = _median([_phase(r, phase, "step_s_median") for r in ok])
            out[f"{impl}_{phase}_peak_rss_sampled_mib"] = max(
                (v for r in ok if (v := _phase(r, phase, "peak_rss_sampled_mib"))), default=None)
        # the inference working set: its peak over the RSS after imports + model build (msenc's imports, transformers
        # included, weigh ~150 MiB more than mblm's, which would otherwise dominate at short contexts)
        growth = [v - base for r in impl_runs if (v := _phase(r, "infer", "peak_rss_sampled_mib"))
                  and isinstance(base := r.get("rss_after_build_mib"), (int, float))]
        out[f"{impl}_infer_rss_over_build_mib"] = round(max(growth), 1) if growth else None
        out[f"{impl}_peak_rss_mib"] = max((r["peak_rss_mib"] for r in impl_runs if "peak_rss_mib" in r), default=None)
        out[f"{impl}_params"] = next((r["params"] for r in impl_runs if "params" in r), None)
        out[f"{impl}_errors"] = [r["error"] for r in runs.get(impl, []) if "error" in r] + [
            f"{phase}: {r[phase]['error']}" for r in runs.get(impl, []) for phase in PHASES
            if isinstance(r.get(phase), dict) and "error" in r[phase]]
    for prefix, phase in (("", "train"), ("infer_", "infer")):
        out[f"{prefix}ratio"] = _ratio(out[f"msenc_{phase}_tokens_per_s"], out[f"mblm_{phase}_tokens_per_s"])
        paired = [_phase(x, phase, "tokens_per_s_median") / _phase(y, phase, "tokens_per_s_median")
                  for x, y in zip(runs.get("msenc", []), runs.get("mblm", []))
                  if _phase(x, phase, "tokens_per_s_median") and _phase(y, phase, "tokens_per_s_median")]
        out[f"{prefix}ratio_paired_median"] = _median(paired)
    out["peak_rss_ratio"] = _ratio(out["msenc_peak_rss_mib"], out["mblm_peak_rss_mib"])
    out["infer_peak_rss_ratio"] = _ratio(out["msenc_infer_peak_rss_sampled_mib"],
                                         out["mblm_infer_peak_rss_sampled_mib"])
    out["infer_rss_over_build_ratio"] = _ratio(out["msenc_infer_rss_over_build_mib"],
                                               out["mblm_infer_rss_over_build_mib"])
    return out


HEADLINE_KEYS = ("msenc_train_tokens_per_s", "mblm_train_tokens_per_s", "ratio", "ratio_paired_median",
                 "msenc_infer_tokens_per_s", "mblm_infer_tokens_per_s", "infer_ratio", "infer_ratio_paired_median",
                 "msenc_peak_rss_mib", "mblm_peak_rss_mib", "peak_rss_ratio", "msenc_infer_peak_rss_sampled_mib",
                 "mblm_infer_peak_rss_sampled_mib", "infer_peak_rss_ratio", "msenc_infer_rss_over_build_mib",
                 "mblm_infer_rss_over_build_mib", "infer_rss_over_build_ratio")


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
    pair = scaling_pair(list(cases))
    report["step_time_ratio_cases"] = list(pair) if pair else None
    report["step_time_ratio_contexts"] = [math.prod(CASES[c]["seq_lens"]) for c in pair] if pair else None
    for impl in ("msenc", "mblm"):
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
                     "steps": a.steps or default_steps, "rounds": a.rounds, "phases": list(a.phases)})
    return plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"a check in minutes: {QUICK_CASES} (16,384 and 4,096 tokens, vocab 23), warm-up "
                   f"{QUICK_WARMUP}, {QUICK_STEPS} timed steps, one round (--cases picks other cases, same steps)")
    p.add_argument("--cases", default=None, help=f"comma list of {list(CASES)} (default: the full or quick set)")
    p.add_argument("--list-cases", action="store_true", help="print the plan (cases, steps, rounds) as JSON and exit")
    p.add_argument("--phases", default="infer,train",
                   help="comma list of infer,train for both implementations, in order (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved msenc/mblm rounds per case (default 2; 1 quick)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per run and phase (0 = the case's default)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps per run and phase (-1 = the case's default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "unset"], default="PASSIVE",
                   help="OMP_WAIT_POLICY of both implementations (default: %(default)s, msenc's default)")
    p.add_argument("--thp", choices=["unset", "0", "1"], default="unset",
                   help="THP_MEM_ALLOC_ENABLE of both (torch's transparent-huge-page allocations)")
    p.add_argument("--ld-preload", default="", help="LD_PRELOAD of both (e.g. libjemalloc.so.2)")
    p.add_argument("--mblm-python", default=DEFAULT_MBLM_PYTHON, help="python of the mblm==0.4.0 venv")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="the reference driver mblm_bench.py")
    p.add_argument("--no-mblm", action="store_true", help="measure msenc only")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per worker run")
    # internal: one msenc measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-first", action="store_true", help=argparse.SUPPRESS)
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
    if a.rounds is None:
        a.rounds = 1 if a.quick else 2
    a.phases = [s.strip() for s in a.phases.split(",") if s.strip()]
    if not a.phases or any(s not in PHASES for s in a.phases):
        p.error(f"--phases: a comma list of {list(PHASES)}")
    return a


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
                    "threads": a.threads, "rounds": a.rounds, "model": MODEL, "env": bc.timing_env(env),
                    "machine_at_start": bc.machine(), "mblm_unavailable": unavailable, "cases": {}, "runs": {}}
    for plan in case_plan(a):
        name, case, steps, warmup = plan["name"], CASES[plan["name"]], plan["steps"], plan["warmup"]
        lens = ",".join(map(str, case["seq_lens"]))
        common = ["--seq-lens", lens, "--vocab", str(case["vocab"]), "--steps", str(steps), "--warmup", str(warmup),
                  "--threads", str(a.threads), "--phases", ",".join(a.phases)]
        commands = {"msenc": [sys.executable, str(Path(__file__).resolve()), "--worker", *common]
                    + (["--torch-first"] if a.omp_wait_policy == "unset" else [])}
        skipped = unavailable
        if skipped is None and bc.mem_available_gib() < case["mblm_gib"] + 1.0:
            skipped = (f"mblm needs ~{case['mblm_gib']} GiB here, only {bc.mem_available_gib():.1f} GiB available")
        if skipped is None:
            commands["mblm"] = [a.mblm_python, a.reference, *common, "--hidden-dims", "256,64,64", "--num-layers",
                                "8,4,2", "--heads", "32,16,4", "--head-dim", "8", "--ff-mult", "2",
                                "--pad-id", str(PAD_ID), "--mask-id", str(MASK_ID), "--infer-return", "hidden",
                                "--label", name]
        bc.log(NAME, f"case {name}: seq_lens {lens} vocab {case['vocab']} steps {steps} warmup {warmup}"
               + (f" (mblm skipped: {skipped})" if skipped else ""))
        runs: dict[str, list[dict]] = {impl: [] for impl in commands}
        for r in range(a.rounds):
            for impl in (["msenc", "mblm"] if r % 2 == 0 else ["mblm", "msenc"]):
                if impl not in commands:
                    continue
                result = run_worker(commands[impl], env, a.timeout)
                result["round"], result["load_average"] = r, [round(x, 2) for x in os.getloadavg()]
                runs[impl].append(result)
                bc.log(NAME, f"{name} round {r} {impl}: infer {_phase(result, 'infer', 'tokens_per_s_median')} "
                       f"tok/s, train {_train(result, 'tokens_per_s_median')} tok/s, "
                       f"peak {result.get('peak_rss_mib')} MiB" + (f" ERROR {result['error']}" if "error" in result else ""))
        summary = summarise_case(runs)
        summary.update(seq_lens=case["seq_lens"], vocab=case["vocab"], context_tokens=math.prod(case["seq_lens"]),
                       steps=steps, warmup=warmup, mblm_skipped=skipped)
        report["cases"][name] = summary
        report["runs"][name] = runs
        bc.write_json(a.output, headline(report, a.mode))  # after every case: a long run leaves partial results
    report["machine_at_end"] = bc.machine()
    bc.write_json(a.output, headline(report, a.mode))
    bc.log(NAME, f"wrote {a.output}: " + json.dumps({k: v for k, v in report.items()
                                                     if k not in ("cases", "runs", "model")}))
    failed = any(s["msenc_errors"] for s in report["cases"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
