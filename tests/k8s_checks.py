"""What a Kubernetes cluster with the Kubeflow Training Operator checks before it runs a PyTorchJob, offline.

- :func:`pytorchjob_errors`: the API server's validation of a ``kubeflow.org/v1`` PyTorchJob against the
  training operator's CRD schema (vendored in ``data/k8s/pytorchjob-crd-v1.9.0.json``, source noted there),
  strict about unknown fields (what ``kubectl --validate=strict`` / ``fieldValidation=Strict`` reject and what
  the API server would otherwise silently prune), plus the operator's validating webhook
  (``pkg/webhooks/pytorch/pytorchjob_webhook.go`` at v1.9.0: DNS-1035 name, Master/Worker only, exactly one
  Master, a container named ``pytorch`` with an image in every replica).
- :func:`restricted_violations`: the Pod Security Standard "restricted" profile (baseline + restricted
  controls of https://kubernetes.io/docs/concepts/security/pod-security-standards/) for a pod spec, as the
  PodSecurity admission controller enforces it in namespaces labelled
  ``pod-security.kubernetes.io/enforce: restricted``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

CRD_FILE = Path(__file__).parent / "data" / "k8s" / "pytorchjob-crd-v1.9.0.json"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _strict(schema: Any) -> Any:
    """Unknown fields fail: every object schema with properties gets ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = _strict(json.loads(CRD_FILE.read_text())["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def crd_schema_errors(job: dict) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(_validator().iter_errors(job), key=lambda e: list(map(str, e.absolute_path)))]


def webhook_errors(job: dict) -> list[str]:
    errors = []
    name = (job.get("metadata") or {}).get("name", "")
    if len(name) > 63 or not _DNS1035.match(name or ""):
        errors.append(f"metadata.name: Invalid value: {name!r}: should match a DNS-1035 label")
    specs = ((job.get("spec") or {}).get("pytorchReplicaSpecs"))
    if not specs:
        errors.append("spec.pytorchReplicaSpecs: Required value: must be required")
        return errors
    for rtype, spec in specs.items():
        path = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            errors.append(f"{path}: Unsupported value: {rtype!r}: supported values: Master, Worker")
        containers = (((spec or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            errors.append(f"{path}.template.spec.containers: Required value: must be specified")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errors.append(f"{path}.template.spec.containers[{i}].image: Required value: must be required")
        if not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{path}.template.spec.containers: Required value: must have at least one container "
                          "with name pytorch")
        replicas = (spec or {}).get("replicas")
        if rtype == "Master" and replicas != 1:
            errors.append(f"{path}.replicas: Forbidden: must be 1")
        if rtype == "Worker" and replicas is not None and replicas < 1:
            errors.append(f"{path}.replicas: Forbidden: must be at least 1")
    return errors


def pytorchjob_errors(job: dict) -> list[str]:
    """Everything the API server (CRD schema, strict fields) and the operator's webhook reject."""
    return crd_schema_errors(job) + webhook_errors(job)


# ------------------------------------------------------------------------ Pod Security Standard: restricted
_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                  "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(pod_spec: dict) -> list[str]:
    """The "restricted" Pod Security Standard's violations of a pod spec (camelCase, as in the API)."""
    spec = copy.deepcopy(pod_spec)
    psc = spec.get("securityContext") or {}
    containers = [("containers", c) for c in spec.get("containers") or []]
    containers += [("initContainers", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainers", c) for c in spec.get("ephemeralContainers") or []]
    out: list[str] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"host namespaces: {field}=true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess: pod")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            out.append(f"hostPath volume {v['name']!r}")
        elif not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"restricted volume types: {v['name']!r} uses {', '.join(sorted(kinds - _RESTRICTED_VOLUMES))}")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in _SAFE_SYSCTLS:
            out.append(f"forbidden sysctl {s.get('name')}")
    if psc.get("runAsUser") == 0:
        out.append("runAsUser=0 (pod)")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("seccompProfile Unconfined (pod)")
    pod_seccomp_ok = (psc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    for kind, c in containers:
        where = f"{kind} {c.get('name')!r}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"privileged: {where}")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"hostProcess: {where}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"procMount {sc['procMount']}: {where}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"hostPort {p['hostPort']}: {where}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation != false: {where}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"capabilities: {where} must drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"capabilities: {where} adds {', '.join(sorted(added - {'NET_BIND_SERVICE'}))}"
                       + (" (not even baseline)" if added - _BASELINE_CAPS else ""))
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"runAsNonRoot != true: {where}")
        if sc.get("runAsUser") == 0:
            out.append(f"runAsUser=0: {where}")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            out.append(f"seccompProfile Unconfined: {where}")
        elif seccomp not in ("RuntimeDefault", "Localhost") and not pod_seccomp_ok:
            out.append(f"seccompProfile must be RuntimeDefault or Localhost: {where}")
    return out
