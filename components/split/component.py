"""KFP component ``split``: cells -> train / validation / test, reusable split_cfg.json."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from msenc_components import DEFAULT_IMAGE


def split(
    sequences: Input[Dataset],
    subsets: Output[Dataset],
    ratio_train: float = 0.8,
    ratio_validation: float = 0.05,
    seed: int = 0,
    split_config_uri: str = "",
    split_config_fingerprint: str = "",
    preset: str = "",
    config_yaml: str = "",
):
    """Split the preprocessed cells by cell, weighted by tokens (seeded greedy fill as the original).

    ``split_config_uri`` (s3:// or a path) reuses an existing split_cfg.json exactly; ``preset`` "severson"
    is the paper's primary-train / primary-test / secondary-test assignment. ``split_config_fingerprint`` (the
    ``fingerprint`` step's hash of ``split_config_uri``) is not read: it keys KFP's cache to that file's
    content. The output holds split_cfg.json, the three subsets and the tokenizer.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("split"):
        from msenc_lib.kfp_support import annotate, component_config
        from msenc_lib.split import SplitConfig, run_split

        cfg = component_config(SplitConfig, config_yaml, ratio_train=ratio_train, ratio_validation=ratio_validation,
                               seed=seed, preset=preset or None, progress=False)
        result = run_split(cfg, sequences.path, subsets.path, split_config_uri=split_config_uri or None, overwrite=True)
        annotate(subsets, result, ("assignment", "weight_unit"))


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(split, base_image=image, install_kfp_package=False)
