#!/usr/bin/env python3
"""GPU benchmark: msenc's seed preset against mblm 0.4.0 at its best on the same GPU, plus the checks a GPU run needs.

    benchmarks/gpu_bench.sh                      # on a CUDA machine: the whole run, JSON out (< 8 min on an H100)
    python benchmarks/gpu_bench.py --dry-run     # the same steps on CPU at toy sizes (what the tests run)

Steps, each a subprocess with its own time limit (the report says which one failed and why):
  checks   device facts; the bf16 autocast path (seed model: loss within 5% of float32, bf16 matmuls inside,
           finite gradients); which scaled_dot_product_attention backends run at the global stage's shape
           (1, 32, 2048, 8) in bf16 and which one the default dispatch picks; dense bf16 matmul and the attention
           kernel alone (machine_limits.py)
  nccl     a rendezvous under torchrun (one rank per GPU): init_process_group(nccl), all_reduce, barrier
  msenc    the seed preset at 65,536 tokens under bf16 autocast, layers compiled, fused AdamW: the largest batch
           that fits (found eagerly from the memory of batches 1 and 2, then confirmed), then timed steps
  mblm     mblm 0.4.0's MBLMEncoder with use_flash_attn=True (its SDPA path: the reference at its best), same sizes,
           bf16 autocast (the original trained in bf16 on GPU), AdamW, its own loss; batch found the same way
Report: tokens/s, peak memory, model FLOP utilisation against the GPU's bf16 dense peak (its data-sheet figure
where the GPU is known, else the measured matmul) and the msenc / mblm ratios. Targets (issue): on an H100,
msenc >= 1.5x mblm at its best and >= 35% MFU.
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
NAME = "gpu_bench"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "gpu_bench.json"
SEED = {"seq_lens": [2048, 8, 4], "hidden_sizes": [256, 64, 64], "num_layers": [8, 4, 2],
        "num_attention_heads": [32, 16, 4], "head_dim": 8, "ff_multiplier": 2}
DRY_SEQ_LENS = [16, 8, 4]  # --dry-run: 512 tokens
VOCAB, PAD_ID, MASK_ID, FIRST_REGULAR_ID = 23, 0, 2, 4  # msenc's built-in numeric tokenizer
DIGIT_IDS = list(range(4, 14))
# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the data sheets; others use the measured matmul
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "H200": 989.4, "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10G": 70.0, "A10": 125.0}
TIME_LIMITS = {"checks": 150, "nccl": 90, "msenc": 240, "mblm": 180}  # seconds per step (an H100 run: ~5 min)


# ============================================================================ helpers (in the workers)
def _device(a) -> str:
    return "cpu" if a.dry_run else "cuda"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def _masked_batch(batch: int, length: int, seed: int = 0):
    """Random regular tokens, 15% of them picked (80% mask token, 10% random, 10% kept): (ids, corrupted ids,
    labels with -100 at the unpicked positions). Plain torch: the mblm step runs where msenc's deps may not be."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_REGULAR_ID, VOCAB, (batch, length), generator=gen)
    r = torch.rand(batch, length, generator=gen)
    masked = torch.where(r < 0.12, torch.full_like(ids, MASK_ID), ids)
    masked = torch.where((r >= 0.12) & (r < 0.135), torch.randint_like(ids, FIRST_REGULAR_ID, VOCAB, generator=gen),
                         masked)
    return ids, masked, torch.where(r < 0.15, ids, torch.full_like(ids, -100))


def bf16_peak_tflops(name: str) -> float | None:
    """The data-sheet dense bf16 peak of a GPU known by (part of) its name."""
    for key, value in sorted(BF16_PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return value
    return None


# ============================================================================ step: checks
def run_checks(a) -> dict:
    import torch
    import torch.nn.functional as F

    import msenc_lib  # noqa: F401
    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM

    device = _device(a)
    out: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 1),
                   capability=list(torch.cuda.get_device_capability(0)), bf16_supported=torch.cuda.is_bf16_supported(),
                   multiprocessors=props.multi_processor_count)
    # bf16 autocast on the seed model (a shorter context: the same code path in seconds)
    seq_lens = DRY_SEQ_LENS if a.dry_run else [128, 8, 4]
    torch.manual_seed(0)
    config = MultiscaleEncoderConfig(vocab_size=VOCAB, pad_token_id=PAD_ID, mask_token_id=MASK_ID,
                                     digit_token_ids=DIGIT_IDS, **{**SEED, "seq_lens": seq_lens})
    model = MultiscaleEncoderForMaskedLM(config).to(device)
    _, masked, labels = _masked_batch(2, config.max_context)
    masked, labels = masked.to(device), labels.to(device)
    loss32 = float(model(masked, labels=labels).loss)
    seen = []
    hook = model.encoder.stages[0].layers[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast(device, dtype=torch.bfloat16):
        loss16 = model(masked, labels=labels).loss
    hook.remove()
    loss16.backward()
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    out["bf16_autocast"] = {"loss_float32": round(loss32, 5), "loss_bf16": round(float(loss16), 5),
                            "relative_difference": round(abs(float(loss16) - loss32) / loss32, 5),
                            "matmul_dtype": str(seen[0]) if seen else None, "gradients_finite": grads_finite}
    out["bf16_autocast"]["ok"] = (out["bf16_autocast"]["relative_difference"] < 0.05 and grads_finite
                                  and out["bf16_autocast"]["matmul_dtype"] == "torch.bfloat16")
    out["sdpa"] = sdpa_backends(device, SEED["num_attention_heads"][0], SEED["seq_lens"][0], SEED["head_dim"])
    shapes = [(SEED["num_attention_heads"][0], SEED["head_dim"]), (8, 32)]
    limits = ml.measure(shapes, 256 if a.dry_run else SEED["seq_lens"][0], device, 256 if a.dry_run else 8192)
    out["limits"] = limits
    out["matmul_tflops_bfloat16"] = limits["matmul"]["bfloat16"]["tflops"]
    out["bf16_peak_tflops_datasheet"] = bf16_peak_tflops(out.get("gpu", ""))
    return out


SDPA_OPS = {"flash": ("_flash_attention",), "efficient": ("_efficient_attention",), "cudnn": ("_cudnn_attention",),
            "math": ("_scaled_dot_product_attention_math",)}


def sdpa_backends(device: str, heads: int, seq: int, head_dim: int) -> dict:
    """Which SDPA backends run forward + backward in bf16 at (1, heads, seq, head_dim), and which one the default
    dispatch uses (the aten op the profiler sees)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(1, heads, seq, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    runs = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v).sum().backward()
            runs[name] = True
        except RuntimeError as e:
            runs[name] = f"no: {str(e).splitlines()[0][:160]}"
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v)
    ops = {e.key for e in prof.key_averages()}
    default = next((name for name, marks in SDPA_OPS.items() if any(m in op for op in ops for m in marks)), None)
    return {"shape": [1, heads, seq, head_dim], "dtype": "bfloat16", "runs": runs, "default": default,
            "default_ops": sorted(op for op in ops if "attention" in op)}


# ============================================================================ step: nccl (one process per rank)
def run_nccl(a) -> dict | None:
    import datetime

    import torch
    import torch.distributed as dist

    backend = "gloo" if a.dry_run else "nccl"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cpu") if a.dry_run else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
    init_s = time.perf_counter() - t0
    x = torch.full((1024,), float(rank + 1), device=device)
    t0 = time.perf_counter()
    dist.all_reduce(x)
    dist.barrier()
    _sync(device.type)
    reduce_s = time.perf_counter() - t0
    ok = bool((x == world * (world + 1) / 2).all())
    dist.destroy_process_group()
    if rank != 0:
        return None
    return {"backend": backend, "world_size": world, "init_s": round(init_s, 3), "all_reduce_s": round(reduce_s, 4),
            "ok": ok, "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}


# ============================================================================ step: training throughput
def build(impl: str, seq_lens: list[int]):
    """(model, loss function (masked, labels, loss_mask) -> loss) of an implementation, on the CPU."""
    import torch

    torch.manual_seed(0)
    if impl == "msenc":
        import msenc_lib  # noqa: F401
        from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM

        config = MultiscaleEncoderConfig(vocab_size=VOCAB, pad_token_id=PAD_ID, mask_token_id=MASK_ID,
                                         digit_token_ids=DIGIT_IDS, **{**SEED, "seq_lens": seq_lens})
        model = MultiscaleEncoderForMaskedLM(config)
        return model, lambda masked, labels, loss_mask: model(masked, labels=labels).loss
    import inspect

    from mblm import (MBLMEncoder, MBLMEncoderModelConfig, MBLMModelConfig, MBLMReturnType,
                      TransformerEncoderBlock)

    blocks = [TransformerEncoderBlock(attn_head_dims=SEED["head_dim"], attn_num_heads=h, attn_use_rot_embs=True,
                                      use_flash_attn=True, ff_multiplier=SEED["ff_multiplier"], pos_emb_type="fixed")
              for h in SEED["num_attention_heads"]]
    cfg = MBLMModelConfig(num_tokens=VOCAB, pad_token_id=PAD_ID, hidden_dims=SEED["hidden_sizes"],
                          num_layers=SEED["num_layers"], seq_lens=seq_lens, train_checkpoint_chunks=None, block=blocks)
    model = MBLMEncoder(MBLMEncoderModelConfig(mask_token_id=MASK_ID, mblm_config=cfg))
    if "attention_mask" in inspect.signature(model.forward).parameters:  # mblm >= 0.4.1
        return model, lambda masked, labels, loss_mask: model(input_ids=masked, labels=labels.clone(),
                                                              loss_mask=loss_mask.float(),
                                                              return_type=MBLMReturnType.LOSS)
    return model, lambda masked, labels, loss_mask: model(masked, loss_mask, labels.clone(),
                                                          return_type=MBLMReturnType.LOSS)


def run_train(a) -> dict:
    import torch

    device = _device(a)
    seq_lens = DRY_SEQ_LENS if a.dry_run else SEED["seq_lens"]
    length = math.prod(seq_lens)
    model, loss_fn = build(a.impl, seq_lens)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                                  fused=a.impl == "msenc")  # mblm as its reference driver: foreach AdamW

    def step(batch: int) -> tuple[float, float]:
        ids, masked, labels = _masked_batch(batch, length)
        loss_mask = (labels != -100).to(device)
        masked = masked.to(device)
        labels_in = (labels if a.impl == "msenc" else ids).to(device)  # mblm: all ids, scored at its loss mask
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(masked, labels_in, loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        _sync(device)
        return time.perf_counter() - t0, float(loss.detach())

    batch, probes = find_batch(step, device, a.max_batch)
    compiled = False
    if a.impl == "msenc":
        from msenc_lib.model.hardware import compile_pays

        compiled = compile_pays("auto", device, length)
        if compiled:
            model.compile_layers()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = [step(batch) for _ in range(a.warmup)]
    timed = [step(batch) for _ in range(a.steps)]
    times = [t for t, _ in timed]
    median = statistics.median(times)
    flops = ml.forward_flops({**SEED, "seq_lens": seq_lens}, length, labelled=round(0.15 * length), vocab=VOCAB)
    return {"impl": a.impl, "device": device, "seq_lens": seq_lens, "context_tokens": length, "batch": batch,
            "batch_probes": probes, "compiled": compiled, "precision": "bf16 autocast",
            "params": sum(p.numel() for p in model.parameters()), "first_steps_s": [round(t, 3) for t, _ in warm],
            "step_s": [round(t, 4) for t in times], "step_s_median": round(median, 4),
            "tokens_per_s": round(batch * length / median, 1), "losses": [round(v, 4) for _, v in timed],
            "peak_memory_mib": _peak_mib(device),
            "train_flops_per_step": 3 * flops["total"] * batch}


def find_batch(step, device: str, max_batch: int) -> tuple[int, list[dict]]:
    """The largest batch (<= max_batch) that trains: the memory of batches 1 and 2 gives a per-sample cost, the
    prediction for 90% of the GPU's memory is tried and stepped down by a fifth on each out-of-memory error."""
    import torch

    probes = []

    def probe(batch: int) -> float | None:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds, _ = step(batch)
        except torch.cuda.OutOfMemoryError:
            import gc

            gc.collect()
            probes.append({"batch": batch, "fits": False})
            return None
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
        probes.append({"batch": batch, "fits": True, "seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 1)})
        return peak

    one = probe(1)
    if one is None:
        raise RuntimeError("batch 1 does not fit")
    if device != "cuda" or max_batch < 2:
        return min(2, max_batch) if probe(min(2, max_batch)) is not None else 1, probes
    two = probe(2)
    if two is None:
        return 1, probes
    per_sample = max(two - one, 1)
    total = torch.cuda.get_device_properties(0).total_memory
    batch = max(2, min(max_batch, int((0.9 * total - (one - per_sample)) // per_sample)))
    while batch > 2:
        if probe(batch) is not None:
            return batch, probes
        batch = int(batch * 0.8)
    return 2, probes


# ============================================================================ orchestration
def run_step(name: str, cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    bc.log(NAME, f"{name}: " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or not lines:
        result["error"] = f"exit code {proc.returncode}" + ("" if lines else ", no JSON result")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    bc.log(NAME, f"{name}: done in {result['wall_s']} s" + (f" ERROR {result['error']}" if "error" in result else ""))
    return result


def summarise(report: dict) -> dict:
    msenc, mblm, checks = report.get("msenc", {}), report.get("mblm", {}), report.get("checks", {})
    peak = checks.get("bf16_peak_tflops_datasheet") or checks.get("matmul_tflops_bfloat16")
    out = {"peak_tflops_bf16_used": peak, "peak_source": "datasheet" if checks.get("bf16_peak_tflops_datasheet")
           else "measured matmul"}
    for name, run in (("msenc", msenc), ("mblm", mblm)):
        ok = "error" not in run and run.get("step_s_median")
        out[f"{name}_tokens_per_s"] = run.get("tokens_per_s") if ok else None
        out[f"{name}_batch"] = run.get("batch") if ok else None
        out[f"{name}_peak_memory_mib"] = run.get("peak_memory_mib") if ok else None
        out[f"{name}_mfu"] = (round(run["train_flops_per_step"] / run["step_s_median"] / (peak * 1e12), 4)
                              if ok and peak else None)
    m, b = out["msenc_tokens_per_s"], out["mblm_tokens_per_s"]
    out["ratio"] = round(m / b, 3) if m and b else None
    out["targets"] = {"ratio_ge_1.5": None if out["ratio"] is None else out["ratio"] >= 1.5,
                      "msenc_mfu_ge_0.35": None if out["msenc_mfu"] is None else out["msenc_mfu"] >= 0.35}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="every step on CPU at toy sizes (gloo for the rendezvous)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the batch search (compilation)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch tried (default %(default)s)")
    p.add_argument("--skip", default="", help="comma list of steps to leave out: checks,nccl,msenc,mblm")
    p.add_argument("--mblm-python", default=sys.executable, help="python that imports mblm (default: this one)")
    p.add_argument("--nproc", type=int, default=0, help="ranks of the rendezvous (0: one per GPU; 2 with --dry-run)")
    p.add_argument("--step", choices=["checks", "nccl", "train"], help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["msenc", "mblm"], default="msenc", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cuda_missing() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return (f"no CUDA device visible to {sys.executable} (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}): this benchmark needs a GPU; --dry-run runs its steps on CPU at toy sizes")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if extra := os.environ.get("MSENC_GPU_BENCH_SITE"):  # the wheelhouse's packages, after the machine's own
        sys.path.append(extra)
    if a.step:
        result = {"checks": run_checks, "nccl": run_nccl, "train": run_train}[a.step](a)
        if result is not None:
            print(json.dumps(result, separators=(",", ":")), flush=True)
        return 0
    if not a.dry_run and (why := cuda_missing()):
        print(f"gpu_bench: refused: {why}", file=sys.stderr)
        return 2
    import torch

    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    me = [str(Path(__file__).resolve())] + (["--dry-run"] if a.dry_run else [])
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--max-batch", str(a.max_batch)]
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    nproc = a.nproc or (2 if a.dry_run else max(1, torch.cuda.device_count()))
    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry_run": a.dry_run,
                    "machine": bc.machine(), "torch": torch.__version__, "python": sys.executable, "steps": {}}
    plan = {"checks": [sys.executable, *me, "--step", "checks"],
            "nccl": [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr",
                     "127.0.0.1", "--master-port", str(bc_free_port()), *me, "--step", "nccl"],
            "msenc": [sys.executable, *me, "--step", "train", "--impl", "msenc", *common],
            "mblm": [a.mblm_python, *me, "--step", "train", "--impl", "mblm", *common]}
    for name, cmd in plan.items():
        if name in skip:
            report[name] = {"skipped": "--skip"}
            continue
        report[name] = run_step(name, cmd, env, TIME_LIMITS[name])
        report["steps"][name] = report[name].get("wall_s")
    report["summary"] = summarise(report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    bc.write_json(a.output, report)
    bc.log(NAME, f"wrote {a.output}: {json.dumps(report['summary'])} in {report['total_s']} s")
    failed = [n for n in plan if n not in skip and "error" in report[n]]
    return 1 if failed else 0


def bc_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
