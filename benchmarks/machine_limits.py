"""What the hardware allows, measured in the benchmark's own run: dense matmul throughput, the attention kernel alone
at the global stage's shapes, and the model's FLOPs per step (for model FLOP utilisation).

    python benchmarks/machine_limits.py --shapes 32x8,8x32 --seq 2048    # one JSON line (CPU; --device cuda)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median_time(fn, device: str, repeat: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads: on a shared machine, little changed by other load)
    of ``fn``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def matmul_tflops(dtype_name: str, n: int, device: str = "cpu", repeat: int = 5) -> dict:
    """Dense ``n x n @ n x n`` throughput: TFLOP/s of wall time and (CPU) per CPU-second, medians of ``repeat``."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    seconds, cpu = _median_time(lambda: a @ b, device, repeat)
    return {"dtype": dtype_name, "n": n, "seconds": round(seconds, 6), "tflops": round(2 * n**3 / seconds / 1e12, 4),
            "cpu_seconds": round(cpu, 6), "tflops_per_cpu_s": round(2 * n**3 / cpu / 1e12, 4) if cpu > 0 else None}


def attention_kernel(heads: int, seq: int, head_dim: int, dtype_name: str, device: str = "cpu", repeat: int = 3,
                     backward: bool = True) -> dict:
    """``scaled_dot_product_attention`` alone on (1, heads, seq, head_dim): forward and forward+backward, wall and
    CPU seconds."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    q, k, v = (torch.randn(1, heads, seq, head_dim, device=device, dtype=dtype, requires_grad=backward)
               for _ in range(3))
    grad = torch.randn_like(q)
    with torch.no_grad():
        forward, forward_cpu = _median_time(lambda: F.scaled_dot_product_attention(q, k, v), device, repeat)
    out = {"shape": [1, heads, seq, head_dim], "dtype": dtype_name, "forward_s": round(forward, 6),
           "forward_cpu_s": round(forward_cpu, 6), "flops_forward": 4 * heads * seq * seq * head_dim}
    if backward:
        def step():
            F.scaled_dot_product_attention(q, k, v).backward(grad)
            q.grad = k.grad = v.grad = None

        both, both_cpu = _median_time(step, device, repeat)
        out.update(forward_backward_s=round(both, 6), backward_s=round(both - forward, 6),
                   forward_backward_cpu_s=round(both_cpu, 6))
    return out


def forward_flops(config: dict, tokens: int, labelled: int = 0, vocab: int = 0) -> dict:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over ``tokens`` tokens of the multiscale encoder
    (``config``: seq_lens, hidden_sizes, num_layers, num_attention_heads, head_dim (one or per stage),
    ff_multiplier), plus the LM
    head on ``labelled`` rows of a ``vocab``-token vocabulary; ``attention`` is the q k^T and p v part."""
    seq_lens, dims = config["seq_lens"], config["hidden_sizes"]
    stages, ff = len(seq_lens), config["ff_multiplier"]
    head_dims = config["head_dim"] if isinstance(config["head_dim"], list) else [config["head_dim"]] * stages
    token_dim = dims[-1]
    linear = attention = 0
    for k in range(stages):
        patch = math.prod(seq_lens[k + 1:])
        elements = -(-tokens // patch)
        inner = config["num_attention_heads"][k] * head_dims[k]
        per_layer = dims[k] * 3 * inner + inner * dims[k] + 2 * ff * dims[k] * dims[k]
        linear += elements * per_layer * config["num_layers"][k]
        attention += elements * 2 * seq_lens[k] * inner * config["num_layers"][k]
        if k < stages - 1:  # patch embedding of this stage, projection to the next one
            linear += elements * patch * token_dim * dims[k] + elements * dims[k] * seq_lens[k + 1] * dims[k + 1]
    head = labelled * token_dim * vocab
    return {"linear": 2 * linear, "attention": 2 * attention, "lm_head": 2 * head,
            "total": 2 * (linear + attention + head)}


def measure(shapes: list[tuple[int, int]], seq: int, device: str = "cpu", matmul_n: int = 2048) -> dict:
    """Matmul peaks (float32, bfloat16) and the attention kernel at (1, heads, seq, head_dim) in both dtypes for each
    (heads, head_dim) of ``shapes`` (``attention`` is the first, ``attention_<heads>x<dim>`` every one)."""
    out: dict = {"matmul": {d: matmul_tflops(d, matmul_n, device) for d in ("float32", "bfloat16")}}
    for i, (heads, head_dim) in enumerate(shapes):
        kernel = {d: attention_kernel(heads, seq, head_dim, d, device) for d in ("float32", "bfloat16")}
        out[f"attention_{heads}x{head_dim}"] = kernel
        if i == 0:
            out["attention"] = kernel
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="32x8", help="attention shapes: comma list of HEADSxHEAD_DIM")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from msenc_cli.main import set_runtime_defaults

    set_runtime_defaults()  # before torch: msenc's CPU defaults, as the CLI has them
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    result = {"threads": torch.get_num_threads(), "torch_version": torch.__version__, "machine": bc.machine(),
              **measure([tuple(map(int, x.split("x"))) for x in a.shapes.split(",")], a.seq, a.device, a.matmul_n)}
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
