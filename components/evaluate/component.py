"""KFP component ``evaluate``: cycle life, early-prediction curve, RUL and capacity vs BatteryML's baselines,
metrics, report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from msenc_components import DEFAULT_IMAGE


def evaluate(
    embeddings: Input[Dataset],
    unified: Input[Dataset],
    split: Input[Dataset],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    first_cycles: int = 100,
    horizon: int = 20,
    seed: int = 42,
    seeds: int = 0,
    config_yaml: str = "",
):
    """Downstream evaluation of the encoder's embeddings on the split's cells.

    Cycle life from the first ``first_cycles`` cycles, the early-prediction curve, remaining useful life and
    capacity ``horizon`` cycles ahead; every row of BatteryML's table (dummy, Severson's models, ridge, PCR,
    PLSR, GPR, gradient boosting, random forest, MLP, CNN, LSTM) beside the embedding heads, mean ± std over
    ``seeds`` fitting seeds (0 keeps the config's: ``config_yaml``'s, else 3). ``config_yaml`` sets further
    EvaluateConfig fields (tasks, rows, grids, ...); ``first_cycles``, ``horizon``, ``seed`` and a non-zero
    ``seeds`` win over it. Writes metrics.json, predictions and plots to ``evaluation``, the key figures and
    held-out means to ``metrics``, the Markdown tables to ``summary`` and the self-contained report to ``report``.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("evaluate"):
        import shutil

        from msenc_lib import layout, storage
        from msenc_lib.evaluate import EvaluateConfig, run_evaluate
        from msenc_lib.kfp_support import component_config, log_metrics

        cfg = component_config(EvaluateConfig, config_yaml, first_cycles=first_cycles, horizon=horizon, seed=seed,
                               progress=False, **({"seeds": seeds} if seeds else {}))
        result = run_evaluate(cfg, embeddings.path, unified.path, storage.join(split.path, layout.SPLIT_CONFIG),
                              evaluation.path, overwrite=True)
        log_metrics(metrics, {**result.key_figures, **result.headline})
        shutil.copyfile(result.report_uri, report.path)
        shutil.copyfile(result.summary_uri, summary.path)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(evaluate, base_image=image, install_kfp_package=False)
