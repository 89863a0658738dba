"""The msenc Kubeflow pipeline: data -> preprocess (training + embedding modes) -> split -> train -> embed
-> evaluate [-> export].

``build_pipeline(image)`` returns the ``@dsl.pipeline`` function with every component on the msenc image
``image``; ``msenc pipeline compile`` writes it to YAML (the committed ``pipelines/msenc_pipeline.yaml`` is
built with the default image).
"""

from kfp import dsl
from kfp.dsl import HTML

from msenc_components import DEFAULT_IMAGE
from msenc_components.data.component import build as build_data
from msenc_components.embed.component import build as build_embed
from msenc_components.evaluate.component import build as build_evaluate
from msenc_components.export.component import build as build_export
from msenc_components.preprocess.component import build as build_preprocess
from msenc_components.split.component import build as build_split
from msenc_components.train.component import build as build_train

PIPELINE_NAME = "msenc"
DEFAULT_TARGETS = "charge_policy_Q1,charge_policy_Q2,charge_policy_Q3,charge_policy_Q4,charge_capacity"
# Left out of the token streams by default: the cycle-life label itself (it would leak the target into the
# embeddings) and two columns that are constant in Severson-style data.
DEFAULT_EXCLUDED = "cycle_life,discharge_policy,batch_number"


def build_pipeline(image: str = DEFAULT_IMAGE):
    data_op, preprocess_op, split_op = build_data(image), build_preprocess(image), build_split(image)
    train_op, embed_op, evaluate_op, export_op = (build_train(image), build_embed(image), build_evaluate(image),
                                                  build_export(image))

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Multiscale Encoder workflow for battery time-series: unified data -> token sequences -> "
        "cell split -> pretrained hierarchical encoder -> per-cycle embeddings -> cycle-life and capacity "
        "evaluation against Severson's features.",
    )
    def msenc_pipeline(
        data_source_uri: str = "",
        data_format: str = "auto",
        data_size: str = "demo",
        data_seed: int = 0,
        exclude_features: str = DEFAULT_EXCLUDED,
        time_cutoff: str = "",
        ratio_train: float = 0.8,
        ratio_validation: float = 0.05,
        split_seed: int = 0,
        split_config_uri: str = "",
        preset: str = "tiny",
        max_steps: int = 2000,
        train_seed: int = 0,
        init_model_uri: str = "",
        train_config_yaml: str = "",
        backend: str = "local",
        workers: int = 2,
        gpus_per_worker: int = 1,
        node_selector: str = "",
        tolerations: str = "",
        embed_targets: str = DEFAULT_TARGETS,
        pooling: str = "mean",
        first_cycles: int = 100,
        horizon: int = 20,
        export_uri: str = "",
    ) -> HTML:
        data = data_op(source_uri=data_source_uri, format=data_format, size=data_size, seed=data_seed)
        data.set_display_name("data").set_retry(num_retries=2)
        unified = data.outputs["unified"]

        training_seqs = preprocess_op(unified=unified, is_training_shuffled=True, time_cutoff=time_cutoff,
                                      exclude_features=exclude_features)
        training_seqs.set_display_name("preprocess (training)")
        embedding_seqs = preprocess_op(unified=unified, is_training_shuffled=False, time_cutoff=time_cutoff,
                                       exclude_features=exclude_features)
        embedding_seqs.set_display_name("preprocess (embedding)")

        split = split_op(sequences=training_seqs.outputs["sequences"], ratio_train=ratio_train,
                         ratio_validation=ratio_validation, seed=split_seed, split_config_uri=split_config_uri)
        split.set_display_name("split")

        train = train_op(split=split.outputs["subsets"], preset=preset, max_steps=max_steps, seed=train_seed,
                         init_model_uri=init_model_uri, backend=backend, job_image=image, workers=workers,
                         gpus_per_worker=gpus_per_worker, node_selector=node_selector, tolerations=tolerations,
                         config_yaml=train_config_yaml)
        train.set_display_name("train").set_caching_options(False)

        embed = embed_op(sequences=embedding_seqs.outputs["sequences"], model=train.outputs["model"],
                         unified=unified, targets=embed_targets, pooling=pooling)
        embed.set_display_name("embed")

        evaluate = evaluate_op(embeddings=embed.outputs["embeddings"], unified=unified,
                               split=split.outputs["subsets"], first_cycles=first_cycles, horizon=horizon)
        evaluate.set_display_name("evaluate")

        with dsl.If(export_uri != "", name="export requested"):
            export_op(model=train.outputs["model"], embeddings=embed.outputs["embeddings"],
                      evaluation=evaluate.outputs["evaluation"], export_uri=export_uri,
                      run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_display_name("export").set_retry(num_retries=2)

        return evaluate.outputs["report"]

    return msenc_pipeline


msenc_pipeline = build_pipeline()
