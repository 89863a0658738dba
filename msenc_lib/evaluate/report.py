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

SUBSET_STYLE = {"train": dict(color="#9a9a9a", s=18, alpha=0.55, zorder=2, edgecolors="none"),
                "validation": dict(color="#1f77b4", s=34, alpha=0.9, zorder=3, edgecolors="white"),
                "test": dict(color="#d62728", s=46, alpha=0.95, zorder=4, edgecolors="black", linewidths=0.6)}
EXTRA_COLORS = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
FEATURE_SET_TEXT = {
    "embedding": "the encoder's per-cycle embeddings of the cell, aggregated over its early cycles",
    "random": "control: seeded random numbers in place of the embeddings (same size, same aggregation); "
              "anything it 'predicts' is chance or the mean",
    "variance": "Severson's single feature: log10 of the variance of ΔQ(V) = Q_N(V) − Q_10(V), the change of "
                "the discharge capacity-voltage curve between cycle 10 and cycle N",
    "discharge": "Severson's 6 discharge features: min, variance, skewness, kurtosis of ΔQ(V) (log10), "
                 "discharge capacity at cycle 2, max capacity minus that",
    "full": "Severson's full set: ΔQ(V) min and variance, capacity-fade slope and intercept, capacity at "
            "cycle 2, mean charge time of the first 5 cycles, integrated temperature, and internal-resistance "
            "min and change when the data has internal resistance",
    "persistence": "baseline without a model: the capacity k cycles ahead is predicted to equal today's",
}
MODEL_TEXT = {"elastic_net": "elastic net", "random_forest": "random forest", "none": "—"}
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


# ------------------------------------------------------------------------------------------------ plots
def plot_cycle_life(path: Path, doc_task: dict, preds: pd.DataFrame) -> None:
    models = [m for m in dict.fromkeys(r["model"] for r in doc_task["results"]) if m != "none"]
    sets = list(dict.fromkeys(r["feature_set"] for r in doc_task["results"] if r["model"] != "none"))
    fig, axes = _figure(len(models), len(sets), figsize=(3.1 * len(sets) + 0.4, 3.1 * len(models) + 0.5),
                             squeeze=False, sharex=True, sharey=True)
    true = preds["true"].to_numpy()
    cols = [c for c in preds.columns if "/" in c]
    lo = max(1.0, 0.8 * min(true.min(), np.nanmin(preds[cols].to_numpy())))
    hi = 1.25 * max(true.max(), np.nanmax(preds[cols].to_numpy()))
    subsets = _subset_order(list(dict.fromkeys(preds["subset"])))
    for i, model in enumerate(models):
        for j, fs in enumerate(sets):
            ax = axes[i][j]
            col = f"{fs}/{model}"
            r = _result(doc_task, fs, model)
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=1)
            extra = 0
            for s in subsets:
                mask = (preds["subset"] == s).to_numpy()
                style = _style(s, extra)
                extra += s not in SUBSET_STYLE
                if col in preds:
                    ax.scatter(true[mask], preds[col].to_numpy()[mask], label=s, **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_axis(ax.xaxis)
            _plain_log_axis(ax.yaxis)
            ax.tick_params(axis="x", labelrotation=45)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            focus = "test" if r and "test" in r["subsets"] else next(
                (s for s in (r or {}).get("subsets", {}) if s != "train"), None)
            title = f"{fs} · {MODEL_TEXT.get(model, model)}"
            if r and focus:
                m = r["subsets"][focus]
                title += f"\n{focus}: RMSE {_fmt(m['rmse'], 0)} cyc, R² {_fmt(m['r2'], 2)}"
            ax.set_title(title)
            if i == len(models) - 1:
                ax.set_xlabel("observed cycle life")
            if j == 0:
                ax.set_ylabel("predicted cycle life")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.02), frameon=False)
    fig.suptitle("Cycle life: predicted vs observed (one point per cell; dashed = perfect)", y=1.07)
    fig.tight_layout()
    _save(fig, path)


def plot_rmse_bars(path: Path, doc_task: dict, unit: str, title: str, digits: int) -> None:
    rows = [r for r in doc_task["results"]]
    subsets = [s for s in _subset_order(list(dict.fromkeys(s for r in rows for s in r["subsets"])))
               if s != "train"] or ["train"]
    labels = [f"{r['feature_set']}\n{MODEL_TEXT.get(r['model'], r['model'])}" for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(subsets)
    fig, ax = _figure(figsize=(max(6.0, 0.75 * len(rows) + 2), 3.6))
    extra = 0
    for k, s in enumerate(subsets):
        vals = [r["subsets"].get(s, {}).get("rmse", np.nan) for r in rows]
        color = _style(s, extra)["color"]
        extra += s not in SUBSET_STYLE
        bars = ax.bar(x + (k - (len(subsets) - 1) / 2) * width, vals, width, label=s, color=color)
        ax.bar_label(bars, labels=[_fmt(v, digits) if np.isfinite(v) else "" for v in vals], fontsize=7,
                     rotation=90, padding=2)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"RMSE ({unit})")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.margins(y=0.18)
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


def plot_capacity_predictions(path: Path, doc_task: dict, preds: pd.DataFrame, unit: str) -> None:
    panels = []
    for fs in dict.fromkeys(r["feature_set"] for r in doc_task["results"]):
        cands = [r for r in doc_task["results"] if r["feature_set"] == fs]
        # one panel per feature set: its model with the best cross-validated RMSE (chosen without the test set)
        panels.append(min(cands, key=lambda r: r["cv_rmse"] if r["cv_rmse"] is not None else -1.0))
    fig, axes = _figure(1, len(panels), figsize=(3.4 * len(panels), 3.6), squeeze=False,
                             sharex=True, sharey=True)
    true = preds["true"].to_numpy()
    lo, hi = float(np.nanmin(true)), float(np.nanmax(true))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    subsets = _subset_order(list(dict.fromkeys(preds["subset"])))
    for ax, r in zip(axes[0], panels):
        col = f"{r['feature_set']}/{r['model']}"
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=1)
        extra = 0
        for s in subsets:
            mask = (preds["subset"] == s).to_numpy()
            style = dict(_style(s, extra))
            extra += s not in SUBSET_STYLE
            style["s"] = max(4, style.get("s", 20) // 4)
            style.pop("linewidths", None)
            style["edgecolors"] = "none"
            ax.scatter(true[mask], preds[col].to_numpy()[mask], label=s, **style)
        focus = "test" if "test" in r["subsets"] else next((s for s in r["subsets"] if s != "train"), "train")
        m = r["subsets"].get(focus, {})
        ax.set_title(f"{r['feature_set']} · {MODEL_TEXT.get(r['model'], r['model'])}\n{focus}: RMSE "
                     f"{_fmt(m.get('rmse'), 4)} {unit}, R² {_fmt(m.get('r2'), 2)}")
        ax.set_xlabel(f"observed ({unit})")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    axes[0][0].set_ylabel(f"predicted ({unit})")
    axes[0][0].legend(frameon=False, fontsize=8, markerscale=2)
    fig.suptitle(f"Capacity {doc_task['horizon']} cycles ahead: predicted vs observed (one point per cell-cycle)",
                 y=1.02)
    fig.tight_layout()
    _save(fig, path)


def make_plots(out_dir: Path, doc: dict, predictions: dict, emb, unified, cfg) -> dict[str, str]:
    """Write the PNGs into ``out_dir``; returns {plot name: file name}."""
    import matplotlib

    with matplotlib.rc_context(RC):
        return _make_plots(Path(out_dir), doc, predictions, emb, unified, cfg)


def _make_plots(out_dir: Path, doc: dict, predictions: dict, emb, unified, cfg) -> dict[str, str]:
    plots: dict[str, str] = {}
    life_doc = doc["tasks"].get("cycle_life")
    if life_doc:
        plot_cycle_life(out_dir / "cycle_life_predictions.png", life_doc, predictions["cycle_life"])
        plots["cycle_life_predictions"] = "cycle_life_predictions.png"
        plot_rmse_bars(out_dir / "cycle_life_rmse.png", life_doc, "cycles",
                       "Cycle life: RMSE per feature set and model (lower is better)", 0)
        plots["cycle_life_rmse"] = "cycle_life_rmse.png"
    column = "discharge_max" if "discharge_max" in unified.per_cycle.columns else "capacity"
    if column in unified.per_cycle.columns and unified.per_cycle[column].notna().any():
        label = ("discharge capacity (Ah)" if column == "discharge_max"
                 else f"max {cfg.capacity_column}")
        plot_capacity_fade(out_dir / "capacity_fade.png", unified.per_cycle.dropna(subset=[column]),
                           unified.cycle_life, cfg.first_cycles if life_doc else None, column, label)
        plots["capacity_fade"] = "capacity_fade.png"
    table = emb.table
    early = table[(table["cycle_number"] >= cfg.min_cycle) & (table["cycle_number"] <= cfg.first_cycles)]
    per_cell = early.groupby("cell_key", sort=True)[emb.val_columns].mean()
    if len(per_cell) >= 2:
        subset = pd.Series({c: s for s, cells in doc["dataset"]["split"]["subset_cells"].items() for c in cells})
        last = min(cfg.first_cycles, float(early["cycle_number"].max()))
        plot_embedding_pca(out_dir / "embedding_pca.png", per_cell, unified.cycle_life, subset,
                           f"cycles {cfg.min_cycle}–{last:g}")
        plots["embedding_pca"] = "embedding_pca.png"
    cap_doc = doc["tasks"].get("capacity")
    if cap_doc:
        unit = cap_doc["unit"]
        plot_capacity_predictions(out_dir / "capacity_predictions.png", cap_doc, predictions["capacity"], unit)
        plots["capacity_predictions"] = "capacity_predictions.png"
        plot_rmse_bars(out_dir / "capacity_rmse.png", cap_doc, unit,
                       f"Capacity {cap_doc['horizon']} cycles ahead: RMSE (lower is better)", 4)
        plots["capacity_rmse"] = "capacity_rmse.png"
    return plots


# ------------------------------------------------------------------------------------------------- HTML
def _best(doc: dict, name: str) -> tuple[str, dict, str, str, dict] | None:
    """(held-out subset in focus, task, feature set, model, metrics) of a task's best result, if any."""
    task = doc["tasks"].get(name)
    if not task:
        return None
    focus = "test" if "test" in task["n_cells"] else next((s for s in task["n_cells"] if s != "train"), "train")
    if f"{name}/{focus}" not in doc["best"]:
        return focus, task, "", "", {}
    fs, model = doc["best"][f"{name}/{focus}"].split("/")
    return focus, task, fs, model, _result(task, fs, model)["subsets"][focus]


def _key_findings(doc: dict) -> list[dict[str, Any]]:
    """The findings the report opens with, as data (the template words them)."""
    items: list[dict[str, Any]] = []
    life = _best(doc, "cycle_life")
    if life:
        focus, task, fs, model, m = life
        if fs:
            items.append({"kind": "life_best", "subset": focus, "feature_set": fs,
                          "model": MODEL_TEXT.get(model, model), "rmse": _fmt(m["rmse"], 0),
                          "mape": _fmt(m["mape"], 1), "r2": _fmt(m["r2"], 2)})
        for fs in ("embedding", "random"):
            cands = [r for r in task["results"] if r["feature_set"] == fs and focus in r["subsets"]]
            if cands:
                r = min(cands, key=lambda r: r["subsets"][focus]["rmse"])
                m = r["subsets"][focus]
                what = "The encoder's embeddings reach" if fs == "embedding" else "The random-feature control reaches"
                items.append({"kind": "life_set", "what": what, "rmse": _fmt(m["rmse"], 0), "r2": _fmt(m["r2"], 2),
                              "model": MODEL_TEXT.get(r["model"])})
    cap = _best(doc, "capacity")
    if cap and cap[2]:
        focus, task, fs, model, m = cap
        pers = _result(task, "persistence", "none")
        pm = pers["subsets"].get(focus) if pers else None
        items.append({"kind": "capacity_best", "horizon": task["horizon"], "subset": focus, "feature_set": fs,
                      "model": None if model == "none" else MODEL_TEXT.get(model, model),
                      "rmse": _fmt(m["rmse"], 4), "unit": task["unit"],
                      "persistence": _fmt(pm["rmse"], 4) if pm and fs != "persistence" else None})
    return items


def _comparison_table(task: dict, digits: int) -> dict[str, Any]:
    """Every (feature set, model) row with its metrics per subset; the lowest held-out RMSE marked."""
    results = task["results"]
    subsets = _subset_order(list(dict.fromkeys(s for r in results for s in r["subsets"])))
    best: dict[str, int] = {}
    for s in subsets:
        if s == "train":
            continue  # in-sample: the best fit there says little
        cands = [(r["subsets"][s]["rmse"], i) for i, r in enumerate(results) if s in r["subsets"]]
        if cands:
            best[s] = min(cands)[1]
    heads = []
    for s in subsets:
        n, rows = task["n_cells"].get(s, 0), task["n_rows"].get(s, 0)
        heads.append({"name": s, "size": f"{n} cells" + (f", {rows} rows" if rows != n else "")})
    cv_digits = 3 if task.get("fit_space") == "log10" else digits
    rows = []
    for i, r in enumerate(results):
        cells = []
        for s in subsets:
            m = r["subsets"].get(s)
            cells.append(None if m is None else {
                "best": best.get(s) == i,
                "metrics": [_fmt(m["rmse"], digits), _fmt(m["mae"], digits), _fmt(m["mape"], 1), _fmt(m["r2"], 3)]})
        rows.append({"baseline": r["model"] == "none", "feature_set": r["feature_set"],
                     "model": MODEL_TEXT.get(r["model"], r["model"]), "n_features": r["n_features"] or "–",
                     "cv_rmse": _fmt(r["cv_rmse"], cv_digits), "cells": cells})
    return {"subsets": heads, "rows": rows}


def _subset_rows(doc: dict) -> list[dict[str, Any]]:
    life = doc["tasks"].get("cycle_life", {})
    cap = doc["tasks"].get("capacity", {})
    rows = []
    for s, n in doc["dataset"]["split"]["cells"].items():
        stats = life.get("target_stats", {}).get(s)
        rows.append({"subset": s, "cells": n, "life_cells": life.get("n_cells", {}).get(s, "–"),
                     "life_stats": " / ".join(_fmt(stats[k], 0) for k in ("min", "median", "max")) if stats else "–",
                     "capacity_cells": cap.get("n_cells", {}).get(s, "–"),
                     "capacity_rows": cap.get("n_rows", {}).get(s, "–")})
    return rows


def render_html(doc: dict, plots: dict[str, str], out_dir: Path) -> str:
    """The report page (templates/report.html.j2, autoescaped) with the plots inlined."""
    import datetime

    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("msenc_lib.evaluate", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    life, cap = doc["tasks"].get("cycle_life"), doc["tasks"].get("capacity")
    images = {name: base64.b64encode((Path(out_dir) / file).read_bytes()).decode("ascii")
              for name, file in plots.items()}
    return env.get_template("report.html.j2").render(
        version=__version__, generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cfg=doc["config"], dataset=doc["dataset"], findings=_key_findings(doc), subset_rows=_subset_rows(doc),
        skipped={**(life or {}).get("skipped_subsets", {}), **(cap or {}).get("skipped_subsets", {})},
        images=images, life=life, cap=cap, life_table=life and _comparison_table(life, 0),
        cap_table=cap and _comparison_table(cap, 4), model_text=MODEL_TEXT, feature_set_text=FEATURE_SET_TEXT,
        severson=SEVERSON_PUBLISHED)
