"""Small hand-built inputs for the evaluate tests: unified cells, embeddings that carry signal or not, splits.

The unified cells follow a linear-fade model: Q(c) = q0 - rate * c, cycle life = cycles to 80 % of 1.1 Ah.
Each cycle has a short CC charge (current > 0) and a discharge (current < 0) whose Q(V) curve scales with
Q(c), so Severson's dQ_N-10(V) grows with the fade rate, i.e. shrinks with cycle life.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

N_CHARGE, N_DISCHARGE = 3, 12


def plan(n_cells: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    life = np.exp(rng.uniform(np.log(150), np.log(2300), n_cells)).round()
    q0 = 1.1 - rng.uniform(0.0, 0.01, n_cells)
    rate = (q0 - 0.88) / life
    keys = [f"b1c{i}" for i in range(n_cells)]
    table = pd.DataFrame({"cell_key": keys, "cycle_life": life.astype(int), "q0": q0, "rate": rate})
    return table.set_index("cell_key")


def cell_table(cell: str, row: pd.Series, last_cycle: int, rng: np.random.Generator,
               skip_cycles: tuple[int, ...] = (), ir: bool = False) -> pd.DataFrame:
    cycles = np.array([c for c in range(last_cycle + 1) if c not in skip_cycles])
    q = row.q0 - row.rate * cycles + rng.normal(0, 2e-4, cycles.size)
    frac = np.linspace(0.0, 1.0, N_DISCHARGE)
    parts = []
    for c, qc in zip(cycles, q):
        t_ch = np.linspace(0.0, 10.0, N_CHARGE)
        v_dis = 3.5 - 1.5 * frac**1.5 - 0.02 * (1 - qc / 1.1)
        n = N_CHARGE + N_DISCHARGE
        parts.append(pd.DataFrame({
            "cell_key": cell, "cycle_number": np.full(n, c, dtype=np.int64),
            "time": np.concatenate([t_ch, 12.0 + 15.0 * frac]),
            "cycle_life": np.full(n, row.cycle_life, dtype=np.int64),
            "current": np.concatenate([np.full(N_CHARGE, 4.0), np.full(N_DISCHARGE, -4.0)]),
            "voltage": np.concatenate([np.linspace(3.0, 3.6, N_CHARGE), v_dis]),
            "charge_capacity": np.concatenate([np.linspace(0.0, qc, N_CHARGE), np.full(N_DISCHARGE, qc)]),
            "discharge_capacity": np.concatenate([np.zeros(N_CHARGE), qc * frac]),
            "temperature": 30.0 + rng.normal(0, 0.1, n),
            **({"internal_resistance": np.full(n, 0.015 + 0.05 * (1.1 - qc))} if ir else {}),
        }))
    return pd.concat(parts, ignore_index=True)


def write_unified(out: Path, truth: pd.DataFrame, last_cycle: int = 60, seed: int = 0,
                  skip: dict[str, tuple[int, ...]] | None = None, drop_columns: tuple[str, ...] = (),
                  ir_cells: tuple[str, ...] = ()) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (cell, row) in enumerate(truth.iterrows()):
        rng = np.random.default_rng([seed, i])
        table = cell_table(cell, row, last_cycle, rng, (skip or {}).get(cell, ()), ir=cell in ir_cells)
        table.drop(columns=list(drop_columns)).to_parquet(out / f"{cell}.parquet", index=False)
    (out / "_manifest.json").write_text("{}")
    return out


def embeddings(truth: pd.DataFrame, last_cycle: int = 60, dim: int = 8, signal: float = 1.0, seed: int = 1,
               skip: dict[str, tuple[int, ...]] | None = None) -> pd.DataFrame:
    """Per (cell, cycle): val_0 = capacity now, val_1 = fade rate (scaled), the rest noise; x ``signal``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell, row in truth.iterrows():
        cycles = np.array([c for c in range(last_cycle + 1) if c not in (skip or {}).get(cell, ())])
        vals = rng.normal(0.0, 1.0, (cycles.size, dim))
        q = row.q0 - row.rate * cycles
        vals[:, 0] = signal * (q - 1.0) * 10 + (1 - signal) * vals[:, 0]
        vals[:, 1] = signal * np.log10(row.rate * 1e4) + (1 - signal) * vals[:, 1] + rng.normal(0, 0.02, cycles.size)
        frame = pd.DataFrame(vals, columns=[f"val_{i}" for i in range(dim)])
        frame.insert(0, "cell_key", cell)
        frame.insert(1, "cycle_number", cycles)
        frame.insert(2, "charge_capacity", q)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def write_embeddings(out: Path, table: pd.DataFrame) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "embeddings.parquet", index=False)
    return out


def write_split(path: Path, **subsets: list[str]) -> Path:
    path = Path(path)
    path.write_text(json.dumps({k: [f"{c}.csv" for c in v] for k, v in subsets.items()}, indent=4))
    return path


def split_cells(keys: list[str], n_val: int, n_test: int) -> dict[str, list[str]]:
    keys = list(keys)
    n_train = len(keys) - n_val - n_test
    return {"train": keys[:n_train], "validation": keys[n_train: n_train + n_val], "test": keys[n_train + n_val:]}


def cycle_summary_embeddings(unified_dir: Path, dim: int = 16, noise: float = 0.1, seed: int = 3,
                             targets: tuple[str, ...] = ("charge_capacity",)) -> pd.DataFrame:
    """Stand-in for encoder output on real unified data: per (cell, cycle) summary statistics of the cycle
    (capacities, voltages, temperature, duration), standardised, mixed by a fixed random matrix + noise.
    Carries the physics a good encoder would see; the embed stage's real output replaces it in the pipeline."""
    from msenc_lib.data.unified import read_unified

    df = read_unified(str(unified_dir), columns=["cell_key", "cycle_number", "time", "voltage", "current",
                                                  "charge_capacity", "discharge_capacity", "temperature"])
    dis = df[df["current"] < 0]
    g = df.groupby(["cell_key", "cycle_number"], sort=True)
    stats = pd.DataFrame({
        "qd": g["discharge_capacity"].max(), "qc": g["charge_capacity"].max(), "tmax": g["temperature"].max(),
        "tmean": g["temperature"].mean(), "dur": g["time"].max(),
        "vdis": dis.groupby(["cell_key", "cycle_number"])["voltage"].mean(),
        "vmin": dis.groupby(["cell_key", "cycle_number"])["voltage"].min(),
    }).fillna(0.0)
    z = (stats - stats.mean()) / stats.std(ddof=0).replace(0, 1)
    rng = np.random.default_rng(seed)
    vals = z.to_numpy() @ rng.normal(0, 1, (z.shape[1], dim)) + rng.normal(0, noise, (len(z), dim))
    out = pd.DataFrame(vals, columns=[f"val_{i}" for i in range(dim)], index=z.index).reset_index()
    for t in targets:
        out.insert(2, t, g[t].max().to_numpy())
    return out
