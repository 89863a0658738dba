"""A Kubernetes API server on loopback, with the parts of the control plane that a PyTorchJob launch meets.

No Kubernetes API server (nor the Training Operator) can run on this machine. The launcher therefore talks,
through the real kubernetes client and kubeflow-training's ``TrainingClient`` over real HTTP(S), to this server,
which enforces what a cluster enforces:

- authentication (bearer tokens: a kubeconfig user, or a pod's service-account token) and RBAC authorization
  from the Role/RoleBinding/ClusterRole/ClusterRoleBinding objects given to it (e.g. ``manifests/`` built by
  kustomize): a forbidden call gets the API server's 403;
- admission of a PyTorchJob: the namespace must exist, the training operator's CRD schema (strict about unknown
  fields) and its validating webhook (``k8s_checks``), owner references complete, ``blockOwnerDeletion`` only
  with rights on the owner's finalizers;
- the garbage collector: an object whose owners (by UID, in its own namespace) are all gone is deleted, with
  its dependents (a job owned by a deleted step pod, the job's pods with the job);
- in **live** mode the Training Operator and the kubelet: the job's pods are admitted (their ServiceAccount
  must exist; the "restricted" Pod Security Standard where the namespace enforces it), scheduled (node
  selectors, taints, CPU/memory/GPU capacity of the fake nodes), their env resolved (``secretKeyRef`` from the
  namespace's Secrets: a missing Secret or key is ``CreateContainerConfigError``; ``$(VAR)`` in the command),
  given the operator's env (``MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, PET_*``) and run as local
  processes; the job's conditions follow them (Created, Running, Succeeded/Failed, DeadlineExceeded after
  ``activeDeadlineSeconds``); logs are the processes' output. Local stand-ins, and only these: the master's
  address is 127.0.0.1 and its port a free one (not the service ``<job>-master-0:23456``), and the image is
  this Python environment (``localhost/`` images fail to pull, as on a cluster);
- in **scripted** mode, RECORDED sequences of job/pod states shaped like the operator's and the kubelet's
  (condition types/reasons/messages, container states with their required fields): each GET of the job moves
  one step (the last repeats) and the pod list shows the pods of that step. For failure modes no local
  process can produce (OOMKilled, image pull back-off, unschedulable GPUs).
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, urlparse

from fakes.http import Handler, LoopbackServer
from k8s_checks import pytorchjob_errors, restricted_violations
from processes import free_port

T0 = "2025-11-25T10:00:00Z"
ADMIN = "kubernetes-admin"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- operator-shaped objects
def condition(ctype: str, name: str, status: str = "True", message: str | None = None,
              reason: str | None = None, at: str = T0) -> dict:
    """A PyTorchJob condition as the Training Operator v1.9 writes it."""
    messages = {
        "Created": f"PyTorchJob {name} is created.",
        "Running": f"PyTorchJob {name} is running.",
        "Succeeded": f"PyTorchJob {name} is successfully completed.",
        "Failed": f"PyTorchJob {name} is failed because 1 Master replica(s) failed.",
        "Restarting": f"PyTorchJob {name} is restarting because 1 Master replica(s) failed.",
    }
    return {"type": ctype, "status": status, "reason": reason or f"PyTorchJob{ctype}",
            "message": message or messages[ctype], "lastUpdateTime": at, "lastTransitionTime": at}


def job_status(conditions: list[dict], replica_statuses: dict | None = None, finished: bool = False) -> dict:
    status: dict[str, Any] = {"conditions": conditions, "replicaStatuses": replica_statuses or {},
                              "startTime": T0, "lastReconcileTime": T0}
    if finished:
        status["completionTime"] = "2025-11-25T10:05:00Z"
    return status


def container_status(state: dict, restart_count: int = 0, last_state: dict | None = None,
                     image: str = "reg.example.com/msenc-python:1") -> dict:
    """A containerStatuses entry with the fields the API always sets (the client requires them)."""
    started = "running" in state or "terminated" in state
    return {"name": "pytorch", "image": image,
            "imageID": f"{image}@sha256:{'ab' * 32}" if started else "",
            "ready": "running" in state, "restartCount": restart_count, "started": "running" in state,
            "state": state, "lastState": last_state or {}}


def running(at: str = T0) -> dict:
    return {"running": {"startedAt": at}}


def terminated(exit_code: int, reason: str, at: str = T0) -> dict:
    return {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": at,
                           "finishedAt": "2025-11-25T10:04:00Z", "containerID": "containerd://" + "c" * 64}}


def waiting(reason: str, message: str | None = None) -> dict:
    w = {"reason": reason}
    if message:
        w["message"] = message
    return {"waiting": w}


def operator_labels(job: str, rtype: str, index: int) -> dict[str, str]:
    """The labels the operator puts on a replica's pod."""
    return {JOB_NAME_LABEL: job, "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/replica-type": rtype.lower(), "training.kubeflow.org/replica-index": str(index),
            **({"training.kubeflow.org/job-role": "master"} if rtype == "Master" else {})}


def pod(job: str, rtype: str, index: int, phase: str, cstate: dict | None = None, *, restart_count: int = 0,
        last_state: dict | None = None, conditions: list[dict] | None = None) -> dict:
    """A pod of the job as the API lists it (labels as the operator sets them)."""
    name = f"{job}-{rtype.lower()}-{index}"
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if cstate is not None:
        status["containerStatuses"] = [container_status(cstate, restart_count, last_state)]
    return {
        "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                     "labels": operator_labels(job, rtype, index)},
        "spec": {"containers": [{"name": "pytorch", "image": "reg.example.com/msenc-python:1"}]},
        "status": status,
    }


@dataclass
class Step:
    """One observation: the job's status (None: not reconciled yet) and its pods."""

    status: dict | None
    pods: list[dict] = field(default_factory=list)


def recorded_success(job: str) -> list[Step]:
    """Not reconciled yet -> Created (pods creating) -> Running -> Succeeded, as the operator reports a good run."""
    created = condition("Created", job)
    return [
        Step(None),
        Step(job_status([created]), [pod(job, "Master", 0, "Pending", waiting("ContainerCreating")),
                                     pod(job, "Worker", 0, "Pending", waiting("ContainerCreating"))]),
        Step(job_status([created, condition("Running", job)], {"Master": {"active": 1}, "Worker": {"active": 1}}),
             [pod(job, "Master", 0, "Running", running()), pod(job, "Worker", 0, "Running", running())]),
        Step(job_status([created, condition("Running", job, status="False"), condition("Succeeded", job)],
                        {"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}}, finished=True),
             [pod(job, "Master", 0, "Succeeded", terminated(0, "Completed")),
              pod(job, "Worker", 0, "Succeeded", terminated(0, "Completed"))]),
    ]


@dataclass
class Node:
    """A schedulable node of the fake cluster."""

    name: str = "cpu-node-1"
    labels: dict[str, str] = field(default_factory=lambda: {"kubernetes.io/os": "linux"})
    cpu: float = 16.0
    memory_gi: float = 64.0
    gpus: int = 0
    taints: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------- the kubelet's rules
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_var_refs(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion in command/args/env values: defined names are replaced, ``$$`` -> ``$``,
    unknown references stay as they are."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


class ContainerConfigError(Exception):
    """What the kubelet reports as ``CreateContainerConfigError`` (the message is the kubelet's)."""


def resolve_env(env_list: list[dict], namespace: str, secrets: Mapping[str, Mapping[str, str]],
                fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """A container's env as the kubelet resolves it: literal values (with ``$(VAR)`` of earlier entries),
    ``secretKeyRef`` from the namespace's Secrets (``{name: {key: value}}``), ``fieldRef`` from ``fields``."""
    out: dict[str, str] = {}
    for e in env_list or []:
        if "value" in e:
            out[e["name"]] = expand_var_refs(str(e["value"]), out)
            continue
        source = e.get("valueFrom") or {}
        if "fieldRef" in source:
            out[e["name"]] = (fields or {})[source["fieldRef"]["fieldPath"]]
            continue
        ref = source.get("secretKeyRef")
        if ref is None:
            raise ContainerConfigError(f"env {e['name']}: only value, fieldRef and secretKeyRef are emulated")
        secret = secrets.get(ref["name"])
        if secret is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'secret "{ref["name"]}" not found')
        if ref["key"] not in secret:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
        out[e["name"]] = str(secret[ref["key"]])
    return out


def operator_env(job: Mapping[str, Any], rtype: str, index: int, master_addr: str, master_port: int) -> list[dict]:
    """What the Training Operator v1.9 appends to the ``pytorch`` container's env (pkg/controller.v1/pytorch/
    envvar.go + master.go): PYTHONUNBUFFERED, MASTER_PORT, MASTER_ADDR, WORLD_SIZE, RANK, PET_NODE_RANK,
    PET_NPROC_PER_NODE, PET_NNODES."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    nnodes = sum(int(s.get("replicas", 1)) for s in specs.values())
    nproc_txt = job["spec"].get("nprocPerNode")
    nproc = int(nproc_txt) if str(nproc_txt or "").isdigit() else 1
    rank = index if rtype == "Master" else index + 1
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "MASTER_PORT", "value": str(master_port)}, {"name": "MASTER_ADDR", "value": master_addr},
           {"name": "WORLD_SIZE", "value": str(nnodes * nproc)}, {"name": "RANK", "value": str(rank)},
           {"name": "PET_NODE_RANK", "value": str(rank)}]
    if nproc_txt is not None:
        env.append({"name": "PET_NPROC_PER_NODE", "value": str(nproc_txt)})
    env.append({"name": "PET_NNODES", "value": str(nnodes)})
    return env


def pod_process(container: Mapping[str, Any], namespace: str, secrets: Mapping[str, Mapping[str, str]],
                fields: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(command, env) of a container as the kubelet starts it: env resolved, ``$(VAR)`` expanded."""
    env = resolve_env(container.get("env") or [], namespace, secrets, fields)
    command = [expand_var_refs(a, env) for a in list(container.get("command") or []) + list(container.get("args") or [])]
    return command, env


@dataclass
class ReplicaProcess:
    """One pod of a rendered job, as the operator and the kubelet would start it."""

    replica_type: str  # "Master" or "Worker"
    index: int  # index within its replica type
    rank: int  # node rank (RANK / PET_NODE_RANK): Master 0, Worker i -> i+1
    command: list[str]
    env: dict[str, str]  # the pod's env only: merge it over an image env to run it locally


def replica_processes(job: Mapping[str, Any], *, namespace: str = "default", master_port: int | None = None,
                      secrets: Mapping[str, Mapping[str, str]] | None = None,
                      python: str | None = None) -> list[ReplicaProcess]:
    """Each replica's command and env of a rendered PyTorchJob, with the operator's env (:func:`operator_env`,
    master at 127.0.0.1) and ``secretKeyRef`` resolved from ``secrets``. ``master_port`` defaults to the
    container's ``pytorchjob-port`` as the operator does; ``python`` replaces a leading ``python``."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    master = next(c for c in specs["Master"]["template"]["spec"]["containers"] if c["name"] == "pytorch")
    if master_port is None:
        master_port = next(int(p["containerPort"]) for p in master.get("ports", []) if p.get("name") == "pytorchjob-port")
    out = []
    for rtype in ("Master", "Worker"):
        for index in range(int((specs.get(rtype) or {}).get("replicas", 0))):
            container = copy.deepcopy(next(c for c in specs[rtype]["template"]["spec"]["containers"]
                                           if c["name"] == "pytorch"))
            container["env"] = list(container.get("env") or []) + operator_env(job, rtype, index, "127.0.0.1",
                                                                               master_port)
            command, env = pod_process(container, namespace, secrets or {})
            if python and command and command[0] == "python":
                command[0] = python
            out.append(ReplicaProcess(rtype, index, index if rtype == "Master" else index + 1, command, env))
    return out


def image_env(home: Path) -> dict[str, str]:
    """The environment the msenc image gives every process (its ENV lines), with this Python's venv as /opt/msenc."""
    venv_bin = str(Path(sys.prefix) / "bin")
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": sys.prefix, "HOME": str(home),
            "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(home / "matplotlib"),
            "HF_HOME": str(home / "huggingface"), "LANG": "C.UTF-8"}


def _cpu(q: str) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _gi(q: str) -> float:
    units = {"Ki": 2 ** -20, "Mi": 2 ** -10, "Gi": 1, "Ti": 2 ** 10, "k": 1e3 / 2 ** 30, "M": 1e6 / 2 ** 30,
             "G": 1e9 / 2 ** 30, "T": 1e12 / 2 ** 30}
    q = str(q)
    for unit, factor in units.items():
        if q.endswith(unit):
            return float(q[: -len(unit)]) * factor
    return float(q) / 2 ** 30


# -------------------------------------------------------------------------------------- TLS for the API
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (what a pod's ca.crt vouches for) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "ca.crt", tmp / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class _Process:
    popen: subprocess.Popen
    log: Path
    started: str
    finished: str | None = None


# -------------------------------------------------------------------------------------------- the cluster
class FakeCluster:
    """The API server (+ garbage collector, + operator and kubelet in live mode). A context manager.

    ``steps`` given: scripted mode (see the module docstring); else live mode. ``tls``: serve HTTPS with a
    self-signed certificate (what in-cluster clients need: :meth:`service_account_mount`).
    """

    def __init__(self, steps: list[Step] | None = None, master_log: str = "", create_error: tuple[int, str] | None = None,
                 vanish_after: int | None = None, *, tls: bool = False, nodes: list[Node] | None = None,
                 workdir: Path | None = None):
        self.steps = steps
        self.master_log = master_log
        self.create_error = create_error
        self.vanish_after = vanish_after  # GET returns 404 after this many GETs (job deleted by someone)
        self.nodes = nodes if nodes is not None else [Node()]
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace or "", name) -> object
        self.tokens: dict[str, str] = {}
        self.created: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str, str]] = []  # (user, method, path)
        self.events: list[str] = []
        self.job_gets = 0
        self._step = 0
        self._lock = threading.RLock()
        self._processes: dict[tuple[str, str], _Process] = {}
        self._job_start: dict[tuple[str, str], float] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-k8s-")
        self.workdir = Path(workdir or self._tmp.name)
        self.ca_file: Path | None = None
        context = None
        if tls:
            self.ca_file, key = _self_signed(Path(self._tmp.name))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, key)
        self._server = LoopbackServer(self._handler(), context)
        self._stop = threading.Event()
        self._operator = threading.Thread(target=self._operate, daemon=True)
        self.admin_token = self._token(ADMIN)

    @property
    def live(self) -> bool:
        return self.steps is None

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeCluster:
        self._server.start()
        if self.live:
            self._operator.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with self._lock:
            for key in list(self._processes):
                self._kill(key)
        self._server.stop()
        self._tmp.cleanup()

    # ------------------------------------------------------------------------------ setting the scene
    def _token(self, user: str) -> str:
        token = f"token-{uuid.uuid4().hex}"
        self.tokens[token] = user
        return token

    def _put(self, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("resourceVersion", "1")
        namespaced = obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "Node")
        self.objects[(obj["kind"], meta.get("namespace", "") if namespaced else "", meta["name"])] = obj
        return obj

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        return [o for (k, ns, _), o in sorted(self.objects.items()) if k == kind and (namespace is None or ns == namespace)]

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
            if not self.get("ServiceAccount", name, "default"):
                self._put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}})

    def add_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        with self._lock:
            self._put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": name, "namespace": namespace}, "stringData": dict(data)})

    def add_service_account(self, namespace: str, name: str) -> str:
        """The ServiceAccount (created when missing) and a token that authenticates as it."""
        with self._lock:
            if not self.get("ServiceAccount", namespace, name):
                self._put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
            return self._token(f"system:serviceaccount:{namespace}:{name}")

    def apply(self, objects: list[dict], namespace: str | None = None) -> None:
        """Create objects as ``kubectl apply`` would (e.g. the output of ``kubectl kustomize``)."""
        with self._lock:
            for obj in objects:
                obj = copy.deepcopy(obj)
                if obj["kind"] == "Namespace":
                    self.add_namespace(obj["metadata"]["name"], obj["metadata"].get("labels"))
                    continue
                if namespace and obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                    obj["metadata"]["namespace"] = obj["metadata"].get("namespace", namespace)
                if obj["kind"] == "PyTorchJob":
                    self._admit_job(ADMIN, obj["metadata"]["namespace"], obj)
                    continue
                self._put(obj)

    def add_pod(self, namespace: str, name: str, labels: Mapping[str, str] | None = None) -> str:
        """A pod that exists in the cluster (e.g. a KFP step's); returns its UID."""
        with self._lock:
            obj = self._put({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": namespace, "labels": dict(labels or {})},
                "spec": {"containers": [{"name": "main", "image": "step"}]}, "status": {"phase": "Running"}})
            return obj["metadata"]["uid"]

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (as Argo does with a cancelled step's pod): the garbage collector takes its dependents."""
        with self._lock:
            self._delete(("Pod", namespace, name))
            self._collect_garbage()

    def kubeconfig(self, path: Path, namespace: str = "team-a", token: str | None = None) -> Path:
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file:
            cluster["certificate-authority"] = str(self.ca_file)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "tester", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        return path

    def service_account_mount(self, directory: Path, namespace: str, service_account: str) -> dict[str, str]:
        """What Kubernetes mounts into a pod (token, ca.crt, namespace) for ``service_account``; returns the
        env every pod gets to find the API (``KUBERNETES_SERVICE_HOST/PORT``)."""
        assert self.ca_file, "in-cluster clients need TLS: FakeCluster(tls=True)"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(self.add_service_account(namespace, service_account))
        (directory / "ca.crt").write_bytes(self.ca_file.read_bytes())
        (directory / "namespace").write_text(namespace)
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self._server.port)}

    def secrets(self, namespace: str) -> dict[str, dict[str, str]]:
        return {s["metadata"]["name"]: dict(s.get("stringData") or {}) for s in self.list("Secret", namespace)}

    def pod_logs(self, namespace: str) -> dict[str, str]:
        """Every job pod's output so far (live mode)."""
        return {name: p.log.read_text(errors="replace") for (ns, name), p in self._processes.items() if ns == namespace}

    # -------------------------------------------------------------------------------- authorization
    def allowed(self, user: str, verb: str, group: str, resource: str, namespace: str) -> bool:
        if user == ADMIN:
            return True
        m = re.fullmatch(r"system:serviceaccount:([^:]+):([^:]+)", user)
        if not m:
            return False
        sa_ns, sa_name = m.groups()
        groups = {"system:serviceaccounts", f"system:serviceaccounts:{sa_ns}", "system:authenticated"}
        bindings = [(b, namespace) for b in self.list("RoleBinding", namespace)]
        bindings += [(b, None) for b in self.list("ClusterRoleBinding")]
        for binding, ns in bindings:
            def matches(s: dict) -> bool:
                if s.get("kind") == "ServiceAccount":
                    return s.get("name") == sa_name and s.get("namespace", ns) == sa_ns
                return s.get("kind") == "Group" and s.get("name") in groups
            if not any(matches(s) for s in binding.get("subjects") or []):
                continue
            ref = binding["roleRef"]
            role = (self.get("Role", ns or "", ref["name"]) if ref["kind"] == "Role"
                    else self.get("ClusterRole", "", ref["name"]))
            for rule in (role or {}).get("rules") or []:
                if ((verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
                        and (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
                        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))):
                    return True
        return False

    def _authorize(self, user: str, verb: str, group: str, resource: str, namespace: str, kind_name: str) -> None:
        if not self.allowed(user, verb, group, resource, namespace):
            what = f'resource "{resource.split("/")[0]}"' + (f' in API group "{group}"' if group else "")
            sub = f' with subresource "{resource.split("/")[1]}"' if "/" in resource else ""
            raise ApiError(403, "Forbidden", f'{kind_name} is forbidden: User "{user}" cannot {verb} {what}{sub} '
                                             f'in the namespace "{namespace}"')

    # -------------------------------------------------------------------------------- request handling
    def _handler(self):
        fake = self

        class ApiHandler(Handler):
            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.body()
                body = json.loads(raw) if raw else None
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                user = fake.tokens.get(token.strip()) if scheme.lower() == "bearer" else None  # case-insensitive
                try:
                    if user is None:
                        raise ApiError(401, "Unauthorized", "Unauthorized")
                    with fake._lock:
                        fake.requests.append((user, method, self.path))
                        result = fake._dispatch(user, method, url.path, query, body)
                except ApiError as e:
                    return self.reply(e.code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                               "status": "Failure", "message": e.message, "reason": e.reason,
                                               "code": e.code})
                if isinstance(result, _Process):  # a followed log: stream until the container ends
                    return self._stream(result)
                code, out, ctype = result
                self.reply(code, out, ctype)

            def _stream(self, proc: _Process) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with open(proc.log, "rb") as f:
                    while True:
                        chunk = f.read(65536)
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        elif proc.popen.poll() is not None:
                            rest = f.read()
                            if rest:
                                self.wfile.write(rest)
                            break
                        else:
                            time.sleep(0.05)
                self.close_connection = True

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return ApiHandler

    def _dispatch(self, user: str, method: str, path: str, query: dict, body: Any):
        jobs = re.fullmatch(r"/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?", path)
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
        log = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path)
        if jobs and method == "POST" and not jobs.group(2):
            ns = jobs.group(1)
            self._authorize(user, "create", "kubeflow.org", "pytorchjobs", ns, "pytorchjobs.kubeflow.org")
            if self.create_error:
                code, message = self.create_error
                raise ApiError(code, {403: "Forbidden", 404: "NotFound"}.get(code, "Invalid"), message)
            stored = self._admit_job(user, ns, body)
            return 201, stored, "application/json"
        if jobs and jobs.group(2):
            ns, name = jobs.groups()
            verb = {"GET": "get", "DELETE": "delete"}[method]
            self._authorize(user, verb, "kubeflow.org", "pytorchjobs", ns, f'pytorchjobs.kubeflow.org "{name}"')
            key = ("PyTorchJob", ns, name)
            if key not in self.objects:
                raise ApiError(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
            if method == "DELETE":
                self._delete(key)
                self._collect_garbage()
                self.deleted.append((ns, name))
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, "application/json"
            self.job_gets += 1
            if self.vanish_after is not None and self.job_gets > self.vanish_after:
                raise ApiError(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
            job = copy.deepcopy(self.objects[key])
            if not self.live:
                self._step = min(self.job_gets - 1, len(self.steps) - 1)
                status = self.steps[self._step].status
                if status is not None:
                    job["status"] = status
            return 200, job, "application/json"
        if pods and method == "GET":
            ns = pods.group(1)
            self._authorize(user, "list", "", "pods", ns, "pods")
            selector = dict(kv.split("=", 1) for kv in query.get("labelSelector", "").split(",") if kv)
            source = self.list("Pod", ns) if self.live else self.steps[self._step].pods
            items = [p for p in source if all((p["metadata"].get("labels") or {}).get(k) == v
                                              for k, v in selector.items())]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                         "items": items}, "application/json"
        if log and method == "GET":
            ns, name = log.groups()
            self._authorize(user, "get", "", "pods/log", ns, f'pods "{name}"')
            if query.get("container") != "pytorch":
                raise ApiError(400, "BadRequest", "a container name must be specified")
            if self.live:
                proc = self._processes.get((ns, name))
                if proc is None:
                    raise ApiError(400, "BadRequest", f'container "pytorch" in pod "{name}" is waiting to start')
                if str(query.get("follow", "")).lower() in ("true", "1", "t"):  # Go ParseBool; the client sends "True"
                    return proc
                text = proc.log.read_text(errors="replace")
            else:
                text = self.master_log if "-master-" in name else ""
            if query.get("tailLines"):
                text = "\n".join(text.splitlines()[-int(query["tailLines"]):])
            return 200, text, "text/plain"
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    # -------------------------------------------------------------------------------------- admission
    def _admit_job(self, user: str, ns: str, body: dict) -> dict:
        if not self.get("Namespace", "", ns):
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, ns):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        name = meta.get("name", "")
        if ("PyTorchJob", ns, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
        errors = pytorchjob_errors(body)
        for i, ref in enumerate(meta.get("ownerReferences") or []):
            missing = [f for f in ("apiVersion", "kind", "name", "uid") if not ref.get(f)]
            if missing:
                errors.append(f"metadata.ownerReferences[{i}]: Required value: {', '.join(missing)}")
            if ref.get("blockOwnerDeletion") and not self.allowed(user, "update", "", "pods/finalizers", ns):
                raise ApiError(403, "Forbidden", f'pytorchjobs.kubeflow.org "{name}" is forbidden: cannot set '
                                                 "blockOwnerDeletion if an ownerReference refers to a resource you "
                                                 "can't set finalizers on")
        if errors:
            raise ApiError(422, "Invalid", f'PyTorchJob.kubeflow.org "{name}" is invalid: ' + "; ".join(errors))
        stored = copy.deepcopy(body)
        stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=_now())
        self.objects[("PyTorchJob", ns, name)] = stored
        self.created.append(copy.deepcopy(body))
        self._collect_garbage()
        if self.live and ("PyTorchJob", ns, name) in self.objects:
            self._start_job(stored)
        return stored

    # ---------------------------------------------------------------------------- garbage collection
    def _delete(self, key: tuple[str, str, str]) -> None:
        """Remove one object; its dependents go with the next garbage collection (background propagation)."""
        if self.objects.pop(key, None) is not None and key[0] == "Pod":
            self._kill((key[1], key[2]))

    def _collect_garbage(self) -> None:
        """Delete every object none of whose owners exists in its namespace (the owner must be namespace-local)."""
        changed = True
        while changed:
            changed = False
            for key, obj in list(self.objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not refs:
                    continue
                alive = [r for r in refs if any(o["metadata"]["uid"] == r.get("uid") and o["kind"] == r.get("kind")
                                                 for (k, ns, _), o in self.objects.items() if ns == key[1])]
                if not alive:
                    self.events.append(f"garbage collector: deleted {key[0]} {key[1]}/{key[2]} (owner "
                                       f"{refs[0].get('kind')} uid {refs[0].get('uid')} not found in {key[1]})")
                    if key[0] == "PyTorchJob":
                        self.deleted.append((key[1], key[2]))
                    self._delete(key)
                    changed = True
                    break

    # ------------------------------------------------------------------------ operator and kubelet (live)
    def _schedulable(self, spec: dict) -> str | None:
        """None when some node fits the pod, else the scheduler's message."""
        limits = (spec["containers"][0].get("resources") or {}).get("limits") or {}
        requests = (spec["containers"][0].get("resources") or {}).get("requests") or {}
        reasons: dict[str, int] = {}
        for node in self.nodes:
            why = None
            if any(node.labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
                why = "node(s) didn't match Pod's node affinity/selector"
            for taint in node.taints:
                if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(
                        t.get("key") == taint["key"] and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
                        and t.get("effect") in (None, taint["effect"]) for t in spec.get("tolerations") or []):
                    why = why or f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
            if int(limits.get("nvidia.com/gpu", 0)) > node.gpus:
                why = why or "Insufficient nvidia.com/gpu"
            if _cpu(requests.get("cpu", "0")) > node.cpu:
                why = why or "Insufficient cpu"
            if _gi(requests.get("memory", "0")) > node.memory_gi:
                why = why or "Insufficient memory"
            if why is None:
                return None
            reasons[why] = reasons.get(why, 0) + 1
        detail = ", ".join(f"{n} {why}" for why, n in reasons.items())
        return f"0/{len(self.nodes)} nodes are available: {detail}."

    def _start_job(self, job: dict) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        job["status"] = job_status([condition("Created", name, at=_now())])
        if (job["spec"].get("runPolicy") or {}).get("suspend"):
            return
        self._job_start[(ns, name)] = time.monotonic()
        master_port = free_port()
        namespace = self.get("Namespace", "", ns)
        enforce = (namespace["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        for rtype in ("Master", "Worker"):
            spec = job["spec"]["pytorchReplicaSpecs"].get(rtype)
            for index in range(int((spec or {}).get("replicas", 0))):
                pod_name = f"{name}-{rtype.lower()}-{index}"
                template = copy.deepcopy(spec["template"])
                sa = template["spec"].get("serviceAccountName") or "default"
                if not self.get("ServiceAccount", ns, sa):
                    self.events.append(f"{ns}/{name}: Error creating: pods \"{pod_name}\" is forbidden: error looking "
                                       f"up service account {ns}/{sa}: serviceaccount \"{sa}\" not found")
                    continue
                violations = restricted_violations(template["spec"]) if enforce == "restricted" else []
                if violations:
                    self.events.append(f"{ns}/{name}: Error creating: pods \"{pod_name}\" is forbidden: violates "
                                       f"PodSecurity \"restricted:latest\": {'; '.join(violations)}")
                    continue
                container = next(c for c in template["spec"]["containers"] if c["name"] == "pytorch")
                container["env"] = list(container.get("env") or []) + operator_env(job, rtype, index, "127.0.0.1",
                                                                                   master_port)
                pod_obj = self._put({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": ns,
                                 "labels": {**(template.get("metadata") or {}).get("labels", {}),
                                            **operator_labels(name, rtype, index)},
                                 "annotations": (template.get("metadata") or {}).get("annotations") or {},
                                 "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                      "name": name, "uid": job["metadata"]["uid"],
                                                      "controller": True, "blockOwnerDeletion": True}]},
                    "spec": template["spec"], "status": {"phase": "Pending", "conditions": []}})
                self._run_pod(pod_obj)

    def _run_pod(self, pod_obj: dict) -> None:
        ns, name = pod_obj["metadata"]["namespace"], pod_obj["metadata"]["name"]
        spec, status = pod_obj["spec"], pod_obj["status"]
        unschedulable = self._schedulable(spec)
        if unschedulable:
            status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": unschedulable, "lastTransitionTime": _now()}]
            return
        status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}]
        container = spec["containers"][0]
        image = container["image"]
        if image.startswith("localhost/"):
            status["containerStatuses"] = [container_status(waiting(
                "ErrImagePull", f'failed to pull and unpack image "{image}": dial tcp 127.0.0.1:443: connect: '
                                "connection refused"), image=image)]
            return
        try:
            command, env = pod_process(container, ns, self.secrets(ns), {
                "metadata.name": name, "metadata.namespace": ns, "metadata.uid": pod_obj["metadata"]["uid"]})
        except ContainerConfigError as e:
            status["containerStatuses"] = [container_status(waiting("CreateContainerConfigError", str(e)), image=image)]
            return
        home = self.workdir / ns / name
        home.mkdir(parents=True, exist_ok=True)
        env_all = {**image_env(home), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                   "KUBERNETES_SERVICE_PORT": str(self._server.port), "HOSTNAME": name, **env}
        log = home / "container.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(command, env=env_all, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._processes[(ns, name)] = _Process(popen, log, _now())
        status.update(phase="Running", startTime=_now())
        status["containerStatuses"] = [container_status(running(_now()), image=image)]

    def _kill(self, key: tuple[str, str]) -> None:
        proc = self._processes.get(key)
        if proc is None or proc.popen.poll() is not None:
            return
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.popen.wait()

    def _operate(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                for job in self.list("PyTorchJob"):
                    self._reconcile(job)

    def _reconcile(self, job: dict) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        conditions = (job.get("status") or {}).get("conditions") or []
        if any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in conditions):
            return
        pods = [p for p in self.list("Pod", ns) if p["metadata"]["labels"].get(JOB_NAME_LABEL) == name]
        for p in pods:  # the kubelet: container states from the processes
            proc = self._processes.get((ns, p["metadata"]["name"]))
            if proc is None or proc.popen.poll() is None or proc.finished:
                continue
            proc.finished = _now()
            code = proc.popen.returncode
            code = 128 - code if code < 0 else code
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": proc.started, "finishedAt": proc.finished,
                                    "containerID": "containerd://" + uuid.uuid4().hex * 2}}
            p["status"]["containerStatuses"] = [container_status(state, image=p["spec"]["containers"][0]["image"])]
            p["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        now = _now()
        deadline = (job["spec"].get("runPolicy") or {}).get("activeDeadlineSeconds")
        started = self._job_start.get((ns, name))
        expected = sum(int(s.get("replicas", 1)) for s in job["spec"]["pytorchReplicaSpecs"].values())
        phases = {p["metadata"]["name"]: p["status"].get("phase") for p in pods}
        master = phases.get(f"{name}-master-0")
        failed = [n for n, ph in phases.items() if ph == "Failed"]
        new: list[dict] = []
        if deadline and started is not None and time.monotonic() - started > deadline:
            new = [condition("Failed", name, reason="DeadlineExceeded", at=now,
                             message=f"PyTorchJob {name} has failed because it was active longer than specified deadline")]
        elif failed:
            rtype = "Master" if f"{name}-master-0" in failed else "Worker"
            new = [condition("Failed", name, at=now, message=f"PyTorchJob {name} is failed because {len(failed)} "
                                                             f"{rtype} replica(s) failed.")]
        elif master == "Succeeded":
            new = [condition("Succeeded", name, at=now)]
        elif len(pods) == expected and all(ph == "Running" for ph in phases.values()) and not any(
                c["type"] == "Running" for c in conditions):
            job["status"]["conditions"] = conditions + [condition("Running", name, at=now)]
        if new:
            running_cond = [dict(c, status="False") if c["type"] == "Running" else c for c in conditions]
            job["status"]["conditions"] = running_cond + new
            job["status"]["completionTime"] = now
            for p in pods:  # cleanPodPolicy Running: what still runs is stopped
                self._kill((ns, p["metadata"]["name"]))
