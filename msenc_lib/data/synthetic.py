"""The embedded dataset: a deterministic synthetic cycler that looks like the Severson/BEEP data.

Every cell is an LFP/graphite-like 1.1 Ah cell cycled like Severson et al. (2019):

* charge with a multi-step fast-charge policy given as a STRING (``5.4C(40%)-3.6C``, ``6C(20%)-4.8C(60%)-4C``)
  from 0 to 80 % SOC (the C-rates per SOC slot come from :func:`msenc_lib.data.policy.policy_soc_rates`,
  the quartile columns from :func:`parse_charge_policy`), then 1C CC to 3.6 V and a CV hold at 3.6 V;
* a rest, a 4C CC discharge to 2.0 V, a rest. Voltage stays in 2.0-3.6 V; time in minutes from the start of
  each cycle; currents as C-rates (charge > 0); temperature rises with I^2 and resistance during charge and
  discharge and relaxes at rest; the discharge is logged at a fixed time interval.
* Capacity starts at ~1.07-1.10 Ah and fades linearly, then with a knee; ``cycle_life`` = the first cycle
  whose discharge capacity is below 0.88 Ah (80 % of 1.1 Ah). Lives span 150-2300 cycles (log-uniform,
  stratified), shorter for more aggressive policies.
* The Severson signal: the discharge curve Q(V) changes between cycles 10 and 100 by capacity fade and by
  polarisation growth, both faster in short-lived cells, with cell-to-cell scatter. log10 var(dQ_100-10(V))
  correlates with log10 cycle life at |r| ~ 0.97 on the demo size (tested >= 0.8); the scatter comes from
  the per-cell polarisation gain (lognormal, sigma 0.25), linear-fade share and knee sharpness.
* Real-file quirks: cycle 0 opens with two all-zero rows (time 0, voltage 0, temperature 0) and carries a
  zero dQdV array; ``discharge_dQdV`` is the cycle's dQ/dV on a fixed voltage grid shorter than the cycle,
  so it is empty for the rows past its length.

Sizes (``SIZES``): tiny 8 cells x cycles 0-120 (~33k rows), demo 56 cells x cycles 0-130 (~250k rows),
bench 124 cells x their whole life at finer logging (~15M rows). Cells are generated independently
(numpy, vectorised over cycles) from ``numpy.random.default_rng([seed, cell_index])`` after a global plan
(``default_rng(seed)``), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, Field

from msenc_lib.config import StageConfig

Q_NOMINAL = 1.1  # Ah; C-rates are relative to it
EOL_CAPACITY = 0.88  # 80 % of nominal
LIFE_RANGE = (150.0, 2300.0)
DISCHARGE_RATE = 4.0
CV_VOLTAGE = 3.6
CUTOFF_VOLTAGE = 2.0
SOC_CV = 0.97  # SOC at which the 1C CC step reaches 3.6 V
DQDV_GRID = (3.5, 2.0)

SizeName = Literal["tiny", "demo", "bench"]


@dataclass(frozen=True)
class Resolution:
    charge_soc_step: float  # SOC between logged points of the policy charge (0-80 %)
    cc1c_points: int  # points of the 1C CC step 80 % -> 97 %
    cv_points: int  # points of the CV hold
    rest_points: int  # points of each rest
    discharge_dt: float  # minutes between logged points of the 4C discharge
    dqdv_len: int  # length of the per-cycle dQdV array
    zero_rows: int = 2  # all-zero rows opening cycle 0


@dataclass(frozen=True)
class SizeSpec:
    n_cells: int
    last_cycle: int | None  # record cycles 0..last_cycle (None: 0..cycle_life)
    resolution: Resolution


NORMAL = Resolution(charge_soc_step=0.1, cc1c_points=2, cv_points=2, rest_points=1, discharge_dt=0.75, dqdv_len=24)
FINE = Resolution(charge_soc_step=0.02, cc1c_points=8, cv_points=6, rest_points=3, discharge_dt=0.15, dqdv_len=100)
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(n_cells=8, last_cycle=120, resolution=NORMAL),
    "demo": SizeSpec(n_cells=56, last_cycle=130, resolution=NORMAL),
    "bench": SizeSpec(n_cells=124, last_cycle=None, resolution=FINE),
}


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class CellPlan:
    index: int
    cell_key: str
    batch_number: int
    policy: str
    target_life: float  # where the capacity model crosses 0.88 Ah
    q0: float  # initial capacity, Ah
    lin_fraction: float  # share of the fade (to end of life) that is linear
    knee_sharpness: float  # life / exponential time constant
    polarization0: float  # V at 4C, fresh
    polarization_gain: float  # V of extra polarisation per unit of relative capacity lost
    ambient: float  # degC

    @property
    def cycle_life(self) -> int:
        """First cycle (>= 1) whose model discharge capacity is below 0.88 Ah."""
        n = np.arange(1, int(self.target_life * 2) + 10)
        below = np.flatnonzero(capacity_curve(self, n) < EOL_CAPACITY)
        return int(n[below[0]])


def _random_policy(rng: np.random.Generator) -> str:
    from msenc_lib.data.policy import format_policy

    c1_choices = [3.6, 4.0, 4.4, 4.8, 5.2, 5.4, 5.6, 6.0, 7.0, 8.0]
    c2_choices = [3.0, 3.6, 4.0, 4.4, 4.8, 5.2, 6.0]
    kind = rng.uniform()
    if kind < 0.1:
        c = float(rng.choice([3.6, 4.8, 5.4, 6.0]))
        return format_policy([(c, 80)], c)
    if kind < 0.3:
        q1 = int(rng.integers(2, 6)) * 5
        q2 = int(rng.integers(q1 // 5 + 2, 16)) * 5
        c1, c2, c3 = (float(rng.choice(c1_choices)), float(rng.choice(c2_choices)), float(rng.choice(c2_choices)))
        return format_policy([(c1, q1), (c2, q2)], c3)
    q1 = int(rng.integers(1, 16)) * 5
    return format_policy([(float(rng.choice(c1_choices)), q1)], float(rng.choice(c2_choices)))


def plan_cells(n_cells: int, seed: int) -> list[CellPlan]:
    """Per-cell parameters; lives are stratified log-uniform and shorter for more aggressive policies."""
    from msenc_lib.data.policy import parse_charge_policy

    rng = np.random.default_rng(seed)
    u = (rng.permutation(n_cells) + rng.uniform(size=n_cells)) / n_cells
    lives = np.sort(LIFE_RANGE[0] * (LIFE_RANGE[1] / LIFE_RANGE[0]) ** u)
    policies = [_random_policy(np.random.default_rng([seed, i, 1])) for i in range(n_cells)]
    intensity = np.array([np.mean(parse_charge_policy(p)) for p in policies])
    z = (intensity - intensity.mean()) / (intensity.std() or 1.0)
    order = np.argsort(-(z + 0.8 * rng.standard_normal(n_cells)), kind="stable")  # most aggressive first
    life_of = np.empty(n_cells)
    life_of[order] = lives
    plans = []
    per_batch = -(-n_cells // 3)
    for i in range(n_cells):
        r = np.random.default_rng([seed, i, 2])
        batch, channel = i // per_batch + 1, i % per_batch
        plans.append(CellPlan(
            index=i,
            cell_key=f"b{batch}c{channel}",
            batch_number=batch,
            policy=policies[i],
            target_life=float(life_of[i]),
            q0=float(r.uniform(1.068, 1.095)),
            lin_fraction=float(r.uniform(0.28, 0.45)),
            knee_sharpness=float(r.uniform(4.5, 6.5)),
            polarization0=float(r.uniform(0.12, 0.16)),
            polarization_gain=float(0.45 * np.exp(0.25 * r.standard_normal())),
            ambient=float(30.0 + 0.6 * r.standard_normal()),
        ))
    return plans


def capacity_curve(plan: CellPlan, n: np.ndarray) -> np.ndarray:
    """Model discharge capacity (Ah) at cycles ``n``: linear fade plus an exponential knee; Q(L) = 0.88."""
    life = plan.target_life
    loss = plan.q0 - EOL_CAPACITY
    alpha = plan.lin_fraction * loss / life
    tau = life / plan.knee_sharpness
    beta = (loss - alpha * life) / np.expm1(plan.knee_sharpness)
    n = np.asarray(n, dtype=np.float64)
    return plan.q0 - alpha * n - beta * np.expm1(n / tau)


def recorded_cycles(plan: CellPlan, spec: SizeSpec) -> int:
    """Number of cycles recorded (cycles 0..N-1)."""
    return (spec.last_cycle if spec.last_cycle is not None else plan.cycle_life) + 1


# ----------------------------------------------------------------------------------------- cell model
def _discharge_voltage(x: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """4C discharge voltage at depth x in [0, 1] of this cycle's capacity; V(1) = 2.0 V exactly."""
    b = 0.035
    plateau = 3.33 - 0.25 * x + 0.04 * np.exp(-x / 0.03)
    end = 3.33 - 0.25 + 0.04 * np.exp(-1 / 0.03)
    drop = (end - eta - CUTOFF_VOLTAGE) / (1 - np.exp(-1 / b))
    return plateau - eta - drop * (np.exp((x - 1) / b) - np.exp(-1 / b))


def _charge_ocv(s: np.ndarray) -> np.ndarray:
    return 3.28 + 0.08 * s - 0.18 * np.exp(-s / 0.03)


def _discharge_counts(q: np.ndarray, res: Resolution) -> np.ndarray:
    """Logged points strictly inside each cycle's discharge (the cut-off point is added separately)."""
    duration = q / (DISCHARGE_RATE * Q_NOMINAL) * 60.0
    return np.ceil(duration / res.discharge_dt - 1e-9).astype(np.int64) - 1


def _rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    """Rounded like a cycler log; + 0.0 turns -0.0 into 0.0 (no '-0.0' in text exports)."""
    return np.round(values, decimals) + 0.0


def generate_cell(plan: CellPlan, spec: SizeSpec, seed: int):
    """The unified rows of one cell as a pyarrow Table (canonical columns, canonical dtypes)."""
    import pyarrow as pa

    from msenc_lib.data.policy import parse_charge_policy, policy_soc_rates

    res = spec.resolution
    rng = np.random.default_rng([seed, plan.index, 3])
    n_cyc = recorded_cycles(plan, spec)
    cyc = np.arange(n_cyc)
    q = capacity_curve(plan, cyc)  # discharge capacity per cycle
    qc_end = q * 1.002  # charged capacity (coulombic efficiency ~99.8 %)
    lost = np.clip(1 - q / plan.q0, 0, None)
    eta = plan.polarization0 + plan.polarization_gain * lost  # discharge polarisation at 4C, V
    r_rel = 1 + 6.0 * lost  # relative resistance (charge overpotential, heating)

    # ---- slots per cycle: [rest0 | policy charge | 1C CC | CV | rest | discharge ... | cut-off | rest]
    rates = policy_soc_rates(plan.policy)[:80]
    inv_cum = np.concatenate([[0.0], np.cumsum(0.01 / rates)])  # hours per (Ah/Q_NOMINAL) to reach SOC%
    n_ch = int(round(0.8 / res.charge_soc_step))
    s_ch = np.arange(1, n_ch + 1) * res.charge_soc_step
    t_ch = np.interp(s_ch * 100, np.arange(81), inv_cum)[None, :] * (qc_end / Q_NOMINAL * 60)[:, None]
    i_ch = np.broadcast_to(rates[np.clip(np.ceil(s_ch * 100 - 1e-9).astype(int) - 1, 0, 79)], t_ch.shape)
    v_ch = _charge_ocv(s_ch)[None, :] + i_ch * 0.012 * r_rel[:, None]
    t80 = t_ch[:, -1]

    frac1 = np.arange(1, res.cc1c_points + 1) / res.cc1c_points
    s_1c = 0.8 + (SOC_CV - 0.8) * frac1
    t_1c = t80[:, None] + ((s_1c - 0.8) * 60)[None, :] * (qc_end / Q_NOMINAL)[:, None]
    v_1c_base = _charge_ocv(s_1c)[None, :] + 0.012 * r_rel[:, None]
    v_end = _charge_ocv(np.array([SOC_CV]))[0] + 0.012 * r_rel
    v_1c = v_1c_base + (CV_VOLTAGE - v_end)[:, None] * frac1[None, :] ** 3
    i_1c = np.ones_like(t_1c)

    lam = np.log(20.0)
    tau_cv = (1 - SOC_CV) * qc_end * 60 / (0.95 * Q_NOMINAL)
    kcv = np.arange(1, res.cv_points + 1) / res.cv_points
    i_cv = np.broadcast_to(np.exp(-lam * kcv), (n_cyc, res.cv_points))
    t_cv = t_1c[:, -1:] + tau_cv[:, None] * lam * kcv[None, :]
    s_cv = SOC_CV + (1 - SOC_CV) * (1 - i_cv) / 0.95
    v_cv = np.full_like(t_cv, CV_VOLTAGE)

    krest = np.arange(1, res.rest_points + 1) / res.rest_points
    t_r1 = t_cv[:, -1:] + 1.0 * krest[None, :]
    v_r1 = 3.40 + 0.2 * np.exp(-3 * krest)[None, :] + 0.0 * t_r1

    k_dis = _discharge_counts(q, res)
    k_max = int(k_dis.max())
    kd = np.arange(1, k_max + 1)
    t_d0 = t_r1[:, -1]
    q_d = DISCHARGE_RATE * Q_NOMINAL * kd * res.discharge_dt / 60.0  # same Q points in every cycle
    valid_d = kd[None, :] <= k_dis[:, None]
    x_d = np.clip(q_d[None, :] / q[:, None], 0, 1)
    t_d = t_d0[:, None] + kd[None, :] * res.discharge_dt
    v_d = _discharge_voltage(x_d, eta[:, None])
    t_cut = t_d0 + q / (DISCHARGE_RATE * Q_NOMINAL) * 60.0
    t_r2 = t_cut[:, None] + 1.0 * krest[None, :]
    v_r2 = 3.05 - 1.05 * np.exp(-3 * krest)[None, :] + 0.0 * t_r2

    zeros = lambda k: np.zeros((n_cyc, k))  # noqa: E731
    ones = lambda k: np.ones((n_cyc, k))  # noqa: E731
    col = lambda a: np.asarray(a, dtype=np.float64).reshape(n_cyc, 1)  # noqa: E731
    n_r = res.rest_points
    t = np.hstack([zeros(1), t_ch, t_1c, t_cv, t_r1, t_d, col(t_cut), t_r2])
    current = np.hstack([zeros(1), i_ch, i_1c, i_cv, zeros(n_r), np.full(t_d.shape, -DISCHARGE_RATE),
                         col(np.full(n_cyc, -DISCHARGE_RATE)), zeros(n_r)])
    voltage = np.hstack([col(np.full(n_cyc, 3.05)), v_ch, v_1c, v_cv, v_r1, v_d, col(np.full(n_cyc, CUTOFF_VOLTAGE)),
                         v_r2])
    qc_row = np.hstack([zeros(1), s_ch[None, :] * qc_end[:, None], s_1c[None, :] * qc_end[:, None],
                        s_cv * qc_end[:, None], col(qc_end) * ones(n_r), col(qc_end) * ones(k_max + 1),
                        col(qc_end) * ones(n_r)])
    qd_row = np.hstack([zeros(1 + n_ch + res.cc1c_points + res.cv_points + n_r), np.minimum(q_d[None, :], q[:, None])
                        * ones(k_max), col(q), col(q) * ones(n_r)])
    valid = np.hstack([ones(1 + n_ch + res.cc1c_points + res.cv_points + n_r).astype(bool), valid_d,
                       ones(1 + n_r).astype(bool)])

    # ---- temperature: first-order response to I^2 R heating, vectorised over cycles
    heat = np.where(current > 0, 0.16, 0.34) * current**2 * r_rel[:, None]
    temp = np.empty_like(t)
    t_prev = t[:, 0].copy()
    temp_prev = plan.ambient + 0.3 + 0.05 * rng.standard_normal(n_cyc)
    temp[:, 0] = temp_prev
    tau_t = 4.0
    for k in range(1, t.shape[1]):
        ok = valid[:, k]
        target = plan.ambient + heat[:, k]
        new = target + (temp_prev - target) * np.exp(-(t[:, k] - t_prev) / tau_t)
        temp_prev = np.where(ok, new, temp_prev)
        t_prev = np.where(ok, t[:, k], t_prev)
        temp[:, k] = temp_prev

    # ---- flatten (cycle-major) and add measurement noise
    flat = valid.ravel()
    n_rows = int(flat.sum())
    cyc_rows = np.repeat(cyc, valid.sum(axis=1))
    t_f = t.ravel()[flat]
    i_f = current.ravel()[flat] * (1 + 2e-4 * rng.standard_normal(n_rows))
    v_f = np.clip(voltage.ravel()[flat] + 5e-5 * rng.standard_normal(n_rows), CUTOFF_VOLTAGE, CV_VOLTAGE)
    qc_f = qc_row.ravel()[flat]
    qd_f = qd_row.ravel()[flat]
    temp_f = temp.ravel()[flat] + 0.02 * rng.standard_normal(n_rows)

    # ---- dQ/dV of each cycle on a fixed voltage grid (cycle 0: zeros, like the real batch-1 cycle 0)
    x_fine = np.linspace(0, 1, 257)
    v_fine = _discharge_voltage(x_fine[None, :], eta[:, None])
    v_grid = np.linspace(*DQDV_GRID, res.dqdv_len)
    dqdv = np.zeros((n_cyc, res.dqdv_len))
    for c in range(1, n_cyc):
        q_grid = q[c] * np.interp(v_grid, v_fine[c, ::-1], x_fine[::-1])
        dqdv[c] = np.gradient(q_grid, v_grid)

    # cycle 0 opens with all-zero rows at time 0
    nz = res.zero_rows
    cyc_rows = np.concatenate([np.zeros(nz, np.int64), cyc_rows])
    z = np.zeros(nz)
    t_f, i_f, v_f = np.concatenate([z, t_f]), np.concatenate([z, i_f]), np.concatenate([z, v_f])
    qc_f, qd_f, temp_f = np.concatenate([z, qc_f]), np.concatenate([z, qd_f]), np.concatenate([z, temp_f])
    n_rows += nz
    starts = np.flatnonzero(np.diff(cyc_rows, prepend=-1))
    pos = np.arange(n_rows) - np.repeat(starts, np.diff(np.append(starts, n_rows)))
    has_dq = pos < res.dqdv_len
    dq_vals = np.zeros(n_rows)
    dq_vals[has_dq] = dqdv[cyc_rows[has_dq], pos[has_dq]]

    quart = parse_charge_policy(plan.policy)
    life = plan.cycle_life
    data = {
        "cell_key": pa.array([plan.cell_key] * n_rows, pa.string()),
        "cycle_number": pa.array(cyc_rows.astype(np.int64)),
        "time": pa.array(_rounded(t_f, 6)),
        "cycle_life": pa.array(np.full(n_rows, life, np.int64)),
        "discharge_policy": pa.array(np.full(n_rows, 400, np.int64)),
        "current": pa.array(_rounded(i_f, 6)),
        "voltage": pa.array(_rounded(v_f, 6)),
        "charge_capacity": pa.array(_rounded(qc_f, 7)),
        "discharge_capacity": pa.array(_rounded(qd_f, 7)),
        "temperature": pa.array(_rounded(temp_f, 4)),
        "batch_number": pa.array(np.full(n_rows, plan.batch_number, np.int64)),
        "discharge_dQdV": pa.array(_rounded(dq_vals, 6), mask=~has_dq),
    }
    for k, val in enumerate(quart, 1):
        data[f"charge_policy_Q{k}"] = pa.array(np.full(n_rows, val))
    return pa.table(data)


def generate(size: SizeName | SizeSpec, seed: int, n_cells: int | None = None,
             last_cycle: int | None = None) -> Iterator[tuple[CellPlan, "object"]]:
    """``(plan, table)`` per cell, in cell order (for in-memory use, e.g. tests and notebooks)."""
    spec = resolve_size(size, n_cells, last_cycle)
    for plan in plan_cells(spec.n_cells, seed):
        yield plan, generate_cell(plan, spec, seed)


def resolve_size(size: SizeName | SizeSpec, n_cells: int | None = None, last_cycle: int | None = None) -> SizeSpec:
    spec = SIZES[size] if isinstance(size, str) else size
    if n_cells is not None or last_cycle is not None:
        spec = SizeSpec(n_cells=n_cells or spec.n_cells,
                        last_cycle=last_cycle if last_cycle is not None else spec.last_cycle,
                        resolution=spec.resolution)
    return spec


# ------------------------------------------------------------------------------------------- the stage
class GenerateDataConfig(StageConfig):
    stage = "generate-data"

    size: SizeName = Field("tiny", description="tiny: 8 cells x 121 cycles (~33k rows, unit tests); demo: 56 "
                           "cells x 131 cycles (~250k rows, the README run); bench: 124 cells x whole life at finer "
                           "logging (~15M rows, benchmarks)")
    seed: int = Field(0, description="random seed; the same seed gives byte-identical files")
    n_cells: int | None = Field(None, gt=0, description="override the size's number of cells")
    last_cycle: int | None = Field(None, ge=1, description="override the last recorded cycle "
                                   "(cycle_life stays the true end of life)")
    row_group_size: int = Field(1 << 20, gt=0, description="rows per Parquet row group")
    progress: bool = Field(True, description="progress bar on stderr")


class GenerateDataResult(BaseModel):
    output_uri: str
    size: str
    seed: int
    n_cells: int
    n_rows: int
    n_cycles: int
    cycle_life_min: int
    cycle_life_max: int
    manifest_uri: str
    seconds: float


def run_generate_data(config: GenerateDataConfig, output_uri: str, overwrite: bool = False) -> GenerateDataResult:
    """Generate the synthetic dataset into ``output_uri`` (the unified Parquet layout, like ingest output)."""
    from msenc_lib import __version__, layout, storage
    from msenc_lib.data.unified import write_cell_parquet, write_unified_manifest
    from msenc_lib.data.validate import UnifiedValidator
    from msenc_lib.progress import progress_bar

    start = time.perf_counter()
    spec = resolve_size(config.size, config.n_cells, config.last_cycle)
    plans = plan_cells(spec.n_cells, config.seed)
    validator = UnifiedValidator(f"generate-data(size={config.size}, seed={config.seed})",
                                 row_meaning="1-based row of the cell")
    cells, n_rows, n_cycles, schema = [], 0, 0, None
    with storage.publish(output_uri, overwrite=overwrite) as staging:
        for plan in progress_bar(plans, len(plans), "generating cells", config.progress):
            table = validator.validate_batch(generate_cell(plan, spec, config.seed), 0)
            schema = table.schema
            fname = layout.cell_file_name(plan.cell_key)
            write_cell_parquet(table, staging / fname, config.row_group_size)
            n = recorded_cycles(plan, spec)
            cells.append({"cell_key": plan.cell_key, "file": fname, "rows": table.num_rows, "cycles": n,
                          "cycle_life": plan.cycle_life, "charge_policy": plan.policy})
            n_rows += table.num_rows
            n_cycles += n
        write_unified_manifest(staging, {
            "created_by": f"msenc {__version__} generate-data",
            "source": {"kind": "synthetic", "size": config.size, "seed": config.seed,
                       "n_cells": spec.n_cells, "last_cycle": spec.last_cycle,
                       "resolution": spec.resolution.__dict__},
        }, cells, schema, validator.report.warnings)
    lives = [c["cycle_life"] for c in cells]
    return GenerateDataResult(
        output_uri=str(output_uri), size=config.size, seed=config.seed, n_cells=len(cells), n_rows=n_rows,
        n_cycles=n_cycles, cycle_life_min=min(lives), cycle_life_max=max(lives),
        manifest_uri=storage.join(str(output_uri), layout.UNIFIED_MANIFEST),
        seconds=round(time.perf_counter() - start, 3),
    )
