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
    job_cpu: str = "4",
    job_memory: str = "16Gi",
    namespace: str = "",
    node_selector: str = "",
    tolerations: str = "",
    service_account: str = "",
    storage_secret: str = "msenc-storage",
    access_key_key: str = "AWS_ACCESS_KEY_ID",
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY",
    s3_endpoint: str = "",
    run_id: str = "",
    step_name: str = "",
    config_yaml: str = "",
) -> NamedTuple("TrainOutputs", [("steps", int), ("final_loss", float)]):
    """Masked-LM + number-token pretraining of the encoder on the split's train subset.

    ``preset`` (tiny|small|seed) picks the model size; ``max_steps`` 0 keeps the config's value;
    ``init_model_uri`` warm-starts from an earlier model or export location (scheduled retraining).
    ``backend`` "local" trains in this pod; "pytorchjob" runs a Kubeflow Training Operator PyTorchJob of
    ``workers`` pods with ``gpus_per_worker`` GPUs, ``job_cpu``/``job_memory`` each, on ``job_image`` (the
    msenc CUDA image), in ``namespace`` (empty: this pod's), as ``service_account``, with the S3 credentials
    of the Secret ``storage_secret`` (keys ``access_key_key``/``secret_key_key``; endpoint ``s3_endpoint`` or
    the Secret's AWS_ENDPOINT_URL). ``node_selector`` "k=v,k2=v2" and ``tolerations`` "key=value:Effect,..."
    place its pods; ``run_id``/``step_name`` label them. ``config_yaml`` sets further TrainConfig fields.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("train"):
        from collections import namedtuple

        from msenc_lib.kfp_support import annotate, component_config
        from msenc_lib.launch.step import run_train_step
        from msenc_lib.train import TrainConfig

        cfg = component_config(TrainConfig, config_yaml, preset=preset, seed=seed, init_model=init_model_uri or None,
                               progress=False, **({"max_steps": max_steps} if max_steps else {}))
        job = dict(image=job_image, workers=workers, gpus_per_worker=gpus_per_worker, cpu=job_cpu, memory=job_memory,
                   namespace=namespace, node_selector=node_selector, tolerations=tolerations,
                   service_account=service_account, storage_secret=storage_secret, access_key_key=access_key_key,
                   secret_key_key=secret_key_key, s3_endpoint=s3_endpoint, run_id=run_id, step_name=step_name)
        result = run_train_step(cfg, split.path, split.uri, model.path, model.uri, backend=backend, job=job)
        annotate(model, result, ("backend", "steps", "final_loss", "tokens_per_s", "job_name"))
        return namedtuple("TrainOutputs", ["steps", "final_loss"])(result.steps, result.final_loss)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(train, base_image=image, install_kfp_package=False)
