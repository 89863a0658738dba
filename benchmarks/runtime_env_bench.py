#!/usr/bin/env python3
"""Does a CPU runtime setting cost or gain msenc training throughput? OMP_WAIT_POLICY and THP_MEM_ALLOC_ENABLE.

    python benchmarks/runtime_env_bench.py                    # the 65,536-token step, 3 interleaved rounds
    python benchmarks/runtime_env_bench.py --case ctx16k_v23 --rounds 5

Variants (each a fresh msenc training worker of ``train_bench.py``, the environment set before torch starts):
``passive`` OMP_WAIT_POLICY=PASSIVE (msenc's default, set by the ``msenc`` command); ``unset`` no OMP_WAIT_POLICY
(libgomp's own default applies); ``passive_thp`` and ``unset_thp``
the same with THP_MEM_ALLOC_ENABLE=1 (torch allocates large CPU buffers on transparent huge pages). The variants
alternate within each round, so load on a shared machine spreads over all of them; the report gives each one's
median step time over rounds and its throughput relative to ``passive``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import train_bench as tb  # noqa: E402

DEFAULT_OUTPUT = tb.REPO / "benchmarks" / "results" / "runtime_env_bench.json"
VARIANTS = {"passive": ("PASSIVE", "unset"), "unset": ("unset", "unset"),
            "passive_thp": ("PASSIVE", "1"), "unset_thp": ("unset", "1")}
NAME = "runtime_env_bench"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report (default: %(default)s)")
    p.add_argument("--case", choices=list(tb.CASES), default="ctx65k_v23", help="train_bench case to time")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="timed steps per run (0 = the case's default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    a = p.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}")
    case = tb.CASES[a.case]
    steps = a.steps or case["steps"]
    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "case": a.case,
                    "seq_lens": case["seq_lens"], "vocab": case["vocab"], "steps": steps, "rounds": a.rounds,
                    "machine_at_start": bc.machine(), "runs": {v: [] for v in variants}}
    for r in range(a.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for variant in order:
            omp, thp = VARIANTS[variant]
            args = tb.parse_args(["--omp-wait-policy", omp, "--thp", thp, "--threads", str(a.threads)])
            cmd = [sys.executable, str(Path(tb.__file__).resolve()), "--worker", "--seq-lens",
                   ",".join(map(str, case["seq_lens"])), "--vocab", str(case["vocab"]), "--steps", str(steps),
                   "--warmup", str(case["warmup"]), "--threads", str(args.threads),
                   "--phases", "train"] + (
                       ["--torch-first"] if omp == "unset" else [])
            result = tb.run_worker(cmd, tb.child_env(args), timeout=3600)
            result["round"] = r
            report["runs"][variant].append(result)
            bc.log(NAME, f"round {r} {variant}: {tb._train(result, 'step_s_median')} s/step, env {result.get('env')}")
    summary = {}
    for variant, runs in report["runs"].items():
        step = tb._median([tb._train(x, "step_s_median") for x in runs])
        summary[variant] = {"step_s_median": step,
                            "tokens_per_s": round(math.prod(case["seq_lens"]) / step, 1) if step else None,
                            "step_s_per_round": [tb._train(x, "step_s_median") for x in runs],
                            "cpu_sys_s_per_step": tb._median([tb._train(x, "cpu_sys_s_per_step") for x in runs]),
                            "minor_faults_per_step": tb._median([tb._train(x, "minor_faults_per_step") for x in runs]),
                            "peak_rss_mib": max((x.get("peak_rss_mib", 0) for x in runs), default=None),
                            "env": runs[0].get("env") if runs else None}
    base = summary.get("passive", {}).get("tokens_per_s")
    for values in summary.values():
        values["throughput_vs_passive"] = (round(values["tokens_per_s"] / base, 3)
                                           if base and values["tokens_per_s"] else None)
    report["summary"] = summary
    report["machine_at_end"] = bc.machine()
    bc.write_json(a.output, report)
    bc.log(NAME, f"wrote {a.output}: " + ", ".join(f"{v}: {s['step_s_median']} s" for v, s in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
