"""PNG plots (matplotlib, Agg) and the self-contained ``report.html`` (PNGs inlined, no external CSS/JS), rendered
from ``templates/report.html.j2`` with autoescaping."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msenc_lib import __version__
from msenc_lib.evaluate.config import EMBEDDING_SETS
from msenc_lib.evaluate.regressors import MODEL_TEXT

SUBSET_STYLE = {"train": dict(color="#9a9a9a", s=18, alpha=0.55, zorder=2, edgecolors="none"),
                "validation": dict(color="#1f77b4", s=34, alpha=0.9, zorder=3, edgecolors="white"),
                "test": dict(color="#d62728", s=46, alpha=0.95, zorder=4, edgecolors="black", linewidths=0.6)}
EXTRA_COLORS = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
FEATURE_SET_TEXT = {
    "none": "no features: the dummy model predicts the train mean",
    "embedding": "the encoder's per-cycle embeddings of the cell, aggregated over its cycles up to N (cycle_life, "
                 "rul), or the embedding of cycle c (capacity)",
    "embedding_seq": "the sequence of the cell's per-cycle embeddings up to N, read by a trained LSTM head",
    "finetuned": "every k-th cycle up to N through the pretrained encoder (pooled as the embeddings), encoder and "
                 "LSTM head trained end to end on the train cells (early stopping on the validation cells)",
    "random": "control: seeded random numbers in place of the embeddings (same size, same aggregation); "
              "anything it 'predicts' is chance or the mean",
    "variance": "Severson's single feature: log10 of the variance of ΔQ(V) = Q_N(V) − Q_10(V), the change of "
                "the discharge capacity-voltage curve between cycle 10 and cycle N",
    "discharge": "Severson's 6 discharge features: min, variance, skewness, kurtosis of ΔQ(V) (log10), "
                 "discharge capacity at cycle 2, max capacity minus that",
    "full": "Severson's full set: ΔQ(V) min and variance, capacity-fade slope and intercept, capacity at "
            "cycle 2, mean charge time of the first 5 cycles, integrated temperature, and internal-resistance "
            "min and change when the data has internal resistance",
    "qdv": "the dQ(V) curve Qd_N(V) - Qd_ref(V) on 1000 voltage points (BatteryML's input of its Ridge, PCR, PLSR, "
           "GPR, XGBoost, RF and MLP rows)",
    "qdv_seq": "per cycle up to N: Qd_c(V) - Qd_ref(V) on 100 voltage points (BatteryML's CNN/LSTM input)",
    "capacity_history": "hand features: the capacity of cycle c, its change over the last 10 cycles, and c",
}
# BatteryML's published RMSE (cycles; README of microsoft/BatteryML, "RUL" table), by our row and preset.
BATTERYML_ROWS = {
    "none/dummy": "Dummy", "variance/linear": "Variance", "discharge/linear": "Discharge", "full/linear": "Full",
    "qdv/ridge": "Ridge", "qdv/pcr": "PCR", "qdv/plsr": "PLSR", "qdv/gpr": "GPR", "qdv/gradient_boosting": "XGBoost",
    "qdv/random_forest": "RF", "qdv/mlp": "MLP", "qdv_seq/cnn": "CNN", "qdv_seq/lstm": "LSTM"}
_BML_COLUMNS = ("matr1", "matr2", "hust", "snl", "clo", "cruh", "crush", "mix")
_BML_TABLE = {
    "Dummy": "398 510 419 466 331 239 576 573", "Variance": "136 211 398 360 179 118 506 521",
    "Discharge": "329 149 322 267 143 76 >1000 >1000", "Full": "167 >1000 335 433 138 93 >1000 331",
    "Ridge": "116 184 >1000 242 169 65 >1000 372", "PCR": "90 187 435 200 197 68 560 376",
    "PLSR": "104 181 431 242 176 60 535 383", "GPR": "154 224 >1000 251 204 115 >1000 573",
    "XGBoost": "334 799 395 547 215 119 330 205", "RF": "168±9 233±7 368±7 532±25 192±2 81±1 416±5 197±0",
    "MLP": "149±3 275±27 459±9 370±81 146±5 103±4 565±9 451±42",
    "CNN": "102±94 228±104 465±75 924±267 >1000 174±92 545±11 272±101",
    "LSTM": "119±11 219±33 443±29 539±40 222±12 105±10 519±39 268±9"}
BATTERYML_PUBLISHED = {name: dict(zip(_BML_COLUMNS, row.split())) for name, row in _BML_TABLE.items()}
TASK_TITLE = {"cycle_life": "Cycle life from the first N cycles", "rul": "Remaining useful life",
              "capacity": "Capacity k cycles ahead", "early_curve": "Early-prediction curve"}
SEVERSON_PUBLISHED = {"variance": (138, 196), "discharge": (91, 173), "full": (118, 214)}


def _style(subset: str, extra_index: int) -> dict:
    if subset in SUBSET_STYLE:
        return SUBSET_STYLE[subset]
    return dict(color=EXTRA_COLORS[extra_index % len(EXTRA_COLORS)], s=40, alpha=0.95, zorder=4,
                edgecolors="black", linewidths=0.4, marker="D")


def _subset_order(names: list[str]) -> list[str]:
    """Train first (drawn underneath), the others after, test last (on top)."""
    first = [n for n in ("train", "validation") if n in names]
    rest = [n for n in names if n not in ("train", "validation", "test")]
    return first + rest + (["test"] if "test" in names else [])


RC = {"font.size": 10, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110,
      "savefig.bbox": "tight"}


def _figure(nrows: int = 1, ncols: int = 1, **kw):
    """A figure outside pyplot (no global backend or state touched: safe inside notebooks and threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kw.pop("figsize"))
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _plain_log_axis(axis) -> None:
    """Log axis labelled 100, 200, 500, 1000 ... instead of 10^2, 2x10^2 (readable, no overlaps)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_colorbar(cbar) -> None:
    _plain_log_axis(cbar.ax.yaxis)


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def _result(doc_task: dict, fs: str, model: str) -> dict | None:
    return next((r for r in doc_task["results"] if r["feature_set"] == fs and r["model"] == model), None)


def _fmt(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:,.{digits}f}"


def metric_digits(unit: str) -> dict[str, int]:
    """Digits each metric is shown with (cycles: whole numbers; Ah: 4 places)."""
    d = 0 if unit == "cycles" else 4
    return {"rmse": d, "mae": d, "mape": 1, "r2": 3, "acc10": 1, "acc15": 1}


def pm(m: dict, metric: str, digits: int) -> str:
    """``mean ± std`` of ``metric`` in a subset's metrics (std omitted when 0 or absent)."""
    mean, std = m.get(metric), m.get(f"{metric}_std")
    if mean is None:
        return "–"
    return _fmt(mean, digits) + (f" ± {_fmt(std, digits)}" if std else "")


METRIC_LABEL = {"rmse": "RMSE", "mae": "MAE", "mape": "MAPE %", "r2": "R²"}


def metric_label(metric: str) -> str:
    return METRIC_LABEL.get(metric, f"{metric[3:]} %-acc" if metric.startswith("acc") else metric)


def _spec(r: dict) -> str:
    return f"{r['feature_set']}/{r['model']}"


def _label(r: dict) -> str:
    return f"{r['feature_set']} · {MODEL_TEXT.get(r['model'], r['model'])}"


def featured_rows(task: dict, focus: str) -> list[dict]:
    """The rows a prediction plot shows: the dummy, the best hand-feature row, the best embedding row and the
    best row overall on ``focus`` (each once)."""
    from msenc_lib.evaluate.stage import is_hand_feature

    scored = [r for r in task["results"] if focus in r["subsets"] and r["subsets"][focus]["rmse"] is not None]
    key = lambda r: r["subsets"][focus]["rmse"]  # noqa: E731
    picks = [next((r for r in scored if r["model"] in ("dummy", "persistence")), None),
             min((r for r in scored if is_hand_feature(r["feature_set"], r["model"])), key=key, default=None),
             min((r for r in scored if r["feature_set"] in EMBEDDING_SETS), key=key, default=None),
             min(scored, key=key, default=None)]
    out = []
    for r in picks:
        if r is not None and all(_spec(r) != _spec(o) for o in out):
            out.append(r)
    return out


# ------------------------------------------------------------------------------------------------ plots
def plot_predictions(path: Path, task: dict, preds: pd.DataFrame, title: str, log_axes: bool) -> None:
    from msenc_lib.evaluate.stage import focus_subset

    focus = focus_subset(task)
    rows = featured_rows(task, focus)
    fig, axes = _figure(1, len(rows), figsize=(3.4 * len(rows) + 0.4, 3.7), squeeze=False, sharex=True,
                        sharey=True)
    true = preds["true"].to_numpy()
    cols = [_spec(r) for r in rows]
    vals = np.concatenate([true, preds[cols].to_numpy().ravel()])
    vals = vals[np.isfinite(vals)]
    if log_axes:
        lo, hi = max(1.0, 0.8 * vals.min()), 1.25 * vals.max()
    else:
        pad = 0.05 * (vals.max() - vals.min() or 1.0)
        lo, hi = vals.min() - pad, vals.max() + pad
    subsets = _subset_order(list(dict.fromkeys(preds["subset"])))
    small = len(preds) > 200
    for ax, r in zip(axes[0], rows):
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=1)
        extra = 0
        for s in subsets:
            mask = (preds["subset"] == s).to_numpy()
            style = dict(_style(s, extra))
            extra += s not in SUBSET_STYLE
            if small:
                style.update(s=max(4, style.get("s", 20) // 4), edgecolors="none")
                style.pop("linewidths", None)
            ax.scatter(true[mask], preds[_spec(r)].to_numpy()[mask], label=s, **style)
        if log_axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_axis(ax.xaxis)
            _plain_log_axis(ax.yaxis)
            ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        m = r["subsets"][focus]
        digits = metric_digits(task["unit"])["rmse"]
        ax.set_title(f"{_label(r)}\n{focus}: RMSE {pm(m, 'rmse', digits)} {task['unit']}")
        ax.set_xlabel(f"observed ({task['unit']})")
    axes[0][0].set_ylabel(f"predicted ({task['unit']}, mean over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.03), frameon=False)
    fig.suptitle(title, y=1.09)
    fig.tight_layout()
    _save(fig, path)


def plot_rmse_bars(path: Path, task: dict, title: str) -> None:
    from msenc_lib.evaluate.stage import focus_subset

    focus = focus_subset(task)
    rows = [r for r in task["results"] if focus in r["subsets"]]
    digits = metric_digits(task["unit"])["rmse"]
    vals = np.array([r["subsets"][focus]["rmse"] if r["subsets"][focus]["rmse"] is not None else np.nan
                     for r in rows])
    errs = np.array([r["subsets"][focus].get("rmse_std") or 0.0 for r in rows])
    fig, ax = _figure(figsize=(max(6.0, 0.42 * len(rows) + 2), 3.8))
    colors = ["#4a7" if r["feature_set"] in EMBEDDING_SETS else "#bbb" if r["feature_set"] in (
        "random", "none") else "#5b8cc6" for r in rows]
    x = np.arange(len(rows))
    bars = ax.bar(x, vals, yerr=errs, color=colors, capsize=2)
    ax.bar_label(bars, labels=[_fmt(v, digits) if np.isfinite(v) else "" for v in vals], fontsize=7, rotation=90,
                 padding=2)
    ax.set_xticks(x, [_spec(r) for r in rows], fontsize=7, rotation=70, ha="right")
    ax.set_ylabel(f"{focus} RMSE ({task['unit']})")
    ax.set_title(title + " (green: embeddings, blue: hand features / raw curves, grey: controls; bars: ± std)")
    ax.margins(y=0.2)
    fig.tight_layout()
    _save(fig, path)


def plot_early_curve(path: Path, curve_doc: dict) -> None:
    fig, ax = _figure(figsize=(7.5, 4.4))
    specs = curve_doc["rows"]
    for spec in specs:
        xs, ys, es = [], [], []
        for point in curve_doc["curve"]:
            r = next((r for r in point["results"] if _spec(r) == spec), None)
            focus = "test" if r and "test" in r["subsets"] else next(
                (s for s in (r or {}).get("subsets", {}) if s != "train"), None)
            if r and focus and r["subsets"][focus]["rmse"] is not None:
                xs.append(point["n"])
                ys.append(r["subsets"][focus]["rmse"])
                es.append(r["subsets"][focus].get("rmse_std") or 0.0)
        if xs:
            style = "-" if spec.startswith("embedding") else "--" if spec.startswith(("none", "random")) else "-."
            ax.errorbar(xs, ys, yerr=es, ls=style, marker="o", ms=3, capsize=2, label=spec)
    ax.set_yscale("log")
    ax.set_xlabel("N: cycles the prediction may use")
    ax.set_ylabel("held-out RMSE (cycles, log scale)")
    ax.set_title("Early-prediction curve: cycle life from the first N cycles")
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def plot_capacity_fade(path: Path, per_cycle: pd.DataFrame, cycle_life: pd.Series, first_cycles: int | None,
                       column: str, ylabel: str) -> None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    fig, ax = _figure(figsize=(7.5, 4.2))
    lives = cycle_life.dropna()
    lives = lives[lives > 0]
    norm = LogNorm(vmin=lives.min(), vmax=lives.max()) if len(lives) and lives.min() < lives.max() else None
    cmap = matplotlib.colormaps["viridis"]
    for cell, part in per_cycle.groupby("cell_key", sort=True):
        life = lives.get(cell, np.nan)
        color = cmap(norm(life)) if norm is not None and np.isfinite(life) else "#888888"
        ax.plot(part["cycle_number"].to_numpy(), part[column].to_numpy(), color=color, lw=0.9, alpha=0.85)
    if first_cycles is not None:
        ax.axvline(first_cycles, color="black", ls=":", lw=1)
        ax.text(first_cycles, ax.get_ylim()[0], f" cycle {first_cycles}: end of the\n cycle-life feature window",
                va="bottom", ha="left", fontsize=8)
    if norm is not None:
        sm = ScalarMappable(norm=norm, cmap=cmap)
        _log_colorbar(fig.colorbar(sm, ax=ax, label="cycle life (cycles, log scale)"))
    ax.set_xlabel("cycle number")
    ax.set_ylabel(ylabel)
    ax.set_title("Capacity fade per cell (max per cycle), coloured by cycle life")
    fig.tight_layout()
    _save(fig, path)


def plot_embedding_pca(path: Path, per_cell: pd.DataFrame, cycle_life: pd.Series, subset: pd.Series,
                       window: str) -> None:
    from matplotlib.colors import LogNorm
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(per_cell.to_numpy())
    n_comp = min(2, X.shape[0], X.shape[1])
    pca = PCA(n_components=n_comp, random_state=0)
    Z = pca.fit_transform(X)
    if Z.shape[1] == 1:
        Z = np.column_stack([Z[:, 0], np.zeros(len(Z))])
    ratio = list(pca.explained_variance_ratio_) + [0.0]
    fig, ax = _figure(figsize=(6.4, 4.8))
    lives = cycle_life.reindex(per_cell.index).to_numpy(dtype=np.float64)
    ok = np.isfinite(lives) & (lives > 0)
    norm = LogNorm(vmin=lives[ok].min(), vmax=lives[ok].max()) if ok.sum() > 1 and np.ptp(lives[ok]) > 0 else None
    markers = {"train": "o", "validation": "s", "test": "^"}
    sc = None
    for s in _subset_order(list(dict.fromkeys(subset.reindex(per_cell.index).tolist()))):
        mask = (subset.reindex(per_cell.index) == s).to_numpy()
        m_ok, m_bad = mask & ok, mask & ~ok
        if m_ok.any():
            sc = ax.scatter(Z[m_ok, 0], Z[m_ok, 1], c=lives[m_ok], cmap="viridis", norm=norm, s=42,
                            marker=markers.get(s, "D"), edgecolors="black", linewidths=0.4, label=s)
        if m_bad.any():
            ax.scatter(Z[m_bad, 0], Z[m_bad, 1], color="#bbbbbb", s=30, marker=markers.get(s, "D"),
                       label=f"{s} (no cycle life)")
    if sc is not None and norm is not None:
        _log_colorbar(fig.colorbar(sc, ax=ax, label="cycle life (cycles, log scale)"))
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f} % of variance)")
    ax.set_title(f"Per-cell mean embedding ({window}), PCA of the standardised dimensions")
    legend = ax.legend(frameon=False, fontsize=8)
    for handle in legend.legend_handles:  # marker shape = subset; colour is per cell, so grey in the legend
        handle.set_facecolor("#999999")
    fig.tight_layout()
    _save(fig, path)


def make_plots(out_dir: Path, doc: dict, predictions: dict, emb, unified, cfg) -> dict[str, str]:
    """Write the PNGs into ``out_dir``; returns {plot name: file name}."""
    import matplotlib

    with matplotlib.rc_context(RC):
        return _make_plots(Path(out_dir), doc, predictions, emb, unified, cfg)


def _make_plots(out_dir: Path, doc: dict, predictions: dict, emb, unified, cfg) -> dict[str, str]:
    plots: dict[str, str] = {}

    def add(name: str, fn, *args) -> None:
        fn(out_dir / f"{name}.png", *args)
        plots[name] = f"{name}.png"

    tasks = doc["tasks"]
    if "cycle_life" in tasks:
        add("cycle_life_predictions", plot_predictions, tasks["cycle_life"], predictions["cycle_life"],
            "Cycle life: predicted vs observed (one point per cell; dashed = perfect)", True)
        add("cycle_life_rmse", plot_rmse_bars, tasks["cycle_life"], "Cycle life")
    if "early_curve" in tasks:
        add("early_curve", plot_early_curve, tasks["early_curve"])
    if "rul" in tasks:
        add("rul_predictions", plot_predictions, tasks["rul"], predictions["rul"],
            "RUL: predicted vs observed (one point per cell and cycle n)", False)
        add("rul_rmse", plot_rmse_bars, tasks["rul"], "Remaining useful life")
    column = "discharge_max" if "discharge_max" in unified.per_cycle.columns else "capacity"
    if column in unified.per_cycle.columns and unified.per_cycle[column].notna().any():
        label = "discharge capacity (Ah)" if column == "discharge_max" else f"max {cfg.capacity_column}"
        add("capacity_fade", plot_capacity_fade, unified.per_cycle.dropna(subset=[column]), unified.cycle_life,
            cfg.first_cycles if "cycle_life" in tasks else None, column, label)
    table = emb.table
    early = table[(table["cycle_number"] >= cfg.min_cycle) & (table["cycle_number"] <= cfg.first_cycles)]
    per_cell = early.groupby("cell_key", sort=True)[emb.val_columns].mean()
    if len(per_cell) >= 2:
        subset = pd.Series({c: s for s, cells in doc["dataset"]["split"]["subset_cells"].items() for c in cells})
        last = min(cfg.first_cycles, float(early["cycle_number"].max()))
        add("embedding_pca", plot_embedding_pca, per_cell, unified.cycle_life, subset,
            f"cycles {cfg.min_cycle}–{last:g}")
    if "capacity" in tasks:
        add("capacity_predictions", plot_predictions, tasks["capacity"], predictions["capacity"],
            f"Capacity {tasks['capacity']['horizon']} cycles ahead: predicted vs observed", False)
        add("capacity_rmse", plot_rmse_bars, tasks["capacity"], "Capacity ahead")
    return plots


# ------------------------------------------------------------------------------------------------- tables
def comparison_table(task: dict, metrics: list[str], preset: str | None) -> dict[str, Any]:
    """Every row with mean ± std per held-out subset and metric (the numbers of metrics.json, formatted);
    the lowest mean RMSE per subset marked; BatteryML's published RMSE beside its rows for its presets."""
    results = task["results"]
    subsets = [s for s in dict.fromkeys(s for r in results for s in r["subsets"]) if s != "train"] or ["train"]
    digits = metric_digits(task.get("unit", "cycles"))
    best: dict[str, int] = {}
    for s in subsets:
        cands = [(r["subsets"][s]["rmse"], i) for i, r in enumerate(results)
                 if s in r["subsets"] and r["subsets"][s]["rmse"] is not None]
        if cands:
            best[s] = min(cands)[1]
    published = preset if preset in _BML_COLUMNS and task.get("unit") == "cycles" else None
    rows = []
    for i, r in enumerate(results):
        cells = []
        for s in subsets:
            m = r["subsets"].get(s)
            cells.append(None if m is None else {"best": best.get(s) == i,
                                                 "values": [pm(m, k, digits.get(k, 3)) for k in metrics]})
        name = BATTERYML_ROWS.get(_spec(r))
        rows.append({"feature_set": r["feature_set"], "model": MODEL_TEXT.get(r["model"], r["model"]),
                     "spec": _spec(r), "n_features": r["n_features"] or "–",
                     "batteryml": (BATTERYML_PUBLISHED[name][published] if name and published else None),
                     "batteryml_name": name, "cells": cells,
                     "control": r["feature_set"] in ("none", "random") or r["model"] in ("dummy", "persistence")})
    heads = [{"name": s, "cells": next((r["subsets"][s]["n_cells"] for r in results if s in r["subsets"]), 0),
              "rows": next((r["subsets"][s]["n_rows"] for r in results if s in r["subsets"]), 0)} for s in subsets]
    return {"subsets": heads, "metrics": [metric_label(k) for k in metrics], "rows": rows,
            "published": published}


def _sections(doc: dict) -> list[dict[str, Any]]:
    metrics = doc["metrics"]
    preset = (doc["dataset"]["split"].get("preset") or {}).get("name")
    out = []
    for name, task in doc["tasks"].items():
        if name == "early_curve":
            out.append({"name": name, "title": TASK_TITLE[name], "task": task, "curve": [
                {"n": p["n"], "table": comparison_table(p, metrics, None)} for p in task["curve"]]})
        else:
            out.append({"name": name, "title": TASK_TITLE[name], "task": task,
                        "table": comparison_table(task, metrics, preset if name == "cycle_life" else None)})
    return out


def render_markdown(doc: dict) -> str:
    """summary.md: the key figures and, per task, the focus subset's table (mean ± std over the seeds)."""
    from msenc_lib.evaluate.stage import focus_subset

    metrics = doc["metrics"]
    lines = ["# msenc evaluation", "", f"Split: `{doc['dataset']['split']['source']}`; seeds {doc['seeds']}; "
             "mean ± std over the fitting seeds.", ""]
    if doc["key_figures"]:
        lines += ["| key figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in doc["key_figures"].items()]
        lines.append("")
    for name, task in doc["tasks"].items():
        if name == "early_curve":
            lines += [f"## {TASK_TITLE[name]} (test RMSE, {task['unit']})", "",
                      "| row | " + " | ".join(f"N={p['n']}" for p in task["curve"]) + " |",
                      "|---|" + "---|" * len(task["curve"])]
            for spec in task["rows"]:
                cells = []
                for p in task["curve"]:
                    r = next((r for r in p["results"] if _spec(r) == spec), None)
                    focus = focus_subset(p) if r else None
                    cells.append(pm(r["subsets"][focus], "rmse", 0) if r and focus in r["subsets"] else "–")
                lines.append(f"| {spec} | " + " | ".join(cells) + " |")
            lines.append("")
            continue
        focus = focus_subset(task)
        digits = metric_digits(task.get("unit", "cycles"))
        lines += [f"## {TASK_TITLE[name]} ({focus}, {task['unit']})", "", f"Target: {task['target']}.", "",
                  "| row | " + " | ".join(metric_label(k) for k in metrics) + " |", "|---|" + "---|" * len(metrics)]
        for r in task["results"]:
            m = r["subsets"].get(focus)
            if m:
                lines.append(f"| {_spec(r)} | " + " | ".join(pm(m, k, digits.get(k, 3)) for k in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def render_html(doc: dict, plots: dict[str, str], out_dir: Path) -> str:
    """The report page (templates/report.html.j2, autoescaped) with the plots inlined."""
    import datetime

    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("msenc_lib.evaluate", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    images = {name: base64.b64encode((Path(out_dir) / file).read_bytes()).decode("ascii")
              for name, file in plots.items()}
    return env.get_template("report.html.j2").render(
        version=__version__, generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cfg=doc["config"], dataset=doc["dataset"], key_figures=doc["key_figures"], sections=_sections(doc),
        images=images, model_text=MODEL_TEXT, feature_set_text=FEATURE_SET_TEXT, severson=SEVERSON_PUBLISHED,
        seeds=doc["seeds"], warnings=doc.get("warnings", []))
