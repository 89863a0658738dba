"""Run the training entry point as a Kubeflow Training Operator ``kubeflow.org/v1`` PyTorchJob.

``render_pytorchjob(cfg)`` builds the job (1 Master + ``workers-1`` Workers, container ``pytorch``, GPU
limits, scheduling, S3 credentials by ``secretKeyRef``) with the kubeflow-training SDK's models.
``run_pytorchjob(cfg)`` creates it, follows its conditions (Created -> Running -> Succeeded/Failed) and the
master's log, fails with the job's and the pods' reasons (image pull errors, OOMKilled, unschedulable, ...),
deletes it at the end unless ``keep`` (always when cancelled by SIGTERM/Ctrl-C) and returns the model URI.
``replica_processes(job)`` gives each replica's command and env the way the operator and kubelet set them, so
the rendered commands can be run as local processes.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal, Mapping, Protocol

from pydantic import Field

from msenc_lib.launch.base import (
    LaunchConfig,
    LaunchError,
    LaunchResult,
    TrainLauncher,
    parse_toleration,
    sigterm_cancels,
)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
API_VERSION = f"{GROUP}/{VERSION}"
CONTAINER_NAME = "pytorch"  # the operator looks for this container name
PORT_NAME = "pytorchjob-port"  # ... and this port name for MASTER_PORT
DEFAULT_PORT = 23456
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
GPU_RESOURCE = "nvidia.com/gpu"

# Pod waiting reasons that never heal by themselves, and ones that fail the launch after `stuck_grace`.
FATAL_WAITING = {"InvalidImageName", "ErrImageNeverPull"}
STUCK_WAITING = {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError"}


class PyTorchJobConfig(LaunchConfig):
    """Settings of ``msenc launch pytorchjob`` (and of the pipeline's train step with backend=pytorchjob)."""

    stage: ClassVar[str] = "launch_pytorchjob"

    restart_policy: Literal["Never", "OnFailure", "ExitCode", "Always"] = Field(
        "Never", description="restart policy of the replicas; Never fails fast with the pod's reason, "
        "OnFailure/ExitCode (with --backoff-limit and --resume) survive preempted nodes")
    backoff_limit: int | None = Field(None, ge=0, description="restarts allowed before the job fails")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running", description="pods the operator deletes when the job ends (the launcher deletes the whole "
        "job anyway unless --keep)")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="the operator deletes the finished "
                                                   "job after this many seconds (useful with --keep)")
    master_port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="rendezvous port of the master")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels of the job and its pods")
    istio_sidecar: bool = Field(False, description="allow Istio sidecar injection into the training pods "
                                "(off: a sidecar keeps finished pods alive and can block the rendezvous)")


def default_job_name() -> str:
    return f"msenc-train-{time.strftime('%m%d%H%M')}-{uuid.uuid4().hex[:5]}"


# ------------------------------------------------------------------------------------------- rendering
def _sdk():
    from kubeflow.training import ApiClient, models

    return ApiClient(), models


class _Json:
    """What the SDK's ApiClient.deserialize reads (the body of an HTTP response)."""

    def __init__(self, obj: Any):
        self.data = json.dumps(obj)


def to_model(data: Any, model: str) -> Any:
    """Plain data (camelCase, as in YAML) -> a kubeflow-training / kubernetes model, e.g. ``list[V1EnvVar]``."""
    api, _ = _sdk()
    return api.deserialize(_Json(data), model)


def to_data(model: Any) -> Any:
    """A model -> plain JSON-compatible data with the API's camelCase keys (Nones dropped)."""
    api, _ = _sdk()
    return api.sanitize_for_serialization(model)


def build_pytorchjob(cfg: PyTorchJobConfig, name: str | None = None, namespace: str | None = None):
    """The job as the SDK's ``KubeflowOrgV1PyTorchJob`` model."""
    from kubernetes import client as k8s

    _, m = _sdk()
    name = name or cfg.name or default_job_name()
    namespace = namespace or cfg.namespace  # None: left out, kubectl's current namespace applies
    labels = {"app.kubernetes.io/name": "msenc", "app.kubernetes.io/component": "train",
              "app.kubernetes.io/managed-by": "msenc-launch", **cfg.labels}

    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    if cfg.cpu:
        resources["requests"]["cpu"] = cfg.cpu
    if cfg.memory:
        resources["requests"]["memory"] = cfg.memory
        resources["limits"]["memory"] = cfg.memory
    if cfg.gpus_per_worker:
        resources["limits"][GPU_RESOURCE] = str(cfg.gpus_per_worker)

    mounts, volumes = [], []
    if cfg.shm_size:
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=cfg.shm_size)))

    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=cfg.image,
        image_pull_policy=cfg.image_pull_policy,
        command=cfg.command(),
        env=to_model(cfg.container_env(), "list[V1EnvVar]"),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=cfg.master_port, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(requests=resources["requests"] or None,
                                             limits=resources["limits"] or None),
        volume_mounts=mounts or None,
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False),
    )
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=dict(labels),
            annotations=None if cfg.istio_sidecar else {"sidecar.istio.io/inject": "false"}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=volumes or None,
            node_selector=dict(cfg.node_selector) or None,
            tolerations=to_model([parse_toleration(t) for t in cfg.tolerations], "list[V1Toleration]") or None,
            service_account_name=cfg.service_account,
            security_context=k8s.V1PodSecurityContext(run_as_non_root=True),
        ),
    )

    def replica(count: int):
        return m.KubeflowOrgV1ReplicaSpec(replicas=count, restart_policy=cfg.restart_policy,
                                          template=copy.deepcopy(template))

    replicas = {"Master": replica(1)}
    if cfg.workers > 1:
        replicas["Worker"] = replica(cfg.workers - 1)
    run_policy = m.KubeflowOrgV1RunPolicy(
        clean_pod_policy=cfg.clean_pod_policy,
        active_deadline_seconds=int(math.ceil(cfg.timeout)),
        backoff_limit=cfg.backoff_limit,
        ttl_seconds_after_finished=cfg.ttl_seconds_after_finished,
    )
    return m.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            nproc_per_node=str(max(cfg.gpus_per_worker, 1)),
            run_policy=run_policy,
        ),
    )


def render_pytorchjob(cfg: PyTorchJobConfig, name: str | None = None, namespace: str | None = None) -> dict:
    """The job as plain data (what ``--render`` prints as YAML and what the API receives)."""
    return to_data(build_pytorchjob(cfg, name, namespace))


def render_yaml(job: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(job), sort_keys=False, default_flow_style=False)


# -------------------------------------------------------------------- the replicas as local processes
@dataclass
class ReplicaProcess:
    """One pod of a rendered job, as the operator and the kubelet would start it."""

    replica_type: str  # "Master" or "Worker"
    index: int  # index within its replica type
    rank: int  # node rank (RANK / PET_NODE_RANK): Master 0, Worker i -> i+1
    command: list[str]
    env: dict[str, str]  # the pod's env only: merge it over os.environ to run it locally


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_var_refs(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion in command/args: defined names are replaced, ``$$`` -> ``$``,
    unknown references stay as they are."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def _resolve_env(env_list: list[dict], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in env_list or []:
        if "value" in e:
            out[e["name"]] = expand_var_refs(str(e["value"]), out)
            continue
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            raise LaunchError(f"env {e['name']}: only literal values and secretKeyRef can be emulated locally")
        secret = secrets.get(ref["name"])
        if secret is None or ref["key"] not in secret:
            if ref.get("optional"):
                continue
            # what the kubelet reports as CreateContainerConfigError
            raise LaunchError(f"env {e['name']}: secret {ref['name']!r} has no key {ref['key']!r}")
        out[e["name"]] = str(secret[ref["key"]])
    return out


def replica_processes(job: Mapping[str, Any], *, master_addr: str = "127.0.0.1", master_port: int | None = None,
                      secrets: Mapping[str, Mapping[str, str]] | None = None,
                      python: str | None = None) -> list[ReplicaProcess]:
    """Each replica's command and env of a rendered PyTorchJob, as the Training Operator sets them up.

    The env is the container's own (``secretKeyRef`` resolved from ``secrets``: ``{secret: {key: value}}``)
    followed by what the operator injects: ``MASTER_ADDR`` (here ``master_addr``; in a cluster the master's
    service), ``MASTER_PORT`` (``master_port`` or the container's ``pytorchjob-port``), ``WORLD_SIZE`` (pods x
    nprocPerNode), ``RANK`` and ``PET_NODE_RANK`` (Master 0, Worker i -> i+1), ``PET_NPROC_PER_NODE``,
    ``PET_NNODES``, ``PYTHONUNBUFFERED``. ``$(VAR)`` references in the command are expanded like the kubelet
    does. ``python`` replaces a leading ``python`` in the command (e.g. ``sys.executable``).
    """
    secrets = secrets or {}
    specs = job["spec"]["pytorchReplicaSpecs"]
    unknown = set(specs) - {"Master", "Worker"}
    if unknown or "Master" not in specs:
        raise LaunchError(f"expected replica types Master (+ Worker), got {sorted(specs)}")
    nnodes = sum(int(s.get("replicas", 1)) for s in specs.values())
    nproc_txt = str(job["spec"].get("nprocPerNode") or "1")
    nproc = int(nproc_txt) if nproc_txt.isdigit() else 1
    master_container = _pytorch_container(specs["Master"])
    if master_port is None:
        ports = [p for p in master_container.get("ports", []) if p.get("name") == PORT_NAME]
        master_port = int(ports[0]["containerPort"]) if ports else DEFAULT_PORT

    out: list[ReplicaProcess] = []
    for rtype in ("Master", "Worker"):
        if rtype not in specs:
            continue
        container = _pytorch_container(specs[rtype])
        for index in range(int(specs[rtype].get("replicas", 1))):
            rank = index if rtype == "Master" else index + 1
            env = _resolve_env(container.get("env", []), secrets)
            env.update({
                "PYTHONUNBUFFERED": "0",
                "MASTER_PORT": str(master_port),
                "MASTER_ADDR": master_addr,
                "WORLD_SIZE": str(nnodes * nproc),
                "RANK": str(rank),
                "PET_NPROC_PER_NODE": nproc_txt,
                "PET_NODE_RANK": str(rank),
                "PET_NNODES": str(nnodes),
            })
            command = [expand_var_refs(a, env) for a in
                       list(container.get("command") or []) + list(container.get("args") or [])]
            if python and command and command[0] == "python":
                command[0] = python
            out.append(ReplicaProcess(rtype, index, rank, command, env))
    return out


def _pytorch_container(replica_spec: Mapping[str, Any]) -> dict:
    for c in replica_spec["template"]["spec"]["containers"]:
        if c["name"] == CONTAINER_NAME:
            return c
    raise LaunchError(f"replica has no container named {CONTAINER_NAME!r} (the operator requires it)")


# ----------------------------------------------------------------------------------- the cluster API
class JobApi(Protocol):
    """The few Kubernetes calls the launcher makes (plain dicts with the API's camelCase keys)."""

    def create_job(self, namespace: str, body: dict) -> dict: ...
    def get_job(self, namespace: str, name: str) -> dict | None: ...  # None: not found
    def delete_job(self, namespace: str, name: str) -> bool: ...  # False: was not there
    def list_pods(self, namespace: str, label_selector: str) -> list[dict]: ...
    def read_log(self, namespace: str, pod: str, container: str, tail_lines: int | None = None) -> str: ...
    def follow_log(self, namespace: str, pod: str, container: str) -> Iterator[str]: ...


class KubernetesJobApi:
    """:class:`JobApi` on the kubernetes client: in-cluster config in a pod, else the kubeconfig."""

    def __init__(self, api_client=None):
        from kubernetes import client

        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, context: str | None = None) -> KubernetesJobApi:
        from kubernetes import config

        try:
            if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
            else:  # KUBECONFIG is read now (the client reads it once, at import)
                config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context)
        except Exception as e:  # the client raises ConfigException or plain errors on a broken kubeconfig
            raise LaunchError(f"no Kubernetes API access: {e} (run inside a cluster or set KUBECONFIG)") from None
        return cls()

    @staticmethod
    def _error(e, what: str) -> LaunchError:
        status = getattr(e, "status", None)
        detail = getattr(e, "body", None) or str(e)
        try:
            detail = json.loads(detail).get("message", detail)
        except (TypeError, ValueError, AttributeError):
            pass
        hint = {
            403: " (the ServiceAccount lacks RBAC for pytorchjobs/pods: apply manifests/, see manifests/README.md)",
            404: " (is the Kubeflow Training Operator installed? the PyTorchJob CRD kubeflow.org/v1 is missing)",
            409: " (a job of that name exists: choose another name)",
        }.get(status, "")
        return LaunchError(f"{what}: HTTP {status}: {detail}{hint}")

    def create_job(self, namespace: str, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except ApiException as e:
            raise self._error(e, f"creating PyTorchJob {namespace}/{body['metadata']['name']}") from None

    def get_job(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise self._error(e, f"reading PyTorchJob {namespace}/{name}") from None

    def delete_job(self, namespace: str, name: str) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"))
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise self._error(e, f"deleting PyTorchJob {namespace}/{name}") from None

    def list_pods(self, namespace: str, label_selector: str) -> list[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        except ApiException as e:
            raise self._error(e, f"listing pods {label_selector} in {namespace}") from None
        return self.api_client.sanitize_for_serialization(pods).get("items", [])

    def read_log(self, namespace: str, pod: str, container: str, tail_lines: int | None = None) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            kwargs = {"tail_lines": tail_lines} if tail_lines else {}
            return self.core.read_namespaced_pod_log(pod, namespace, container=container, **kwargs)
        except ApiException:
            return ""

    def follow_log(self, namespace: str, pod: str, container: str) -> Iterator[str]:
        resp = self.core.read_namespaced_pod_log(pod, namespace, container=container, follow=True,
                                                 _preload_content=False)
        try:
            pending = b""
            for chunk in resp.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            resp.release_conn()


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else ``default``."""
    sa_ns = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(sa_ns):
        with open(sa_ns) as f:
            return f.read().strip() or "default"
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


# ------------------------------------------------------------------------------ status interpretation
def job_state(job: Mapping[str, Any]) -> tuple[str, str, str]:
    """(state, reason, message) from the operator's conditions: Succeeded/Failed win, else the newest true
    one of Running/Restarting/Suspended/Created; ``Pending`` before the operator wrote any."""
    conditions = [c for c in ((job.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    for terminal in ("Succeeded", "Failed"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("reason", ""), c.get("message", "")
    if conditions:
        c = conditions[-1]
        return c.get("type", "Unknown"), c.get("reason", ""), c.get("message", "")
    return "Pending", "", ""


def _container_problem(cs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, text) of a container status that is waiting with a reason or terminated unsuccessfully."""
    state = cs.get("state") or {}
    name = cs.get("name", "?")
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
        msg = f": {waiting['message']}" if waiting.get("message") else ""
        return waiting["reason"], f"container {name} waiting: {waiting['reason']}{msg}"
    for when, term in (("", state.get("terminated")), ("previous run ", (cs.get("lastState") or {}).get("terminated"))):
        if term and (term.get("exitCode") not in (0, None) or term.get("reason") == "OOMKilled"):
            reason = term.get("reason") or "Error"
            msg = f": {term['message'].strip()}" if term.get("message") else ""
            return reason, f"container {name} {when}terminated: {reason} (exit code {term.get('exitCode')}){msg}"
    return None


def describe_pod(pod: Mapping[str, Any]) -> str:
    """One line per pod: phase plus scheduling, waiting and termination reasons."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    parts = [status.get("phase", "Unknown")]
    if status.get("reason"):
        parts.append(f"{status['reason']}: {status.get('message', '')}".rstrip(": "))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            parts.append(f"not scheduled: {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": "))
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        problem = _container_problem(cs)
        if problem:
            parts.append(problem[1])
    return f"{meta.get('name', '?')}: " + "; ".join(parts)


def _is_master(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(REPLICA_TYPE_LABEL, "").lower() == "master" and labels.get(REPLICA_INDEX_LABEL, "0") == "0"


def _container_started(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """(pod uid, restart count) of the pytorch container once it has run, else None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME and ((cs.get("state") or {}).get("running")
                                                 or (cs.get("state") or {}).get("terminated")):
            return (pod.get("metadata") or {}).get("uid", ""), int(cs.get("restartCount", 0))
    return None


class _LogFollower(threading.Thread):
    """Streams one container's log to ``echo`` (prefixed) and keeps the last lines for error messages."""

    def __init__(self, api: JobApi, namespace: str, pod: str, echo: Callable[[str], None],
                 tail: collections.deque):
        super().__init__(daemon=True, name=f"log-{pod}")
        self.api, self.namespace, self.pod, self.echo, self.tail = api, namespace, pod, echo, tail
        self.error: str | None = None

    def run(self) -> None:
        try:
            for line in self.api.follow_log(self.namespace, self.pod, CONTAINER_NAME):
                self.tail.append(line)
                self.echo(f"[{self.pod}] {line}")
        except Exception as e:  # a broken log stream must not fail the training job
            self.error = f"{type(e).__name__}: {e}"
            self.echo(f"[msenc launch] log stream of {self.pod} stopped: {self.error}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- the launcher
class PyTorchJobLauncher(TrainLauncher):
    backend = "pytorchjob"

    def __init__(self, config: PyTorchJobConfig, api: JobApi | None = None,
                 echo: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.cfg = config
        self._api = api
        self.echo = echo or _stderr
        self.clock, self.sleep = clock, sleep
        self.name = config.name or default_job_name()
        self.namespace = config.namespace
        self.log_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._follower: _LogFollower | None = None
        self._followed: set[tuple[str, int]] = set()

    @property
    def api(self) -> JobApi:
        if self._api is None:
            self._api = KubernetesJobApi.from_environment()
        return self._api

    def render(self) -> dict[str, Any]:
        return render_pytorchjob(self.cfg, self.name, self.namespace)

    def launch(self) -> LaunchResult:
        api = self.api
        if not self.namespace:
            self.namespace = default_namespace()
        job = self.render()
        ns, name = self.namespace, self.name
        t0 = self.clock()
        created = cancelled = False
        with sigterm_cancels():  # still installed during the cleanup below; a second SIGTERM is ignored
            try:
                api.create_job(ns, job)
                created = True
                self.echo(f"[msenc launch] created PyTorchJob {ns}/{name}: {self.cfg.workers} pod(s) x "
                          f"{self.cfg.gpus_per_worker} GPU(s), image {self.cfg.image}")
                self._wait(api, t0)
            except KeyboardInterrupt:  # Ctrl-C or LaunchCancelled (SIGTERM)
                cancelled = True
                raise
            finally:
                if created and (cancelled or not self.cfg.keep):
                    self._delete(api, cancelled)
                elif created:
                    self.echo(f"[msenc launch] kept PyTorchJob {ns}/{name} (delete it with: kubectl -n {ns} "
                              f"delete pytorchjob {name})")
        return LaunchResult(backend=self.backend, job_name=name, namespace=ns, state="Succeeded",
                            model_uri=self.cfg.output_uri, duration_s=round(self.clock() - t0, 3),
                            kept=self.cfg.keep)

    # -- internals
    def _delete(self, api: JobApi, cancelled: bool) -> None:
        why = "cancelled: " if cancelled else ""
        try:
            existed = api.delete_job(self.namespace, self.name)
            self.echo(f"[msenc launch] {why}deleted PyTorchJob {self.namespace}/{self.name}"
                      + ("" if existed else " (it was already gone)"))
        except Exception as e:
            self.echo(f"[msenc launch] {why}could not delete PyTorchJob {self.namespace}/{self.name}: {e}")

    def _wait(self, api: JobApi, t0: float) -> None:
        ns, name, cfg = self.namespace, self.name, self.cfg
        deadline = t0 + cfg.timeout
        selector = f"{JOB_NAME_LABEL}={name}"
        last: tuple[str, str] | None = None
        first_seen: dict[tuple[str, str, str], float] = {}
        while True:
            job = api.get_job(ns, name)
            if job is None:
                raise LaunchError(f"PyTorchJob {ns}/{name} disappeared while running (deleted by someone else?)")
            state, reason, message = job_state(job)
            if (state, reason) != last:
                detail = f" ({reason}: {message})" if reason or message else ""
                self.echo(f"[msenc launch] {ns}/{name}: {state}{detail}")
                last = (state, reason)
            pods = api.list_pods(ns, selector)
            self._follow_master(api, pods)
            if state == "Succeeded":
                self._drain_logs()
                return
            if state == "Failed":
                self._drain_logs()
                raise LaunchError(self._failure(f"PyTorchJob {ns}/{name} failed: {reason}: {message}", api,
                                                api.list_pods(ns, selector)))
            now = self.clock()
            for pod in pods:
                status = pod.get("status") or {}
                for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                    waiting = (cs.get("state") or {}).get("waiting") or {}
                    why = waiting.get("reason")
                    if why in FATAL_WAITING or why in STUCK_WAITING:
                        key = (pod["metadata"]["name"], cs.get("name", ""), why)
                        since = first_seen.setdefault(key, now)
                        if why in FATAL_WAITING or now - since >= cfg.stuck_grace:
                            raise LaunchError(self._failure(
                                f"PyTorchJob {ns}/{name}: pod {key[0]} cannot start ({why})", api, pods))
            if now >= deadline:
                raise LaunchError(self._failure(
                    f"PyTorchJob {ns}/{name} timed out after {cfg.timeout:g} s in state {state}", api, pods))
            self.sleep(max(0.0, min(cfg.poll_interval, deadline - now)))

    def _follow_master(self, api: JobApi, pods: list[dict]) -> None:
        if self._follower is not None and self._follower.is_alive():
            return
        for pod in pods:
            started = _container_started(pod) if _is_master(pod) else None
            if started and started not in self._followed:
                self._followed.add(started)
                self._follower = _LogFollower(api, self.namespace, pod["metadata"]["name"], self.echo,
                                              self.log_tail)
                self._follower.start()

    def _drain_logs(self, timeout: float = 30.0) -> None:
        if self._follower is not None:
            self._follower.join(timeout)

    def _failure(self, headline: str, api: JobApi, pods: list[dict]) -> str:
        lines = [headline]
        if pods:
            lines.append("pods:")
            lines += [f"  {describe_pod(p)}" for p in sorted(pods, key=lambda p: p["metadata"]["name"])]
        tail = list(self.log_tail)
        if not tail:
            master = next((p for p in pods if _is_master(p)), None)
            if master is not None and _container_started(master):
                tail = api.read_log(self.namespace, master["metadata"]["name"], CONTAINER_NAME,
                                    tail_lines=20).splitlines()
        if tail:
            lines.append("last lines of the master's log:")
            lines += [f"  {t}" for t in tail[-20:]]
        return "\n".join(lines)


CONFIG_CLASS = PyTorchJobConfig
LAUNCHER_CLASS = PyTorchJobLauncher


def run_pytorchjob(config: PyTorchJobConfig, *, api: JobApi | None = None,
                   echo: Callable[[str], None] | None = None) -> LaunchResult:
    """Create the PyTorchJob, wait for it and return the model URI (``LaunchResult.model_uri``).

    Raises :class:`LaunchError` with the job's and pods' reasons when it fails, cannot start or times out;
    on SIGTERM/Ctrl-C the job is deleted and :class:`LaunchCancelled`/``KeyboardInterrupt`` propagates.
    """
    return PyTorchJobLauncher(config, api=api, echo=echo).launch()
