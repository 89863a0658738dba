"""The pipeline's train step: train in the step's own pod, or launch a PyTorchJob from it.

``run_train_step`` is the one library call of the KFP train component. With ``backend="local"`` it runs
:func:`msenc_lib.train.run_train` on the step's local artifact paths (DDP when the pod runs under torchrun).
With ``backend="pytorchjob"`` the training pods cannot see the step's local paths: they get the artifacts'
object-storage URIs (KFP's ``minio://`` made ``s3://``), the train config is written next to the model
artifact for them, and the job writes the model straight to the model artifact's URI. The step's local model
path is then left absent, so KFP's launcher has nothing to upload over it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel

from msenc_lib import layout, storage
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.train import TrainConfig, run_train

BACKENDS = ("local", "pytorchjob")
CONFIG_SUFFIX = f"-config/{layout.TRAIN_CONFIG}"


class TrainStepResult(BaseModel):
    backend: Literal["local", "pytorchjob"]
    model_uri: str
    steps: int
    final_loss: float
    tokens_per_s: float | None = None
    job_name: str | None = None


def final_metrics(model_uri: str) -> tuple[int, float]:
    """(last logged step, its training loss) from a trained model's ``metrics.jsonl``."""
    uri = storage.join(storage.object_uri(model_uri), layout.METRICS_LOG)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise InputDataError(f"{uri}: the training job wrote no metrics") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise InputDataError(f"{uri}, line {n}: not a JSON row") from None
    train_rows = [r for r in rows if "loss" in r]
    if not train_rows:
        return 0, float("nan")
    return int(train_rows[-1]["step"]), float(train_rows[-1]["loss"])


def run_train_step(config: TrainConfig, split_path: str, split_uri: str, model_path: str, model_uri: str, *,
                   backend: str = "local", job: Mapping[str, Any] | None = None,
                   echo: Callable[[str], None] | None = None) -> TrainStepResult:
    """Train on the split artifact into the model artifact (local paths and URIs as KFP gives them).

    ``job`` holds the :class:`~msenc_lib.launch.pytorchjob.PyTorchJobConfig` fields of the PyTorchJob
    (image, workers, gpus_per_worker, namespace, node_selector "k=v,...", tolerations, storage_secret,
    service_account, cpu, memory, run_id, step_name, ...); empty values mean the field's default.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "local":
        result = run_train(config, split_path, model_path)
        return TrainStepResult(backend="local", model_uri=model_uri, steps=result.steps, final_loss=result.final_loss,
                               tokens_per_s=result.tokens_per_s)

    from msenc_lib.launch.pytorchjob import PyTorchJobConfig, run_pytorchjob

    fields = {k: v for k, v in dict(job or {}).items() if v not in (None, "")}
    if not fields.get("image"):
        raise ConfigError("backend 'pytorchjob' needs the image of the training pods (job_image): the msenc CUDA "
                          "image in a registry the cluster pulls from")
    output_uri = storage.object_uri(model_uri)
    config_uri = output_uri.rstrip("/") + CONFIG_SUFFIX
    job_config = PyTorchJobConfig.load({**fields, "data_uri": split_uri, "output_uri": output_uri,
                                        "train_config": config_uri, "max_steps": config.max_steps}, environ={})
    config.save(config_uri)
    launched = run_pytorchjob(job_config, echo=echo)
    steps, loss = final_metrics(launched.model_uri)
    return TrainStepResult(backend="pytorchjob", model_uri=launched.model_uri, steps=steps, final_loss=loss,
                           job_name=launched.job_name)
