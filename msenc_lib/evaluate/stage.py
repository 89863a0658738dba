"""``run_evaluate``: embeddings + unified data + split (or a split preset) -> metrics.json, predictions, PNG
plots, summary.md and report.html.

Every task (:mod:`.tasks`) is scored for every ``<feature set>/<model>`` row (:mod:`.featuresets`,
:mod:`.regressors`, :mod:`.sequence`) over ``seeds`` fitting seeds; each figure is the mean and the
population standard deviation (ddof 0) over the seeds. All rows of a task are scored on the same
(cell, cycle) rows: a row one feature set cannot describe is dropped for all, with the reason recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from msenc_lib import layout, storage
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.evaluate import tasks as T
from msenc_lib.evaluate.config import (
    BASELINE_MODELS,
    EMBEDDING_SETS,
    FINETUNE_SETS,
    FINETUNED_ROW,
    SEQUENCE_SETS,
    SEVERSON_SETS,
    EvaluateConfig,
    EvaluateResult,
)
from msenc_lib.evaluate.featuresets import FeatureContext, random_like
from msenc_lib.evaluate.inputs import (
    Embeddings,
    Split,
    cell_datasets,
    preset_split,
    read_embeddings,
    read_split,
    read_unified_summary,
)
from msenc_lib.progress import progress_bar

if TYPE_CHECKING:
    from msenc_lib.evaluate.finetune import FineTuner

FORMAT_VERSION = 2
HEADLINE_METRICS = ("rmse", "mae", "mape", "r2")
TRAIN = "train"
CONTROL_SETS = ("random", "none")
log = logging.getLogger(__name__)


def metric_names(cfg: EvaluateConfig) -> list[str]:
    from msenc_lib.evaluate.regressors import alpha_key

    return [*HEADLINE_METRICS, *(alpha_key(a) for a in cfg.alphas)]


def _check_split_cells(split: Split, emb: Embeddings) -> None:
    have = set(emb.table["cell_key"])
    missing = [c for c in split.cells if c not in have]
    if missing:
        raise InputDataError(f"the split {split.source} names {len(missing)} cell(s) absent from the embeddings "
                             f"{emb.source}: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


# ------------------------------------------------------------------------------------------------ inputs
class Inputs:
    """One row spec's input at the problem's rows: a matrix per seed, or sequences."""

    def __init__(self, kind: str, get: Callable[[int], Any], n_features: int, names: list[str]):
        self.kind, self.get, self.n_features, self.names = kind, get, n_features, names


def _inputs(problem: T.Problem, fs: str, ctx: FeatureContext, unified, emb: Embeddings, cfg: EvaluateConfig,
            tuner: FineTuner | None = None) -> tuple[Inputs, dict[int, str]]:
    rows = problem.rows
    if fs in FINETUNE_SETS:
        return Inputs("finetune", lambda seed: tuner, tuner.dim, []), tuner.reasons(rows)
    if fs in SEQUENCE_SETS:
        seq, reasons = ctx.sequences(fs, rows)
        return Inputs("seq", lambda seed: seq, int(seq.X.shape[2]) if seq.X.ndim == 3 else 0, []), reasons
    if problem.task == "capacity":
        if fs == "none":
            return Inputs("none", lambda seed: np.zeros((len(rows), 0)), 0, []), {}
        if fs == "capacity_history":
            X, names, reasons = T.capacity_history(unified, rows)
            return Inputs("tab", lambda seed: X, X.shape[1], names), reasons
        if fs == "embedding":
            X, reasons = T.per_cycle_embedding(emb.table, emb.val_columns, rows)
            return Inputs("tab", lambda seed: X, X.shape[1], []), reasons
        if fs == "random":
            _, reasons = T.per_cycle_embedding(emb.table, emb.val_columns, rows)
            return Inputs("tab", lambda seed: T.per_cycle_embedding(random_like(emb, seed), emb.val_columns,
                                                                     rows)[0], emb.dim, []), reasons
        raise ValueError(f"unknown capacity feature set {fs!r}")
    X, names, reasons = ctx.tabular(fs, rows, cfg.seed)
    if fs == "random":
        return Inputs("tab", lambda seed: X if seed == cfg.seed else ctx.tabular(fs, rows, seed)[0], X.shape[1],
                      names), reasons
    return Inputs("tab", lambda seed: X, X.shape[1], names), reasons


def prepare(problem: T.Problem, specs: list[str], ctx: FeatureContext, unified, emb: Embeddings,
            cfg: EvaluateConfig, tuner: FineTuner | None = None
            ) -> tuple[T.Problem, dict[str, Inputs], np.ndarray, dict]:
    """Inputs of every feature set; rows any set cannot describe dropped (cells losing all rows -> excluded)."""
    sets = list(dict.fromkeys(s.partition("/")[0] for s in specs))
    reasons: dict[int, list[str]] = {}
    inputs = {}
    for fs in sets:
        inp, why = _inputs(problem, fs, ctx, unified, emb, cfg, tuner)
        inputs[fs] = inp
        for i, r in why.items():
            reasons.setdefault(i, []).append(r)
    keep = np.array([i not in reasons for i in range(len(problem.rows))], dtype=bool)
    kept = problem.keep(keep)
    for fs, inp in inputs.items():
        if inp.kind not in ("seq", "finetune"):  # sequences are per cell; rows find their cell and cycle in them
            inp.get = (lambda g: (lambda seed: g(seed)[keep]))(inp.get)
    cells_before = {c for c, _ in problem.rows}
    cells_after = {c for c, _ in kept.rows}
    subset_of = dict(zip(problem.cells, problem.subset))
    for cell in sorted(cells_before - cells_after):
        why = [r for i, rs in reasons.items() if problem.rows[i][0] == cell for r in rs]
        kept.excluded.append({"cell_key": cell, "subset": subset_of[cell], "reason": "; ".join(dict.fromkeys(why))})
    partial = {}
    for i, rs in reasons.items():
        cell = problem.rows[i][0]
        if cell in cells_after:
            partial.setdefault(cell, []).append(f"n={problem.rows[i][1]:g}: {rs[0]}")
    if not len(kept.rows):
        first = kept.excluded[0] if kept.excluded else {"cell_key": "-", "reason": "-"}
        raise InputDataError(f"{problem.task}: no usable row left ({len(kept.excluded)} cells excluded; first: "
                             f"{first['cell_key']}: {first['reason']})")
    dropped_rows = {c: {"rows": len(v), "first": v[0]} for c, v in partial.items()}
    return kept, inputs, keep, dropped_rows


# ------------------------------------------------------------------------------------------------ scoring
def eval_subsets(problem: T.Problem, split: Split) -> dict[str, np.ndarray]:
    """Subset name -> row mask: the split's subsets (train first), then its evaluation groups."""
    out = {}
    order = list(split.subsets) + sorted(set(problem.subset.tolist()) - set(split.subsets))
    for s in order:
        mask = problem.subset == s
        if mask.any():
            out[s] = mask
    cells = problem.cells
    for g, members in split.groups.items():
        mask = np.isin(cells, list(members))
        if mask.any():
            out[g] = mask
    return out


def score(problem: T.Problem, specs: list[str], inputs: dict[str, Inputs], split: Split, cfg: EvaluateConfig,
          bar_label: str) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Fit every spec for every seed on the train rows; per subset the mean and std of each metric."""
    from msenc_lib.evaluate.regressors import check_cv_cells, fit_regressor, regression_metrics
    from msenc_lib.evaluate.sequence import fit_predict_sequence

    train = problem.subset == TRAIN
    if not train.any():
        raise InputDataError(f"{problem.task}: no usable train row")
    cells = problem.cells
    y = problem.y
    y_fit = np.log10(y) if problem.log_target else y
    subsets = eval_subsets(problem, split)
    names = metric_names(cfg)
    preds = pd.DataFrame({"cell_key": cells, "n": [n for _, n in problem.rows], "subset": problem.subset,
                          "true": y})
    results = []
    jobs = [(spec, seed) for spec in specs for seed in cfg.seed_list()]
    bar = progress_bar(jobs, len(jobs), bar_label, cfg.progress, unit="fit")
    per_spec: dict[str, dict] = {s: {"preds": [], "hp": [], "cv": [], "seconds": 0.0} for s in specs}
    for spec, seed in bar:
        bar.set_postfix_str(f"{spec} seed {seed}")
        fs, _, model = spec.partition("/")
        inp = inputs[fs]
        t0 = time.perf_counter()
        if model in BASELINE_MODELS:
            raw, hp, cv = problem.baselines[model], {}, float("nan")
        elif inp.kind == "seq":
            seq = inp.get(seed)
            row_cell = np.array([seq.index[c] for c in cells])
            k = cfg.seq_stride
            offset = (-seq.start) % k  # keep the cycles divisible by k; a row reads the last kept cycle <= n
            row_pos = np.maximum((np.array([int(n) - seq.start for _, n in problem.rows]) - offset) // k, 0)
            fit = fit_predict_sequence(model, seq.X[:, offset::k], row_cell, row_pos, y_fit, train, seed=seed,
                                       hidden=cfg.seq_hidden, layers=cfg.seq_layers, epochs=cfg.seq_epochs,
                                       lr=cfg.seq_lr, weight_decay=cfg.seq_weight_decay)
            raw, hp, cv = fit.predictions, {**fit.hyperparameters, "stride": k}, float("nan")
            raw = 10.0**raw if problem.log_target else raw
        elif inp.kind == "finetune":
            fit = inp.get(seed).fit_predict(problem.rows, y_fit, train, problem.subset == "validation", seed)
            raw, hp, cv = fit.predictions, fit.hyperparameters, float("nan")
            raw = 10.0**raw if problem.log_target else raw
        else:
            X = inp.get(seed)
            if model != "dummy":
                check_cv_cells(int(len(set(cells[train]))), 2, f"{problem.task}, train subset")
            fit = fit_regressor(model, X[train], y_fit[train], cells[train], cv_folds=cfg.cv_folds, seed=seed,
                                en_alphas=cfg.en_alphas, en_l1_ratios=cfg.en_l1_ratios,
                                rf_n_estimators=cfg.rf_n_estimators, rf_max_depth=cfg.rf_max_depth,
                                rf_min_samples_leaf=cfg.rf_min_samples_leaf, rf_max_features=cfg.rf_max_features,
                                n_jobs=cfg.n_jobs)
            raw = fit.predict(X)
            raw = 10.0**raw if problem.log_target else raw
            hp, cv = fit.hyperparameters, fit.cv_rmse
        per_spec[spec]["preds"].append(np.asarray(raw, dtype=np.float64))
        per_spec[spec]["hp"].append(hp)
        per_spec[spec]["cv"].append(cv)
        per_spec[spec]["seconds"] += time.perf_counter() - t0
    for spec in specs:
        fs, _, model = spec.partition("/")
        runs = per_spec[spec]["preds"]
        entry_subsets, per_seed = {}, {}
        for s, mask in subsets.items():
            ms = [regression_metrics(y[mask], p[mask], cfg.alphas) for p in runs]
            agg: dict[str, Any] = {"n_cells": int(len(set(cells[mask]))), "n_rows": int(mask.sum())}
            per_seed[s] = {}
            for k in names:
                vals = [m[k] for m in ms if m[k] is not None]
                agg[k] = float(np.mean(vals)) if vals else None
                agg[f"{k}_std"] = float(np.std(vals)) if vals else None
                per_seed[s][k] = [m[k] for m in ms]
            entry_subsets[s] = agg
        cvs = [c for c in per_spec[spec]["cv"] if c is not None and math.isfinite(c)]
        entry = {"feature_set": fs, "model": model, "n_features": inputs[fs].n_features,
                 "cv_rmse": float(np.mean(cvs)) if cvs else None, "hyperparameters": per_spec[spec]["hp"],
                 "seconds": round(per_spec[spec]["seconds"], 3), "subsets": entry_subsets, "per_seed": per_seed}
        if 0 < len(inputs[fs].names) <= 16:
            entry["feature_names"] = inputs[fs].names
        results.append(entry)
        preds[spec] = np.mean(runs, axis=0)
    return results, preds


def _task_doc(problem: T.Problem, split: Split, results: list[dict], dropped_rows: dict, extra: dict) -> dict:
    cells = {}
    for s in split.subsets:
        mine = sorted({c for c, sub in zip(problem.cells, problem.subset) if sub == s})
        if mine:
            cells[s] = mine
    skipped = {s: ("empty in the split" if not split.subsets[s] else "no usable cell left")
               for s in split.subsets if s not in cells}
    return {
        "target": problem.target, "unit": problem.unit,
        "fit_space": "log10" if problem.log_target else "linear", "exclusion_rules": problem.exclusion_rules,
        **problem.extra, **extra,
        "n_cells": {s: len(c) for s, c in cells.items()},
        "n_rows": {s: int((problem.subset == s).sum()) for s in cells},
        "cells": cells, "skipped_subsets": skipped, "excluded": problem.excluded,
        "rows_dropped": dropped_rows, "results": results,
    }


# ------------------------------------------------------------------------------------------------ summary
def _iter_results(tasks: dict[str, dict]):
    for name, task in tasks.items():
        if name == "early_curve":
            for point in task["curve"]:
                yield f"early_curve@{point['n']}", point
        else:
            yield name, task


def headline_and_best(tasks: dict[str, dict], metrics: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    headline: dict[str, float] = {}
    best: dict[str, str] = {}
    for key, task in _iter_results(tasks):
        best_rmse: dict[str, float] = {}
        for r in task["results"]:
            for subset, m in r["subsets"].items():
                if subset == TRAIN:
                    continue
                for metric in metrics:
                    v = m.get(metric)
                    if v is not None and math.isfinite(v):
                        headline[f"{key}/{subset}/{r['feature_set']}/{r['model']}/{metric}"] = float(v)
                k = f"{key}/{subset}"
                if m["rmse"] is not None and m["rmse"] < best_rmse.get(k, math.inf):
                    best_rmse[k] = m["rmse"]
                    best[k] = f"{r['feature_set']}/{r['model']}"
    return headline, best


def focus_subset(task: dict) -> str:
    names = [s for s in task["n_cells"] if s != TRAIN]
    return "test" if "test" in names else (names[0] if names else TRAIN)


def is_hand_feature(fs: str, model: str) -> bool:
    return fs not in EMBEDDING_SETS and fs not in CONTROL_SETS and model != "dummy"


def key_figures(tasks: dict[str, dict]) -> dict[str, float]:
    """Per task, on its focus subset: the best row's, the best embedding row's and the best hand-feature row's
    mean RMSE, and the embedding / hand-feature ratio (< 1: the embeddings win)."""
    out: dict[str, float] = {}
    for name in ("cycle_life", "rul", "capacity"):
        task = tasks.get(name)
        if not task:
            continue
        focus = focus_subset(task)
        scored = [(r["subsets"][focus]["rmse"], r) for r in task["results"]
                  if focus in r["subsets"] and r["subsets"][focus]["rmse"] is not None]
        if not scored:
            continue
        out[f"{name}/{focus}/best_rmse"] = min(v for v, _ in scored)
        emb = [v for v, r in scored if r["feature_set"] in EMBEDDING_SETS]
        hand = [v for v, r in scored if is_hand_feature(r["feature_set"], r["model"])]
        if emb:
            out[f"{name}/{focus}/best_embedding_rmse"] = min(emb)
        if hand:
            out[f"{name}/{focus}/best_hand_feature_rmse"] = min(hand)
        if emb and hand:
            out[f"{name}/{focus}/embedding_over_hand_rmse"] = min(emb) / min(hand)
    return out


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


# ------------------------------------------------------------------------------------------------ stage
def _resolve_split(cfg: EvaluateConfig, unified_uri: str, emb: Embeddings, split_config_uri: str | None,
                   warnings: list[str]) -> Split:
    """The split config, or the preset resolved against the cells both the embeddings and the unified data have
    (a cell's dataset from the unified ``dataset`` column when present)."""
    if cfg.split_preset and split_config_uri:
        raise ConfigError("give either a split config or a split preset, not both")
    if not cfg.split_preset:
        if not split_config_uri:
            raise ConfigError("no split: give a split config (--split-config) or a split preset (--split-preset)")
        return read_split(str(split_config_uri))
    cells = sorted(set(emb.table["cell_key"]))
    named = {layout.cell_key_from_file(f) for f in layout.unified_files(unified_uri)}
    if named & set(cells):
        cells = [c for c in cells if c in named]  # files named by their cell (the usual layout)
    datasets = cell_datasets(unified_uri, cells)
    return preset_split(cfg.split_preset, datasets, cfg.allow_missing_cells, warnings.append)


def _adopt_preset_defaults(cfg: EvaluateConfig, split: Split, warnings: list[str]) -> EvaluateConfig:
    """A preset's early window and end-of-life share, unless the config sets them."""
    if not split.preset:
        return cfg
    update = {}
    if split.preset.get("early_cycles") and "first_cycles" not in cfg.model_fields_set:
        update["first_cycles"] = int(split.preset["early_cycles"])
    if split.preset.get("eol_soh") and "eol_fraction" not in cfg.model_fields_set:
        update["eol_fraction"] = float(split.preset["eol_soh"])
    if update:
        warnings.append(f"split preset {split.preset['name']}: using its {update} (set them to override)")
        return cfg.model_copy(update=update)
    return cfg


def run_evaluate(config: EvaluateConfig, embeddings_uri: str, unified_uri: str, split_config_uri: str | None,
                 output_uri: str, overwrite: bool = False, model_uri: str | None = None,
                 sequences_uri: str | None = None) -> EvaluateResult:
    """Evaluate embeddings against BatteryML's baselines and Severson's features on one split (design.md §7).

    ``split_config_uri`` may be None when ``config.split_preset`` names a standard split. ``config.finetune``
    needs ``model_uri`` (the pretrained model folder, only read) and ``sequences_uri`` (the embedding-mode
    preprocessed dataset the embeddings were made from) for the ``finetuned/lstm`` row. Writes to
    ``output_uri`` (through :func:`storage.publish`: nothing is left there on failure): ``metrics.json``,
    prediction tables, PNG plots, ``summary.md``, ``report.html`` (self-contained) and ``evaluate_config.yaml``.
    """
    from msenc_lib.evaluate import report

    start = time.perf_counter()
    output_uri = str(output_uri)
    if config.finetune and not (model_uri and sequences_uri):
        missing = [name for name, v in (("the pretrained model folder (--model-dir)", model_uri),
                                        ("the embedding-mode token sequences (--sequences-dir)", sequences_uri))
                   if not v]
        raise ConfigError(f"finetune needs {' and '.join(missing)}")
    storage.check_output_free(output_uri, overwrite)  # before the work, not only when publishing
    warnings: list[str] = []
    if not config.finetune and (model_uri or sequences_uri):
        warnings.append("a model / token sequences were given without finetune: they are not read")
    emb = read_embeddings(str(embeddings_uri))
    split = _resolve_split(config, str(unified_uri), emb, split_config_uri, warnings)
    cfg = _adopt_preset_defaults(config, split, warnings)
    _check_split_cells(split, emb)
    not_in_split = int(emb.table["cell_key"].nunique()) - len(split.cells)
    emb = Embeddings(table=emb.table[emb.table["cell_key"].isin(set(split.cells))].reset_index(drop=True),
                     val_columns=emb.val_columns, source=emb.source, dropped_empty_rows=emb.dropped_empty_rows)

    specs_of = {"cycle_life": cfg.rows, "early_curve": cfg.curve_rows, "capacity": cfg.capacity_rows,
                "rul": [r for r in cfg.rows if r.partition("/")[0] not in FINETUNE_SETS]}
    used = {t: specs_of[t] for t in cfg.tasks}
    sets = {s.partition("/")[0] for t, specs in used.items() if t != "capacity" for s in specs}
    ns = set()
    if "cycle_life" in cfg.tasks:
        ns.add(cfg.first_cycles)
    if "early_curve" in cfg.tasks:
        ns.update(cfg.early_cycles)
    if "rul" in cfg.tasks:
        ns.update(range(cfg.rul_min_cycle, cfg.rul_max_cycle + 1, cfg.rul_stride))
    last = max(ns) if ns else cfg.first_cycles
    need_sev = bool(sets & (set(SEVERSON_SETS) | {"qdv"}))
    unified = read_unified_summary(
        str(unified_uri), split.cells, need_cycle_life=bool({"cycle_life", "early_curve"} & set(cfg.tasks)),
        capacity_column=cfg.capacity_column if "capacity" in cfg.tasks else None,
        severson_last_cycle=max(last, 5) if need_sev or "qdv_seq" in sets else None,
        curve_cycles={float(x) for n in ns for x in (n, cfg.ref_for(n))},
        coarse_last_cycle=last if "qdv_seq" in sets else None, progress=cfg.progress)
    ctx = FeatureContext(cfg, emb, unified)
    tuner = None
    if cfg.finetune:
        from msenc_lib.evaluate.finetune import FineTuner, embeddings_pooling

        tuner = FineTuner(cfg, str(model_uri), str(sequences_uri), split.cells, cfg.first_cycles,
                          embeddings_pooling(str(embeddings_uri)))
    log.info("split %s: %s; embeddings: %d rows, dim %d", split.source,
             {k: len(v) for k, v in split.subsets.items()}, len(emb.table), emb.dim)

    tasks_doc: dict[str, dict[str, Any]] = {}
    predictions: dict[str, pd.DataFrame] = {}

    def run_task(problem: T.Problem, specs: list[str], label: str) -> tuple[dict, pd.DataFrame]:
        kept, inputs, _, dropped = prepare(problem, specs, ctx, unified, emb, cfg, tuner)
        results, preds = score(kept, specs, inputs, split, cfg, label)
        for x in kept.excluded:
            log.warning("%s: cell %s (%s) excluded: %s", label, x["cell_key"], x["subset"], x["reason"])
        return _task_doc(kept, split, results, dropped, {}), preds

    for task in cfg.tasks:
        if task == "cycle_life":
            doc, preds = run_task(T.cycle_life(cfg, split, unified, cfg.first_cycles), cfg.rows, "cycle life")
            doc["first_cycles"] = cfg.first_cycles
            doc["min_cycle"] = cfg.min_cycle
            doc["severson_ir_features"] = unified.has_ir
            doc["embedding_aggregation"] = {"methods": cfg.aggregation, "window": cfg.delta_window}
            if tuner is not None:
                doc["finetune"] = {"row": FINETUNED_ROW, "model": tuner.model_uri, "sequences": tuner.sequences_uri,
                                   "pooling": tuner.pooling, "stride": cfg.finetune_stride, "device": tuner.device}
            doc["target_stats"] = {s: {"min": float(np.min(v)), "median": float(np.median(v)),
                                       "max": float(np.max(v))}
                                   for s, v in preds.groupby("subset", sort=False)["true"]}
        elif task == "early_curve":
            points = []
            for n in cfg.early_cycles:
                d, _ = run_task(T.cycle_life(cfg, split, unified, n, task="early_curve"), cfg.curve_rows,
                                f"early curve N={n}")
                points.append({"n": n, **{k: d[k] for k in ("n_cells", "excluded", "results", "rows_dropped")}})
            doc = {"target": "cycle life from the first N cycles, for each N", "unit": "cycles",
                   "fit_space": "log10", "exclusion_rules": "per N as the cycle_life task",
                   "n": list(cfg.early_cycles), "rows": list(cfg.curve_rows), "curve": points}
            preds = None
        elif task == "rul":
            doc, preds = run_task(T.rul(cfg, split, unified), cfg.rows, "RUL")
        else:
            doc, preds = run_task(T.capacity(cfg, split, unified), cfg.capacity_rows, "capacity")
        tasks_doc[task] = doc
        if preds is not None:
            predictions[task] = preds

    names = metric_names(cfg)
    headline, best = headline_and_best(tasks_doc, names)
    keys = key_figures(tasks_doc)
    dataset = {
        "embeddings": {"source": emb.source, "dim": emb.dim, "rows": int(len(emb.table)),
                       "cells": int(emb.table["cell_key"].nunique()),
                       "cycles": [_num(emb.table["cycle_number"].min()), _num(emb.table["cycle_number"].max())],
                       "dropped_empty_rows": emb.dropped_empty_rows, "cells_not_in_split": not_in_split},
        "unified": {"source": unified.source, "cells_read": len(unified.files),
                    "internal_resistance": unified.has_ir,
                    "nominal_capacity_column": bool(unified.nominal_capacity.notna().any())},
        "split": {"source": split.source, "cells": {s: len(c) for s, c in split.subsets.items()},
                  "subset_cells": split.subsets, "groups": split.groups, "preset": split.preset},
    }
    doc = _clean({
        "format": layout.EVALUATION_FORMAT, "format_version": FORMAT_VERSION,
        "inputs": {"embeddings": str(embeddings_uri), "unified": str(unified_uri),
                   "split": str(split_config_uri) if split_config_uri else f"preset:{cfg.split_preset}",
                   **({"model": str(model_uri), "sequences": str(sequences_uri)} if tuner else {})},
        "config": json.loads(cfg.model_dump_json()), "seeds": cfg.seed_list(), "metrics": names,
        "std": "population standard deviation (ddof 0) over the fitting seeds",
        "dataset": dataset, "tasks": tasks_doc, "headline": headline, "key_figures": keys, "best": best,
        "warnings": warnings,
    })
    for w in warnings:
        log.warning("%s", w)

    with storage.publish(output_uri, overwrite=overwrite) as staging:
        layout.write_json(staging / layout.METRICS_FILE, doc)
        cfg.save(str(staging / layout.EVALUATE_CONFIG))
        if "cycle_life" in predictions:
            predictions["cycle_life"].to_csv(staging / layout.PREDICTIONS_CYCLE_LIFE, index=False)
        if "rul" in predictions:
            predictions["rul"].to_parquet(staging / layout.PREDICTIONS_RUL, index=False)
        if "capacity" in predictions:
            predictions["capacity"].to_parquet(staging / layout.PREDICTIONS_CAPACITY, index=False)
        plots = report.make_plots(staging, doc, predictions, emb, unified, cfg) if cfg.plots else {}
        (staging / layout.EVALUATION_SUMMARY).write_text(report.render_markdown(doc), encoding="utf-8")
        (staging / layout.REPORT_FILE).write_text(report.render_html(doc, plots, staging), encoding="utf-8")

    return EvaluateResult(
        output_uri=output_uri, metrics_uri=storage.join(output_uri, layout.METRICS_FILE),
        report_uri=storage.join(output_uri, layout.REPORT_FILE),
        summary_uri=storage.join(output_uri, layout.EVALUATION_SUMMARY), plots=sorted(plots),
        tasks=list(tasks_doc), split=split.source,
        embedding_dim=emb.dim, seeds=cfg.seeds,
        n_cells={t: v["n_cells"] for t, v in tasks_doc.items() if "n_cells" in v},
        n_excluded={t: len(v["excluded"]) for t, v in tasks_doc.items() if "excluded" in v},
        headline=headline, key_figures=keys, best=best, seconds=round(time.perf_counter() - start, 3),
    )


def _num(x: Any) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() else x
