"""Configuration and result of the ``evaluate`` stage (pydantic only: cheap to import for the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from msenc_lib.config import StageConfig

TaskName = Literal["cycle_life", "early_curve", "rul", "capacity"]
AggregateName = Literal["mean", "delta", "std", "first", "last", "slope", "delta_norm"]

# Feature sets. Tabular: one vector per row; sequence: one vector per cycle up to the row's cycle.
TABULAR_SETS: dict[str, str] = {
    "none": "no features (the dummy model predicts the train mean)",
    "variance": "Severson's variance feature: log10 var of dQ_N-ref(V)",
    "discharge": "Severson's 6 discharge features",
    "full": "Severson's full set (9 with internal resistance, 7 without)",
    "qdv": "the dQ(V) curve, Qd_N(V) - Qd_ref(V) on 1000 voltage points (BatteryML's input of Ridge/PCR/PLSR/GPR/"
           "XGBoost/RF/MLP)",
    "embedding": "the encoder's per-cycle embeddings aggregated over the cell's cycles up to N",
    "random": "control: seeded N(0,1) numbers in place of the embeddings, aggregated the same way",
}
SEQUENCE_SETS: dict[str, str] = {
    "qdv_seq": "per cycle up to N: Qd_c(V) - Qd_ref(V) on 100 voltage points (BatteryML's LSTM input)",
    "embedding_seq": "per cycle up to N: the encoder's embedding of the cycle (the LSTM head's input)",
}
FINETUNE_SETS: dict[str, str] = {
    "finetuned": "per cycle (every finetune_stride-th) up to N: the cycle's token sequence through the pretrained "
                 "encoder, pooled as embed does; encoder and LSTM head trained end to end (needs finetune)",
}
FINETUNED_ROW = "finetuned/lstm"
CAPACITY_SETS: dict[str, str] = {
    "none": "no model: persistence, capacity(c + k) = capacity(c)",
    "embedding": "the embedding of cycle c",
    "random": "control: seeded N(0,1) numbers of the embedding's size",
    "capacity_history": "hand features: capacity of cycle c, its change over the last 10 cycles, and c",
}
TABULAR_MODELS = ("dummy", "linear", "elastic_net", "ridge", "pcr", "plsr", "gpr", "svr", "gradient_boosting",
                  "random_forest", "mlp")
SEQUENCE_MODELS = ("lstm", "cnn")
BASELINE_MODELS = ("persistence",)
SEVERSON_SETS: tuple[str, ...] = ("variance", "discharge", "full")
EMBEDDING_SETS: tuple[str, ...] = ("embedding", "embedding_seq", "finetuned")

# BatteryML's table order (README: Dummy, Variance, Discharge, Full, Ridge, PCR, PLSR, GPR, XGBoost, RF, MLP, CNN,
# LSTM), then the rows BatteryML has no config for (SVR, Severson's own elastic net), the embedding heads and the
# random control.
DEFAULT_ROWS = [
    "none/dummy", "variance/linear", "discharge/linear", "full/linear", "qdv/ridge", "qdv/pcr", "qdv/plsr",
    "qdv/gpr", "qdv/gradient_boosting", "qdv/random_forest", "qdv/mlp", "qdv_seq/cnn", "qdv_seq/lstm",
    "qdv/svr", "variance/elastic_net", "discharge/elastic_net", "full/elastic_net",
    "embedding/elastic_net", "embedding/ridge", "embedding/pcr", "embedding/plsr", "embedding/random_forest",
    "embedding_seq/lstm", "random/elastic_net", "random/random_forest",
]
DEFAULT_CURVE_ROWS = ["none/dummy", "variance/linear", "discharge/linear", "qdv/plsr", "variance/elastic_net",
                      "embedding/elastic_net", "embedding/plsr", "embedding/random_forest"]
DEFAULT_CAPACITY_ROWS = ["none/persistence", "capacity_history/linear", "embedding/elastic_net", "embedding/ridge",
                         "embedding/random_forest", "random/elastic_net"]


def check_row(row: str, sets: dict[str, str], models: tuple[str, ...], what: str) -> str:
    fs, sep, model = row.partition("/")
    if not sep or fs not in sets or model not in models:
        raise ValueError(f"{what} row {row!r}: use <feature set>/<model> with a feature set of {sorted(sets)} and a "
                         f"model of {list(models)}")
    return row


class EvaluateConfig(StageConfig):
    """Downstream evaluation of embeddings (design.md §7)."""

    stage = "evaluate"

    tasks: list[TaskName] = Field(
        default_factory=lambda: ["cycle_life", "early_curve", "rul", "capacity"],
        description="cycle_life: battery-level cycle life from the first N cycles; early_curve: the same for N in "
        "early_cycles, each scored; rul: remaining useful life (cycles until the capacity falls below "
        "eol_fraction of nominal) at cycles rul_min_cycle, +rul_stride, ...; capacity: capacity `horizon` cycles "
        "ahead")
    split_preset: str | None = Field(
        None, description="a standard split instead of the split config (msenc_lib.split_presets): severson, "
        "BatteryML's matr1, matr2, clo, hust, snl, cruh, crush, mix, BatteryLife's batterylife-<dataset> (e.g. "
        "batterylife-matr, batterylife-li-ion; their test cells are also scored as test_seen / test_unseen)")
    allow_missing_cells: bool = Field(
        False, description="split preset: a cell it lists but the data lacks is an error; true: leave it out with "
        "a warning")
    first_cycles: int = Field(
        100, ge=2, description="N of the cycle_life task: features use cycles <= N only (Severson, BatteryML: 100)")
    early_cycles: list[int] = Field(
        default_factory=lambda: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        description="the early-prediction curve: cycle life from the first N cycles for each N")
    min_cycle: int = Field(
        1, ge=0, description="first cycle used (cycle 0 is a partial formation cycle in Severson-like data: it "
        "opens with all-zero rows)")
    ref_cycle: int = Field(
        10, ge=1, description="reference cycle of dQ(V) = Qd_N(V) - Qd_ref(V) (Severson: 10); for N <= ref_cycle "
        "the reference is N // 2")
    rows: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ROWS),
        description="cycle_life and rul: the <feature set>/<model> rows, in the report's order (default: "
        "BatteryML's table order, then Severson's elastic net, the embedding heads, the random control). Feature "
        f"sets {list(TABULAR_SETS)} with models {list(TABULAR_MODELS)}; {list(SEQUENCE_SETS)} with "
        f"{list(SEQUENCE_MODELS)}; {FINETUNED_ROW} (cycle_life only) with finetune")
    curve_rows: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CURVE_ROWS),
        description="early_curve: the rows scored at every N (each costs len(early_cycles) fits per seed)")
    capacity_rows: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CAPACITY_ROWS),
        description=f"capacity: rows of feature sets {list(CAPACITY_SETS)} with models {list(TABULAR_MODELS)}; "
        "none/persistence is the model-free baseline")
    seeds: int = Field(
        3, ge=1, description="model fits per row, seeds seed, seed+1, ...: every figure is the mean and standard "
        "deviation over them (CV folds, forests, networks and the random control change with the seed)")
    seed: int = Field(42, description="first seed")
    alphas: list[float] = Field(
        default_factory=lambda: [0.10, 0.15],
        description="alpha-accuracy levels (BatteryLife): share of predictions within alpha x the true value, reported in percent")
    aggregation: list[AggregateName] = Field(
        default_factory=lambda: ["mean", "delta", "delta_norm"],
        description="how a cell's per-cycle embeddings (cycles min_cycle..N) become one vector, concatenated: "
        "mean; delta = mean of the last `delta_window` cycles minus mean of the first (the change over early "
        "life, like Severson's dQ_N-10); delta_norm = log10 of that change's norm (one number, like log var "
        "dQ); std; slope = per-dimension least-squares slope over the cycles; first / last = mean of the "
        "first / last window")
    delta_window: int = Field(
        10, ge=1, description="cycles in each end window of the delta/first/last aggregates")
    eol_fraction: float = Field(
        0.8, gt=0, lt=1, description="rul: end of life = first cycle whose discharge capacity is below this share "
        "of the nominal capacity (BatteryML/BatteryLife: 0.8; 0.9 for CRUSH, SNL, CALB)")
    rul_min_cycle: int = Field(20, ge=1, description="rul: first cycle c a prediction is made at")
    rul_max_cycle: int = Field(300, ge=1, description="rul: last cycle c a prediction is made at")
    rul_stride: int = Field(10, ge=1, description="rul: a prediction every this many cycles")
    horizon: int = Field(
        20, ge=1, description="capacity task: predict the capacity of cycle c+horizon from cycle c")
    capacity_column: str = Field(
        "charge_capacity", description="capacity task target: max of this unified column per (cell, cycle)")
    capacity_stride: int = Field(
        5, ge=1, description="capacity task: use every n-th cycle (from min_cycle) as a starting cycle c")
    cv_folds: int = Field(
        5, ge=2, description="cross-validation folds on the train cells (grouped by cell) for the models' "
        "hyper-parameters; the train subset needs at least this many usable cells")
    en_alphas: list[float] = Field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0],
        description="elastic-net penalty grid (features and target are standardised)")
    en_l1_ratios: list[float] = Field(
        default_factory=lambda: [0.1, 0.5, 0.9, 1.0], description="elastic-net L1 share grid")
    rf_n_estimators: list[int] = Field(default_factory=lambda: [100], description="random-forest trees grid")
    rf_max_depth: list[int] = Field(
        default_factory=lambda: [0], description="random-forest depth grid (0 = unlimited)")
    rf_min_samples_leaf: list[int] = Field(
        default_factory=lambda: [1, 4], description="random-forest minimum samples per leaf grid")
    rf_max_features: list[str] = Field(
        default_factory=lambda: ["sqrt", "1.0"],
        description="random-forest features per split grid: sqrt, log2, or a fraction like 0.5")
    seq_hidden: int = Field(32, ge=1, description="lstm, cnn: hidden size (BatteryML and the original's LSTM head: 32)")
    seq_layers: int = Field(2, ge=1, description="lstm: layers")
    seq_epochs: int = Field(150, ge=1, description="lstm, cnn: full-batch training epochs (AdamW)")
    seq_stride: int = Field(
        5, ge=1, description="lstm, cnn: read every k-th cycle (cycle numbers divisible by k) up to the row's "
        "cycle n: the recurrence costs time per step; 1 = every cycle, as BatteryML")
    seq_lr: float = Field(3e-3, gt=0, description="lstm, cnn: learning rate")
    seq_weight_decay: float = Field(1e-3, ge=0, description="lstm, cnn: AdamW weight decay")
    finetune: bool = Field(
        False, description=f"add the row {FINETUNED_ROW} to cycle_life (after the embedding heads unless rows place "
        "it): the pretrained encoder (the stage's model input, --model-dir) and an LSTM head trained end to end on "
        "the train cells' token sequences (--sequences-dir), early stopping on the validation cells; the head is "
        "first fitted on the frozen encoder's vectors (seq_epochs, the step with the lowest validation error kept). "
        "Costs about finetune_epochs x (train cells x N / finetune_stride) cycle forward+backward passes per seed; "
        "the model folder is only read")
    finetune_stride: int = Field(
        10, ge=1, description="finetune: read every k-th cycle (cycle numbers divisible by k, the window's latest "
        "sequence when that cycle is missing) up to N: bounds the cost")
    finetune_epochs: int = Field(8, ge=1, description="finetune: most passes over the train cells")
    finetune_patience: int = Field(
        2, ge=1, description="finetune: stop after this many epochs without a lower validation RMSE; the best "
        "epoch's weights predict (epoch 0: the head on the frozen encoder)")
    finetune_early_stopping: bool = Field(
        True, description="finetune: select the head's warm-up step and the epoch by the validation cells' error; "
        "false: run all seq_epochs and finetune_epochs and predict with the last weights")
    finetune_lr: float = Field(1e-4, gt=0, description="finetune: the encoder's learning rate (the head's is seq_lr)")
    finetune_batch_cells: int = Field(
        4, ge=1, description="finetune: train cells per optimiser step (memory grows with cells x cycles x tokens)")
    finetune_batch_tokens: int = Field(32_768, gt=0, description="finetune: token budget of one encoder forward "
                                       "pass (padding included)")
    finetune_pooling: str | None = Field(
        None, description="finetune: how token states become a cycle's vector (embed's pooling modes); default: "
        "the pooling recorded with the embeddings (their embed_config.yaml), else mean")
    finetune_device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="finetune: auto = cuda, then mps, then cpu (float32 everywhere)")
    n_jobs: int = Field(1, description="threads for the random-forest trees (-1: all cores); results do not "
                        "depend on it")
    plots: bool = Field(True, description="write PNG plots and inline them in report.html")
    progress: bool = Field(True, description="progress bar on stderr")

    @field_validator("tasks", "aggregation", "rows", "curve_rows", "capacity_rows", "early_cycles", "alphas")
    @classmethod
    def _unique_nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("must name at least one entry")
        return list(dict.fromkeys(v))

    @field_validator("rows", "curve_rows")
    @classmethod
    def _rows(cls, v: list[str], info) -> list[str]:
        for row in v:
            fs, _, model = row.partition("/")
            if fs in FINETUNE_SETS:
                if info.field_name != "rows" or row != FINETUNED_ROW:
                    raise ValueError(f"row {row!r}: the fine-tuned row is {FINETUNED_ROW!r}, in rows (cycle_life) only")
            elif fs in SEQUENCE_SETS:
                check_row(row, SEQUENCE_SETS, SEQUENCE_MODELS, "sequence")
            else:
                check_row(row, TABULAR_SETS, TABULAR_MODELS, "tabular")
            if (fs == "none") != (model == "dummy"):
                raise ValueError(f"row {row!r}: the dummy model takes the feature set 'none', and only it")
        return v

    @field_validator("capacity_rows")
    @classmethod
    def _capacity_rows(cls, v: list[str]) -> list[str]:
        for row in v:
            check_row(row, CAPACITY_SETS, TABULAR_MODELS + BASELINE_MODELS, "capacity")
            fs, _, model = row.partition("/")
            if (fs == "none") != (model in ("dummy", "persistence")):
                raise ValueError(f"capacity row {row!r}: feature set 'none' goes with dummy or persistence only")
        return v

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if any(not 0 < a < 1 for a in v):
            raise ValueError(f"alpha levels must be in (0, 1), got {v}")
        return v

    @field_validator("early_cycles")
    @classmethod
    def _early(cls, v: list[int]) -> list[int]:
        if any(n < 3 for n in v):
            raise ValueError(f"early_cycles must be >= 3, got {v}")
        return sorted(v)

    @field_validator("en_alphas", "en_l1_ratios", "rf_n_estimators", "rf_min_samples_leaf", "rf_max_depth",
                     "rf_max_features")
    @classmethod
    def _grid_nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("a hyper-parameter grid needs at least one value")
        return v

    @field_validator("en_l1_ratios")
    @classmethod
    def _l1_range(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"l1 ratios must be in [0, 1], got {bad}")
        return v

    @field_validator("rf_max_features")
    @classmethod
    def _max_features(cls, v: list[str]) -> list[str]:
        for x in v:
            if x in ("sqrt", "log2"):
                continue
            try:
                f = float(x)
            except ValueError:
                raise ValueError(f"max_features {x!r}: use sqrt, log2 or a fraction in (0, 1]") from None
            if not 0.0 < f <= 1.0:
                raise ValueError(f"max_features {x!r}: a fraction must be in (0, 1]")
        return [str(x) for x in v]

    @field_validator("split_preset")
    @classmethod
    def _preset(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        from msenc_lib.split_presets import preset_names

        if v not in preset_names():
            raise ValueError(f"unknown split preset {v!r}; presets: {', '.join(preset_names())}")
        return v

    @model_validator(mode="after")
    def _finetune(self) -> "EvaluateConfig":
        if FINETUNED_ROW in self.rows and not self.finetune:
            raise ValueError(f"row {FINETUNED_ROW} needs finetune: true (with the model and the token sequences)")
        if not self.finetune:
            return self
        if "cycle_life" not in self.tasks:
            raise ValueError("finetune scores the cycle_life task: add cycle_life to tasks")
        if FINETUNED_ROW not in self.rows:
            rows = list(self.rows)
            embedding = [i for i, r in enumerate(rows) if r.partition("/")[0] in EMBEDDING_SETS]
            control = [i for i, r in enumerate(rows) if r.startswith("random/")]
            rows.insert(embedding[-1] + 1 if embedding else control[0] if control else len(rows), FINETUNED_ROW)
            self.rows = rows
        return self

    @model_validator(mode="after")
    def _windows(self) -> "EvaluateConfig":
        if self.first_cycles <= self.min_cycle:
            raise ValueError(f"first_cycles ({self.first_cycles}) must exceed min_cycle ({self.min_cycle})")
        if self.rul_max_cycle < self.rul_min_cycle:
            raise ValueError(f"rul_max_cycle ({self.rul_max_cycle}) < rul_min_cycle ({self.rul_min_cycle})")
        return self

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def ref_for(self, n: int) -> int:
        """The dQ(V) reference cycle for features from the first ``n`` cycles."""
        return self.ref_cycle if n > self.ref_cycle else max(self.min_cycle, n // 2)


class EvaluateResult(BaseModel):
    """What ``run_evaluate`` did; ``headline`` is flat for a KFP Metrics artifact."""

    output_uri: str
    metrics_uri: str
    report_uri: str
    summary_uri: str = Field(description="summary.md: the headline findings and tables in Markdown")
    plots: list[str] = Field(default_factory=list, description="PNG files written (names under output_uri)")
    tasks: list[str]
    split: str = Field(description="where the split came from: the split config's path or 'preset:<name>'")
    embedding_dim: int
    seeds: int
    n_cells: dict[str, dict[str, int]] = Field(
        description="usable cells per task and subset, e.g. {'cycle_life': {'train': 40, 'test': 12}}")
    n_excluded: dict[str, int] = Field(description="cells excluded per task (reasons in metrics.json)")
    headline: dict[str, float] = Field(
        description="'<task>/<subset>/<feature set>/<model>/<metric>' (mean over seeds) for every non-train "
        "subset: rmse, mae, mape, r2, acc10, acc15 (cycle life and RUL in cycles, capacity in the capacity "
        "column's unit); the early curve as 'early_curve@N/...'")
    key_figures: dict[str, float] = Field(
        description="the few figures a run is judged by (the KFP Metrics artifact): per task the best row's and "
        "the best embedding row's held-out RMSE and the best hand-feature baseline's")
    best: dict[str, str] = Field(
        description="'<task>/<subset>' -> '<feature set>/<model>' with the lowest mean RMSE")
    seconds: float
