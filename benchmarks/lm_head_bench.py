#!/usr/bin/env python3
"""The masked-LM head's loss alone: chunked (``masked_lm_losses``) against full logits, time and peak memory.

    python benchmarks/lm_head_bench.py                 # 9,830 rows (15% of 65,536) x vocab 49,155, dim 64

Each variant runs in its own subprocess (so each has its own peak RSS): forward of CE + number-token loss on
random hidden states and a random head, then backward, ``--repeat`` times. ``full`` is what the model did
before the chunked head: ``F.linear`` to the whole (rows, vocab) logits, ``F.cross_entropy`` and
``number_token_loss`` on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "lm_head_bench.json"
DIGITS = list(range(4, 14))


def worker(a: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from msenc_lib.model.losses import masked_lm_losses, number_token_loss

    torch.manual_seed(0)
    hidden = torch.randn(a.rows, a.dim, requires_grad=True)
    weight = (torch.randn(a.vocab, a.dim) * 0.02).requires_grad_(True)
    bias = torch.zeros(a.vocab, requires_grad=True)
    targets = torch.randint(0, a.vocab, (a.rows,))
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        if a.worker == "chunked":
            ce, ntl = masked_lm_losses(hidden, weight, bias, targets, DIGITS)
        else:
            logits = F.linear(hidden, weight, bias)
            ce, ntl = F.cross_entropy(logits.float(), targets), number_token_loss(logits, targets, DIGITS)
        (0.7 * ce + 0.3 * ntl).backward()
        times.append(round(time.perf_counter() - t0, 4))
        del ce, ntl
    return {"variant": a.worker, "step_s": times, "step_s_min": min(times), "peak_rss_mib": round(bc.maxrss_mib(), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    p.add_argument("--rows", type=int, default=9830, help="masked positions")
    p.add_argument("--vocab", type=int, default=49155)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", choices=["chunked", "full"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    report = {"bench": "lm_head_bench", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": a.rows,
              "vocab": a.vocab, "dim": a.dim, "repeat": a.repeat, "env": bc.timing_env(), "machine": bc.machine()}
    for variant in ("chunked", "full"):
        out = subprocess.run([sys.executable, __file__, "--worker", variant, "--rows", str(a.rows), "--vocab",
                              str(a.vocab), "--dim", str(a.dim), "--repeat", str(a.repeat)],
                             env=env, capture_output=True, text=True, check=True).stdout
        report[variant] = json.loads(out.strip().splitlines()[-1])
        bc.log("lm_head_bench", str(report[variant]))
    report["speedup"] = round(report["full"]["step_s_min"] / report["chunked"]["step_s_min"], 2)
    report["peak_rss_ratio"] = round(report["chunked"]["peak_rss_mib"] / report["full"]["peak_rss_mib"], 3)
    bc.write_json(a.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
