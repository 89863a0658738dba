"""Feature sets at a cycle: for rows (cell, n) — "what is known of this cell after its first n cycles".

Tabular sets give one vector per row: Severson's sets and the dQ(V) curve from the unified data (via
:mod:`msenc_lib.data.features`), the encoder's per-cycle embeddings aggregated over cycles ``min_cycle..n``,
or the same aggregation of a seeded random table (the control). Sequence sets give one vector per cycle
``min_cycle..n`` (the LSTM models' input). A row a set cannot describe (a needed cycle missing) gets a
reason instead of a vector; the task excludes it from every set, so all sets are scored on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from msenc_lib.data.features import FEATURE_SETS, severson_at
from msenc_lib.errors import InputDataError
from msenc_lib.evaluate.config import SEVERSON_SETS, EvaluateConfig
from msenc_lib.evaluate.inputs import Embeddings, UnifiedSummary

Row = tuple[str, float]  # (cell, n)


@dataclass
class PerCycle:
    """One cell's per-cycle vectors, sorted by cycle."""

    cycles: np.ndarray
    values: np.ndarray  # (len(cycles), dim)


def per_cell(table: pd.DataFrame, val_columns: list[str]) -> dict[str, PerCycle]:
    out = {}
    for cell, part in table.groupby("cell_key", sort=True):
        out[str(cell)] = PerCycle(part["cycle_number"].to_numpy(dtype=np.float64),
                                  part[val_columns].to_numpy(dtype=np.float64))
    return out


def random_like(emb: Embeddings, seed: int) -> pd.DataFrame:
    """The embeddings table with every val_* replaced by seeded N(0, 1) noise (the random-feature control)."""
    out = emb.table.copy()
    rng = np.random.default_rng([seed, 0x5EED])
    out[emb.val_columns] = rng.standard_normal((len(out), emb.dim))
    return out


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(pc: PerCycle, n: float, *, min_cycle: int, methods: list[str], window: int
              ) -> tuple[np.ndarray | None, str | None]:
    """One cell's embeddings over cycles ``min_cycle..n`` as one vector (``methods`` concatenated)."""
    sel = (pc.cycles >= min_cycle) & (pc.cycles <= n)
    cyc, vals = pc.cycles[sel], pc.values[sel]
    early = cyc < min_cycle + window
    late = cyc > n - window
    if not late.any():
        last = pc.cycles.max() if pc.cycles.size else float("nan")
        return None, (f"no embedded cycle in {n - window + 1:g}..{n:g} (its embeddings end at cycle {last:g}): the cell "
                      f"does not cover the first {n:g} cycles")
    if not early.any():
        return None, f"no embedded cycle in {min_cycle}..{min_cycle + window - 1} (the early window)"
    first, lastw = vals[early].mean(0), vals[late].mean(0)
    blocks = []
    for m in methods:
        if m == "mean":
            blocks.append(vals.mean(0))
        elif m == "std":
            blocks.append(vals.std(0))
        elif m == "first":
            blocks.append(first)
        elif m == "last":
            blocks.append(lastw)
        elif m == "delta":
            blocks.append(lastw - first)
        elif m == "delta_norm":
            blocks.append(np.array([np.log10(max(float(np.linalg.norm(lastw - first)), 1e-12))]))
        elif m == "slope":
            c = cyc - cyc.mean()
            denom = float((c**2).sum())
            blocks.append(c @ (vals - vals.mean(0)) / denom if denom > 0 else np.zeros(vals.shape[1]))
        else:
            raise ValueError(f"unknown aggregation {m!r}")
    return np.concatenate(blocks), None


def aggregate_names(methods: list[str], dim: int) -> list[str]:
    names = []
    for m in methods:
        names += [f"{m}"] if m == "delta_norm" else [f"{m}_val_{i}" for i in range(dim)]
    return names


# --------------------------------------------------------------------------------------------- context
class FeatureContext:
    """Everything the feature sets read, indexed once."""

    def __init__(self, cfg: EvaluateConfig, emb: Embeddings, unified: UnifiedSummary):
        self.cfg = cfg
        self.emb = emb
        self.unified = unified
        self.embedding = per_cell(emb.table, emb.val_columns)
        self._random: dict[int, dict[str, PerCycle]] = {}

    def random(self, seed: int) -> dict[str, PerCycle]:
        """The random control of fitting seed ``seed`` (a fresh draw per seed)."""
        if seed not in self._random:
            self._random[seed] = per_cell(random_like(self.emb, seed), self.emb.val_columns)
        return self._random[seed]

    def tabular(self, fs: str, rows: list[Row], seed: int = 0) -> tuple[np.ndarray, list[str], dict[int, str]]:
        """(matrix, feature names, {row position: reason}) of tabular feature set ``fs`` at ``rows``; ``seed``
        draws the random control."""
        cfg = self.cfg
        reasons: dict[int, str] = {}
        if fs == "none":
            return np.zeros((len(rows), 0)), [], reasons
        if fs in ("embedding", "random"):
            store = self.embedding if fs == "embedding" else self.random(seed)
            names = aggregate_names(cfg.aggregation, self.emb.dim)
            X = np.full((len(rows), len(names)), np.nan)
            for i, (cell, n) in enumerate(rows):
                pc = store.get(cell)
                if pc is None:
                    reasons[i] = "no embeddings for this cell"
                    continue
                vec, why = aggregate(pc, n, min_cycle=cfg.min_cycle, methods=cfg.aggregation, window=cfg.delta_window)
                if why:
                    reasons[i] = why
                else:
                    X[i] = vec
            return X, names, reasons
        if fs in SEVERSON_SETS or fs == "qdv":
            names = None
            vecs: list[np.ndarray | None] = []
            for i, (cell, n) in enumerate(rows):
                cc = self.unified.cycles.get(cell)
                try:
                    if cc is None:
                        raise InputDataError("no unified rows")
                    ref = cfg.ref_for(int(n))
                    if fs == "qdv":
                        what = f"dQ_{n:g}-{ref}(V)"
                        vec = cc.curve(n, what) - cc.curve(ref, what)
                        names = names or [f"dq_{k}" for k in range(vec.size)]
                    else:
                        feats = severson_at(cc, fs, int(n), ref_cycle=ref, early_cycle=min(2, int(n) - 1))
                        names = names or list(feats)
                        vec = np.array(list(feats.values()), dtype=np.float64)
                        if not np.isfinite(vec).all():
                            bad = [k for k, v in feats.items() if not np.isfinite(v)]
                            raise InputDataError(f"Severson feature(s) {bad} not finite (e.g. dQ(V) is identically 0)")
                except InputDataError as e:
                    reasons[i] = f"{fs}: {e}"
                    vec = None
                vecs.append(vec)
            if names is None:
                names = [n for n in FEATURE_SETS.get(fs, [])]
            X = np.full((len(rows), len(names)), np.nan)
            for i, v in enumerate(vecs):
                if v is not None:
                    X[i] = v
            return X, names, reasons
        raise ValueError(f"unknown tabular feature set {fs!r}")

    def sequences(self, fs: str, rows: list[Row]) -> tuple["Sequences", dict[int, str]]:
        """Per-cycle inputs of cycles ``min_cycle..n`` for every row's cell (one padded sequence per cell)."""
        cfg = self.cfg
        reasons: dict[int, str] = {}
        start = cfg.min_cycle
        last_of: dict[str, float] = {}
        for cell, n in rows:
            last_of[cell] = max(last_of.get(cell, -1.0), n)
        cells = sorted(last_of)
        ref = cfg.ref_for(int(min(n for _, n in rows)))
        series: dict[str, np.ndarray] = {}
        why_cell: dict[str, str] = {}
        for cell in cells:
            want = np.arange(start, last_of[cell] + 1, dtype=np.float64)
            if fs == "embedding_seq":
                pc = self.embedding.get(cell)
                if pc is None:
                    why_cell[cell] = "no embeddings for this cell"
                    continue
                cyc, vals = pc.cycles, pc.values
            elif fs == "qdv_seq":
                got = self.unified.coarse_curves.get(cell)
                if got is None:
                    why_cell[cell] = "no unified rows"
                    continue
                cyc, vals = got
                ok = ~np.isnan(vals[:, 0])
                cyc, vals = cyc[ok], vals[ok].astype(np.float64)
                at_ref = np.flatnonzero(cyc == ref)
                if not at_ref.size:
                    why_cell[cell] = f"qdv_seq: no discharge curve at the reference cycle {ref}"
                    continue
                vals = vals - vals[at_ref[0]]
            else:
                raise ValueError(f"unknown sequence feature set {fs!r}")
            series[cell] = _fill(cyc, vals, want)
            if series[cell] is None:
                why_cell[cell] = f"{fs}: no cycle at or before cycle {start}"
                del series[cell]
        seq_cells = [c for c in cells if c in series]
        T = max((len(series[c]) for c in seq_cells), default=0)
        dim = next(iter(series.values())).shape[1] if series else 0
        X = np.zeros((len(seq_cells), T, dim), dtype=np.float32)
        for i, c in enumerate(seq_cells):
            X[i, : len(series[c])] = series[c]
        index = {c: i for i, c in enumerate(seq_cells)}
        positions = np.full(len(rows), -1, dtype=np.int64)
        for r, (cell, n) in enumerate(rows):
            if cell in why_cell:
                reasons[r] = why_cell[cell]
            else:
                positions[r] = int(n - start)
        return Sequences(X=X, cells=seq_cells, index=index, positions=positions, start=start), reasons


@dataclass
class Sequences:
    X: np.ndarray  # (cells, T, F): cycle start + t at position t
    cells: list[str]
    index: dict[str, int]
    positions: np.ndarray  # per row: its position in its cell's sequence (-1: excluded)
    start: int


def _fill(cyc: np.ndarray, vals: np.ndarray, want: np.ndarray) -> np.ndarray | None:
    """``vals`` at cycles ``want``, a missing cycle taking the last earlier one's vector (None if none is earlier)."""
    if not cyc.size or cyc[0] > want[0]:
        return None
    idx = np.searchsorted(cyc, want, side="right") - 1
    return vals[idx]
