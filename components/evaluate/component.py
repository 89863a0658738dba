"""KFP component ``evaluate``: cycle-life and capacity regression vs Severson baselines, metrics, report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from msenc_components import DEFAULT_IMAGE


def evaluate(
    embeddings: Input[Dataset],
    unified: Input[Dataset],
    split: Input[Dataset],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    first_cycles: int = 100,
    horizon: int = 20,
    seed: int = 42,
    config_yaml: str = "",
):
    """Downstream evaluation of the encoder's embeddings.

    Battery-level cycle life from the first ``first_cycles`` cycles (elastic net and random forest on the
    embeddings vs Severson's variance/discharge/full features and a random control, on the split's cells)
    and cycle-level capacity ``horizon`` cycles ahead. Writes metrics.json, predictions and plots to
    ``evaluation``, the headline held-out metrics to ``metrics`` and the self-contained report to ``report``.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("evaluate"):
        import shutil

        from msenc_lib import layout, storage
        from msenc_lib.evaluate import EvaluateConfig, run_evaluate
        from msenc_lib.kfp_support import component_config, log_metrics

        cfg = component_config(EvaluateConfig, config_yaml, first_cycles=first_cycles, horizon=horizon, seed=seed,
                               progress=False)
        result = run_evaluate(cfg, embeddings.path, unified.path, storage.join(split.path, layout.SPLIT_CONFIG),
                              evaluation.path, overwrite=True)
        log_metrics(metrics, result.headline)
        shutil.copyfile(result.report_uri, report.path)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(evaluate, base_image=image, install_kfp_package=False)
