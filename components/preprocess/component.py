"""KFP component ``preprocess``: unified table -> numeric text -> token-id shards + tokenizer."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from msenc_components import DEFAULT_IMAGE


def preprocess(
    unified: Input[Dataset],
    sequences: Output[Dataset],
    is_training_shuffled: bool = True,
    time_cutoff: str = "",
    exclude_features: str = "",
    smooth_charge_capacity: bool = True,
    seed: int = 24,
    workers: int = 1,
    config_yaml: str = "",
) -> NamedTuple("PreprocessOutputs", [("n_sequences", int), ("n_tokens", int)]):
    """Token sequences in the original workflow's text format, stored as token ids.

    ``is_training_shuffled`` true: one sequence per cell (training); false: one per cell and cycle
    (embedding). ``time_cutoff`` and ``exclude_features`` are comma-separated (e.g. "100" keeps cycles
    <= 100). The built-in numeric tokenizer is saved beside the shards. ``config_yaml`` sets further
    PreprocessConfig fields (tokenizer_id, column_time, decimal_precision, ...).
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("preprocess"):
        from collections import namedtuple

        from msenc_lib.kfp_support import annotate, component_config
        from msenc_lib.preprocess import PreprocessConfig, run_preprocess

        cfg = component_config(PreprocessConfig, config_yaml, is_training_shuffled=is_training_shuffled,
                               time_cutoff=time_cutoff, exclude_features=exclude_features,
                               smooth_charge_capacity=smooth_charge_capacity, seed=seed, workers=workers,
                               progress=False)
        result = run_preprocess(cfg, unified.path, sequences.path, overwrite=True)
        annotate(sequences, result, ("n_sequences", "n_tokens", "mode"))
        return namedtuple("PreprocessOutputs", ["n_sequences", "n_tokens"])(result.n_sequences, result.n_tokens)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(preprocess, base_image=image, install_kfp_package=False)
