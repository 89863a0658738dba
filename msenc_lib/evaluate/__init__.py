"""The ``evaluate`` stage: downstream value of the embeddings (design.md §7).

Battery level: cycle life from the first N cycles, the encoder's aggregated embeddings vs Severson's
variance / discharge / full feature sets and a random-feature control, elastic net and random forest with
hyper-parameters chosen by cross-validation on the train cells. Cycle level: capacity k cycles ahead from
the embedding of a cycle vs a persistence baseline and the random control. Output: ``metrics.json``,
prediction tables, PNG plots and one self-contained ``report.html``.

The config is :mod:`.config`; the stage function (:mod:`.stage`, which needs pandas and scikit-learn) is
imported on first use, so that importing the package for its config stays cheap.
"""

from msenc_lib.evaluate.config import EvaluateConfig, EvaluateResult

__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate"]


def __getattr__(name: str):
    if name == "run_evaluate":
        from msenc_lib.evaluate.stage import run_evaluate

        return run_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
