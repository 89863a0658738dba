"""KFP component ``train``: pretrain the multiscale encoder, in the step's pod or as a Kubeflow PyTorchJob."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from msenc_components import DEFAULT_IMAGE


def train(
    split: Input[Dataset],
    model: Output[Model],
    preset: str = "seed",
    max_steps: int = 0,
    seed: int = 0,
    init_model_uri: str = "",
    backend: str = "local",
    job_image: str = "",
    workers: int = 2,
    gpus_per_worker: int = 1,
    namespace: str = "",
    node_selector: str = "",
    tolerations: str = "",
    storage_secret: str = "msenc-storage",
    config_yaml: str = "",
) -> NamedTuple("TrainOutputs", [("steps", int), ("final_loss", float)]):
    """Masked-LM + number-token pretraining of the encoder on the split's train subset.

    ``preset`` (tiny|small|seed) picks the model size; ``max_steps`` 0 keeps the config's value;
    ``init_model_uri`` warm-starts from an earlier model (scheduled retraining). ``backend`` "local" trains
    in this pod (DDP under torchrun if launched so); "pytorchjob" runs a Kubeflow Training Operator
    PyTorchJob of ``workers`` pods with ``gpus_per_worker`` GPUs on ``job_image`` (the msenc image),
    reading the split from and writing the model to object storage (credentials from the Secret
    ``storage_secret``); ``node_selector`` "k=v,k2=v2" and ``tolerations`` "key=value:Effect,..." place
    the pods. ``config_yaml`` sets further TrainConfig fields.
    """
    import json
    from collections import namedtuple

    from msenc_lib import storage
    from msenc_lib.kfp_support import annotate, component_config
    from msenc_lib.train import TrainConfig, run_train

    overrides = dict(preset=preset, seed=seed, init_model=init_model_uri or None, progress=False)
    if max_steps:
        overrides["max_steps"] = max_steps
    cfg = component_config(TrainConfig, config_yaml, **overrides)
    outputs = namedtuple("TrainOutputs", ["steps", "final_loss"])

    if backend == "local":
        result = run_train(cfg, split.path, model.path)
        annotate(model, result, ("steps", "final_loss", "tokens_per_s"))
        return outputs(result.steps, result.final_loss)
    if backend != "pytorchjob":
        raise ValueError(f"backend must be 'local' or 'pytorchjob', got {backend!r}")
    if not job_image:
        raise ValueError("backend 'pytorchjob' needs job_image: the msenc image the training pods run")

    from msenc_lib.launch.pytorchjob import PyTorchJobConfig, run_pytorchjob

    output_uri = model.uri  # object storage in a cluster (s3:// or KFP's minio://)
    config_uri = output_uri.rstrip("/") + "-config/train_config.yaml"
    cfg.save(config_uri.replace("minio://", "s3://", 1))
    job = PyTorchJobConfig(
        image=job_image, data_uri=split.uri, output_uri=output_uri, train_config=config_uri,
        workers=workers, gpus_per_worker=gpus_per_worker, namespace=namespace or None,
        node_selector=dict(kv.split("=", 1) for kv in node_selector.split(",") if kv.strip()),
        tolerations=[t.strip() for t in tolerations.split(",") if t.strip()], storage_secret=storage_secret)
    launched = run_pytorchjob(job)
    # the job wrote the model to object storage; copy it into this step's artifact as well
    storage.download(launched.model_uri, model.path)
    metrics = [json.loads(line) for line in open(f"{model.path}/metrics.jsonl") if line.strip()]
    train_rows = [m for m in metrics if "loss" in m]
    model.metadata["pytorchjob"] = launched.job_name
    return outputs(train_rows[-1]["step"] if train_rows else 0, train_rows[-1]["loss"] if train_rows else float("nan"))


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(train, base_image=image, install_kfp_package=False)
