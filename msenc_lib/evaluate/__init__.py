"""The ``evaluate`` stage: downstream value of the embeddings (design.md §7).

Battery level: cycle life from the first N cycles, the encoder's aggregated embeddings vs Severson's
variance / discharge / full feature sets and a random-feature control, elastic net and random forest with
hyper-parameters chosen by cross-validation on the train cells. Cycle level: capacity k cycles ahead from
the embedding of a cycle vs a persistence baseline and the random control. Output: ``metrics.json``,
prediction tables, PNG plots and one self-contained ``report.html``.

Heavy imports (scikit-learn, matplotlib) happen inside the functions, so importing this package is cheap.
"""

from msenc_lib.evaluate.cli import register
from msenc_lib.evaluate.config import EvaluateConfig, EvaluateResult


def run_evaluate(config: EvaluateConfig, embeddings_uri: str, unified_uri: str, split_config_uri: str,
                 output_uri: str, overwrite: bool = False) -> EvaluateResult:
    """See :func:`msenc_lib.evaluate.stage.run_evaluate`."""
    from msenc_lib.evaluate.stage import run_evaluate as _run

    return _run(config, embeddings_uri, unified_uri, split_config_uri, output_uri, overwrite=overwrite)


__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate", "register"]
