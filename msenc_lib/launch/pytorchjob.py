"""Run the training entry point as a Kubeflow Training Operator ``kubeflow.org/v1`` PyTorchJob.

``render_pytorchjob(cfg)`` builds the job (1 Master + ``workers-1`` Workers, container ``pytorch``, CPU/memory
requests and limits, GPU limits, scheduling, the restricted Pod Security Standard, S3 credentials by
``secretKeyRef``, run/step labels, an ``ownerReference`` to the KFP step pod that launches it, a finite
``activeDeadlineSeconds``) with the kubeflow-training SDK's models. ``run_pytorchjob(cfg)`` creates it with the
SDK's ``TrainingClient``, follows its conditions (Created -> Running -> Succeeded/Failed) and the master's log,
fails with the job's and the pods' reasons (image pull errors, OOMKilled, unschedulable, ...), deletes it at
the end unless ``keep`` (always when cancelled by SIGTERM/Ctrl-C) and returns the model URI.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import sys
import threading
import time
import uuid
from typing import Any, Callable, ClassVar, Iterator, Literal, Mapping

from pydantic import Field

from msenc_lib.launch.base import (
    LaunchConfig,
    LaunchError,
    LaunchResult,
    PodIdentity,
    TrainLauncher,
    current_pod,
    parse_toleration,
    pod_namespace,
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


def _owner(owner: PodIdentity | None, namespace: str | None) -> list[dict] | None:
    """The step pod as the job's owner, unless the job goes to another namespace: an owner reference names
    an object of the dependent's own namespace, and the garbage collector deletes a dependent whose owner is
    not there at once."""
    if owner is None or (namespace and owner.namespace and namespace != owner.namespace):
        return None
    return [owner.owner_reference()]


def build_pytorchjob(cfg: PyTorchJobConfig, name: str | None = None, namespace: str | None = None,
                     owner: PodIdentity | None = None):
    """The job as the SDK's ``KubeflowOrgV1PyTorchJob`` model."""
    from kubernetes import client as k8s

    _, m = _sdk()
    name = name or cfg.name or default_job_name()
    namespace = namespace or cfg.namespace  # None: left out, kubectl's current namespace applies
    labels = {**cfg.job_labels(), **cfg.labels}

    cpu_limit = cfg.cpu_limit or cfg.cpu
    requests = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits = {"cpu": cpu_limit, "memory": cfg.memory}
    if cfg.gpus_per_worker:
        limits[GPU_RESOURCE] = str(cfg.gpus_per_worker)

    mounts, volumes = [], []
    if cfg.shm_size:
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=cfg.shm_size)))

    # the "restricted" Pod Security Standard: non-root, no privilege escalation, no capabilities, seccomp
    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=cfg.image,
        image_pull_policy=cfg.image_pull_policy,
        command=cfg.command(),
        env=to_model(cfg.container_env(), "list[V1EnvVar]"),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=cfg.master_port, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        volume_mounts=mounts or None,
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]),
            run_as_non_root=True, seccomp_profile=seccomp),
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
            security_context=k8s.V1PodSecurityContext(run_as_non_root=True, seccomp_profile=seccomp),
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
        active_deadline_seconds=cfg.deadline_s(),
        backoff_limit=cfg.backoff_limit,
        ttl_seconds_after_finished=cfg.ttl_seconds_after_finished,
    )
    owners = _owner(owner, namespace)
    return m.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels,
                                  owner_references=to_model(owners, "list[V1OwnerReference]") if owners else None),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            nproc_per_node=str(max(cfg.gpus_per_worker, 1)),
            run_policy=run_policy,
        ),
    )


def render_pytorchjob(cfg: PyTorchJobConfig, name: str | None = None, namespace: str | None = None,
                      owner: PodIdentity | None = None) -> dict:
    """The job as plain data (what ``--render`` prints as YAML and what the API receives)."""
    return to_data(build_pytorchjob(cfg, name, namespace, owner))


def render_yaml(job: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(job), sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------------- the cluster API
def kube_configuration(kubeconfig: str | None = None, context: str | None = None):
    """Kubernetes client configuration: in-cluster (service-account token) in a pod, else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:  # KUBECONFIG is read now (the client reads it once, at import)
            config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context,
                                    client_configuration=configuration)
    except Exception as e:  # the client raises ConfigException or plain errors on a broken kubeconfig
        raise LaunchError(f"no Kubernetes API access: {e} (run inside a cluster or set KUBECONFIG)") from None
    return configuration


def training_client(kubeconfig: str | None = None, context: str | None = None):
    """The kubeflow-training SDK's client for PyTorchJobs on the current cluster."""
    from kubeflow.training import TrainingClient

    return TrainingClient(client_configuration=kube_configuration(kubeconfig, context), namespace="default")


def api_status(error: BaseException) -> int | None:
    """The HTTP status behind a TrainingClient error (it wraps the API's exception in a RuntimeError)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return getattr(cause, "status", None)


def api_error(error: BaseException, what: str) -> LaunchError:
    cause = error.__cause__ if error.__cause__ is not None else error
    status = getattr(cause, "status", None)
    detail = getattr(cause, "body", None) or str(cause)
    try:
        detail = json.loads(detail).get("message", detail)
    except (TypeError, ValueError, AttributeError):
        pass
    hint = {
        403: " (the ServiceAccount lacks RBAC for pytorchjobs/pods: apply manifests/, see manifests/README.md)",
        404: " (is the Kubeflow Training Operator installed? the PyTorchJob CRD kubeflow.org/v1 is missing)",
        409: " (a job of that name exists: choose another name)",
        422: " (the API server rejected the job)",
    }.get(status, "")
    return LaunchError(f"{what}: HTTP {status}: {detail}{hint}")


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else ``default``."""
    own = pod_namespace()
    if own:
        return own
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


# The master's log is followed by hand: TrainingClient.get_job_logs(follow=True) prints to stdout and returns
# only when every stream has ended, while the launcher streams to stderr as it watches the job's status.
def follow_log(core_api, namespace: str, pod: str) -> Iterator[str]:
    """The lines of the pytorch container's log as they come (until the container ends)."""
    resp = core_api.read_namespaced_pod_log(pod, namespace, container=CONTAINER_NAME, follow=True,
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


def read_log(core_api, namespace: str, pod: str, tail_lines: int | None = None) -> str:
    """The pytorch container's log so far ("" when it cannot be read)."""
    from kubernetes.client.exceptions import ApiException

    try:
        kwargs = {"tail_lines": tail_lines} if tail_lines else {}
        return core_api.read_namespaced_pod_log(pod, namespace, container=CONTAINER_NAME, **kwargs)
    except ApiException:
        return ""


class _LogFollower(threading.Thread):
    """Streams one container's log to ``echo`` (prefixed) and keeps the last lines for error messages."""

    def __init__(self, core_api, namespace: str, pod: str, echo: Callable[[str], None], tail: collections.deque):
        super().__init__(daemon=True, name=f"log-{pod}")
        self.core_api, self.namespace, self.pod, self.echo, self.tail = core_api, namespace, pod, echo, tail
        self.error: str | None = None

    def run(self) -> None:
        try:
            for line in follow_log(self.core_api, self.namespace, self.pod):
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

    def __init__(self, config: PyTorchJobConfig, client=None, echo: Callable[[str], None] | None = None,
                 owner: PodIdentity | None = None):
        self.cfg = config
        self._client = client
        self.echo = echo or _stderr
        self.owner = owner if owner is not None else current_pod()
        self.name = config.name or default_job_name()
        self.namespace = config.namespace
        self.log_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._follower: _LogFollower | None = None
        self._followed: set[tuple[str, int]] = set()

    @property
    def client(self):
        if self._client is None:
            self._client = training_client()
        return self._client

    def render(self) -> dict[str, Any]:
        return render_pytorchjob(self.cfg, self.name, self.namespace, self.owner)

    def launch(self) -> LaunchResult:
        client = self.client
        if not self.namespace:
            self.namespace = default_namespace()
        job = build_pytorchjob(self.cfg, self.name, self.namespace, self.owner)
        ns, name = self.namespace, self.name
        if self.owner is not None and not job.metadata.owner_references:
            self.echo(f"[msenc launch] the job goes to namespace {ns}, the step pod is in {self.owner.namespace}: "
                      "no ownerReference; a cancelled run relies on the SIGTERM cleanup and the job's deadline")
        t0 = time.monotonic()
        created = cancelled = False
        with sigterm_cancels():  # still installed during the cleanup below; a second SIGTERM is ignored
            try:
                try:
                    client.create_job(job=job, namespace=ns)
                except RuntimeError as e:
                    raise api_error(e, f"creating PyTorchJob {ns}/{name}") from None
                created = True
                self.echo(f"[msenc launch] created PyTorchJob {ns}/{name}: {self.cfg.workers} pod(s) x "
                          f"{self.cfg.gpus_per_worker} GPU(s), image {self.cfg.image}, deadline "
                          f"{job.spec.run_policy.active_deadline_seconds} s")
                self._wait(client, t0)
            except KeyboardInterrupt:  # Ctrl-C or LaunchCancelled (SIGTERM)
                cancelled = True
                raise
            finally:
                if created and (cancelled or not self.cfg.keep):
                    self._delete(client, cancelled)
                elif created:
                    self.echo(f"[msenc launch] kept PyTorchJob {ns}/{name} (delete it with: kubectl -n {ns} "
                              f"delete pytorchjob {name})")
        return LaunchResult(backend=self.backend, job_name=name, namespace=ns, state="Succeeded",
                            model_uri=self.cfg.output_uri, duration_s=round(time.monotonic() - t0, 3),
                            kept=self.cfg.keep)

    # -- internals
    def _delete(self, client, cancelled: bool) -> None:
        from kubernetes import client as k8s

        why = "cancelled: " if cancelled else ""
        try:
            client.delete_job(self.name, self.namespace,
                              delete_options=k8s.V1DeleteOptions(propagation_policy="Background"))
            self.echo(f"[msenc launch] {why}deleted PyTorchJob {self.namespace}/{self.name}")
        except RuntimeError as e:
            if api_status(e) == 404:
                self.echo(f"[msenc launch] {why}deleted PyTorchJob {self.namespace}/{self.name} (it was already gone)")
            else:
                self.echo(f"[msenc launch] {why}could not delete PyTorchJob {self.namespace}/{self.name}: {e}")

    def _pods(self, client) -> list[dict]:
        try:
            pods = client.get_job_pods(self.name, self.namespace)
        except RuntimeError as e:
            raise api_error(e, f"listing the pods of PyTorchJob {self.namespace}/{self.name}") from None
        return client.core_api.api_client.sanitize_for_serialization(pods)

    def _wait(self, client, t0: float) -> None:
        ns, name, cfg = self.namespace, self.name, self.cfg
        seen = {"last": None}
        first_seen: dict[tuple[str, str, str], float] = {}

        def watch(job_model) -> None:  # TrainingClient calls this after each status read
            job = to_data(job_model)
            state, reason, message = job_state(job)
            if (state, reason) != seen["last"]:
                detail = f" ({reason}: {message})" if reason or message else ""
                self.echo(f"[msenc launch] {ns}/{name}: {state}{detail}")
                seen["last"] = (state, reason)
            pods = self._pods(client)
            self._follow_master(client, pods)
            if state == "Succeeded":
                self._drain_logs()
                return
            if state == "Failed":
                self._drain_logs()
                raise LaunchError(self._failure(f"PyTorchJob {ns}/{name} failed: {reason}: {message}", client,
                                                self._pods(client)))
            now = time.monotonic()
            if not pods and now - t0 >= cfg.stuck_grace > 0:
                raise LaunchError(self._failure(
                    f"PyTorchJob {ns}/{name}: no pods after {cfg.stuck_grace:g} s (a missing ServiceAccount "
                    f"{cfg.service_account or 'default'}, a quota or an admission policy may block them: "
                    f"kubectl -n {ns} describe pytorchjob {name})", client, pods))
            for pod in pods:
                status = pod.get("status") or {}
                for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                    why = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
                    if why in FATAL_WAITING or why in STUCK_WAITING:
                        key = (pod["metadata"]["name"], cs.get("name", ""), why)
                        since = first_seen.setdefault(key, now)
                        if why in FATAL_WAITING or now - since >= cfg.stuck_grace:
                            raise LaunchError(self._failure(
                                f"PyTorchJob {ns}/{name}: pod {key[0]} cannot start ({why})", client, pods))

        timeout = cfg.deadline_s() + cfg.deadline_grace_s
        try:
            client.wait_for_job_conditions(name, ns, wait_timeout=timeout, polling_interval=cfg.poll_interval,
                                           callback=watch)
        except TimeoutError:
            state = seen["last"][0] if seen["last"] else "Pending"
            raise LaunchError(self._failure(f"PyTorchJob {ns}/{name} timed out after {timeout:g} s in state {state}",
                                            client, self._pods(client))) from None
        except RuntimeError as e:
            if api_status(e) == 404:
                raise LaunchError(f"PyTorchJob {ns}/{name} disappeared while running (deleted by someone else, "
                                  "or garbage-collected with its owner?)") from None
            raise api_error(e, f"reading PyTorchJob {ns}/{name}") from None

    def _follow_master(self, client, pods: list[dict]) -> None:
        if self._follower is not None and self._follower.is_alive():
            return
        for pod in pods:
            started = _container_started(pod) if _is_master(pod) else None
            if started and started not in self._followed:
                self._followed.add(started)
                self._follower = _LogFollower(client.core_api, self.namespace, pod["metadata"]["name"], self.echo,
                                              self.log_tail)
                self._follower.start()

    def _drain_logs(self, timeout: float = 30.0) -> None:
        if self._follower is not None:
            self._follower.join(timeout)

    def _failure(self, headline: str, client, pods: list[dict]) -> str:
        lines = [headline]
        if pods:
            lines.append("pods:")
            lines += [f"  {describe_pod(p)}" for p in sorted(pods, key=lambda p: p["metadata"]["name"])]
        tail = list(self.log_tail)
        if not tail:
            master = next((p for p in pods if _is_master(p)), None)
            if master is not None and _container_started(master):
                tail = read_log(client.core_api, self.namespace, master["metadata"]["name"], 20).splitlines()
        if tail:
            lines.append("last lines of the master's log:")
            lines += [f"  {t}" for t in tail[-20:]]
        return "\n".join(lines)


def run_pytorchjob(config: PyTorchJobConfig, *, client=None, echo: Callable[[str], None] | None = None,
                   owner: PodIdentity | None = None) -> LaunchResult:
    """Create the PyTorchJob, wait for it and return the model URI (``LaunchResult.model_uri``).

    Raises :class:`LaunchError` with the job's and pods' reasons when it fails, cannot start or times out;
    on SIGTERM/Ctrl-C the job is deleted and :class:`LaunchCancelled`/``KeyboardInterrupt`` propagates.
    ``owner`` (default: this KFP step's pod, from the env) becomes the job's ownerReference.
    """
    return PyTorchJobLauncher(config, client=client, echo=echo, owner=owner).launch()
