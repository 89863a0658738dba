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

The evaluation's grid has three cost cuts, each an option recorded in the JSON (``evaluate_settings``):
random-forest ``max_features`` ``--rf-max-features sqrt`` (evaluate's default adds 1.0, whose RUL forest on the
1000-point dQ(V) curve takes ~85 s per fit on a loaded 2-core machine), ``--rul-stride 20`` (default 10) and
the early curve at ``--early-cycles 20,40,60,80,100`` (default every 10).

A probe of what one cycle's embedding holds (``probe`` in the JSON, for the main embeddings and every
experiment): a ridge regression from the cycle's vector, 5-fold cross-validated grouped by cell over all cells'
cycles >= 1, to that cycle's discharge capacity (max ``discharge_capacity``), its change since the cell's first
cycle, and its number of unified rows; R^2 and RMSE of the out-of-fold predictions.

Then the embedding experiments (``--experiments``, on by default): the embedding rows again with other ways to
turn per-cycle embeddings into a cell's vector (mean only; mean + delta; + delta_norm, the default;
+ slope; the last window only); other pooling of a cycle's tokens into its vector (max, first, mean and max
concatenated, mean over the tokens of the cycle's last ``--last-rows`` rows), all from one more pass of the
model; the same pass with the pretraining checkpoint at a third of the steps (pretraining length); and a second
pretraining of that many steps with another masking rate (``--mask-experiment``), embedded the same way.

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
EXPERIMENT_POOLINGS = ("mean", "max", "first", "mean+max", "last_rows")
PROBE_TARGETS = ("capacity", "capacity_change", "rows")
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


def probe_targets(unified_dir: str, min_cycle: int = 1):
    """Per (cell, cycle >= min_cycle): discharge capacity (max), its change since the cell's first such cycle,
    and the number of unified rows."""
    from msenc_lib.data.unified import read_unified

    u = read_unified(unified_dir, columns=["cell_key", "cycle_number", "discharge_capacity"])
    u = u[u["cycle_number"] >= min_cycle]
    g = u.groupby(["cell_key", "cycle_number"], sort=True)
    t = g["discharge_capacity"].max().rename("capacity").to_frame().assign(rows=g.size()).reset_index()
    t["capacity_change"] = t["capacity"] - t.groupby("cell_key")["capacity"].transform("first")
    return t


def probe(embeddings, targets, folds: int = 5) -> dict:
    """Out-of-fold R^2 and RMSE of a ridge regression (standardised inputs, penalty chosen by inner CV) from a
    cycle's embedding to each of PROBE_TARGETS, folds grouped by cell."""
    import numpy as np
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    vals = [c for c in embeddings.columns if str(c).startswith("val_")]
    d = embeddings[["cell_key", "cycle_number", *vals]].merge(targets, on=["cell_key", "cycle_number"])
    x, groups = d[vals].to_numpy(dtype=np.float64), d["cell_key"].to_numpy()
    folds = min(folds, len(set(groups)))
    out: dict = {"cycles": len(d), "cells": int(len(set(groups))), "folds": folds, "dim": len(vals)}
    for name in PROBE_TARGETS:
        y = d[name].to_numpy(dtype=np.float64)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        pred = cross_val_predict(model, x, y, groups=groups, cv=GroupKFold(folds))
        out[name] = {"r2": round(float(r2_score(y, pred)), 4),
                     "rmse": float(np.sqrt(np.mean((y - pred) ** 2))), "std": float(y.std())}
    return out


def pool_pass(data_dir: str, model_dir: str, template, poolings=EXPERIMENT_POOLINGS, last_rows: int = 5) -> dict:
    """One pass of the model over every cycle's tokens, pooled several ways: name -> a DataFrame like
    ``embeddings.parquet`` (``template``'s keys and targets, then val_*). The per-pooling embed runs would each
    cost a full pass; pooling is cheap next to the forward. ``last_rows``: mean over the tokens after the
    cycle's ``last_rows``-th last time separator (its last rows)."""
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import torch

    from msenc_lib.embed import EmbedConfig, _Pooler, _shard_chunks, load_inputs, pad_batch, token_batches
    from msenc_lib.model.hardware import native_bf16
    from msenc_lib.tokenizer import special_token_ids

    cfg = EmbedConfig(device="cpu", progress=False)
    model, tokenizer, shards = load_inputs(cfg, Path(data_dir), Path(model_dir))
    keys = [cfg.id_column, cfg.time_column]
    meta = pd.concat([pq.read_table(s, columns=keys).to_pandas() for s in shards], ignore_index=True)
    model.eval()
    context, dim = int(np.prod(model.config.seq_lens)), int(model.config.hidden_sizes[-1])
    sep_id, bf16 = special_token_ids(tokenizer).get("sep"), cfg.bf16 and native_bf16("cpu")
    modes = {m for p in poolings for m in p.split("+") if m != "last_rows"}
    pooled = {m: np.zeros((len(meta), dim), np.float32) for m in modes}
    tail_sum, tail_n = np.zeros((len(meta), dim)), np.zeros(len(meta))
    first_row = 0
    with torch.inference_mode():
        for shard in shards:
            n = pq.read_metadata(shard).num_rows
            chunks = _shard_chunks(shard, first_row, meta, context, sep_id, model.config.vocab_size)
            last = {c.row: i for i, c in enumerate(chunks)}  # a row's last chunk holds its last rows
            tail_start = {}
            for i in last.values():
                seps = np.flatnonzero(chunks[i].ids == sep_id) if sep_id is not None else []
                tail_start[id(chunks[i])] = int(seps[-last_rows]) + 1 if len(seps) >= last_rows else 0
            poolers = {m: _Pooler(n, dim, m, first_row) for m in modes}
            for batch in token_batches(chunks, cfg.batch_tokens):
                ids, mask = pad_batch(batch, model.config.pad_token_id)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                for p in poolers.values():
                    p.add([c.row for c in batch], hidden, mask, [c.first for c in batch])
                for b, c in enumerate(batch):
                    start = tail_start.get(id(c))
                    if start is not None:
                        tail_sum[c.row] += hidden[b, start:len(c.ids)].double().sum(0).numpy()
                        tail_n[c.row] += len(c.ids) - start
            for m, p in poolers.items():
                pooled[m][first_row:first_row + n] = p.result()
            first_row += n
    pooled["last_rows"] = (tail_sum / np.maximum(tail_n, 1)[:, None]).astype(np.float32)
    head = template[[c for c in template.columns if not str(c).startswith("val_")]]
    out = {}
    for name in poolings:
        vec = np.concatenate([pooled[m] for m in name.split("+")], axis=1)
        frame = pd.concat([meta, pd.DataFrame(vec, columns=[f"val_{i}" for i in range(vec.shape[1])])], axis=1)
        out[name] = head.merge(frame, on=keys, how="left", validate="one_to_one")
    return out


def best_embedding_rmse(best: dict, task: str = "cycle_life") -> float:
    """The best embedding row's RMSE on ``task`` among key figures (the test subset, else the held-out one)."""
    found = {k.split("/")[1]: v for k, v in best.items()
             if k.startswith(f"{task}/") and k.endswith("/best_embedding_rmse")}
    return found.get("test", next(iter(found.values()), float("inf")))


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
                   help="also run the aggregation, pooling and pretraining-length experiments (default: true)")
    p.add_argument("--rf-max-features", default="sqrt",
                   help="random-forest max_features grid, comma-separated (default: %(default)s; evaluate's: sqrt,1.0)")
    p.add_argument("--rul-stride", type=int, default=20, help="RUL: a prediction every this many cycles "
                   "(default: %(default)s; evaluate's: 10)")
    p.add_argument("--early-cycles", default=None, help="the early-prediction curve's N, comma-separated (default: "
                   "20,40,60,80,100; 20,40 with --quick; evaluate's: every 10 up to 100)")
    p.add_argument("--last-rows", type=int, default=5,
                   help="the last_rows pooling experiment: mean over the tokens of a cycle's last this many rows")
    p.add_argument("--mask-experiment", type=float, default=0.3,
                   help="the masking-rate experiment: pretrain as many steps as the first checkpoint's with this "
                   "mask_probability (pretraining's: 0.15) and embed with it (default: %(default)s; 0: skip)")
    p.add_argument("--workdir", default=None, help="keep the intermediate artifacts here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="data, split and pretraining seed")
    a = p.parse_args(argv)
    preset = a.preset or ("tiny" if a.quick else "small")
    seeds = a.seeds or (1 if a.quick else 3)
    early = a.early_cycles or ("20,40" if a.quick else "20,40,60,80,100")
    evaluate_settings = dict(seeds=seeds, rf_max_features=a.rf_max_features.split(","), rul_stride=a.rul_stride,
                             early_cycles=[int(n) for n in early.split(",")])

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
                    "pooling": a.pooling, "seeds": seeds, "evaluate_settings": evaluate_settings,
                    "torch_threads": torch.get_num_threads(),
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

        def train(steps: int, out: str, save_every: int = 0, **overrides):
            cfg = TrainConfig(preset=preset, max_steps=steps, seed=a.seed, device="cpu", progress=False,
                              eval_every=0, save_every=save_every, save_total_limit=5, early_stopping_patience=0,
                              **overrides)
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
        # a checkpoint every third of the steps: the pretraining-length experiment embeds the first one
        model = step("pretrain", lambda: train(steps, "model", max(1, steps // 3) if a.experiments else 0))
        report["pretrain"] = {"steps": model.steps, "final_loss": model.final_loss, "seconds": model.seconds,
                              "tokens_per_s": model.tokens_per_s, "within_budget": model.seconds <= budget_s * 1.1}

        def embed(pooling: str, out: str):
            return run_embed(EmbedConfig(pooling=pooling, device="cpu", progress=False), str(root / "embed_seqs"),
                             str(root / "model"), str(root / "unified"), str(root / out), overwrite=True)

        emb = step("embed", lambda: embed(a.pooling, "embeddings"))
        report["embeddings"] = {"rows": emb.n_rows, "dim": emb.dim}
        import pandas as pd

        main_emb = pd.read_parquet(root / "embeddings" / layout.EMBEDDINGS_FILE)
        targets = probe_targets(str(root / "unified"))
        report["probe"] = step("probe", lambda: probe(main_emb, targets))
        split_cfg = str(root / "split" / layout.SPLIT_CONFIG)
        base = dict(progress=not a.quick, plots=not a.quick, **evaluate_settings)
        if a.quick:
            base.update(rul_max_cycle=100, seq_epochs=5, rf_n_estimators=[20], cv_folds=3, first_cycles=100)
        result = step("evaluate", lambda: run_evaluate(EvaluateConfig(**base), str(root / "embeddings"),
                                                       str(root / "unified"), split_cfg, str(root / "evaluation"),
                                                       overwrite=True))
        doc = json.loads((root / "evaluation" / layout.METRICS_FILE).read_text())
        report.update(figures=figures(doc), key_figures=result.key_figures, target=target(doc),
                      excluded={t: v for t, v in result.n_excluded.items()}, evaluation_dir=str(root / "evaluation"))
        bc.write_json(a.output, report)

        if a.experiments:
            exp: dict = {"aggregation": {}, "pooling": {}, "checkpoint": {}}
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
            exp_cfg = EvaluateConfig(**{**base, "plots": False}, tasks=["cycle_life", "rul"], rows=rows)

            def experiment(group: str, name: str, frame) -> dict:
                path = root / "experiments" / f"{group}_{name}.parquet"
                path.parent.mkdir(exist_ok=True)
                frame.to_parquet(path, index=False)
                out = {"probe": step(f"probe_{group}_{name}", lambda: probe(frame, targets))}
                if group == "pooling" and name == a.pooling:  # the main embeddings' pooling: evaluated above
                    out["best"] = {k: v for k, v in result.key_figures.items() if "embedding" in k}
                else:
                    step(f"experiment_{group}_{name}", lambda: run_evaluate(
                        exp_cfg, str(path), str(root / "unified"), split_cfg, str(root / f"{group}_{name}"),
                        overwrite=True))
                    d = json.loads((root / f"{group}_{name}" / layout.METRICS_FILE).read_text())
                    out.update(figures=figures(d), best={k: v for k, v in d["key_figures"].items() if "embedding" in k})
                exp[group][name] = out
                bc.write_json(a.output, report)
                return out

            pooled = step("experiment_embed_poolings", lambda: pool_pass(
                str(root / "embed_seqs"), str(root / "model"), main_emb, last_rows=a.last_rows))
            vals = [c for c in main_emb.columns if str(c).startswith("val_")]
            exp["pooling_pass_vs_embed"] = float((pooled[a.pooling][vals] - main_emb[vals]).abs().max().max()) \
                if a.pooling in pooled else None
            for name, frame in pooled.items():
                experiment("pooling", name, frame)
            exp["best_pooling"] = best_pool = min(
                pooled, key=lambda n: best_embedding_rmse(exp["pooling"][n]["best"]))

            from msenc_lib.model import MultiscaleEncoderForMaskedLM
            from msenc_lib.train.checkpoint import list_checkpoints, load_checkpoint

            early_ckpt = list_checkpoints(str(root / "model"))[0]
            ckpt_step = int(early_ckpt.rsplit("-", 1)[1])
            if ckpt_step < model.steps:
                exp["checkpoint"] = {"step": ckpt_step, "of_steps": model.steps}
                state, _ = load_checkpoint(str(root / "model" / "checkpoints" / early_ckpt))
                early_model = MultiscaleEncoderForMaskedLM.from_pretrained(root / "model")
                early_model.load_state_dict(state["model"])
                early_model.save_pretrained(root / "model_early")
                keep = [a.pooling] + ([best_pool] if best_pool != a.pooling else [])
                pooled = step("experiment_embed_checkpoint", lambda: pool_pass(
                    str(root / "embed_seqs"), str(root / "model_early"), main_emb, poolings=keep,
                    last_rows=a.last_rows))
                for name, frame in pooled.items():
                    experiment("checkpoint", name, frame)
                if a.mask_experiment:
                    masked = step("experiment_pretrain_mask", lambda: train(
                        ckpt_step, "model_mask", mask_probability=a.mask_experiment))
                    exp["mask"] = {"mask_probability": a.mask_experiment, "steps": masked.steps,
                                   "final_loss": masked.final_loss, "seconds": masked.seconds}
                    pooled = step("experiment_embed_mask", lambda: pool_pass(
                        str(root / "embed_seqs"), str(root / "model_mask"), main_emb, poolings=keep,
                        last_rows=a.last_rows))
                    for name, frame in pooled.items():
                        experiment("mask", name, frame)
        report["machine_at_end"] = bc.machine()
        bc.write_json(a.output, report)
    t = report["target"]
    bc.log(NAME, f"target met: {t.get('met')}; {json.dumps({k: v for k, v in t.items() if k != 'met'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
