#!/usr/bin/env python3
"""Inference throughput of the embed stage: ``msenc_lib.embed.run_embed`` on preprocessed synthetic data.

    python benchmarks/embed_bench.py                          # tiny data (8 cells x 121 cycles), tiny model
    python benchmarks/embed_bench.py --size demo --preset small
    python benchmarks/embed_bench.py --quick                  # 2 cells x 6 cycles: a smoke run

Set-up (not timed): the synthetic data of ``--size`` (``msenc generate-data``), preprocessed in embedding mode
(one sequence per cell and cycle, built-in numeric tokenizer), and a freshly initialised model of
``--preset`` for that tokenizer, saved with ``save_pretrained``. Then ``run_embed`` runs ``--repeat`` times
(each a whole stage run: model and data loading, inference, pooling, the Parquet output), and the report
gives cycles/s (output rows) and tokens/s of each run and of the best and median ones, with the process's
peak RSS. The first run also pays one-time costs (imports, allocator warm-up): compare the best or median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "embed_bench.json"
NAME = "embed_bench"


def prepare(root: Path, size: str, preset: str, n_cells: int | None, last_cycle: int | None, seed: int) -> dict:
    """Unified data -> embedding-mode sequences -> a saved untrained model; returns the set-up facts."""
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
    return {"size": size, "n_cells": generated.n_cells, "n_cycles": generated.n_cycles, "preset": preset,
            "seq_lens": config.seq_lens, "context_tokens": config.max_context, "vocab_size": config.vocab_size,
            "params": model.num_parameters(), "unified_rows": generated.n_rows,
            "sequences": preprocessed.n_sequences, "setup_s": round(time.perf_counter() - t0, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny data cut to 2 cells x 6 cycles, 2 runs")
    p.add_argument("--size", choices=["tiny", "demo"], default="tiny", help="synthetic data size")
    p.add_argument("--preset", choices=["tiny", "small", "seed"], default="tiny", help="model size preset")
    p.add_argument("--repeat", type=int, default=None, help="timed run_embed runs (default 3; 2 with --quick)")
    p.add_argument("--batch-tokens", type=int, default=262_144, help="embed's token budget per forward pass")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.repeat is None:
        a.repeat = 2 if a.quick else 3
    if a.repeat < 1:
        p.error("--repeat: must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from msenc_cli.main import set_runtime_defaults

    set_runtime_defaults()  # before torch: msenc's CPU defaults, as the CLI has them
    import torch

    from msenc_lib.embed import EmbedConfig, run_embed

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": "quick" if a.quick else "full",
                    "threads": torch.get_num_threads(), "torch_version": torch.__version__, "env": bc.timing_env(),
                    "machine_at_start": bc.machine(), "batch_tokens": a.batch_tokens}
    with tempfile.TemporaryDirectory(prefix="embed_bench_") as tmp:
        root = Path(tmp)
        n_cells, last_cycle = (2, 5) if a.quick else (None, None)
        report["setup"] = prepare(root, a.size, a.preset, n_cells, last_cycle, a.seed)
        bc.log(NAME, f"set-up done: {report['setup']}")
        runs = []
        with bc.PeakRss() as rss:
            for i in range(a.repeat):
                t0 = time.perf_counter()
                result = run_embed(EmbedConfig(progress=False, device="cpu", batch_tokens=a.batch_tokens),
                                   str(root / "sequences"), str(root / "model"), str(root / "unified"),
                                   str(root / f"embeddings_{i}"))
                seconds = time.perf_counter() - t0
                runs.append({"seconds": round(seconds, 4), "cycles": result.n_rows, "tokens": result.n_tokens,
                             "chunks": result.n_chunks, "cycles_per_s": round(result.n_rows / seconds, 2),
                             "tokens_per_s": round(result.n_tokens / seconds, 1),
                             "stage_reported_tokens_per_s": result.tokens_per_s})
                bc.log(NAME, f"run {i}: {runs[-1]}")
    best = min(runs, key=lambda r: r["seconds"])
    median_s = statistics.median(r["seconds"] for r in runs)
    report.update(runs=runs, cycles=best["cycles"], tokens=best["tokens"], chunks=best["chunks"],
                  cycles_per_s=best["cycles_per_s"], tokens_per_s=best["tokens_per_s"],
                  cycles_per_s_median=round(best["cycles"] / median_s, 2),
                  tokens_per_s_median=round(best["tokens"] / median_s, 1),
                  peak_rss_sampled_mib=round(rss.peak, 1), peak_rss_mib=round(bc.maxrss_mib(), 1),
                  machine_at_end=bc.machine())
    bc.write_json(a.output, report)
    bc.log(NAME, f"wrote {a.output}: cycles/s {report['cycles_per_s']} tokens/s {report['tokens_per_s']} "
           f"(best of {a.repeat}; median {report['cycles_per_s_median']} / {report['tokens_per_s_median']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
