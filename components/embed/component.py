"""KFP component ``embed``: one vector per (cell, cycle) from the trained encoder, targets joined."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from msenc_components import DEFAULT_IMAGE


def embed(
    sequences: Input[Dataset],
    model: Input[Model],
    unified: Input[Dataset],
    embeddings: Output[Dataset],
    targets: str = "charge_policy_Q1,charge_policy_Q2,charge_policy_Q3,charge_policy_Q4,charge_capacity",
    pooling: str = "mean",
    batch_tokens: int = 262144,
    device: str = "auto",
    config_yaml: str = "",
) -> NamedTuple("EmbedOutputs", [("n_rows", int), ("dim", int)]):
    """Embed the embedding-mode sequences (one per cell and cycle) with the trained model: ``pooling``
    (mean|max|first) over real tokens of the last hidden states; ``targets`` (comma-separated unified
    columns) joined as their max per cell and cycle. Writes embeddings.parquet."""
    from msenc_lib.kfp_support import step_errors

    with step_errors("embed"):
        from collections import namedtuple

        from msenc_lib.embed import EmbedConfig, run_embed
        from msenc_lib.kfp_support import annotate, component_config

        cfg = component_config(EmbedConfig, config_yaml, targets=targets, pooling=pooling, batch_tokens=batch_tokens,
                               device=device, progress=False)
        result = run_embed(cfg, sequences.path, model.path, unified.path, embeddings.path, overwrite=True)
        annotate(embeddings, result, ("n_rows", "n_cells", "dim", "tokens_per_s"))
        return namedtuple("EmbedOutputs", ["n_rows", "dim"])(result.n_rows, result.dim)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(embed, base_image=image, install_kfp_package=False)
