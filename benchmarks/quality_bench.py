#!/usr/bin/env python
"""Quality of the embeddings: pretrain -> embed -> evaluate on the demo data within a CPU time budget.

    python benchmarks/quality_bench.py --budget-minutes 15            # the target run
    python benchmarks/quality_bench.py --quick                         # smoke run (tiny data, seconds of training)

Steps, all with msenc's own stages: generate the demo data (56 cells, cycles 0-130), preprocess (training and
embedding modes), split (0.8 / 0.05 / rest by tokens, seed 0: the pipeline's default), pretrain ``--preset``
for as many steps as fit the budget (a short probe run measures the step time first), embed every cycle
(``--pooling``), evaluate with the default rows (BatteryML's table, Severson's models, the embedding heads,
the random control) on cycle life, the early-prediction curve, RUL and capacity, mean ± std over
``--seeds`` fitting seeds.

Then the embedding experiments (``--experiments``, on by default): the embedding rows again with other ways to
turn per-cycle embeddings into a cell's vector (mean only; mean + delta; + delta_norm, the default;
+ slope; the last window only) and, when the budget allows, other pooling of the tokens into a cycle's
vector (max, first) by re-embedding.

The JSON report has every model x feature set x task figure (mean and std per held-out subset), the timings,
the machine, and the target: the best embedding row within 10 % of the best Severson feature set's
cycle-life RMSE, and ahead of every hand-feature row on RUL (test subset).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

NAME = "quality_bench"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "quality_bench.json"
EXCLUDED = ["cycle_life", "discharge_policy", "batch_number"]  # the pipeline's: no label leaks into the tokens
AGGREGATIONS = {"mean": ["mean"], "mean+delta": ["mean", "delta"], "mean+delta+delta_norm": ["mean", "delta", "delta_norm"],
                "mean+delta+delta_norm+slope": ["mean", "delta", "delta_norm", "slope"], "last": ["last"]}
EMBEDDING_ROWS = ["embedding/elastic_net", "embedding/ridge", "embedding/pcr", "embedding/plsr",
                  "embedding/random_forest"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def figures(doc: dict) -> dict:
    """task -> row -> subset -> metric -> [mean, std] (held-out subsets; the early curve per N)."""
    out: dict = {}

    def table(results: list[dict]) -> dict:
        t = {}
        for r in results:
            t[f"{r['feature_set']}/{r['model']}"] = {
                s: {k: [m[k], m.get(f"{k}_std")] for k in doc["metrics"]} for s, m in r["subsets"].items()
                if s != "train"}
        return t

    for name, task in doc["tasks"].items():
        if name == "early_curve":
            out[name] = {str(p["n"]): table(p["results"]) for p in task["curve"]}
        else:
            out[name] = table(task["results"])
    return out


def target(doc: dict) -> dict:
    """The issue's target on the test subset, with the numbers it is judged by."""
    from msenc_lib.evaluate.stage import focus_subset, is_hand_feature

    out: dict = {}
    life, rul = doc["tasks"].get("cycle_life"), doc["tasks"].get("rul")

    def best(task: dict, pick) -> tuple[float, str] | None:
        focus = focus_subset(task)
        c = [(r["subsets"][focus]["rmse"], f"{r['feature_set']}/{r['model']}") for r in task["results"]
             if pick(r) and focus in r["subsets"] and r["subsets"][focus]["rmse"] is not None]
        return min(c) if c else None

    is_emb = lambda r: r["feature_set"].startswith("embedding")  # noqa: E731
    if life:
        e = best(life, is_emb)
        s = best(life, lambda r: r["feature_set"] in ("variance", "discharge", "full"))
        if e and s:
            out["cycle_life"] = {"best_embedding": {"row": e[1], "rmse": e[0]},
                                 "best_severson": {"row": s[1], "rmse": s[0]}, "ratio": e[0] / s[0],
                                 "goal": "ratio <= 1.10", "met": e[0] <= 1.10 * s[0]}
    if rul:
        e = best(rul, is_emb)
        h = best(rul, lambda r: is_hand_feature(r["feature_set"], r["model"]))
        if e and h:
            out["rul"] = {"best_embedding": {"row": e[1], "rmse": e[0]},
                          "best_hand_feature": {"row": h[1], "rmse": h[0]}, "ratio": e[0] / h[0],
                          "goal": "best embedding RMSE < every hand-feature row's", "met": e[0] < h[0]}
    out["met"] = bool(out) and all(v["met"] for v in out.values() if isinstance(v, dict))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=15.0, help="pretraining wall-time budget on the CPU")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON report (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny data, a few training steps, 1 seed")
    p.add_argument("--preset", default=None, help="model preset (default: small; tiny with --quick)")
    p.add_argument("--pooling", default="mean", help="how embed pools a cycle's tokens (mean, max, first)")
    p.add_argument("--seeds", type=int, default=None, help="fitting seeds per row (default 3; 1 with --quick)")
    p.add_argument("--experiments", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="also run the aggregation and pooling experiments (default: true)")
    p.add_argument("--workdir", default=None, help="keep the intermediate artifacts here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="data, split and pretraining seed")
    a = p.parse_args(argv)
    preset = a.preset or ("tiny" if a.quick else "small")
    seeds = a.seeds or (1 if a.quick else 3)

    from msenc_cli.main import set_runtime_defaults

    set_runtime_defaults()
    import torch

    from msenc_lib import layout
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data
    from msenc_lib.embed import EmbedConfig, run_embed
    from msenc_lib.evaluate import EvaluateConfig, run_evaluate
    from msenc_lib.preprocess import PreprocessConfig, run_preprocess
    from msenc_lib.split import SplitConfig, run_split
    from msenc_lib.train import TrainConfig, run_train

    report: dict = {"bench": NAME, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "mode": "quick" if a.quick else "full", "budget_minutes": a.budget_minutes, "preset": preset,
                    "pooling": a.pooling, "seeds": seeds, "torch_threads": torch.get_num_threads(),
                    "env": bc.timing_env(), "machine_at_start": bc.machine(), "timings_s": {}, "cpu_s": {}}
    timings, cpus = report["timings_s"], report["cpu_s"]

    def step(name: str, fn):
        t0, c0 = time.perf_counter(), cpu_seconds()
        bc.log(NAME, f"{name} ...")
        out = fn()
        timings[name], cpus[name] = round(time.perf_counter() - t0, 1), round(cpu_seconds() - c0, 1)
        bc.log(NAME, f"{name}: {timings[name]} s wall, {cpus[name]} s CPU")
        bc.write_json(a.output, report)  # a partial report survives an interrupted run
        return out

    with tempfile.TemporaryDirectory(prefix="quality_bench_") as tmp:
        root = Path(a.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        size = "tiny" if a.quick else "demo"
        step("data", lambda: run_generate_data(GenerateDataConfig(size=size, seed=a.seed, progress=False),
                                               str(root / "unified"), overwrite=True))
        step("preprocess", lambda: (
            run_preprocess(PreprocessConfig(is_training_shuffled=True, exclude_features=EXCLUDED, progress=False),
                           str(root / "unified"), str(root / "train_seqs"), overwrite=True),
            run_preprocess(PreprocessConfig(is_training_shuffled=False, exclude_features=EXCLUDED, progress=False),
                           str(root / "unified"), str(root / "embed_seqs"), overwrite=True)))
        split = step("split", lambda: run_split(SplitConfig(seed=a.seed, progress=False), str(root / "train_seqs"),
                                                str(root / "split"), overwrite=True))
        report["split"] = {s: info.n_cells for s, info in split.subsets.items()}

        def train(steps: int, out: str):
            cfg = TrainConfig(preset=preset, max_steps=steps, seed=a.seed, device="cpu", progress=False,
                              eval_every=0, save_every=0, early_stopping_patience=0)
            return run_train(cfg, str(root / "split"), str(root / out), overwrite=True)

        # Short runs after a warm-up one (imports, first allocations): the difference of their times is the step
        # time without the fixed start-up cost.
        step("pretrain_warmup", lambda: train(2, "probe"))
        short = step("pretrain_probe_a", lambda: train(2, "probe"))
        longer = step("pretrain_probe_b", lambda: train(2 if a.quick else 12, "probe"))
        per_step = (longer.seconds - short.seconds) / max(longer.steps - short.steps, 1)
        if per_step <= 0:  # noise larger than the difference: the upper bound
            per_step = longer.seconds / max(longer.steps, 1)
        fixed = max(short.seconds - short.steps * per_step, 0.0)
        budget_s = a.budget_minutes * 60.0
        steps = 10 if a.quick else max(5, int((budget_s - fixed) / per_step))
        report["pretrain_plan"] = {"probe_s_per_step": round(per_step, 3), "fixed_s": round(fixed, 1),
                                   "max_steps": steps, "n_parameters": short.n_parameters}
        model = step("pretrain", lambda: train(steps, "model"))
        report["pretrain"] = {"steps": model.steps, "final_loss": model.final_loss, "seconds": model.seconds,
                              "tokens_per_s": model.tokens_per_s, "within_budget": model.seconds <= budget_s * 1.1}

        def embed(pooling: str, out: str):
            return run_embed(EmbedConfig(pooling=pooling, device="cpu", progress=False), str(root / "embed_seqs"),
                             str(root / "model"), str(root / "unified"), str(root / out), overwrite=True)

        emb = step("embed", lambda: embed(a.pooling, "embeddings"))
        report["embeddings"] = {"rows": emb.n_rows, "dim": emb.dim}
        split_cfg = str(root / "split" / layout.SPLIT_CONFIG)
        base = dict(seeds=seeds, progress=not a.quick, plots=not a.quick)
        if a.quick:
            base.update(early_cycles=[20, 40], rul_max_cycle=100, seq_epochs=5, rf_n_estimators=[20], cv_folds=3,
                        first_cycles=100)
        result = step("evaluate", lambda: run_evaluate(EvaluateConfig(**base), str(root / "embeddings"),
                                                       str(root / "unified"), split_cfg, str(root / "evaluation"),
                                                       overwrite=True))
        doc = json.loads((root / "evaluation" / layout.METRICS_FILE).read_text())
        report.update(figures=figures(doc), key_figures=result.key_figures, target=target(doc),
                      excluded={t: v for t, v in result.n_excluded.items()}, evaluation_dir=str(root / "evaluation"))
        bc.write_json(a.output, report)

        if a.experiments:
            exp: dict = {"aggregation": {}, "pooling": {}}
            report["experiments"] = exp
            rows = EMBEDDING_ROWS
            for name, methods in AGGREGATIONS.items():
                cfg = EvaluateConfig(**{**base, "plots": False}, tasks=["cycle_life", "rul"], rows=rows,
                                     aggregation=methods)
                step(f"experiment_aggregation_{name}", lambda cfg=cfg, name=name: run_evaluate(
                    cfg, str(root / "embeddings"), str(root / "unified"), split_cfg, str(root / f"agg_{name}"),
                    overwrite=True))
                d = json.loads((root / f"agg_{name}" / layout.METRICS_FILE).read_text())
                exp["aggregation"][name] = {"methods": methods, "figures": figures(d),
                                            "best": {k: v for k, v in d["key_figures"].items() if "embedding" in k}}
            for pooling in ("max", "first"):
                if pooling == a.pooling:
                    continue
                step(f"experiment_embed_{pooling}", lambda pooling=pooling: embed(pooling, f"emb_{pooling}"))
                cfg = EvaluateConfig(**{**base, "plots": False}, tasks=["cycle_life", "rul"], rows=rows)
                step(f"experiment_pooling_{pooling}", lambda cfg=cfg, pooling=pooling: run_evaluate(
                    cfg, str(root / f"emb_{pooling}"), str(root / "unified"), split_cfg, str(root / f"pool_{pooling}"),
                    overwrite=True))
                d = json.loads((root / f"pool_{pooling}" / layout.METRICS_FILE).read_text())
                exp["pooling"][pooling] = {"figures": figures(d),
                                           "best": {k: v for k, v in d["key_figures"].items() if "embedding" in k}}
                bc.write_json(a.output, report)
        report["machine_at_end"] = bc.machine()
        bc.write_json(a.output, report)
    t = report["target"]
    bc.log(NAME, f"target met: {t.get('met')}; {json.dumps({k: v for k, v in t.items() if k != 'met'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
