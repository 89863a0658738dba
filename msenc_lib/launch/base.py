"""What every cluster launcher of the training entry point shares.

A launcher runs ``python -m msenc_cli train`` (the same as ``msenc train``) on a cluster: today as a Kubeflow
Training Operator ``PyTorchJob`` (:mod:`msenc_lib.launch.pytorchjob`); Kubeflow Trainer v2 ``TrainJob`` can
be added as another :class:`TrainLauncher` with its own config class, reusing :class:`LaunchConfig`,
:func:`train_command`, :func:`storage_env` and :class:`LaunchResult`.

The training command contract (the train task implements it)::

    python -m msenc_cli train --data-dir <URI> --output-dir <URI> [--config <URI of a train config YAML>]
                              [--preset NAME] [--max-steps N] [--resume]

It reads ``MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK`` (the Training Operator's env) or torchrun's env and
runs DDP when ``WORLD_SIZE > 1``. Data, output and config are ``s3://`` URIs (KFP's ``minio://`` artifact
URIs and ``/minio/...`` mirror paths are normalised by :func:`msenc_lib.storage.object_uri`); the S3
credentials come from the env (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from a Secret, endpoint
``AWS_ENDPOINT_URL``).

Inside a cluster the launcher knows its own pod (:func:`current_pod`): the namespace from the service-account
mount, and in a KFP step the pod's name and UID (``KFP_POD_NAME``/``KFP_POD_UID``), which become the job's
``ownerReference`` so that Kubernetes deletes the job with the step's pod.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

from pydantic import BaseModel, Field, field_validator, model_validator

from msenc_lib import storage
from msenc_lib.config import StageConfig
from msenc_lib.errors import MsencError

# The pod command: the msenc CLI's train subcommand (``msenc train``) run as a module.
TRAIN_ENTRY = ["-m", "msenc_cli", "train"]
# Keys of the storage Secret (manifests/base/storage-secret.template.yaml). The endpoint and region keys
# are optional in the Secret; the credential key names are configurable (e.g. KFP's MinIO Secret uses
# "accesskey"/"secretkey").
SECRET_KEY_ENDPOINT = "AWS_ENDPOINT_URL"
SECRET_KEY_REGION = "AWS_DEFAULT_REGION"
STORAGE_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")

_K8S_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Where every pod finds its namespace and API token.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
RUN_ID_LABEL = "msenc/run-id"
STEP_LABEL = "msenc/step"


class LaunchError(MsencError):
    """The cluster job failed, timed out or could not be created; the message carries the reason."""


class LaunchCancelled(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (a cancelled KFP run) so that cleanup code runs."""


# ----------------------------------------------------------------------------------------- the command
def train_command(data_dir: str, output_dir: str, *, train_config: str | None = None, preset: str | None = None,
                  max_steps: int | None = None, resume: bool = False, extra_args: list[str] | tuple = (),
                  procs_per_node: int = 1) -> list[str]:
    """The container command of one training pod (the contract above).

    With ``procs_per_node > 1`` (several GPUs per pod) the same module runs under torchrun
    (``python -m torch.distributed.run``), which reads the node layout from the operator's env and gives each
    of its processes torchrun's env (RANK, LOCAL_RANK, WORLD_SIZE).
    """
    args = ["--data-dir", data_dir, "--output-dir", output_dir]
    if train_config:
        args += ["--config", train_config]
    if preset:
        args += ["--preset", preset]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if resume:
        args.append("--resume")
    args += list(extra_args)
    if procs_per_node <= 1:
        return ["python", *TRAIN_ENTRY, *args]
    # $(VAR) is expanded by the kubelet from the container's env, which the operator fills in.
    return ["python", "-m", "torch.distributed.run", "--nnodes=$(PET_NNODES)",
            f"--nproc-per-node={procs_per_node}", "--node-rank=$(PET_NODE_RANK)",
            "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", *TRAIN_ENTRY, *args]


def storage_env(secret_name: str, *, access_key_key: str = "AWS_ACCESS_KEY_ID",
                secret_key_key: str = "AWS_SECRET_ACCESS_KEY", endpoint: str | None = None,
                region: str | None = None) -> list[dict[str, Any]]:
    """S3 env of a training container: credentials always by ``secretKeyRef`` (never literal values).

    The endpoint and region are literal values when given, else read from the Secret's optional keys
    ``AWS_ENDPOINT_URL`` / ``AWS_DEFAULT_REGION`` (absent keys leave the variable unset: AWS's default).
    """
    def from_secret(name: str, key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": secret_name, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}

    env = [from_secret("AWS_ACCESS_KEY_ID", access_key_key), from_secret("AWS_SECRET_ACCESS_KEY", secret_key_key)]
    env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint} if endpoint
               else from_secret("AWS_ENDPOINT_URL", SECRET_KEY_ENDPOINT, optional=True))
    env.append({"name": "AWS_DEFAULT_REGION", "value": region} if region
               else from_secret("AWS_DEFAULT_REGION", SECRET_KEY_REGION, optional=True))
    return env


# ------------------------------------------------------------------------------------------ scheduling
def parse_key_value(text: str, what: str = "node selector") -> tuple[str, str]:
    """``key=value`` -> (key, value), checked against Kubernetes label syntax."""
    key, sep, value = str(text).partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError(f"{what} {text!r}: expected key=value")
    if not _QUALIFIED_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise ValueError(f"{what} {text!r}: {key!r} is not a valid label key")
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"{what} {text!r}: {value!r} is not a valid label value")
    return key, value


def parse_key_values(value: Any, what: str = "node selector") -> dict[str, str]:
    """A mapping, or ``"k=v,k2=v2"`` (how CLI flags and pipeline parameters spell it), checked as labels."""
    if isinstance(value, str):
        return dict(parse_key_value(kv, what) for kv in value.split(",") if kv.strip())
    return dict(parse_key_value(f"{k}={v}", what) for k, v in dict(value or {}).items())


def quantity(text: Any) -> str:
    """A Kubernetes resource quantity (``4``, ``500m``, ``16Gi``), checked."""
    v = str(text).strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", v):
        raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return v


def label_value(text: str) -> str:
    """``text`` made a valid label value (63 characters of ``[A-Za-z0-9-_.]``, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", str(text))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def parse_toleration(text: str) -> dict[str, str]:
    """A toleration from ``key=value:Effect``, ``key:Effect``, ``key=value`` or ``key`` (kubectl taint syntax).

    Without ``=value`` the operator is ``Exists`` (any value); without ``:Effect`` it matches every effect.
    """
    spec = str(text).strip()
    body, colon, effect = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if colon and effect not in TAINT_EFFECTS:
        raise ValueError(f"toleration {text!r}: effect must be one of {', '.join(TAINT_EFFECTS)}, got {effect!r}")
    key, eq, value = body.partition("=")
    if not key or not _QUALIFIED_KEY.match(key):
        raise ValueError(f"toleration {text!r}: {key!r} is not a valid taint key")
    tol: dict[str, str] = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError(f"toleration {text!r}: {value!r} is not a valid taint value")
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


# ------------------------------------------------------------------------------------------ the config
class LaunchConfig(StageConfig):
    """Settings every training launcher needs: what to run, on how many pods, with which resources."""

    image: str = Field(description="container image with msenc installed (images/Dockerfile.cuda for GPUs, "
                       "images/Dockerfile for CPUs), as the cluster pulls it: a registry reference, never localhost/")
    data_uri: str = Field(description="s3:// (or minio://) URI of the split dataset (output of `msenc split`)")
    output_uri: str = Field(description="s3:// (or minio://) URI where the trained model is written")
    workers: int = Field(1, ge=1, description="pods in all (1 master + workers-1 workers)")
    gpus_per_worker: int = Field(0, ge=0, description="GPUs per pod (nvidia.com/gpu limit); >1 runs torchrun "
                                 "with one process per GPU")
    namespace: str | None = Field(None, description="namespace of the job; unset: the pod's own namespace in a "
                                  "cluster (service-account mount), else the kubeconfig context's, else 'default'")
    name: str | None = Field(None, description="job name; unset: msenc-train-<time>-<random>")
    train_config: str | None = Field(None, description="s3:// URI of a train config YAML passed to the trainer")
    preset: str | None = Field(None, description="model/training preset passed to the trainer")
    max_steps: int | None = Field(None, ge=1, description="stop training after this many optimizer steps")
    resume: bool = Field(False, description="resume from the checkpoints under the output URI")
    extra_train_args: list[str] = Field(default_factory=list, description="more arguments for the trainer")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods: "
                                          "key=value pairs (\"k=v,k2=v2\" as text)")
    tolerations: list[str] = Field(default_factory=list, description="tolerations of the pods, as "
                                   "key=value:Effect, key:Effect, key=value or key")
    service_account: str | None = Field(None, description="ServiceAccount of the training pods (the trainer's, "
                                        "without API rights: msenc-trainer in manifests/); unset: the "
                                        "namespace's default")
    storage_secret: str = Field("msenc-storage", description="Secret with the S3 credentials (and optionally "
                                "AWS_ENDPOINT_URL / AWS_DEFAULT_REGION) in the job's namespace")
    access_key_key: str = Field("AWS_ACCESS_KEY_ID", description="key of the access key id in the Secret")
    secret_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="key of the secret access key in the Secret")
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL for the pods; unset: the Secret's "
                                    "AWS_ENDPOINT_URL key if present, else AWS")
    s3_region: str | None = Field(None, description="S3 region for the pods; unset: the Secret's "
                                  "AWS_DEFAULT_REGION key if present")
    cpu: str = Field("4", description="CPU request per pod, e.g. 4 or 3500m")
    cpu_limit: str | None = Field(None, description="CPU limit per pod; unset: the request")
    memory: str = Field("16Gi", description="memory request and limit per pod, e.g. 32Gi")
    shm_size: str | None = Field("2Gi", description="size of the in-memory /dev/shm of each pod (NCCL and "
                                 "DataLoader workers need more than the runtime's 64 MB); empty: none")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of the trainer")
    image_pull_policy: str | None = Field(None, description="Always, IfNotPresent or Never; unset: Kubernetes' "
                                          "rule (Always for :latest, else IfNotPresent)")
    run_id: str | None = Field(None, description="pipeline run id, set as the label msenc/run-id of the job "
                               "and its pods (kubectl get pytorchjobs -l msenc/run-id=...)")
    step_name: str | None = Field(None, description="pipeline step name, set as the label msenc/step")
    timeout: float | None = Field(None, gt=0, description="seconds the job may run (its activeDeadlineSeconds) "
                                  "and the launcher waits; unset: setup_allowance_s + max_steps x "
                                  "step_time_budget_s")
    step_time_budget_s: float = Field(10.0, gt=0, description="seconds allowed per training step when the "
                                      "deadline is derived from max_steps")
    setup_allowance_s: float = Field(1800.0, ge=0, description="seconds allowed for scheduling, image pulls "
                                     "and data loading when the deadline is derived")
    deadline_grace_s: float = Field(120.0, ge=0, description="the launcher waits this much longer than the job's "
                                    "deadline, so that the operator's DeadlineExceeded is what it reports")
    keep: bool = Field(False, description="keep the finished job and its pods instead of deleting them; a "
                       "cancelled launch always deletes its job")
    poll_interval: float = Field(5.0, gt=0, description="seconds between two status reads of the job")
    stuck_grace: float = Field(180.0, ge=0, description="seconds a pod may stay in an image-pull or "
                               "container-config error (or the job without pods) before the launch fails")

    @field_validator("data_uri", "output_uri", "train_config")
    @classmethod
    def _object_storage(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            v = storage.object_uri(v)
        except MsencError as e:
            raise ValueError(str(e)) from None
        if not v.startswith(storage.S3_PREFIX) or len(v) <= len(storage.S3_PREFIX):
            raise ValueError("must be an s3:// (or minio://) URI: the training pods cannot see local paths")
        return v

    @field_validator("name")
    @classmethod
    def _k8s_name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 50 or not _K8S_NAME.match(v)):
            raise ValueError("must be a DNS-1035 label of at most 50 characters (lowercase letters, digits, "
                             "'-', starting with a letter): the operator derives pod and service names from it")
        return v

    @field_validator("node_selector", mode="before")
    @classmethod
    def _node_selector(cls, v: Any) -> dict[str, str]:
        return parse_key_values(v)

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: list[str]) -> list[str]:
        for t in v:
            parse_toleration(t)
        return v

    @field_validator("cpu", "cpu_limit", "memory", "shm_size")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        return None if v in (None, "") else quantity(v)

    @field_validator("run_id", "step_name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return label_value(v) or None if v else None

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key in STORAGE_ENV_NAMES:
                raise ValueError(f"{key} is set by the launcher from the storage Secret "
                                 "(use storage_secret, s3_endpoint, s3_region)")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return {k: str(val) for k, val in v.items()}

    @field_validator("image_pull_policy")
    @classmethod
    def _pull_policy(cls, v: str | None) -> str | None:
        if v is not None and v not in ("Always", "IfNotPresent", "Never"):
            raise ValueError("must be Always, IfNotPresent or Never")
        return v

    @model_validator(mode="after")
    def _image_set(self) -> LaunchConfig:
        if not self.image.strip():
            raise ValueError("image must not be empty")
        if self.image.startswith("localhost/"):
            raise ValueError(f"image {self.image!r}: a cluster cannot pull a localhost/ image; push it to a "
                             "registry the nodes reach and use that reference")
        return self

    def command(self) -> list[str]:
        return train_command(self.data_uri, self.output_uri, train_config=self.train_config, preset=self.preset,
                             max_steps=self.max_steps, resume=self.resume, extra_args=self.extra_train_args,
                             procs_per_node=max(self.gpus_per_worker, 1))

    def container_env(self) -> list[dict[str, Any]]:
        env = storage_env(self.storage_secret, access_key_key=self.access_key_key,
                          secret_key_key=self.secret_key_key, endpoint=self.s3_endpoint, region=self.s3_region)
        return env + [{"name": key, "value": value} for key, value in self.env.items()]

    def deadline_s(self) -> int:
        """The job's activeDeadlineSeconds: ``timeout``, else derived from the training budget."""
        if self.timeout is not None:
            return int(math.ceil(self.timeout))
        from msenc_lib.train import TrainConfig

        steps = self.max_steps or TrainConfig.model_fields["max_steps"].default
        return int(math.ceil(self.setup_allowance_s + steps * self.step_time_budget_s))

    def job_labels(self) -> dict[str, str]:
        labels = {"app.kubernetes.io/name": "msenc", "app.kubernetes.io/component": "train",
                  "app.kubernetes.io/managed-by": "msenc-launch"}
        if self.run_id:
            labels[RUN_ID_LABEL] = self.run_id
        if self.step_name:
            labels[STEP_LABEL] = self.step_name
        return labels


# ------------------------------------------------------------------------------------ the launcher's pod
@dataclass(frozen=True)
class PodIdentity:
    """The pod this process runs in (a KFP step): the owner of the jobs it launches."""

    name: str
    uid: str
    namespace: str | None  # None: unknown (no service-account mount)

    def owner_reference(self) -> dict[str, Any]:
        # no blockOwnerDeletion: setting it needs update rights on pods/finalizers, which steps do not have
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid, "controller": False}


def pod_namespace(service_account_dir: str | None = None) -> str | None:
    """The namespace of the pod this process runs in (its service-account mount), else None."""
    path = os.path.join(service_account_dir or SERVICE_ACCOUNT_DIR, "namespace")
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(path):
        with open(path) as f:
            return f.read().strip() or None
    return None


def current_pod(environ: Mapping[str, str] | None = None) -> PodIdentity | None:
    """This KFP step's pod (``KFP_POD_NAME``/``KFP_POD_UID``, set by KFP in every step pod), else None."""
    environ = os.environ if environ is None else environ
    name, uid = environ.get("KFP_POD_NAME"), environ.get("KFP_POD_UID")
    if not (name and uid):
        return None
    return PodIdentity(name=name, uid=uid, namespace=pod_namespace())


# ------------------------------------------------------------------------------------------ the result
class LaunchResult(BaseModel):
    """What a finished launch reports (printed by the CLI as JSON; the KFP train component returns model_uri)."""

    backend: str
    job_name: str
    namespace: str
    state: str = Field(description="final state: Succeeded")
    model_uri: str
    duration_s: float
    kept: bool = False


class TrainLauncher(abc.ABC):
    """One way of running the training entry point on a cluster."""

    backend: ClassVar[str]

    @abc.abstractmethod
    def render(self) -> dict[str, Any]:
        """The cluster object(s) as plain JSON-compatible data (what ``--render`` prints)."""

    @abc.abstractmethod
    def launch(self) -> LaunchResult:
        """Create the job, wait for it, clean up; raise :class:`LaunchError` with the reason on failure."""


# ------------------------------------------------------------------------------------------ cancellation
@contextlib.contextmanager
def sigterm_cancels() -> Iterator[None]:
    """Inside the block, SIGTERM (what Kubernetes sends a cancelled pipeline step) raises
    :class:`LaunchCancelled` in the main thread, so ``finally`` blocks can delete the cluster job.

    Only the first SIGTERM raises; later ones are ignored so that the cleanup they interrupted can finish.
    Outside the main thread (where signal handlers cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):  # noqa: ARG001
        nonlocal fired
        if not fired:
            fired = True
            raise LaunchCancelled(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
