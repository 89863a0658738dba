"""The downstream regressors (BatteryML's baselines: dummy, linear, elastic net, ridge, PCR, PLSR, GPR, SVR,
gradient boosting, random forest, MLP), their hyper-parameters, and the metrics.

All are fitted on the train rows only. Where a model has a grid, hyper-parameters are chosen by K-fold cross-validation on those
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


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                       alphas: tuple[float, ...] | list[float] = (0.10, 0.15)) -> dict[str, float | None]:
    """RMSE, MAE, MAPE (%), MSE, R² and, per alpha, ``acc<100 alpha>``: the share (%) of rows with
    |y_pred - y_true| <= alpha * y_true (BatteryLife's alpha-accuracy). R² is None for fewer than 2 rows or a
    constant target; MAPE and alpha-accuracy skip rows whose true value is 0."""
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
    out = {"rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(err))), "mape": mape, "mse": mse, "r2": r2}
    for a in alphas:
        rel = np.abs(err[nonzero]) / np.abs(y_true[nonzero])
        out[alpha_key(a)] = float(np.mean(rel <= a + 1e-12) * 100.0) if nonzero.any() else None
    return out


def alpha_key(alpha: float) -> str:
    """``acc10`` for alpha 0.10."""
    return f"acc{round(alpha * 100):d}"


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


# Models, in BatteryML's table order. Grid entries are searched by grouped CV; the rest are fixed settings
# (BatteryML fixes most of its baselines' hyper-parameters in configs/baselines/sklearn/*).
MODEL_TEXT = {
    "dummy": "dummy (train mean)", "linear": "linear regression", "elastic_net": "elastic net (CV)",
    "ridge": "ridge (CV)", "pcr": "PCR (CV components)", "plsr": "PLSR (CV components)",
    "gpr": "Gaussian process (RBF + white noise)", "svr": "SVR (RBF, CV C)", "gradient_boosting": "gradient boosting",
    "random_forest": "random forest (CV)", "mlp": "MLP (64-32)", "lstm": "LSTM (torch)", "cnn": "CNN (torch)",
    "persistence": "persistence (no model)",
}


def _scaled(model, target: bool = True):
    """StandardScaler on the features (and on the target when ``target``) around ``model``."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    inner = TransformedTargetRegressor(regressor=model, transformer=StandardScaler()) if target else model
    return Pipeline([("scale", StandardScaler()), ("model", inner)])


def _components(n_features: int, n_rows: int, cv_folds: int) -> list[int]:
    limit = max(1, min(n_features, int(n_rows * (cv_folds - 1) / cv_folds) - 1))
    return sorted({k for k in (1, 2, 3, 4, 6, 8, 12, 16) if k <= limit} or {1})


def fit_regressor(model: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, cv_folds: int, seed: int,
                  en_alphas: list[float], en_l1_ratios: list[float], rf_n_estimators: list[int],
                  rf_max_depth: list[int], rf_min_samples_leaf: list[int], rf_max_features: list[str],
                  n_jobs: int = 1) -> FitResult:
    """Fit ``model`` on (X, y): grid-searched with folds grouped by ``groups`` (cells) where it has a grid, then
    refit on all of it. ``n_jobs`` parallelises random-forest trees (threads; results do not depend on it)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    n_cells = len(np.unique(groups))
    grid: dict[str, list] = {}
    if model == "dummy":
        from sklearn.dummy import DummyRegressor

        estimator = DummyRegressor(strategy="mean")
        X = np.zeros((len(y), 1))
    elif model == "linear":
        from sklearn.linear_model import LinearRegression

        estimator = _scaled(LinearRegression(), target=False)
    elif model == "elastic_net":
        from sklearn.linear_model import ElasticNet

        estimator = _scaled(ElasticNet(max_iter=20_000, random_state=seed, selection="cyclic"))
        grid = {"model__regressor__alpha": [float(a) for a in en_alphas],
                "model__regressor__l1_ratio": [float(r) for r in en_l1_ratios]}
    elif model == "ridge":
        from sklearn.linear_model import Ridge

        estimator = _scaled(Ridge())
        grid = {"model__regressor__alpha": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]}
    elif model in ("pcr", "plsr"):
        from sklearn.cross_decomposition import PLSRegression
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import Pipeline

        comps = _components(X.shape[1], n_cells, cv_folds)
        if model == "pcr":
            estimator = _scaled(Pipeline([("pca", PCA(random_state=seed)), ("ols", LinearRegression())]))
            grid = {"model__regressor__pca__n_components": comps}
        else:
            estimator = _scaled(PLSRegression(scale=False))
            grid = {"model__regressor__n_components": comps}
    elif model == "gpr":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0) * RBF(length_scale=float(np.sqrt(max(X.shape[1], 1)))) + WhiteKernel(0.1)
        estimator = _scaled(GaussianProcessRegressor(kernel=kernel, normalize_y=False, random_state=seed))
    elif model == "svr":
        from sklearn.svm import SVR

        estimator = _scaled(SVR(kernel="rbf", gamma="scale", epsilon=0.05))
        grid = {"model__regressor__C": [0.3, 1.0, 3.0, 10.0]}
    elif model == "gradient_boosting":
        from sklearn.ensemble import GradientBoostingRegressor

        estimator = GradientBoostingRegressor(n_estimators=200, learning_rate=0.05, max_depth=3, subsample=0.8,
                                              max_features="sqrt", random_state=seed)
    elif model == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        estimator = RandomForestRegressor(random_state=seed, n_jobs=n_jobs)
        grid = {"n_estimators": [int(n) for n in rf_n_estimators],
                "max_depth": [None if int(d) <= 0 else int(d) for d in rf_max_depth],
                "min_samples_leaf": [int(m) for m in rf_min_samples_leaf],
                "max_features": [_max_features(m) for m in rf_max_features]}
    elif model == "mlp":
        from sklearn.neural_network import MLPRegressor

        estimator = _scaled(MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-2, learning_rate_init=1e-3,
                                         max_iter=3000, random_state=seed))
    else:
        raise ValueError(f"unknown model {model!r}")
    if grid:
        check_cv_cells(n_cells, cv_folds, f"{model}")
    with warnings.catch_warnings():
        # Tiny penalties on more features than cells converge slowly; those grid points simply lose the CV.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if grid:
            search = GridSearchCV(estimator, grid, scoring="neg_root_mean_squared_error",
                                  cv=_cv_splitter(cv_folds, groups, seed), n_jobs=1, refit=True, error_score="raise")
            search.fit(X, y, groups=groups)
            fitted, cv_rmse = search.best_estimator_, float(-search.best_score_)
            params = {k.rsplit("__", 1)[-1]: v for k, v in search.best_params_.items()}
        else:
            fitted, cv_rmse, params = estimator.fit(X, y), float("nan"), {}
    if model == "elastic_net":
        coef = fitted.named_steps["model"].regressor_.coef_
        params["n_nonzero_coefficients"] = int(np.count_nonzero(coef))
    predict = (lambda Z: fitted.predict(np.zeros((len(Z), 1)))) if model == "dummy" else fitted.predict
    return FitResult(model=model, estimator=_Predictor(predict), hyperparameters=_jsonable(params),
                     cv_rmse=cv_rmse, cv_folds=cv_folds if grid else 0, n_train_rows=int(len(y)),
                     n_train_cells=int(n_cells))


@dataclass
class _Predictor:
    fn: Any

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.ravel(self.fn(X))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
