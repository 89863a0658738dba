#!/usr/bin/env python
"""Pretraining ablations at equal steps: what the sequences contain and the masking rate.

    python benchmarks/ablation_bench.py --steps 1000             # the committed run
    python benchmarks/ablation_bench.py --quick                  # smoke run (tiny data, a few steps)

Every variant is a full pretraining schedule of ``--steps`` steps from the same seed (so, unlike the quality
benchmark's mask experiment, no variant is compared with a mid-schedule checkpoint), then embed (mean pooling),
the probe of what one cycle's vector holds and the embedding rows on cycle life and RUL, all on the split of the
``base`` variant:

* ``base``: the pipeline's tokens (every column but the label and the policy's free text), mask 0.15;
* ``mask_0.30``: the same tokens, mask 0.30;
* ``no_policy_columns``: the four charge-policy columns (constant within a cell, about a quarter of each row's
  tokens) left out of the tokens, mask 0.15: the tokens are only what changes between cycles.

Steps are fixed rather than planned from a time budget, so the comparison does not depend on the machine's load.
The JSON has, per variant, the pretraining (steps, loss, seconds), the probe and every row's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
from quality_bench import (EMBEDDING_ROWS, EXCLUDED, best_embedding_rmse, figures, probe,  # noqa: E402
                           probe_targets)

NAME = "ablation_bench"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "ablation_bench.json"
POLICY_COLUMNS = ["charge_policy_Q1", "charge_policy_Q2", "charge_policy_Q3", "charge_policy_Q4"]
VARIANTS = {"base": (EXCLUDED, 0.15), "mask_0.30": (EXCLUDED, 0.30),
            "no_policy_columns": (EXCLUDED + POLICY_COLUMNS, 0.15)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="pretraining steps of every variant (default: %(default)s)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny data, tiny preset, 4 steps, 1 seed")
    p.add_argument("--preset", default=None, help="model preset (default: small; tiny with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="fitting seeds per row (default 3; 1 with --quick)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s")
    p.add_argument("--workdir", default=None, help="keep the intermediate artifacts here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="data, split and pretraining seed")
    a = p.parse_args(argv)
    preset = a.preset or ("tiny" if a.quick else "small")
    seeds = a.seeds or (1 if a.quick else 3)
    steps = 4 if a.quick else a.steps
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "base" not in names:
        p.error(f"variants must include base and be among {list(VARIANTS)}; got {names}")

    from msenc_cli.main import set_runtime_defaults

    set_runtime_defaults()
    import pandas as pd
    import torch

    from msenc_lib import layout
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data
    from msenc_lib.embed import EmbedConfig, run_embed
    from msenc_lib.evaluate import EvaluateConfig, run_evaluate
    from msenc_lib.preprocess import PreprocessConfig, run_preprocess
    from msenc_lib.split import SplitConfig, run_split
    from msenc_lib.train import TrainConfig, run_train

    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "mode": "quick" if a.quick else "full", "preset": preset, "steps": steps, "seeds": seeds,
                    "torch_threads": torch.get_num_threads(), "env": bc.timing_env(),
                    "machine_at_start": bc.machine(), "variants": {}}
    settings = dict(seeds=seeds, rf_max_features=["sqrt"], rul_stride=20, tasks=["cycle_life", "rul"],
                    rows=EMBEDDING_ROWS, plots=False, progress=False)
    if a.quick:
        settings.update(rul_max_cycle=100, rf_n_estimators=[20], cv_folds=3)
    report["evaluate_settings"] = settings

    with tempfile.TemporaryDirectory(prefix="ablation_bench_") as tmp:
        root = Path(a.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        run_generate_data(GenerateDataConfig(size="tiny" if a.quick else "demo", seed=a.seed, progress=False),
                          str(root / "unified"), overwrite=True)
        targets = probe_targets(str(root / "unified"))
        split_cfg = None
        tokenised: dict[tuple[str, ...], tuple[Path, object]] = {}  # variants with the same tokens share them
        for name in names:
            excluded, mask = VARIANTS[name]
            d = root / name
            bc.log(NAME, f"{name}: tokens, pretrain {steps} steps (mask {mask}), embed, probe, evaluate ...")
            t0 = time.perf_counter()
            if tuple(excluded) not in tokenised:
                data = root / f"tokens_{len(tokenised)}"
                for shuffled, out in ((True, "train_seqs"), (False, "embed_seqs")):
                    run_preprocess(PreprocessConfig(is_training_shuffled=shuffled, exclude_features=excluded,
                                                    progress=False), str(root / "unified"), str(data / out),
                                   overwrite=True)
                tokenised[tuple(excluded)] = data, run_split(SplitConfig(seed=a.seed, progress=False),
                                                             str(data / "train_seqs"), str(data / "split"),
                                                             overwrite=True)
            data, split = tokenised[tuple(excluded)]
            cells = json.loads((data / "split" / layout.SPLIT_CONFIG).read_text())  # the pretraining's cells
            split_cfg = split_cfg or str(data / "split" / layout.SPLIT_CONFIG)  # every variant is scored on base's
            model = run_train(TrainConfig(preset=preset, max_steps=steps, seed=a.seed, device="cpu", progress=False,
                                          eval_every=0, save_every=0, early_stopping_patience=0,
                                          mask_probability=mask), str(data / "split"), str(d / "model"),
                              overwrite=True)
            run_embed(EmbedConfig(pooling="mean", device="cpu", progress=False), str(data / "embed_seqs"),
                      str(d / "model"), str(root / "unified"), str(d / "embeddings"), overwrite=True)
            emb = pd.read_parquet(d / "embeddings" / layout.EMBEDDINGS_FILE)
            run_evaluate(EvaluateConfig(**settings), str(d / "embeddings"), str(root / "unified"), split_cfg,
                         str(d / "evaluation"), overwrite=True)
            doc = json.loads((d / "evaluation" / layout.METRICS_FILE).read_text())
            best = {k: v for k, v in doc["key_figures"].items() if "embedding" in k}
            report["variants"][name] = {
                "excluded_columns": excluded, "mask_probability": mask, "split": cells,
                "tokens": {k: v.weight for k, v in split.subsets.items()}, "token_unit": split.weight_unit,
                "pretrain": {"steps": model.steps, "final_loss": model.final_loss, "seconds": model.seconds},
                "probe": probe(emb, targets), "best": best, "cycle_life_rmse": best_embedding_rmse(best),
                "rul_rmse": best_embedding_rmse(best, "rul"), "figures": figures(doc),
                "seconds": round(time.perf_counter() - t0, 1)}
            bc.write_json(a.output, report)  # a partial report survives an interrupted run
        report["machine_at_end"] = bc.machine()
        bc.write_json(a.output, report)
    for name, v in report["variants"].items():
        bc.log(NAME, f"{name}: cycle life {v['cycle_life_rmse']:.0f}, RUL {v['rul_rmse']:.0f}, "
                     f"probe capacity R2 {v['probe']['capacity']['r2']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
