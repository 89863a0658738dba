"""A minimal fake of the Kubernetes API server for the PyTorchJob launcher's tests.

No Kubernetes API server (nor the Training Operator) can run on this machine, so the launcher's watch and
cleanup logic is tested against RECORDED sequences of PyTorchJob/Pod objects served over real HTTP on
loopback: the launcher uses the real kubernetes client (kubeconfig, URLs, (de)serialization); only the server
side is scripted. The objects are shaped like the Training Operator v1.9 and the kubelet write them
(condition types/reasons/messages, replicaStatuses, container states with their required fields).

Endpoints: POST/GET/DELETE ``/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]``,
GET ``/api/v1/namespaces/{ns}/pods?labelSelector=...`` and ``/api/v1/namespaces/{ns}/pods/{pod}/log``.
Each GET of the job moves one step through the script (the last step repeats); the pod list shows the pods
of the step last returned.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, parse_qs

from fakes.loopback import LoopbackApi

T0 = "2025-11-25T10:00:00Z"


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


def running() -> dict:
    return {"running": {"startedAt": T0}}


def terminated(exit_code: int, reason: str) -> dict:
    return {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": T0,
                           "finishedAt": "2025-11-25T10:04:00Z", "containerID": "containerd://" + "c" * 64}}


def waiting(reason: str, message: str | None = None) -> dict:
    w = {"reason": reason}
    if message:
        w["message"] = message
    return {"waiting": w}


def pod(job: str, rtype: str, index: int, phase: str, cstate: dict | None = None, *, restart_count: int = 0,
        last_state: dict | None = None, conditions: list[dict] | None = None) -> dict:
    """A pod of the job as the API lists it (labels as the operator sets them)."""
    name = f"{job}-{rtype.lower()}-{index}"
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if cstate is not None:
        status["containerStatuses"] = [container_status(cstate, restart_count, last_state)]
    return {
        "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "labels": {
            "training.kubeflow.org/job-name": job, "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/replica-type": rtype.lower(), "training.kubeflow.org/replica-index": str(index),
            **({"training.kubeflow.org/job-role": "master"} if rtype == "Master" else {})}},
        "spec": {"containers": [{"name": "pytorch", "image": "reg.example.com/msenc-python:1"}]},
        "status": status,
    }


@dataclass
class Step:
    """One observation: the job's status (None: not reconciled yet) and its pods."""

    status: dict | None
    pods: list[dict] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- the server
class FakeKubeApi(LoopbackApi):
    """The scripted API server. Use as a context manager; ``kubeconfig(path)`` writes a config for it."""

    def __init__(self, steps: list[Step], master_log: str = "", create_error: tuple[int, str] | None = None,
                 vanish_after: int | None = None):
        super().__init__()
        self.steps = steps
        self.master_log = master_log
        self.create_error = create_error
        self.vanish_after = vanish_after  # GET returns 404 after this many GETs (job deleted by someone)
        self.jobs: dict[tuple[str, str], dict] = {}
        self.created: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.job_gets = 0
        self._step = 0

    def kubeconfig(self, path: Path, namespace: str = "team-a") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        return path

    def handle(self, method: str, url: ParseResult, body: Any) -> tuple[int, Any, str]:
        self.requests.append((method, url.path + (f"?{url.query}" if url.query else "")))
        return self._dispatch(method, url.path, {k: v[0] for k, v in parse_qs(url.query).items()}, body)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict, str]:
        return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code}, "application/json"

    def _dispatch(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any, str]:
        jobs = re.fullmatch(r"/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?", path)
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
        log = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path)
        if jobs and method == "POST" and not jobs.group(2):
            if self.create_error:
                code, message = self.create_error
                return self._status(code, {403: "Forbidden", 404: "NotFound"}.get(code, "Invalid"), message)
            ns, name = jobs.group(1), body["metadata"]["name"]
            if (ns, name) in self.jobs:
                return self._status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
            stored = copy.deepcopy(body)
            stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                                      creationTimestamp=T0)
            self.jobs[(ns, name)] = stored
            self.created.append(copy.deepcopy(body))
            return 201, stored, "application/json"
        if jobs and jobs.group(2):
            key = (jobs.group(1), jobs.group(2))
            if key not in self.jobs:
                return self._status(404, "NotFound", f'pytorchjobs.kubeflow.org "{key[1]}" not found')
            if method == "DELETE":
                del self.jobs[key]
                self.deleted.append(key)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, "application/json"
            if method == "GET":
                self.job_gets += 1
                if self.vanish_after is not None and self.job_gets > self.vanish_after:
                    return self._status(404, "NotFound", f'pytorchjobs.kubeflow.org "{key[1]}" not found')
                self._step = min(self.job_gets - 1, len(self.steps) - 1)
                job = copy.deepcopy(self.jobs[key])
                status = self.steps[self._step].status
                if status is not None:
                    job["status"] = status
                return 200, job, "application/json"
        if pods and method == "GET":
            selector = dict(kv.split("=", 1) for kv in query.get("labelSelector", "").split(",") if kv)
            items = [p for p in self.steps[self._step].pods
                     if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                         "items": items}, "application/json"
        if log and method == "GET":
            if query.get("container") != "pytorch":
                return self._status(400, "BadRequest", "a container name must be specified")
            text = self.master_log if "-master-" in log.group(2) else ""
            if query.get("tailLines"):
                text = "\n".join(text.splitlines()[-int(query["tailLines"]):])
            return 200, text, "text/plain"
        return self._status(404, "NotFound", f"the server could not find the requested resource ({method} {path})")
