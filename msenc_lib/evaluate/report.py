"""PNG plots (matplotlib, Agg) and the self-contained ``report.html`` (PNGs inlined, no external CSS/JS)."""

from __future__ import annotations

import base64
import html
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
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}
th,td{border:1px solid #d4d4d4;padding:.25em .55em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}td.best{background:#d8f3d0;font-weight:bold}tr.baseline td{background:#f7f7fb}
.key{background:#f6f8fa;border-left:4px solid #4a7;padding:.6em 1em;margin:1em 0}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .25em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(out_dir: Path, plots: dict[str, str], name: str, caption: str) -> str:
    if name not in plots:
        return ""
    data = base64.b64encode((Path(out_dir) / plots[name]).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _comparison_table(task: dict, digits: int, unit: str) -> str:
    results = task["results"]
    subsets = _subset_order(list(dict.fromkeys(s for r in results for s in r["subsets"])))
    best: dict[str, int] = {}
    for s in subsets:
        if s == "train":
            continue  # in-sample: the best fit there says little
        cands = [(r["subsets"][s]["rmse"], i) for i, r in enumerate(results) if s in r["subsets"]]
        if cands:
            best[s] = min(cands)[1]
    head1 = '<tr><th class="l" rowspan="2">feature set</th><th class="l" rowspan="2">model</th>' \
            '<th rowspan="2">features</th><th rowspan="2">CV RMSE<br>(train)</th>'
    head2 = "<tr>"
    for s in subsets:
        n = task["n_cells"].get(s, 0)
        rows = task["n_rows"].get(s, 0)
        size = f"{n} cells" + (f", {rows} rows" if rows != n else "")
        head1 += f'<th colspan="4">{_e(s)} ({size})</th>'
        head2 += f"<th>RMSE ({_e(unit)})</th><th>MAE ({_e(unit)})</th><th>MAPE %</th><th>R²</th>"
    out = [f"<table>{head1}</tr>{head2}</tr>"]
    cv_digits = 3 if task.get("fit_space") == "log10" else digits
    for i, r in enumerate(results):
        cls = ' class="baseline"' if r["model"] == "none" else ""
        model = MODEL_TEXT.get(r["model"], r["model"])
        cells = [f'<td class="l">{_e(r["feature_set"])}</td>', f'<td class="l">{_e(model)}</td>',
                 f"<td>{r['n_features'] or '–'}</td>", f"<td>{_fmt(r['cv_rmse'], cv_digits)}</td>"]
        for s in subsets:
            m = r["subsets"].get(s)
            b = ' class="best"' if best.get(s) == i else ""
            if m is None:
                cells += ["<td>–</td>"] * 4
            else:
                cells += [f"<td{b}>{_fmt(m['rmse'], digits)}</td>", f"<td{b}>{_fmt(m['mae'], digits)}</td>",
                          f"<td{b}>{_fmt(m['mape'], 1)}</td>", f"<td{b}>{_fmt(m['r2'], 3)}</td>"]
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _hyper_table(task: dict) -> str:
    rows = ["<table><tr><th class='l'>feature set</th><th class='l'>model</th><th class='l'>chosen by CV on train"
            "</th></tr>"]
    for r in task["results"]:
        if r["model"] == "none":
            continue
        hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items())
        rows.append(f"<tr><td class='l'>{_e(r['feature_set'])}</td><td class='l'>{_e(MODEL_TEXT.get(r['model']))}</td>"
                    f"<td class='l'>{_e(hp)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _excluded_table(task: dict) -> str:
    if not task["excluded"]:
        return "<p>No cell was excluded.</p>"
    rows = ["<table><tr><th class='l'>cell</th><th class='l'>subset</th><th class='l'>why excluded</th></tr>"]
    for x in task["excluded"]:
        rows.append(f"<tr><td class='l'>{_e(x['cell_key'])}</td><td class='l'>{_e(x['subset'])}</td>"
                    f"<td class='l'>{_e(x['reason'])}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _key_findings(doc: dict) -> str:
    items = []
    life = doc["tasks"].get("cycle_life")
    if life:
        focus = "test" if "test" in life["n_cells"] else next((s for s in life["n_cells"] if s != "train"), "train")
        key = f"cycle_life/{focus}"
        if key in doc["best"]:
            fs, model = doc["best"][key].split("/")
            r = _result(life, fs, model)
            m = r["subsets"][focus]
            items.append(f"Cycle life, {focus} cells: the best predictor is <b>{_e(fs)}</b> with "
                         f"{_e(MODEL_TEXT.get(model, model))}: RMSE {_fmt(m['rmse'], 0)} cycles, MAPE "
                         f"{_fmt(m['mape'], 1)} %, R² {_fmt(m['r2'], 2)}.")
        for fs in ("embedding", "random"):
            cands = [r for r in life["results"] if r["feature_set"] == fs and focus in r["subsets"]]
            if cands:
                r = min(cands, key=lambda r: r["subsets"][focus]["rmse"])
                m = r["subsets"][focus]
                what = "The encoder's embeddings reach" if fs == "embedding" else "The random-feature control reaches"
                items.append(f"{what} RMSE {_fmt(m['rmse'], 0)} cycles, R² {_fmt(m['r2'], 2)} "
                             f"({_e(MODEL_TEXT.get(r['model']))}).")
    cap = doc["tasks"].get("capacity")
    if cap:
        focus = "test" if "test" in cap["n_cells"] else next((s for s in cap["n_cells"] if s != "train"), "train")
        key = f"capacity/{focus}"
        if key in doc["best"]:
            fs, model = doc["best"][key].split("/")
            m = _result(cap, fs, model)["subsets"][focus]
            pers = _result(cap, "persistence", "none")
            pm = pers["subsets"].get(focus) if pers else None
            text = (f"Capacity {cap['horizon']} cycles ahead, {focus} rows: best is <b>{_e(fs)}</b>"
                    f"{'' if model == 'none' else ' with ' + _e(MODEL_TEXT.get(model, model))}: RMSE "
                    f"{_fmt(m['rmse'], 4)} {_e(cap['unit'])}")
            if pm and fs != "persistence":
                text += f" (persistence baseline: {_fmt(pm['rmse'], 4)} {_e(cap['unit'])})"
            items.append(text + ".")
    if not items:
        return ""
    return "<div class='key'><b>Key findings</b><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def _dataset_section(doc: dict) -> str:
    ds = doc["dataset"]
    emb = ds["embeddings"]
    split_cells = ds["split"]["cells"]
    life = doc["tasks"].get("cycle_life", {})
    cap = doc["tasks"].get("capacity", {})
    rows = ["<table><tr><th class='l'>subset</th><th>cells in split</th><th>usable for cycle life</th>"
            "<th>cycle life min / median / max</th><th>usable for capacity</th><th>capacity rows</th></tr>"]
    for s, n in split_cells.items():
        stats = life.get("target_stats", {}).get(s)
        st = f"{_fmt(stats['min'], 0)} / {_fmt(stats['median'], 0)} / {_fmt(stats['max'], 0)}" if stats else "–"
        rows.append(f"<tr><td class='l'>{_e(s)}</td><td>{n}</td><td>{life.get('n_cells', {}).get(s, '–')}</td>"
                    f"<td>{st}</td><td>{cap.get('n_cells', {}).get(s, '–')}</td>"
                    f"<td>{cap.get('n_rows', {}).get(s, '–')}</td></tr>")
    rows.append("</table>")
    skipped = {**life.get("skipped_subsets", {}), **cap.get("skipped_subsets", {})}
    note = ""
    if skipped:
        note = "<p>Subsets not evaluated: " + ", ".join(f"{_e(k)} ({_e(v)})" for k, v in skipped.items()) + ".</p>"
    return (
        f"<p>Embeddings: <code>{_e(emb['source'])}</code>: {emb['rows']:,} cell-cycles of {emb['cells']} cells, "
        f"{emb['dim']} dimensions, cycles {emb['cycles'][0]}–{emb['cycles'][1]}"
        + (f"; {emb['dropped_empty_rows']} rows without values ignored" if emb["dropped_empty_rows"] else "")
        + (f"; {emb['cells_not_in_split']} more cells are in no subset of the split and were not used"
           if emb.get("cells_not_in_split") else "")
        + f".<br>Unified data: <code>{_e(ds['unified']['source'])}</code> ({ds['unified']['cells_read']} cells read; "
        f"internal resistance {'present' if ds['unified']['internal_resistance'] else 'absent'}).<br>"
        f"Split: <code>{_e(ds['split']['source'])}</code>. Models are fitted on <b>train</b> only; every other "
        f"subset is held out.</p>" + "\n".join(rows) + note
    )


def render_html(doc: dict, plots: dict[str, str], out_dir: Path) -> str:
    import datetime

    cfg = doc["config"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>msenc evaluation report</title><style>{CSS}</style></head><body>",
        "<h1>Battery-encoder evaluation</h1>",
        f"<p class='muted'>msenc {_e(__version__)} · generated "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · all numbers also in "
        "<code>metrics.json</code></p>",
        "<p>Does the encoder's representation of early cycles predict how long a cell will live, and its capacity a "
        "few cycles ahead, better than the hand-made features of Severson et al. (Nature Energy 2019)? Every "
        "feature set below is fitted on the same training cells and scored on the same held-out cells.</p>",
        _key_findings(doc),
        "<h2>Dataset</h2>", _dataset_section(doc),
        _img(out_dir, plots, "capacity_fade",
             "Discharge capacity of every cell by cycle (maximum within each cycle), coloured by the cell's cycle "
             "life. Short-lived cells fade earlier and faster; the dotted line marks the last cycle the "
             "cycle-life features may use."),
    ]
    life = doc["tasks"].get("cycle_life")
    if life:
        agg = life["embedding_aggregation"]
        parts += [
            "<h2>Cycle life from the first cycles (battery level)</h2>",
            f"<p>Target: cycle life (cycles until the capacity falls below 80 % of nominal), fitted as log10 and "
            f"reported in cycles, one row per cell. Features use cycles {life['min_cycle']}–{life['first_cycles']} "
            f"only. The embedding of a cell = its per-cycle embeddings aggregated as "
            f"<b>{_e(', '.join(agg['methods']))}</b> (window {agg['window']} cycles; <i>delta</i> = mean of the "
            f"last {agg['window']} cycles minus mean of the first {agg['window']}, the change over early life, in "
            f"the spirit of Severson's ΔQ<sub>{life['first_cycles']}-10</sub>). Hyper-parameters are chosen by "
            f"{cfg['cv_folds']}-fold cross-validation on the train cells (CV RMSE in log10 cycles). "
            "<b>Green</b> = lowest RMSE in that held-out subset (train scores are in-sample).</p>",
            _comparison_table(life, 0, "cycles"),
            _img(out_dir, plots, "cycle_life_rmse", "RMSE in cycles per feature set and model, held-out subsets."),
            _img(out_dir, plots, "cycle_life_predictions",
                 "Predicted vs observed cycle life, one panel per feature set (columns) and model (rows); test cells "
                 "in red, validation in blue, train in grey. Points on the dashed line are perfect predictions."),
            _img(out_dir, plots, "embedding_pca",
                 "The cells' mean embeddings projected on their first two principal components, coloured by cycle "
                 "life. A colour gradient across the cloud means the embedding separates long- from short-lived "
                 "cells without being told."),
            "<h3>Chosen hyper-parameters</h3>", _hyper_table(life),
            "<h3>Excluded cells</h3>", _excluded_table(life),
        ]
    cap = doc["tasks"].get("capacity")
    if cap:
        parts += [
            f"<h2>Capacity {cap['horizon']} cycles ahead (cycle level)</h2>",
            f"<p>Target: max <code>{_e(cap['capacity_column'])}</code> of cycle c+{cap['horizon']}, from the "
            f"embedding of cycle c (every cycle c ≥ {cap['min_cycle']} whose future cycle is recorded"
            + (f", every {cap['stride']}th" if cap["stride"] > 1 else "")
            + "). The <i>persistence</i> baseline predicts today's capacity; a model must beat it to be useful. "
            "Cross-validation folds keep all cycles of a cell together. <b>Green</b> = lowest RMSE in that "
            "held-out subset.</p>",
            _comparison_table(cap, 4, cap["unit"]),
            _img(out_dir, plots, "capacity_rmse", "RMSE per feature set and model, held-out subsets."),
            _img(out_dir, plots, "capacity_predictions",
                 "Predicted vs observed future capacity (per feature set, the model with the best cross-validated "
                 "RMSE)."),
            "<h3>Chosen hyper-parameters</h3>", _hyper_table(cap),
            "<h3>Excluded cells</h3>", _excluded_table(cap),
        ]
    parts += ["<h2>How to read this</h2><ul>",
              "<li><b>RMSE</b> root-mean-square error and <b>MAE</b> mean absolute error, in the target's unit; "
              "<b>MAPE</b> mean absolute percentage error; <b>R²</b> 1 = perfect, 0 = no better than predicting "
              "the subset's mean, negative = worse.</li>"]
    for fs, text in FEATURE_SET_TEXT.items():
        parts.append(f"<li><b>{_e(fs)}</b>: {_e(text)}</li>")
    parts.append("<li><b>elastic net</b>: linear model on standardised features with an L1+L2 penalty "
                 "(Severson's choice); <b>random forest</b>: averaged regression trees.</li></ul>")
    parts.append("<p class='muted'>For orientation only: Severson et al. report test RMSE (cycles, primary / "
                 "secondary test) of " + ", ".join(f"{k} {a} / {b}" for k, (a, b) in SEVERSON_PUBLISHED.items())
                 + " on their real 124-cell dataset; synthetic or other data are not comparable.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)
