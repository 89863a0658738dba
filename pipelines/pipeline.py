"""The msenc Kubeflow pipeline: data -> preprocess (training + embedding modes) -> split -> train -> embed
-> evaluate [-> export].

``build_pipeline(options)`` returns the ``@dsl.pipeline`` function for the compile-time settings in
:class:`PipelineOptions`: the step image and the GPU job image, the storage Secret every step gets its S3
credentials from (kfp-kubernetes ``use_secret_as_env``), each step's CPU/memory requests and limits, node
placement, and the train step's accelerator when it trains on a GPU in its own pod. ``msenc pipeline compile``
writes it to YAML; the committed ``pipelines/msenc_pipeline.yaml`` is built with the defaults (placeholder
registry images: compile your own with ``--image``/``--job-image``).

Caching: KFP reuses a step's outputs when its parameters and input artifacts match an earlier execution. The
steps that read external URIs whose content can change are keyed to that content: an uncached
``fingerprint`` step hashes ``data_source_uri`` / ``split_config_uri`` and passes the hash to the reader.
``train`` (warm starts read ``init_model_uri``; GPU time) and ``export`` (writes outside the pipeline root)
never use the cache.

Retries: every step is retried ``RETRIES`` times with exponential backoff. KFP (Argo underneath) retries a
failed task whatever its exit status, and neither the SDK nor the IR can limit retries to some statuses; so
the policy is sized for what a retry can fix (an unreachable or throttling object store, exit 138; a killed
or evicted pod) and stays cheap for what it cannot: a step that fails on bad input (3), config (2) or a
permanent environment fault (4) fails the same way, with the same one-line message, in its retries. Every
step is idempotent (it publishes its output whole, replacing an unfinished one), so a retry never mixes
outputs.
"""

from typing import Optional

from kfp import dsl, kubernetes
from kfp.dsl import HTML
from pydantic import BaseModel, Field, field_validator

from msenc_components import DEFAULT_IMAGE, DEFAULT_JOB_IMAGE
from msenc_components.data.component import build as build_data
from msenc_components.embed.component import build as build_embed
from msenc_components.evaluate.component import build as build_evaluate
from msenc_components.export.component import build as build_export
from msenc_components.fingerprint.component import build as build_fingerprint
from msenc_components.preprocess.component import build as build_preprocess
from msenc_components.split.component import build as build_split
from msenc_components.train.component import build as build_train
from msenc_lib.launch.base import parse_key_values, parse_toleration, quantity

PIPELINE_NAME = "msenc"
DEFAULT_TARGETS = "charge_policy_Q1,charge_policy_Q2,charge_policy_Q3,charge_policy_Q4,charge_capacity"
# Left out of the token streams by default: the cycle-life label itself (it would leak the target into the
# embeddings) and two columns that are constant in Severson-style data.
DEFAULT_EXCLUDED = "cycle_life,discharge_policy,batch_number"
# A transient storage fault gets about 30 s + 60 s to clear before the step fails for good.
RETRIES = 2
RETRY_BACKOFF = dict(backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")
STEPS = ("fingerprint", "data", "preprocess", "split", "train", "embed", "evaluate", "export")


class StepResources(BaseModel):
    """CPU and memory of one step's pod (Kubernetes quantities). Requests keep it out of the BestEffort class
    (evicted first); limits bound what a runaway step takes from the node."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    @classmethod
    def _quantity(cls, v: str) -> str:
        return quantity(v)


DEFAULT_RESOURCES: dict[str, StepResources] = {
    step: StepResources(cpu_request=c[0], cpu_limit=c[1], memory_request=c[2], memory_limit=c[3])
    for step, c in {
        "fingerprint": ("100m", "500m", "256Mi", "512Mi"),
        "data": ("1", "2", "2Gi", "4Gi"),
        "preprocess": ("2", "4", "4Gi", "8Gi"),
        "split": ("500m", "1", "2Gi", "4Gi"),
        "train": ("2", "4", "8Gi", "16Gi"),
        "embed": ("2", "4", "8Gi", "16Gi"),
        "evaluate": ("1", "2", "4Gi", "8Gi"),
        "export": ("500m", "1", "1Gi", "2Gi"),
    }.items()
}


class PipelineOptions(BaseModel):
    """Compile-time settings of the package (``msenc pipeline compile`` flags)."""

    image: str = Field(DEFAULT_IMAGE, description="msenc CPU image of every step")
    job_image: str = Field(DEFAULT_JOB_IMAGE, description="msenc CUDA image: default of the job_image run "
                           "parameter (PyTorchJob pods) and the image of a GPU train step")
    storage_secret: str = Field("msenc-storage", description="Secret injected as S3 credentials into every step; "
                                "default of the storage_secret run parameter (the training pods' Secret)")
    access_key_key: str = Field("AWS_ACCESS_KEY_ID", description="Secret key holding the access key id")
    secret_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="Secret key holding the secret access key")
    endpoint_key: str = Field("AWS_ENDPOINT_URL", description="optional Secret key holding the S3 endpoint "
                              "(empty: none)")
    region_key: str = Field("AWS_DEFAULT_REGION", description="optional Secret key holding the region (empty: none)")
    s3_endpoint: str = Field("", description="S3 endpoint URL set literally in every step and training pod "
                             "instead of the Secret's endpoint key (not a secret)")
    resources: dict[str, StepResources] = Field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of every step")
    tolerations: list[str] = Field(default_factory=list, description="tolerations of every step")
    train_gpus: int = Field(0, ge=0, description="GPUs of the train step's own pod (backend=local on a GPU "
                            "node): it then runs on job_image with an accelerator limit")
    accelerator_type: str = Field("nvidia.com/gpu", description="accelerator resource of a GPU train step")
    train_node_selector: dict[str, str] = Field(default_factory=dict, description="extra nodeSelector of the "
                                                "train step")
    train_tolerations: list[str] = Field(default_factory=list, description="extra tolerations of the train step")
    trainer_service_account: str = Field("msenc-trainer", description="default of the trainer_service_account "
                                         "run parameter (the PyTorchJob pods' ServiceAccount)")

    @field_validator("node_selector", "train_node_selector", mode="before")
    @classmethod
    def _selector(cls, v):
        return parse_key_values(v)

    @field_validator("tolerations", "train_tolerations")
    @classmethod
    def _tolerations(cls, v: list[str]) -> list[str]:
        for t in v:
            parse_toleration(t)
        return v

    @field_validator("resources")
    @classmethod
    def _steps(cls, v: dict[str, StepResources]) -> dict[str, StepResources]:
        unknown = set(v) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(sorted(unknown))} (steps: {', '.join(STEPS)})")
        return {**DEFAULT_RESOURCES, **v}


def _platform(task: dsl.PipelineTask, step: str, opts: PipelineOptions, train: bool = False) -> dsl.PipelineTask:
    """Storage credentials, resources, placement and the retry policy of one step's pod."""
    task.set_retry(num_retries=RETRIES, **RETRY_BACKOFF)
    kubernetes.use_secret_as_env(task, opts.storage_secret, {opts.access_key_key: "AWS_ACCESS_KEY_ID",
                                                             opts.secret_key_key: "AWS_SECRET_ACCESS_KEY"})
    optional = {key: env for key, env in ((opts.endpoint_key, "AWS_ENDPOINT_URL"), (opts.region_key, "AWS_DEFAULT_REGION"))
                if key and not (env == "AWS_ENDPOINT_URL" and opts.s3_endpoint)}
    if optional:
        kubernetes.use_secret_as_env(task, opts.storage_secret, optional, optional=True)
    if opts.s3_endpoint:
        task.set_env_variable("AWS_ENDPOINT_URL", opts.s3_endpoint)
    r = opts.resources[step]
    task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
    task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
    selector = {**opts.node_selector, **(opts.train_node_selector if train else {})}
    for key, value in selector.items():
        kubernetes.add_node_selector(task, key, value)
    for spec in [*opts.tolerations, *(opts.train_tolerations if train else [])]:
        t = parse_toleration(spec)
        kubernetes.add_toleration(task, key=t["key"], operator=t["operator"], value=t.get("value"),
                                  effect=t.get("effect"))
    return task


def build_pipeline(options: Optional[PipelineOptions] = None):
    opts = options or PipelineOptions()
    image = opts.image
    fingerprint_op, data_op, preprocess_op, split_op = (build_fingerprint(image), build_data(image),
                                                        build_preprocess(image), build_split(image))
    train_op = build_train(opts.job_image if opts.train_gpus else image)
    embed_op, evaluate_op, export_op = build_embed(image), build_evaluate(image), build_export(image)

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
        job_image: str = opts.job_image,
        workers: int = 2,
        gpus_per_worker: int = 1,
        job_cpu: str = "4",
        job_memory: str = "16Gi",
        namespace: str = "",
        trainer_service_account: str = opts.trainer_service_account,
        storage_secret: str = opts.storage_secret,
        node_selector: str = "",
        tolerations: str = "",
        embed_targets: str = DEFAULT_TARGETS,
        pooling: str = "mean",
        first_cycles: int = 100,
        horizon: int = 20,
        evaluate_config_yaml: str = "",
        export_uri: str = "",
    ) -> HTML:
        source_hash = fingerprint_op(uri=data_source_uri)
        _platform(source_hash, "fingerprint", opts).set_display_name("fingerprint (data source)")
        source_hash.set_caching_options(False)
        data = data_op(source_uri=data_source_uri, format=data_format, size=data_size, seed=data_seed,
                       source_fingerprint=source_hash.output)
        _platform(data, "data", opts).set_display_name("data")
        unified = data.outputs["unified"]

        training_seqs = preprocess_op(unified=unified, is_training_shuffled=True, time_cutoff=time_cutoff,
                                      exclude_features=exclude_features)
        _platform(training_seqs, "preprocess", opts).set_display_name("preprocess (training)")
        embedding_seqs = preprocess_op(unified=unified, is_training_shuffled=False, time_cutoff=time_cutoff,
                                       exclude_features=exclude_features)
        _platform(embedding_seqs, "preprocess", opts).set_display_name("preprocess (embedding)")

        split_hash = fingerprint_op(uri=split_config_uri)
        _platform(split_hash, "fingerprint", opts).set_display_name("fingerprint (split config)")
        split_hash.set_caching_options(False)
        split = split_op(sequences=training_seqs.outputs["sequences"], ratio_train=ratio_train,
                         ratio_validation=ratio_validation, seed=split_seed, split_config_uri=split_config_uri,
                         split_config_fingerprint=split_hash.output)
        _platform(split, "split", opts).set_display_name("split")

        train = train_op(split=split.outputs["subsets"], preset=preset, max_steps=max_steps, seed=train_seed,
                         init_model_uri=init_model_uri, backend=backend, job_image=job_image, workers=workers,
                         gpus_per_worker=gpus_per_worker, job_cpu=job_cpu, job_memory=job_memory,
                         namespace=namespace, node_selector=node_selector, tolerations=tolerations,
                         service_account=trainer_service_account, storage_secret=storage_secret,
                         access_key_key=opts.access_key_key, secret_key_key=opts.secret_key_key,
                         s3_endpoint=opts.s3_endpoint, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                         step_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, config_yaml=train_config_yaml)
        _platform(train, "train", opts, train=True).set_display_name("train").set_caching_options(False)
        if opts.train_gpus:
            train.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(opts.train_gpus)

        embed = embed_op(sequences=embedding_seqs.outputs["sequences"], model=train.outputs["model"],
                         unified=unified, targets=embed_targets, pooling=pooling)
        _platform(embed, "embed", opts).set_display_name("embed")

        evaluate = evaluate_op(embeddings=embed.outputs["embeddings"], unified=unified,
                               split=split.outputs["subsets"], first_cycles=first_cycles, horizon=horizon,
                               config_yaml=evaluate_config_yaml)
        _platform(evaluate, "evaluate", opts).set_display_name("evaluate")

        with dsl.If(export_uri != "", name="export requested"):
            export = export_op(model=train.outputs["model"], embeddings=embed.outputs["embeddings"],
                               evaluation=evaluate.outputs["evaluation"], export_uri=export_uri,
                               run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            _platform(export, "export", opts).set_display_name("export")
            export.set_caching_options(False)

        return evaluate.outputs["report"]

    return msenc_pipeline


msenc_pipeline = build_pipeline()
