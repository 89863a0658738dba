#!/usr/bin/env python3
"""Embedding throughput of the embed stage (cycles/s) at the seed preset, against mblm 0.4.0 at its best, same run.

    python benchmarks/embed_bench.py                          # tiny data (8 cells x 121 cycles), seed preset
    python benchmarks/embed_bench.py --size demo --preset small --no-mblm
    python benchmarks/embed_bench.py --quick                  # 2 cells x 6 cycles, tiny preset: a smoke run

Set-up (not timed): the synthetic data of ``--size`` (``msenc generate-data``), preprocessed in embedding mode
(one sequence per cell and cycle, built-in numeric tokenizer), and a freshly initialised model of ``--preset``
for that tokenizer, saved with ``save_pretrained``.

msenc: ``run_embed`` end to end (model and data loading, length-batched inference under bf16 where it is native,
compiled layers at long contexts, pooling, targets, the Parquet output), ``--repeat`` times after one untimed
warm-up run (compilation); cycles/s = output rows / seconds.

mblm at its best (``--use-flash-attn`` of the reference driver ``../shared/reference/mblm_bench.py``, the seed's
sizes, inference mode, hidden states, float32): mblm has no padding mask, so a correct embedding runs each cycle
alone at its own length (padded only to its 32-token patch); its forward pass is timed at ``--mblm-points`` lengths
spread over the cycles' lengths (the driver's ``--seq-len``) and its time for the whole data is the sum over all
cycles of the time interpolated between those points (in proportion to the length outside them). That counts mblm's
forward passes only (no loading, pooling or output), which favours it. The two alternate round by round; medians
over rounds. ``ratio`` compares wall time, ``cpu_ratio`` CPU seconds (user + system, all threads), which other jobs
on a shared machine hardly change.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "embed_bench.json"
DEFAULT_MBLM_PYTHON = "/tmp/mblm040-venv/bin/python"  # benchmarks/setup_mblm_venv.sh's default venv
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "mblm_bench.py"
NAME = "embed_bench"


def prepare(root: Path, size: str, preset: str, n_cells: int | None, last_cycle: int | None, seed: int) -> dict:
    """Unified data -> embedding-mode sequences -> a saved untrained model; returns the set-up facts."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data
    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderModel
    from msenc_lib.preprocess import PreprocessConfig, run_preprocess
    from msenc_lib.tokenizer import digit_token_ids, special_token_ids

    t0 = time.perf_counter()
    generated = run_generate_data(GenerateDataConfig(size=size, seed=seed, n_cells=n_cells, last_cycle=last_cycle,
                                                     progress=False), str(root / "unified"))
    preprocessed = run_preprocess(PreprocessConfig(is_training_shuffled=False, exclude_features=["cycle_life"],
                                                   progress=False), str(root / "unified"), str(root / "sequences"))
    tok = AutoTokenizer.from_pretrained(root / "sequences" / "tokenizer")
    ids = special_token_ids(tok)
    config = MultiscaleEncoderConfig.from_preset(preset, vocab_size=len(tok), pad_token_id=ids["pad"],
                                                 mask_token_id=ids["mask"], digit_token_ids=digit_token_ids(tok))
    torch.manual_seed(seed)
    model = MultiscaleEncoderModel(config)
    model.save_pretrained(root / "model")
    lengths = pq.read_table(root / "sequences" / "sequences", columns=["n_tokens"]).column("n_tokens").to_pylist()
    return {"size": size, "n_cells": generated.n_cells, "n_cycles": generated.n_cycles, "preset": preset,
            "seq_lens": config.seq_lens, "num_attention_heads": config.num_attention_heads,
            "head_dim": config.head_dim, "context_tokens": config.max_context, "vocab_size": config.vocab_size,
            "pad_token_id": ids["pad"], "mask_token_id": ids["mask"], "params": model.num_parameters(),
            "unified_rows": generated.n_rows, "sequences": preprocessed.n_sequences,
            "cycle_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
            "lengths": lengths, "setup_s": round(time.perf_counter() - t0, 2)}


def msenc_run(root: Path, a: argparse.Namespace, i: int) -> dict:
    from msenc_lib.embed import EmbedConfig, run_embed

    usage = bc.CpuUsage()
    t0 = time.perf_counter()
    result = run_embed(EmbedConfig(progress=False, device="cpu", batch_tokens=a.batch_tokens),
                       str(root / "sequences"), str(root / "model"), str(root / "unified"), str(root / f"emb_{i}"))
    seconds = time.perf_counter() - t0
    cpu = usage.per_step(1)
    cpu_seconds = cpu["cpu_user_s_per_step"] + cpu["cpu_sys_s_per_step"]
    return {"seconds": round(seconds, 4), "cpu_seconds": round(cpu_seconds, 3), "cycles": result.n_rows, "tokens": result.n_tokens, "chunks": result.n_chunks,
            "cycles_per_s": round(result.n_rows / seconds, 2), "tokens_per_s": round(result.n_tokens / seconds, 1),
            "precision": result.precision, "compiled": result.compiled}


def mblm_points(lengths: list[int], points: int, context: int, patch: int) -> list[int]:
    """Lengths to time mblm at: quantiles of the cycles' chunk lengths, padded to whole patches."""
    chunks = sorted(min(n, context) for n in lengths)
    picked = {chunks[min(len(chunks) - 1, int((k + 0.5) / points * len(chunks)))] for k in range(points)}
    return sorted({-(-n // patch) * patch for n in picked})


def mblm_seconds_total(lengths: list[int], measured: dict[int, float], context: int, patch: int) -> float:
    """mblm's time for every cycle alone (its chunks of ``context`` tokens, each padded to ``patch``): interpolated
    linearly between the measured (padded length, seconds) points, in proportion to the length beyond them."""
    xs = sorted(measured)

    def seconds(n: int) -> float:
        if n <= xs[0] or n >= xs[-1]:
            x = xs[0] if n <= xs[0] else xs[-1]
            return measured[x] * n / x
        hi = next(i for i, x in enumerate(xs) if x >= n)
        x0, x1 = xs[hi - 1], xs[hi]
        return measured[x0] + (measured[x1] - measured[x0]) * (n - x0) / (x1 - x0)

    total = 0.0
    for n in lengths:
        full, rest = divmod(n, context)
        total += sum(seconds(-(-piece // patch) * patch) for piece in [context] * full + ([rest] if rest else []))
    return total


def mblm_run(a: argparse.Namespace, setup: dict, points: list[int]) -> dict:
    """The reference driver at each point length: median forward seconds per cycle-length."""
    measured, measured_cpu, records = {}, {}, []
    for length in points:
        cmd = [a.mblm_python, str(a.reference), "--seq-lens", ",".join(map(str, setup["seq_lens"])),
               "--hidden-dims", "256,64,64", "--num-layers", "8,4,2", "--heads", "32,16,4", "--head-dim", "8",
               "--ff-mult", "2", "--vocab", str(setup["vocab_size"]), "--pad-id", str(setup["pad_token_id"]),
               "--mask-id", str(setup["mask_token_id"]), "--seq-len", str(length), "--phases", "infer",
               "--infer-return", "hidden", "--use-flash-attn", "--steps", str(a.mblm_steps), "--warmup", "1",
               "--threads", str(a.threads_resolved), "--label", f"embed_bench L={length}"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=a.timeout, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"error": f"reference driver at --seq-len {length}: exit code {proc.returncode}"}
        infer = json.loads(lines[-1])["infer"]
        usage = infer["timed_steps_rusage"]
        measured[length] = infer["step_s_median"]
        measured_cpu[length] = (usage["cpu_user_s"] + usage["cpu_sys_s"]) / len(infer["step_s"])
        records.append({"seq_len": length, "step_s_median": infer["step_s_median"], "step_s": infer["step_s"],
                        "cpu_s_per_step": round(measured_cpu[length], 4)})
    patch = math.prod(setup["seq_lens"][1:])
    seconds = mblm_seconds_total(setup["lengths"], measured, setup["context_tokens"], patch)
    cpu = mblm_seconds_total(setup["lengths"], measured_cpu, setup["context_tokens"], patch)
    return {"points": records, "seconds_forward_only": round(seconds, 4), "cpu_seconds_forward_only": round(cpu, 3),
            "cycles_per_s": round(len(setup["lengths"]) / seconds, 2),
            "tokens_per_s": round(sum(setup["lengths"]) / seconds, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny data cut to 2 cells x 6 cycles, tiny preset, "
                   "1 round, no reference")
    p.add_argument("--size", choices=["tiny", "demo"], default="tiny", help="synthetic data size")
    p.add_argument("--preset", choices=["tiny", "small", "seed", "seed_wide"], default=None,
                   help="model preset (default seed; tiny with --quick)")
    p.add_argument("--repeat", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--batch-tokens", type=int, default=262_144, help="embed's token budget per forward pass")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mblm", action="store_true", help="msenc only")
    p.add_argument("--mblm-points", type=int, default=4, help="cycle lengths mblm is timed at (default %(default)s)")
    p.add_argument("--mblm-steps", type=int, default=3, help="timed forward passes per point")
    p.add_argument("--mblm-python", default=DEFAULT_MBLM_PYTHON, help="python of the mblm==0.4.0 venv")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="the reference driver mblm_bench.py "
                   "(default: ../shared/reference/ beside the repository)")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args(argv)
    a.preset = a.preset or ("tiny" if a.quick else "seed")
    a.repeat = a.repeat or (1 if a.quick else 3)
    a.no_mblm = a.no_mblm or a.quick
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from msenc_cli.main import set_runtime_defaults

    set_runtime_defaults()  # before torch: msenc's CPU defaults, as the CLI has them
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    a.threads_resolved = torch.get_num_threads()
    unavailable = ("--no-mblm" if a.no_mblm else None) or (
        None if a.preset in ("seed", "seed_wide") else "the reference runs the seed's sizes: --preset seed") or (
        None if Path(a.mblm_python).exists() else f"no reference venv: {a.mblm_python} missing") or (
        None if Path(a.reference).exists() else f"no reference driver: {a.reference} missing")
    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "mode": "quick" if a.quick else "full", "threads": a.threads_resolved,
                    "torch_version": torch.__version__, "env": bc.timing_env(), "machine_at_start": bc.machine(),
                    "batch_tokens": a.batch_tokens, "mblm_unavailable": unavailable}
    with tempfile.TemporaryDirectory(prefix="embed_bench_") as tmp:
        root = Path(tmp)
        n_cells, last_cycle = (2, 5) if a.quick else (None, None)
        setup = prepare(root, a.size, a.preset, n_cells, last_cycle, a.seed)
        report["setup"] = {k: v for k, v in setup.items() if k != "lengths"}
        bc.log(NAME, f"set-up done: {report['setup']}")
        patch = math.prod(setup["seq_lens"][1:])
        points = mblm_points(setup["lengths"], a.mblm_points, setup["context_tokens"], patch)
        report["warmup_run"] = msenc_run(root, a, -1)  # compilation, allocator warm-up: untimed
        msenc_runs, mblm_runs = [], []
        with bc.PeakRss() as rss:
            for r in range(a.repeat):
                msenc_runs.append({**msenc_run(root, a, r), "load_average": bc.machine()["load_average"]})
                bc.log(NAME, f"round {r} msenc: {msenc_runs[-1]}")
                if unavailable is None:
                    mblm_runs.append({**mblm_run(a, setup, points), "load_average": bc.machine()["load_average"]})
                    bc.log(NAME, f"round {r} mblm: {mblm_runs[-1]}")
    median_s = statistics.median(r["seconds"] for r in msenc_runs)
    cycles = msenc_runs[0]["cycles"]
    report.update(msenc_runs=msenc_runs, mblm_runs=mblm_runs, cycles=cycles, tokens=msenc_runs[0]["tokens"],
                  chunks=msenc_runs[0]["chunks"], precision=msenc_runs[0]["precision"],
                  compiled=msenc_runs[0]["compiled"], cycles_per_s=round(cycles / median_s, 2),
                  tokens_per_s=round(msenc_runs[0]["tokens"] / median_s, 1),
                  cycles_per_s_best=max(r["cycles_per_s"] for r in msenc_runs),
                  peak_rss_sampled_mib=round(rss.peak, 1), peak_rss_mib=round(bc.maxrss_mib(), 1))
    ok = [r for r in mblm_runs if "error" not in r]
    report["mblm_cycles_per_s"] = round(statistics.median(r["cycles_per_s"] for r in ok), 2) if ok else None
    report["ratio"] = round(report["cycles_per_s"] / report["mblm_cycles_per_s"], 3) if ok else None
    paired = [m["cycles_per_s"] / b["cycles_per_s"] for m, b in zip(msenc_runs, mblm_runs) if "error" not in b]
    report["ratio_paired_median"] = round(statistics.median(paired), 3) if paired else None
    cpu_paired = [b["cpu_seconds_forward_only"] / m["cpu_seconds"] for m, b in zip(msenc_runs, mblm_runs)
                  if "error" not in b and m["cpu_seconds"] > 0]
    report["cpu_ratio"] = round(statistics.median(cpu_paired), 3) if cpu_paired else None
    report["mblm_errors"] = [r["error"] for r in mblm_runs if "error" in r]
    report["machine_at_end"] = bc.machine()
    bc.write_json(a.output, report)
    bc.log(NAME, f"wrote {a.output}: msenc {report['cycles_per_s']} cycles/s ({report['precision']}), mblm at its best "
           f"{report['mblm_cycles_per_s']} cycles/s, ratio {report['ratio']} (CPU seconds: {report['cpu_ratio']})")
    return 1 if report["mblm_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
