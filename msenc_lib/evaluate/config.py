"""Configuration and result of the ``evaluate`` stage (pydantic only: cheap to import for the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from msenc_lib.config import StageConfig

TaskName = Literal["cycle_life", "capacity"]
ModelName = Literal["elastic_net", "random_forest"]
AggregateName = Literal["mean", "delta", "std", "first", "last"]
# Feature sets of the cycle-life task: the encoder's embeddings, their random control, Severson's three sets.
CycleLifeFeatureSet = Literal["embedding", "random", "variance", "discharge", "full"]
# Feature sets of the capacity task (the persistence baseline needs no model and is always reported).
CapacityFeatureSet = Literal["embedding", "random"]
SEVERSON_SETS: tuple[str, ...] = ("variance", "discharge", "full")


class EvaluateConfig(StageConfig):
    """Downstream evaluation of embeddings (design.md §7)."""

    stage = "evaluate"

    tasks: list[TaskName] = Field(
        default_factory=lambda: ["cycle_life", "capacity"],
        description="cycle_life: battery-level log10 cycle life from the first cycles; capacity: cycle-level "
        "capacity `horizon` cycles ahead")
    first_cycles: int = Field(
        100, ge=2, description="N: cycle-life features use cycles <= N only (Severson: 100; their dQ(V) "
        "needs N > 10)")
    min_cycle: int = Field(
        1, ge=0, description="first cycle used from the embeddings (cycle 0 is a partial formation cycle in "
        "Severson-like data: it opens with all-zero rows)")
    feature_sets: list[CycleLifeFeatureSet] = Field(
        default_factory=lambda: ["embedding", "random", "variance", "discharge", "full"],
        description="cycle-life feature sets, all fitted on the same cells: embedding (aggregated per cell), "
        "random (seeded N(0,1) control of the embedding's dimension, aggregated the same way), Severson's "
        "variance (1 feature), discharge (6), full (9; 7 without internal resistance)")
    aggregation: list[AggregateName] = Field(
        default_factory=lambda: ["mean", "delta"],
        description="how a cell's per-cycle embeddings (cycles min_cycle..N) become one vector, concatenated: "
        "mean; delta = mean of the last `delta_window` cycles minus mean of the first `delta_window` (the "
        "change over early life, like Severson's dQ_100-10); std; first / last = mean of the first / last "
        "window")
    delta_window: int = Field(
        10, ge=1, description="cycles in each end window of the delta/first/last aggregates")
    models: list[ModelName] = Field(
        default_factory=lambda: ["elastic_net", "random_forest"],
        description="regressors; hyper-parameters chosen by cross-validation on the train cells")
    horizon: int = Field(
        20, ge=1, description="capacity task: predict the capacity of cycle c+horizon from cycle c")
    capacity_column: str = Field(
        "charge_capacity", description="capacity task target: max of this unified column per (cell, cycle)")
    capacity_feature_sets: list[CapacityFeatureSet] = Field(
        default_factory=lambda: ["embedding", "random"],
        description="capacity-task feature sets (the persistence baseline, capacity(c+k) = capacity(c), is "
        "always reported)")
    capacity_stride: int = Field(
        5, ge=1, description="capacity task: use every n-th cycle (from min_cycle) as a starting cycle c; "
        "neighbouring cycles are nearly identical, so this mostly saves time on long histories")
    cv_folds: int = Field(
        5, ge=2, description="cross-validation folds on the train cells (grouped by cell); the train subset "
        "needs at least this many usable cells")
    seed: int = Field(42, description="seed of CV shuffles, random forests and the random-feature control")
    en_alphas: list[float] = Field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0],
        description="elastic-net penalty grid (features and target are standardised, so the scale is "
        "data-independent; 1.0 leaves only the intercept)")
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
    n_jobs: int = Field(1, description="threads for the random-forest trees (-1: all cores); results do not "
                        "depend on it")
    plots: bool = Field(True, description="write PNG plots and inline them in report.html")
    progress: bool = Field(True, description="progress bar on stderr")

    @field_validator("feature_sets", "models", "tasks", "aggregation", "capacity_feature_sets")
    @classmethod
    def _unique_nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("must name at least one entry")
        return list(dict.fromkeys(v))

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

    @model_validator(mode="after")
    def _windows(self) -> "EvaluateConfig":
        severson = [s for s in self.feature_sets if s in SEVERSON_SETS]
        if "cycle_life" in self.tasks and severson and self.first_cycles <= 10:
            raise ValueError(f"first_cycles must be > 10 for the Severson feature sets {severson} "
                             "(their dQ(V) compares cycle N with cycle 10)")
        if self.first_cycles <= self.min_cycle:
            raise ValueError(f"first_cycles ({self.first_cycles}) must exceed min_cycle ({self.min_cycle})")
        return self


class EvaluateResult(BaseModel):
    """What ``run_evaluate`` did; ``headline`` is flat for a KFP Metrics artifact."""

    output_uri: str
    metrics_uri: str
    report_uri: str
    plots: list[str] = Field(default_factory=list, description="PNG files written (names under output_uri)")
    tasks: list[str]
    embedding_dim: int
    n_cells: dict[str, dict[str, int]] = Field(
        description="usable cells per task and subset, e.g. {'cycle_life': {'train': 40, 'test': 12}}")
    n_excluded: dict[str, int] = Field(description="cells excluded per task (reasons in metrics.json)")
    headline: dict[str, float] = Field(
        description="'<task>/<subset>/<feature set>/<model>/<metric>' for every non-train subset: rmse, mae, "
        "mape, r2 (cycle life in cycles, capacity in the capacity column's unit)")
    best: dict[str, str] = Field(
        description="'<task>/<subset>' -> '<feature set>/<model>' with the lowest RMSE")
    seconds: float
