"""The downstream regressors (elastic net, random forest) with grid-searched hyper-parameters, and metrics.

Both are fitted on the train rows only. Hyper-parameters are chosen by K-fold cross-validation on those
rows, grouped by cell (all rows of a cell fall in the same fold), scored by RMSE in the fitting space
(log10 cycles for cycle life). Elastic net standardises the features AND the target, so its penalty grid
means the same on every dataset.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from msenc_lib.errors import InputDataError

METRIC_NAMES = ("rmse", "mae", "mape", "mse", "r2")


@dataclass
class FitResult:
    model: str
    estimator: Any  # fitted sklearn estimator (predict(X))
    hyperparameters: dict[str, Any]
    cv_rmse: float  # mean over folds, in the fitting space
    cv_folds: int
    n_train_rows: int
    n_train_cells: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(X), dtype=np.float64)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    """RMSE, MAE, MAPE (%), MSE, R²; R² is None for fewer than 2 rows or a constant target."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"metrics need equal, non-empty arrays (got {y_true.shape} and {y_pred.shape})")
    err = y_pred - y_true
    mse = float(np.mean(err**2))
    nonzero = y_true != 0
    mape = float(np.mean(np.abs(err[nonzero] / y_true[nonzero])) * 100.0) if nonzero.any() else None
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if y_true.size >= 2 and ss_tot > 0 else None
    return {"rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(err))), "mape": mape, "mse": mse, "r2": r2}


def _cv_splitter(n_folds: int, groups: np.ndarray, seed: int):
    from sklearn.model_selection import GroupKFold

    try:
        return GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    except TypeError:  # scikit-learn < 1.6: GroupKFold cannot shuffle (folds balanced by group size)
        return GroupKFold(n_splits=n_folds)


def check_cv_cells(n_cells: int, n_folds: int, what: str) -> None:
    if n_cells < n_folds:
        raise InputDataError(
            f"{what}: only {n_cells} usable training cell(s), but {n_folds}-fold cross-validation needs at least "
            f"{n_folds} (add train cells to the split, or lower cv_folds, minimum 2)")


def _elastic_net(seed: int):
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import ElasticNet
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    reg = TransformedTargetRegressor(
        regressor=ElasticNet(max_iter=20_000, random_state=seed, selection="cyclic"),
        transformer=StandardScaler())
    return Pipeline([("scale", StandardScaler()), ("model", reg)])


def _max_features(x: str) -> str | float:
    return x if x in ("sqrt", "log2") else float(x)


def fit_regressor(model: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, cv_folds: int, seed: int,
                  en_alphas: list[float], en_l1_ratios: list[float], rf_n_estimators: list[int],
                  rf_max_depth: list[int], rf_min_samples_leaf: list[int], rf_max_features: list[str],
                  n_jobs: int = 1) -> FitResult:
    """Grid-search ``model`` on (X, y) with folds grouped by ``groups`` (cells), then refit on all of it.

    ``n_jobs`` parallelises the trees of a random forest (threads; results do not depend on it).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    n_cells = len(np.unique(groups))
    check_cv_cells(n_cells, cv_folds, f"{model}")
    if model == "elastic_net":
        estimator = _elastic_net(seed)
        grid = {"model__regressor__alpha": [float(a) for a in en_alphas],
                "model__regressor__l1_ratio": [float(r) for r in en_l1_ratios]}
    elif model == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        estimator = RandomForestRegressor(random_state=seed, n_jobs=n_jobs)
        grid = {"n_estimators": [int(n) for n in rf_n_estimators],
                "max_depth": [None if int(d) <= 0 else int(d) for d in rf_max_depth],
                "min_samples_leaf": [int(m) for m in rf_min_samples_leaf],
                "max_features": [_max_features(m) for m in rf_max_features]}
    else:
        raise ValueError(f"unknown model {model!r}")
    search = GridSearchCV(estimator, grid, scoring="neg_root_mean_squared_error",
                          cv=_cv_splitter(cv_folds, groups, seed), n_jobs=1, refit=True, error_score="raise")
    with warnings.catch_warnings():
        # Tiny penalties on more features than cells converge slowly; those grid points simply lose the CV.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y, groups=groups)
    params = {k.rsplit("__", 1)[-1]: v for k, v in search.best_params_.items()}
    if model == "elastic_net":
        coef = search.best_estimator_.named_steps["model"].regressor_.coef_
        params["n_nonzero_coefficients"] = int(np.count_nonzero(coef))
    return FitResult(model=model, estimator=search.best_estimator_, hyperparameters=_jsonable(params),
                     cv_rmse=float(-search.best_score_), cv_folds=cv_folds, n_train_rows=int(len(y)),
                     n_train_cells=int(n_cells))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
