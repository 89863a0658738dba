"""``run_evaluate``: embeddings + unified data + split -> metrics.json, predictions, PNG plots, report.html."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from msenc_lib import layout, storage
from msenc_lib.errors import InputDataError
from msenc_lib.evaluate.config import SEVERSON_SETS, EvaluateConfig, EvaluateResult
from msenc_lib.evaluate.inputs import Embeddings, Split, read_embeddings, read_split, read_unified_summary
from msenc_lib.evaluate.tasks import TaskData, build_capacity, build_cycle_life, random_like
from msenc_lib.progress import progress_bar

FORMAT_VERSION = 1
HEADLINE_METRICS = ("rmse", "mae", "mape", "r2")
TRAIN = "train"
BASELINE_MODEL = "none"  # the "model" of a model-free baseline such as persistence
log = logging.getLogger(__name__)


def _check_split_cells(split: Split, emb: Embeddings) -> None:
    have = set(emb.table["cell_key"])
    missing = [c for c in split.cells if c not in have]
    if missing:
        raise InputDataError(f"the split config {split.source} names {len(missing)} cell(s) absent from the "
                             f"embeddings {emb.source}: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


def _subset_metrics(task: TaskData, pred: pd.Series) -> dict[str, dict[str, Any]]:
    from msenc_lib.evaluate.regressors import regression_metrics

    out = {}
    for subset in task.subset_names():
        mask = (task.subset == subset).to_numpy()
        if not mask.any():
            continue
        m = regression_metrics(task.y.to_numpy()[mask], pred.to_numpy()[mask])
        out[subset] = {"n_cells": int(task.cell[mask].nunique()), "n_rows": int(mask.sum()), **m}
    return out


def evaluate_task(task: TaskData, cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Fit every (feature set, model) on the train rows; metrics per subset; predictions (wide table)."""
    from msenc_lib.evaluate.regressors import check_cv_cells, fit_regressor

    train = (task.subset == TRAIN).to_numpy()
    check_cv_cells(int(task.cell[train].nunique()), cfg.cv_folds, f"{task.task} task, train subset")
    y_fit = np.log10(task.y.to_numpy()) if task.log_target else task.y.to_numpy()
    groups = task.cell.to_numpy()
    preds = pd.DataFrame({"subset": task.subset, "true": task.y})
    results: list[dict[str, Any]] = []
    for name, pred in task.baselines.items():
        preds[f"{name}/{BASELINE_MODEL}"] = pred
        results.append({"feature_set": name, "model": BASELINE_MODEL, "n_features": 0, "hyperparameters": {},
                        "cv_rmse": None, "subsets": _subset_metrics(task, pred)})
    jobs = [(fs, m) for fs in task.features for m in cfg.models]
    bar = progress_bar(jobs, len(jobs), f"{task.task}: fitting", cfg.progress, unit="model")
    for fs, model in bar:
        bar.set_postfix_str(f"{fs}/{model}")
        X = task.features[fs].to_numpy(dtype=np.float64)
        fit = fit_regressor(model, X[train], y_fit[train], groups[train], cv_folds=cfg.cv_folds, seed=cfg.seed,
                            en_alphas=cfg.en_alphas, en_l1_ratios=cfg.en_l1_ratios,
                            rf_n_estimators=cfg.rf_n_estimators, rf_max_depth=cfg.rf_max_depth,
                            rf_min_samples_leaf=cfg.rf_min_samples_leaf, rf_max_features=cfg.rf_max_features,
                            n_jobs=cfg.n_jobs)
        log.info("%s: %s/%s: %d features, CV RMSE %.4g, %s", task.task, fs, model, X.shape[1], fit.cv_rmse,
                 fit.hyperparameters)
        raw = fit.predict(X)
        pred = pd.Series(10.0**raw if task.log_target else raw, index=task.y.index)
        preds[f"{fs}/{model}"] = pred
        entry: dict[str, Any] = {
            "feature_set": fs, "model": model, "n_features": int(X.shape[1]),
            "hyperparameters": fit.hyperparameters, "cv_rmse": fit.cv_rmse, "cv_folds": fit.cv_folds,
            "subsets": _subset_metrics(task, pred),
        }
        if X.shape[1] <= 16:
            entry["feature_names"] = [str(c) for c in task.features[fs].columns]
        results.append(entry)
    return results, preds


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def headline_and_best(tasks: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    headline: dict[str, float] = {}
    best: dict[str, str] = {}
    for task_name, task in tasks.items():
        best_rmse: dict[str, float] = {}
        for r in task["results"]:
            for subset, m in r["subsets"].items():
                if subset != TRAIN:
                    for metric in HEADLINE_METRICS:
                        v = m.get(metric)
                        if v is not None and math.isfinite(v):
                            headline[f"{task_name}/{subset}/{r['feature_set']}/{r['model']}/{metric}"] = float(v)
                key = f"{task_name}/{subset}"
                if subset != TRAIN and m["rmse"] < best_rmse.get(key, math.inf):
                    best_rmse[key] = m["rmse"]
                    best[key] = f"{r['feature_set']}/{r['model']}"
    return headline, best


def _task_summary(task: TaskData, split: Split, results: list[dict[str, Any]], extra: dict[str, Any]) -> dict:
    cells = {s: sorted(task.cell[task.subset == s].unique().tolist()) for s in task.subset_names()}
    skipped = {s: ("empty in the split config" if not split.subsets[s] else "no usable cell left")
               for s in split.subsets if s not in cells}
    return {
        "target": task.target, "unit": task.unit, "fit_space": "log10" if task.log_target else "linear",
        **extra,
        "n_cells": {s: len(c) for s, c in cells.items()},
        "n_rows": {s: int((task.subset == s).sum()) for s in cells},
        "cells": cells, "skipped_subsets": skipped, "excluded": task.excluded, "results": results,
    }


def run_evaluate(config: EvaluateConfig, embeddings_uri: str, unified_uri: str, split_config_uri: str,
                 output_uri: str, overwrite: bool = False) -> EvaluateResult:
    """Evaluate embeddings against Severson's features and controls on one split (design.md §7).

    Writes to ``output_uri`` (through :func:`storage.publish`: nothing is left there on failure):
    ``metrics.json``, ``predictions_cycle_life.csv``, ``predictions_capacity.parquet``, PNG plots,
    ``report.html`` (self-contained) and ``evaluate_config.yaml``.
    """
    from msenc_lib.evaluate import report

    start = time.perf_counter()
    cfg = config
    output_uri = str(output_uri)
    storage.check_output_free(output_uri, overwrite)  # before the work, not only when publishing
    split = read_split(str(split_config_uri))
    emb = read_embeddings(str(embeddings_uri))
    _check_split_cells(split, emb)
    not_in_split = int(emb.table["cell_key"].nunique()) - len(split.cells)
    emb = Embeddings(table=emb.table[emb.table["cell_key"].isin(set(split.cells))].reset_index(drop=True),
                     val_columns=emb.val_columns, source=emb.source, dropped_empty_rows=emb.dropped_empty_rows)
    want_life = "cycle_life" in cfg.tasks
    severson = want_life and any(fs in SEVERSON_SETS for fs in cfg.feature_sets)
    unified = read_unified_summary(
        str(unified_uri), split.cells, need_cycle_life=want_life,
        capacity_column=cfg.capacity_column if "capacity" in cfg.tasks else None,
        severson_last_cycle=max(cfg.first_cycles, 5) if severson else None, progress=cfg.progress)
    random_table = random_like(emb, cfg.seed)
    log.info("split %s: %s; embeddings: %d rows, dim %d", split.source,
             {k: len(v) for k, v in split.subsets.items()}, len(emb.table), emb.dim)

    tasks: dict[str, dict[str, Any]] = {}
    predictions: dict[str, pd.DataFrame] = {}
    if want_life:
        life = build_cycle_life(cfg, split, emb, random_table, unified)
        results, preds = evaluate_task(life, cfg)
        tasks["cycle_life"] = _task_summary(life, split, results, {
            "first_cycles": cfg.first_cycles, "min_cycle": cfg.min_cycle,
            "embedding_aggregation": {"methods": cfg.aggregation, "window": cfg.delta_window},
            "cv_rmse_unit": "log10(cycles)",
            "severson_ir_features": unified.has_ir,
            "target_stats": {s: {"min": float(v.min()), "median": float(v.median()), "max": float(v.max())}
                             for s, v in life.y.groupby(life.subset, sort=False)},
        })
        predictions["cycle_life"] = preds
        for x in life.excluded:
            log.warning("cycle life: cell %s (%s) excluded: %s", x["cell_key"], x["subset"], x["reason"])
    if "capacity" in cfg.tasks:
        cap = build_capacity(cfg, split, emb, random_table, unified)
        results, preds = evaluate_task(cap, cfg)
        tasks["capacity"] = _task_summary(cap, split, results, {
            "horizon": cfg.horizon, "capacity_column": cfg.capacity_column, "min_cycle": cfg.min_cycle,
            "stride": cfg.capacity_stride, "cv_rmse_unit": cap.unit,
        })
        predictions["capacity"] = preds
        for x in cap.excluded:
            log.warning("capacity: cell %s (%s) excluded: %s", x["cell_key"], x["subset"], x["reason"])

    headline, best = headline_and_best(tasks)
    dataset = {
        "embeddings": {"source": emb.source, "dim": emb.dim, "rows": int(len(emb.table)),
                       "cells": int(emb.table["cell_key"].nunique()),
                       "cycles": [_num(emb.table["cycle_number"].min()), _num(emb.table["cycle_number"].max())],
                       "dropped_empty_rows": emb.dropped_empty_rows, "cells_not_in_split": not_in_split},
        "unified": {"source": unified.source, "cells_read": len(unified.files),
                    "internal_resistance": unified.has_ir},
        "split": {"source": split.source, "cells": {s: len(c) for s, c in split.subsets.items()},
                  "subset_cells": split.subsets},
    }
    doc = _clean({
        "format": layout.EVALUATION_FORMAT, "format_version": FORMAT_VERSION,
        "inputs": {"embeddings": str(embeddings_uri), "unified": str(unified_uri),
                   "split_config": str(split_config_uri)},
        "config": json.loads(cfg.model_dump_json()),
        "dataset": dataset, "tasks": tasks, "headline": headline, "best": best,
    })

    with storage.publish(output_uri, overwrite=overwrite) as staging:
        layout.write_json(staging / layout.METRICS_FILE, doc)
        cfg.save(str(staging / layout.EVALUATE_CONFIG))
        if "cycle_life" in predictions:
            predictions["cycle_life"].to_csv(staging / layout.PREDICTIONS_CYCLE_LIFE, index_label="cell_key")
        if "capacity" in predictions:
            predictions["capacity"].reset_index().to_parquet(staging / layout.PREDICTIONS_CAPACITY, index=False)
        plots = report.make_plots(staging, doc, predictions, emb, unified, cfg) if cfg.plots else {}
        (staging / layout.REPORT_FILE).write_text(report.render_html(doc, plots, staging), encoding="utf-8")

    return EvaluateResult(
        output_uri=output_uri, metrics_uri=storage.join(output_uri, layout.METRICS_FILE),
        report_uri=storage.join(output_uri, layout.REPORT_FILE), plots=sorted(plots), tasks=list(tasks),
        embedding_dim=emb.dim,
        n_cells={t: v["n_cells"] for t, v in tasks.items()},
        n_excluded={t: len(v["excluded"]) for t, v in tasks.items()},
        headline=headline, best=best, seconds=round(time.perf_counter() - start, 3),
    )


def _num(x: Any) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() else x
