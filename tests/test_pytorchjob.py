"""The PyTorchJob launcher: the rendered job (SDK model, the training operator's CRD schema and webhook,
Kubernetes pod schemas, the "restricted" Pod Security Standard, labels, owner, deadline), the operator's env
(real gloo rendezvous of the rendered commands), and the watch/cleanup logic.

No Kubernetes API server or Training Operator can run on this machine. The watch/cleanup tests therefore run
the real launcher (kubeflow-training's TrainingClient on the real kubernetes client) against
``fake_k8s.FakeCluster``, a loopback API server that enforces what a cluster does (RBAC, CRD schema, garbage
collection, Secrets, scheduling) and either replays RECORDED operator/kubelet states or runs the job's pods as
local processes. Each enforcement has a test here that shows it failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from fake_k8s import (
    FakeCluster,
    Node,
    Step,
    condition,
    expand_var_refs,
    job_status,
    pod,
    recorded_success,
    replica_processes,
    running,
    terminated,
    waiting,
)
from k8s_checks import pytorchjob_errors, restricted_violations
from processes import free_port, run_to_completion
from msenc_lib.errors import ConfigError
from msenc_lib.launch import LaunchError
from msenc_lib.launch.base import PodIdentity
from msenc_lib.launch.pytorchjob import (
    PyTorchJobConfig,
    describe_pod,
    job_state,
    render_pytorchjob,
    run_pytorchjob,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE = "reg.example.com/msenc-python:1"


def make_cfg(**over) -> PyTorchJobConfig:
    base = dict(image=IMAGE, data_uri="s3://bucket/split", output_uri="s3://bucket/models/run1")
    return PyTorchJobConfig.load({**base, **over}, environ={})


def validate_pod_template(template: dict, version: str = "1.30") -> None:
    """Validate a PodTemplateSpec against the Kubernetes schemas (strict: unknown fields fail) by wrapping it
    in the core/v1 ``PodTemplate`` kind, whose ``template`` field is exactly a PodTemplateSpec (the PyTorchJob
    CRD itself is not among kubernetes-validate's schemas)."""
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                  "metadata": {"name": "replica"}, "template": template}, version, strict=True)


# ---------------------------------------------------------------------------------------- rendering
def test_rendered_job_is_the_sdk_model_and_round_trips():
    from kubeflow.training import ApiClient, KubeflowOrgV1PyTorchJob

    cfg = make_cfg(workers=3, gpus_per_worker=1, name="msenc-t1", namespace="ml", cpu="8", memory="32Gi",
                   node_selector={"nvidia.com/gpu.product": "A100-SXM4-80GB"},
                   tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"],
                   service_account="msenc-trainer", preset="tiny", max_steps=50,
                   train_config="s3://bucket/configs/train.yaml")
    job = render_pytorchjob(cfg)

    class Body:
        data = json.dumps(job)

    api = ApiClient()
    model = api.deserialize(Body, "KubeflowOrgV1PyTorchJob")
    assert isinstance(model, KubeflowOrgV1PyTorchJob)
    # nothing of the rendered job is unknown to the model (a misspelt field would be dropped here)
    assert api.sanitize_for_serialization(model) == job
    assert (model.api_version, model.kind) == ("kubeflow.org/v1", "PyTorchJob")
    specs = model.spec.pytorch_replica_specs
    assert specs["Master"].replicas == 1 and specs["Worker"].replicas == 2  # 3 pods in all
    assert model.spec.nproc_per_node == "1"
    assert model.spec.run_policy.clean_pod_policy == "Running"
    for spec in specs.values():
        pod_spec = spec.template.spec
        (c,) = pod_spec.containers
        assert c.name == "pytorch" and c.image == IMAGE
        assert c.resources.limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
        assert c.resources.requests == {"cpu": "8", "memory": "32Gi"}
        assert c.command[:4] == ["python", "-m", "msenc_cli", "train"]
        assert c.command[4:] == ["--data-dir", "s3://bucket/split", "--output-dir", "s3://bucket/models/run1",
                                 "--config", "s3://bucket/configs/train.yaml", "--preset", "tiny",
                                 "--max-steps", "50"]
        assert pod_spec.node_selector == {"nvidia.com/gpu.product": "A100-SXM4-80GB"}
        assert [(t.key, t.operator, t.value, t.effect) for t in pod_spec.tolerations] == [
            ("nvidia.com/gpu", "Exists", None, "NoSchedule"), ("dedicated", "Equal", "ml", "NoExecute")]
        assert pod_spec.service_account_name == "msenc-trainer"
        env = {e.name: e for e in c.env}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[var].value is None, "credentials must never be literal values"
            ref = env[var].value_from.secret_key_ref
            assert (ref.name, ref.key) == ("msenc-storage", var)
        assert env["AWS_ENDPOINT_URL"].value_from.secret_key_ref.optional is True


@pytest.mark.parametrize("workers,gpus", [(1, 0), (2, 0), (3, 1), (2, 4)])
def test_pod_templates_validate_against_kubernetes_schemas(workers, gpus):
    job = render_pytorchjob(make_cfg(workers=workers, gpus_per_worker=gpus, cpu="2", memory="4Gi",
                                     node_selector={"pool": "gpu"}, tolerations=["nvidia.com/gpu=present:NoSchedule"],
                                     env={"NCCL_DEBUG": "INFO"}))
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert sorted(specs) == (["Master", "Worker"] if workers > 1 else ["Master"])
    for spec in specs.values():
        validate_pod_template(spec["template"])
    limits = specs["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)


def test_schema_validation_catches_a_broken_template():
    import kubernetes_validate

    template = render_pytorchjob(make_cfg())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    template["spec"]["containers"][0]["resources"]["limits"] = ["nvidia.com/gpu"]  # must be a mapping
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template(template)
    template = render_pytorchjob(make_cfg())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    template["spec"]["containers"][0]["gpus"] = 1  # unknown field: rejected in strict mode
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template(template)


@pytest.mark.parametrize("over", [{}, {"workers": 3, "gpus_per_worker": 2, "cpu_limit": "16"},
                                  {"node_selector": "pool=gpu,zone=a", "tolerations": ["nvidia.com/gpu:NoSchedule"],
                                   "service_account": "msenc-trainer", "run_id": "2f6c0a4e-9d1b-4c55-8b0e-1f2d3c4b5a69",
                                   "step_name": "train", "restart_policy": "OnFailure", "backoff_limit": 3,
                                   "ttl_seconds_after_finished": 600, "image_pull_policy": "Always"}])
def test_rendered_job_validates_against_the_operators_crd_schema_and_webhook(over):
    job = render_pytorchjob(make_cfg(name="msenc-crd", **over), owner=PodIdentity("step-pod", "uid-1", None))
    assert pytorchjob_errors(job) == []


def test_crd_validation_catches_what_the_api_server_rejects():
    job = render_pytorchjob(make_cfg(name="msenc-crd"))
    bad = json.loads(json.dumps(job))
    bad["spec"]["runPolicy"]["activeDeadlineSeconds"] = "1h"  # must be an integer
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["gpus"] = 1  # unknown field
    errors = pytorchjob_errors(bad)
    assert any("activeDeadlineSeconds" in e and "integer" in e for e in errors)
    assert any("'gpus' was unexpected" in e for e in errors)
    webhook = json.loads(json.dumps(job))
    webhook["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    webhook["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    errors = pytorchjob_errors(webhook)
    assert any("replicas: Forbidden: must be 1" in e for e in errors)
    assert any("with name pytorch" in e for e in errors)


def test_pods_meet_the_restricted_pod_security_standard():
    job = render_pytorchjob(make_cfg(workers=2, gpus_per_worker=1))
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        assert restricted_violations(spec["template"]["spec"]) == []
    weak = spec["template"]["spec"]
    del weak["securityContext"]["seccompProfile"]
    weak["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": True}
    weak["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    found = " | ".join(restricted_violations(weak))
    for expected in ("allowPrivilegeEscalation", "must drop ALL", "seccompProfile", "hostPath"):
        assert expected in found


def test_every_pod_has_cpu_and_memory_requests_and_limits():
    job = render_pytorchjob(make_cfg(workers=2, cpu="3", cpu_limit="6", memory="12Gi"))
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        res = spec["template"]["spec"]["containers"][0]["resources"]
        assert res == {"requests": {"cpu": "3", "memory": "12Gi"}, "limits": {"cpu": "6", "memory": "12Gi"}}
    defaults = render_pytorchjob(make_cfg())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert set(defaults["containers"][0]["resources"]["requests"]) == {"cpu", "memory"}  # never BestEffort


def test_labels_owner_and_a_finite_deadline():
    owner = PodIdentity(name="msenc-abc-system-container-impl-123", uid="0b1f5c0e-7f6a-4f0e-9a57-3c2d1e0f9a88",
                        namespace="team-a")
    cfg = make_cfg(run_id="run-42", step_name="train", max_steps=500, step_time_budget_s=4, setup_allowance_s=600)
    job = render_pytorchjob(cfg, namespace="team-a", owner=owner)
    assert job["metadata"]["labels"]["msenc/run-id"] == "run-42" and job["metadata"]["labels"]["msenc/step"] == "train"
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        assert spec["template"]["metadata"]["labels"]["msenc/run-id"] == "run-42"
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": owner.name,
                                                   "uid": owner.uid, "controller": False}]
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600 + 500 * 4
    # an owner in another namespace would make the garbage collector delete the job at once: none then
    assert "ownerReferences" not in render_pytorchjob(cfg, namespace="msenc", owner=owner)["metadata"]
    assert render_pytorchjob(make_cfg(timeout=90))["spec"]["runPolicy"]["activeDeadlineSeconds"] == 90
    default = render_pytorchjob(make_cfg())["spec"]["runPolicy"]["activeDeadlineSeconds"]
    assert 0 < default < 86400  # finite, from the default 1000 steps x 10 s + 30 min


def test_localhost_images_are_refused():
    with pytest.raises(ConfigError, match="cannot pull a localhost/ image"):
        make_cfg(image="localhost/msenc-python:dev")


def test_cpu_job_has_no_gpu_and_several_gpus_use_torchrun():
    cpu = json.dumps(render_pytorchjob(make_cfg(workers=2)))
    assert "nvidia.com/gpu" not in cpu
    job = render_pytorchjob(make_cfg(workers=2, gpus_per_worker=4))
    assert job["spec"]["nprocPerNode"] == "4"
    cmd = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc-per-node=4" in cmd
    assert cmd[cmd.index("-m", 3):][:3] == ["-m", "msenc_cli", "train"]


def test_kfp_minio_artifact_uris_and_mirror_paths_become_s3_uris():
    cfg = make_cfg(data_uri="minio://mlpipeline/v2/artifacts/run/split", output_uri="/minio/mlpipeline/v2/m",
                   train_config="minio://mlpipeline/v2/m-config/train_config.yaml")
    assert cfg.data_uri == "s3://mlpipeline/v2/artifacts/run/split"
    command = render_pytorchjob(cfg)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[3:] == ["--data-dir", "s3://mlpipeline/v2/artifacts/run/split", "--output-dir",
                           "s3://mlpipeline/v2/m", "--config", "s3://mlpipeline/v2/m-config/train_config.yaml"]
    assert not any("minio" in a for a in command)


def test_render_without_namespace_leaves_it_to_kubectl():
    assert "namespace" not in render_pytorchjob(make_cfg(name="msenc-x"))["metadata"]
    assert render_pytorchjob(make_cfg(name="msenc-x", namespace="ml"))["metadata"]["namespace"] == "ml"


@pytest.mark.parametrize("over,field", [
    ({"data_uri": "/local/split"}, "data_uri"),
    ({"train_config": "configs/train.yaml"}, "train_config"),
    ({"data_uri": "gs://bucket/split"}, "data_uri"),
    ({"output_uri": "model-dir"}, "output_uri"),
    ({"tolerations": ["nvidia.com/gpu:NoShedule"]}, "tolerations"),
    ({"node_selector": {"bad key!": "x"}}, "node_selector"),
    ({"name": "Msenc_Train"}, "name"),
    ({"memory": "32 GB"}, "memory"),
    ({"workers": 0}, "workers"),
    ({"image_pull_policy": "sometimes"}, "image_pull_policy"),
    ({"env": {"AWS_ACCESS_KEY_ID": "literal"}}, "env"),
])
def test_bad_config_names_the_field(over, field):
    with pytest.raises(ConfigError, match=field):
        make_cfg(**over)


def test_cli_render_matches_the_library(tmp_path):
    args = ["launch", "pytorchjob", "--render", "--name", "msenc-cli", "--workers", "2", "--gpus-per-worker", "1",
            "--image", IMAGE, "--data-uri", "s3://bucket/split", "--output-uri", "s3://bucket/models/run1",
            "--node-selector", "pool=gpu", "zone=a", "--toleration", "nvidia.com/gpu:NoSchedule",
            "--cpu", "4", "--memory", "16Gi", "--timeout", "600", "--preset", "tiny", "--max-steps", "10"]
    out = subprocess.run([sys.executable, "-m", "msenc_cli", *args], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    expected = render_pytorchjob(make_cfg(name="msenc-cli", workers=2, gpus_per_worker=1,
                                          node_selector={"pool": "gpu", "zone": "a"},
                                          tolerations=["nvidia.com/gpu:NoSchedule"], cpu="4", memory="16Gi",
                                          timeout=600, preset="tiny", max_steps=10))
    assert rendered == expected
    assert rendered["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600

    bad = subprocess.run([sys.executable, "-m", "msenc_cli", *args, "--toleration", "gpu:Sometimes"],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120)
    assert bad.returncode == 2 and "effect must be one of" in bad.stderr


# ----------------------------------------------------------------------- the operator's env, locally
def test_replica_processes_emulate_the_operator_env():
    from fake_k8s import ContainerConfigError

    job = render_pytorchjob(make_cfg(workers=3, name="msenc-env", s3_region="eu-west-1"))
    secrets = {"msenc-storage": {"AWS_ACCESS_KEY_ID": "AKIA-TEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}}
    procs = replica_processes(job, master_port=29555, secrets=secrets, python="/usr/bin/python3")
    assert [(p.replica_type, p.index, p.rank) for p in procs] == [("Master", 0, 0), ("Worker", 0, 1), ("Worker", 1, 2)]
    for p in procs:
        assert p.env["WORLD_SIZE"] == "3" and p.env["RANK"] == str(p.rank) == p.env["PET_NODE_RANK"]
        assert (p.env["MASTER_ADDR"], p.env["MASTER_PORT"]) == ("127.0.0.1", "29555")
        assert p.env["AWS_ACCESS_KEY_ID"] == "AKIA-TEST" and p.env["AWS_DEFAULT_REGION"] == "eu-west-1"
        assert p.env["PYTHONUNBUFFERED"] == "1"  # training operator v1.9
        assert "AWS_ENDPOINT_URL" not in p.env  # optional key absent from the Secret: unset, like the kubelet
        assert p.command[:4] == ["/usr/bin/python3", "-m", "msenc_cli", "train"]
    # the container port is the default MASTER_PORT, as the operator does
    assert replica_processes(job, secrets=secrets)[0].env["MASTER_PORT"] == "23456"
    with pytest.raises(ContainerConfigError, match="couldn't find key AWS_SECRET_ACCESS_KEY in Secret default/msenc-storage"):
        replica_processes(job, secrets={"msenc-storage": {"AWS_ACCESS_KEY_ID": "x"}})
    with pytest.raises(ContainerConfigError, match='secret "msenc-storage" not found'):
        replica_processes(job, secrets={})


def test_var_refs_expand_like_the_kubelet():
    env = {"A": "1", "PET_NNODES": "2"}
    assert expand_var_refs("--nnodes=$(PET_NNODES)", env) == "--nnodes=2"
    assert expand_var_refs("$(MISSING)-$$(A)-$(A)", env) == "$(MISSING)-$(A)-1"


PROBE = textwrap.dedent("""
    # Stands in for `msenc train`: same arguments, same env contract.
    import argparse, datetime, json, os
    import torch, torch.distributed as dist
    from msenc_lib import storage

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True); ap.add_argument("--output-dir", required=True)
    ap.add_argument("--config"); ap.add_argument("--preset"); ap.add_argument("--max-steps", type=int)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    # env:// -> MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)]); dist.all_reduce(t)
    if rank == 0:
        storage.write_text(storage.join(a.output_dir, "probe.json"), json.dumps({
            "world_size": world, "rank_sum": t.item(), "data_dir": a.data_dir, "preset": a.preset,
            "max_steps": a.max_steps, "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
            "local_world_size": os.environ.get("LOCAL_WORLD_SIZE")}))
    dist.destroy_process_group()
""")


def probe_command(command: list[str]) -> list[str]:
    """The pod command with ``-m msenc_cli train`` swapped for ``-m probe_train``."""
    at = command.index("msenc_cli")
    assert command[at - 1:at + 2] == ["-m", "msenc_cli", "train"]
    return [*command[:at], "probe_train", *command[at + 2:]]


@pytest.mark.slow
@pytest.mark.parametrize("workers,gpus", [(2, 0), (1, 2)], ids=["2-pods", "torchrun-2-procs"])
def test_rendered_commands_rendezvous_with_the_operator_env(s3, tmp_path, workers, gpus):
    """The rendered Master/Worker commands, run as local processes with the operator's env and the S3
    credentials resolved from the Secret, form one gloo process group and write to the s3:// output."""
    (tmp_path / "probe_train.py").write_text(PROBE)
    out_uri = s3.uri("models", f"w{workers}g{gpus}")
    job = render_pytorchjob(make_cfg(workers=workers, gpus_per_worker=gpus, data_uri=s3.uri("split"),
                                     output_uri=out_uri, preset="tiny", max_steps=3))
    secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": s3.endpoint}
    procs = replica_processes(job, master_port=free_port(), secrets={"msenc-storage": secret},
                              python=sys.executable)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    run_to_completion([(probe_command(p.command), {**base_env, **p.env}) for p in procs], timeout=120)
    obj = s3.client().get_object(Bucket=s3.bucket, Key=f"models/w{workers}g{gpus}/probe.json")
    got = json.loads(obj["Body"].read())
    world = workers * max(gpus, 1)
    assert got["world_size"] == world and got["rank_sum"] == world * (world + 1) / 2
    assert (got["data_dir"], got["preset"], got["max_steps"]) == (s3.uri("split"), "tiny", 3)
    assert got["endpoint"] == s3.endpoint
    assert got["local_world_size"] == (str(gpus) if gpus > 1 else None)


# ------------------------------------------------------------------------------- watch and cleanup
JOB = "msenc-rec"
LOG = "loading split s3://bucket/split\nstep 1/3 loss 3.91\nstep 2/3 loss 3.52\nstep 3/3 loss 3.20\nsaved model\n"


def use_cluster(fake: FakeCluster, tmp_path, monkeypatch, namespace: str = "team-a", token: str | None = None) -> None:
    """The test process talks to ``fake`` through a kubeconfig, outside any pod (no KFP step env)."""
    fake.add_namespace(namespace)
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig", namespace, token)))
    for var in ("KUBERNETES_SERVICE_HOST", "KFP_POD_NAME", "KFP_POD_UID"):
        monkeypatch.delenv(var, raising=False)


def launch_against(fake: FakeCluster, tmp_path, monkeypatch, **over):
    use_cluster(fake, tmp_path, monkeypatch)
    lines: list[str] = []
    cfg = make_cfg(**{"name": JOB, "workers": 2, "poll_interval": 0.02, **over})
    return lines, (lambda: run_pytorchjob(cfg, echo=lines.append))


def success_steps() -> list[Step]:
    return recorded_success(JOB)


def test_created_running_succeeded_returns_the_model_and_deletes_the_job(tmp_path, monkeypatch):
    with FakeCluster(success_steps(), master_log=LOG) as fake:
        lines, go = launch_against(fake, tmp_path, monkeypatch)
        result = go()
    assert result.model_uri == "s3://bucket/models/run1" and result.state == "Succeeded"
    assert (result.namespace, result.job_name, result.kept) == ("team-a", JOB, False)  # kubeconfig's namespace
    (body,) = fake.created
    assert body == render_pytorchjob(make_cfg(name=JOB, workers=2, poll_interval=0.02), namespace="team-a")
    assert all(user == "kubernetes-admin" for user, _, _ in fake.requests)
    assert fake.deleted == [("team-a", JOB)]
    text = "\n".join(lines)
    for state in ("Pending", "Created", "Running", "Succeeded"):
        assert f"team-a/{JOB}: {state}" in text
    assert f"[{JOB}-master-0] step 3/3 loss 3.20" in text  # the master's log, streamed
    assert text.index("Running") < text.index("step 1/3") < text.index("deleted PyTorchJob")
    assert any("follow=true" in path.lower() for _, _, path in fake.requests)


def test_keep_leaves_the_finished_job(tmp_path, monkeypatch):
    with FakeCluster(success_steps(), master_log=LOG) as fake:
        lines, go = launch_against(fake, tmp_path, monkeypatch, keep=True)
        result = go()
    assert result.kept and fake.deleted == []
    assert any("kept PyTorchJob" in line for line in lines)


def test_running_then_failed_reports_reason_pods_and_log(tmp_path, monkeypatch):
    created = condition("Created", JOB)
    steps = [
        Step(job_status([created, condition("Running", JOB)], {"Master": {"active": 1}}),
             [pod(JOB, "Master", 0, "Running", running()), pod(JOB, "Worker", 0, "Running", running())]),
        Step(job_status([created, condition("Running", JOB, status="False"), condition("Failed", JOB)],
                        {"Master": {"failed": 1}, "Worker": {"failed": 1}}, finished=True),
             [pod(JOB, "Master", 0, "Failed", terminated(137, "OOMKilled")),
              pod(JOB, "Worker", 0, "Failed", terminated(1, "Error"))]),
    ]
    oom_log = "step 1/3 loss 3.91\nallocating activations for 65536 tokens\n"
    with FakeCluster(steps, master_log=oom_log) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch)
        with pytest.raises(LaunchError) as err:
            go()
    msg = str(err.value)
    assert f"PyTorchJob team-a/{JOB} failed: PyTorchJobFailed: PyTorchJob {JOB} is failed because 1 Master" in msg
    assert f"{JOB}-master-0: Failed; container pytorch terminated: OOMKilled (exit code 137)" in msg
    assert f"{JOB}-worker-0: Failed; container pytorch terminated: Error (exit code 1)" in msg
    assert "allocating activations for 65536 tokens" in msg  # tail of the master's log
    assert fake.deleted == [("team-a", JOB)]


def test_image_pull_error_fails_after_the_grace_period(tmp_path, monkeypatch):
    created = condition("Created", JOB)
    backoff = waiting("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"')
    steps = [
        Step(job_status([created]), [pod(JOB, "Master", 0, "Pending", waiting("ErrImagePull", "rpc error: not found")),
                                     pod(JOB, "Worker", 0, "Pending", waiting("ContainerCreating"))]),
        Step(job_status([created]), [pod(JOB, "Master", 0, "Pending", backoff),
                                     pod(JOB, "Worker", 0, "Pending", backoff)]),
    ]
    with FakeCluster(steps) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch, stuck_grace=0.3)
        t0 = time.monotonic()
        with pytest.raises(LaunchError) as err:
            go()
    assert time.monotonic() - t0 >= 0.3  # not before the grace period
    msg = str(err.value)
    assert "cannot start (ImagePullBackOff)" in msg
    assert f'container pytorch waiting: ImagePullBackOff: Back-off pulling image "{IMAGE}"' in msg
    assert fake.deleted == [("team-a", JOB)]


def test_invalid_image_name_fails_at_once(tmp_path, monkeypatch):
    steps = [Step(job_status([condition("Created", JOB)]),
                  [pod(JOB, "Master", 0, "Pending", waiting("InvalidImageName", 'invalid reference format'))])]
    with FakeCluster(steps) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch, stuck_grace=3600)
        with pytest.raises(LaunchError, match="InvalidImageName"):
            go()
    assert fake.job_gets == 1 and fake.deleted == [("team-a", JOB)]


def test_timeout_names_the_state_and_why_pods_wait(tmp_path, monkeypatch):
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                      "lastTransitionTime": "2025-11-25T10:00:01Z"}]
    steps = [Step(job_status([condition("Created", JOB)]),
                  [pod(JOB, "Master", 0, "Pending", None, conditions=unschedulable),
                   pod(JOB, "Worker", 0, "Pending", None, conditions=unschedulable)])]
    with FakeCluster(steps) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch, timeout=0.4, deadline_grace_s=0, gpus_per_worker=1)
        with pytest.raises(LaunchError) as err:
            go()
    msg = str(err.value)
    assert "timed out after 1 s in state Created" in msg
    assert "not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in msg
    assert fake.job_gets >= 3 and fake.deleted == [("team-a", JOB)]


def test_job_deleted_by_someone_else(tmp_path, monkeypatch):
    with FakeCluster(success_steps()[:3], vanish_after=2) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch)
        with pytest.raises(LaunchError, match="disappeared"):
            go()


@pytest.mark.parametrize("code,hint", [(404, "Training Operator installed"), (403, "lacks RBAC")])
def test_create_errors_explain_the_fix(tmp_path, monkeypatch, code, hint):
    message = ('the server could not find the requested resource' if code == 404 else
               'pytorchjobs.kubeflow.org is forbidden: User "system:serviceaccount:kubeflow:pipeline-runner" '
               'cannot create resource "pytorchjobs" in API group "kubeflow.org" in the namespace "team-a"')
    with FakeCluster(success_steps(), create_error=(code, message)) as fake:
        _, go = launch_against(fake, tmp_path, monkeypatch)
        with pytest.raises(LaunchError) as err:
            go()
    assert f"HTTP {code}" in str(err.value) and hint in str(err.value) and message in str(err.value)
    assert fake.deleted == []  # nothing was created, nothing to delete


def test_sigterm_cancels_and_deletes_the_job(tmp_path):
    """A cancelled KFP run sends SIGTERM to the step's pod: the launcher must delete its job on the way out."""
    steps = [Step(job_status([condition("Created", JOB), condition("Running", JOB)]),
                  [pod(JOB, "Master", 0, "Running", running())])]
    with FakeCluster(steps, master_log="step 1\n") as fake:
        fake.add_namespace("team-a")
        env = {**os.environ, "KUBECONFIG": str(fake.kubeconfig(tmp_path / "kubeconfig")), "PYTHONPATH": str(REPO)}
        for var in ("KUBERNETES_SERVICE_HOST", "KFP_POD_NAME", "KFP_POD_UID"):
            env.pop(var, None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "msenc_cli", "launch", "pytorchjob", "--name", JOB, "--image", IMAGE,
             "--data-uri", "s3://bucket/split", "--output-uri", "s3://bucket/m", "--poll-interval", "0.05"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while fake.job_gets < 3 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert fake.deleted == [("team-a", JOB)]
    assert f"cancelled: deleted PyTorchJob team-a/{JOB}" in err
    assert out == ""  # no result on stdout for a cancelled launch


def test_ctrl_c_deletes_the_job_even_with_keep(tmp_path, monkeypatch):
    """--keep keeps finished jobs only: a cancelled launch must not leave GPUs busy."""
    with FakeCluster(success_steps(), master_log=LOG) as fake:
        use_cluster(fake, tmp_path, monkeypatch)
        lines: list[str] = []

        def echo(line: str) -> None:
            lines.append(line)
            if line.endswith("is running.)"):  # the user presses Ctrl-C once the job runs
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_pytorchjob(make_cfg(name=JOB, keep=True, poll_interval=0.02), echo=echo)
    assert fake.deleted == [("team-a", JOB)]
    assert lines[-1] == f"[msenc launch] cancelled: deleted PyTorchJob team-a/{JOB}"


# ------------------------------------------------------------------------------------ status helpers
def test_job_state_prefers_terminal_conditions():
    assert job_state({}) == ("Pending", "", "")
    st = job_status([condition("Created", JOB), condition("Running", JOB, status="False"),
                     condition("Failed", JOB, reason="DeadlineExceeded", message="active longer than deadline")])
    assert job_state({"status": st}) == ("Failed", "DeadlineExceeded", "active longer than deadline")
    st = job_status([condition("Created", JOB), condition("Running", JOB, status="False"),
                     condition("Restarting", JOB)])
    assert job_state({"status": st})[0] == "Restarting"


def test_describe_pod_reports_previous_oom_of_a_restarted_container():
    p = pod(JOB, "Master", 0, "Running", running(), restart_count=1, last_state=terminated(137, "OOMKilled"))
    assert describe_pod(p) == (f"{JOB}-master-0: Running; container pytorch previous run terminated: "
                               "OOMKilled (exit code 137)")


# ------------------------------------------------- live: the operator and the kubelet run the job's pods
SECRET = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def live_launch(fake: FakeCluster, tmp_path, monkeypatch, **over):
    use_cluster(fake, tmp_path, monkeypatch)
    lines: list[str] = []
    cfg = make_cfg(**{"name": JOB, "workers": 2, "poll_interval": 0.05, "cpu": "1", "memory": "1Gi",
                      "stuck_grace": 1.0, **over})
    return lines, (lambda: run_pytorchjob(cfg, echo=lines.append))


def test_live_missing_secret_key_is_the_kubelets_create_container_config_error(tmp_path, monkeypatch):
    with FakeCluster() as fake:
        lines, go = live_launch(fake, tmp_path, monkeypatch)
        fake.add_secret("team-a", "msenc-storage", {"AWS_ACCESS_KEY_ID": "testing"})  # no secret key
        with pytest.raises(LaunchError) as err:
            go()
    msg = str(err.value)
    assert "cannot start (CreateContainerConfigError)" in msg
    assert "couldn't find key AWS_SECRET_ACCESS_KEY in Secret team-a/msenc-storage" in msg
    assert fake.deleted == [("team-a", JOB)] and not fake.list("Pod", "team-a")


def test_live_gpus_on_a_cpu_only_cluster_are_unschedulable(tmp_path, monkeypatch):
    with FakeCluster(nodes=[Node(gpus=0)]) as fake:
        fake_secret = dict(SECRET)
        _, go = live_launch(fake, tmp_path, monkeypatch, gpus_per_worker=1, timeout=1, deadline_grace_s=1)
        fake.add_secret("team-a", "msenc-storage", fake_secret)
        with pytest.raises(LaunchError) as err:
            go()
    assert "not scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in str(err.value)


def test_live_deadline_fails_the_job_with_the_operators_reason(tmp_path, monkeypatch):
    with FakeCluster() as fake:
        _, go = live_launch(fake, tmp_path, monkeypatch, timeout=1, workers=1)
        fake.add_secret("team-a", "msenc-storage", SECRET)
        with pytest.raises(LaunchError) as err:
            go()
    assert "failed: DeadlineExceeded" in str(err.value) and "active longer than specified deadline" in str(err.value)


def test_live_owner_pod_deletion_garbage_collects_the_job_and_its_pods(tmp_path, monkeypatch):
    """What a cancelled KFP run does when Argo removes the step pod: the job goes with it."""
    with FakeCluster() as fake:
        use_cluster(fake, tmp_path, monkeypatch)
        fake.add_secret("team-a", "msenc-storage", SECRET)
        uid = fake.add_pod("team-a", "msenc-run-train-pod")
        owner = PodIdentity("msenc-run-train-pod", uid, "team-a")
        lines: list[str] = []

        def echo(line: str) -> None:
            lines.append(line)
            if "is running." in line:
                fake.delete_pod("team-a", "msenc-run-train-pod")

        cfg = make_cfg(name=JOB, workers=1, poll_interval=0.05, cpu="1", memory="1Gi")
        with pytest.raises(LaunchError, match="disappeared"):
            run_pytorchjob(cfg, echo=echo, owner=owner)
        assert fake.get("PyTorchJob", "team-a", JOB) is None
        assert [p["metadata"]["name"] for p in fake.list("Pod", "team-a")] == []
        assert any("garbage collector: deleted PyTorchJob team-a/" + JOB in e for e in fake.events)


def test_live_cross_namespace_owner_reference_is_collected_at_once(tmp_path, monkeypatch):
    """Why the launcher sets no ownerReference when the job goes to another namespace than the step pod."""
    with FakeCluster() as fake:
        use_cluster(fake, tmp_path, monkeypatch)
        fake.add_namespace("kubeflow")
        uid = fake.add_pod("kubeflow", "step-pod")
        job = render_pytorchjob(make_cfg(name=JOB), namespace="team-a", owner=PodIdentity("step-pod", uid, None))
        fake.apply([job])
        assert fake.get("PyTorchJob", "team-a", JOB) is None  # the owner is not in team-a
        launcher_job = render_pytorchjob(make_cfg(name=JOB), namespace="team-a",
                                         owner=PodIdentity("step-pod", uid, "kubeflow"))
        assert "ownerReferences" not in launcher_job["metadata"]


def test_live_restricted_namespace_admits_the_launchers_pods_only(tmp_path, monkeypatch):
    with FakeCluster() as fake:
        use_cluster(fake, tmp_path, monkeypatch)
        fake.add_namespace("team-a", {"pod-security.kubernetes.io/enforce": "restricted"})
        ok = render_pytorchjob(make_cfg(name="msenc-ok", cpu="1", memory="1Gi"), namespace="team-a")
        weak = render_pytorchjob(make_cfg(name="msenc-weak", cpu="1", memory="1Gi"), namespace="team-a")
        del weak["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["securityContext"]
        fake.apply([ok, weak])
        assert [p["metadata"]["name"] for p in fake.list("Pod", "team-a")] == ["msenc-ok-master-0"]
        assert any('pods "msenc-weak-master-0" is forbidden: violates PodSecurity "restricted:latest"' in e
                   for e in fake.events)


# ------------------------------------------------------------------------------- acceptance: --render
def test_cli_render_in_a_kfp_step_validates_and_carries_owner_labels_resources_security():
    """`msenc launch pytorchjob --render` as a KFP step runs it (KFP_POD_NAME/KFP_POD_UID in its env)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KFP_POD_NAME": "msenc-run-abc-system-container-impl-1",
           "KFP_POD_UID": "6c1d3f5e-2b7a-4e0c-9d8f-1a2b3c4d5e6f"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-m", "msenc_cli", "launch", "pytorchjob", "--render", "--image", IMAGE,
                          "--workers", "2", "--gpus-per-worker", "1", "--data-uri", "minio://mlpipeline/v2/a/split",
                          "--output-uri", "minio://mlpipeline/v2/a/model", "--run-id", "run-7", "--step-name", "train"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    assert pytorchjob_errors(job) == []
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "controller": False,
                                                   "name": env["KFP_POD_NAME"], "uid": env["KFP_POD_UID"]}]
    assert job["metadata"]["labels"]["msenc/run-id"] == "run-7" and job["metadata"]["labels"]["msenc/step"] == "train"
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod_spec = spec["template"]["spec"]
        assert restricted_violations(pod_spec) == []
        res = pod_spec["containers"][0]["resources"]
        assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"cpu", "memory", "nvidia.com/gpu"}
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] > 0
    assert "minio" not in json.dumps(job["spec"])


# --------------------------------------------------------------------------- the pipeline's train step
def test_train_step_hands_the_job_s3_uris_for_a_minio_model_artifact(s3, tmp_path, monkeypatch):
    """The backend=pytorchjob branch of the train step with KFP's minio:// artifact URIs: the config goes next
    to the model artifact, the job gets s3:// URIs only, and the step reads the job's metrics from there."""
    from msenc_lib.launch.step import run_train_step
    from msenc_lib.train import TrainConfig

    root = f"minio://{s3.bucket}/v2/artifacts/msenc/run-1"
    s3.client().put_object(Bucket=s3.bucket, Key="v2/artifacts/msenc/run-1/train/model/metrics.jsonl",
                           Body=b'{"step": 1, "loss": 4.0}\n{"step": 2, "loss": 3.5}\n{"step": 2, "eval_loss": 3.9}\n')
    with FakeCluster(recorded_success("msenc-step"), master_log="step 2\n") as fake:
        use_cluster(fake, tmp_path, monkeypatch)
        result = run_train_step(
            TrainConfig(preset="tiny", max_steps=2, progress=False), f"/minio/{s3.bucket}/v2/artifacts/msenc/run-1/split/subsets",
            f"{root}/split/subsets", str(tmp_path / "minio-mirror" / "model"), f"{root}/train/model",
            backend="pytorchjob", job=dict(image=IMAGE, workers=2, name="msenc-step", poll_interval=0.02, run_id="run-1",
                                           step_name="train", node_selector="pool=gpu", tolerations="nvidia.com/gpu:NoSchedule",
                                           namespace="", service_account=""),
            echo=lambda line: None)
    assert (result.backend, result.steps, result.final_loss, result.job_name) == ("pytorchjob", 2, 3.5, "msenc-step")
    assert result.model_uri == f"s3://{s3.bucket}/v2/artifacts/msenc/run-1/train/model"
    (job,) = fake.created
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[3:9] == ["--data-dir", f"s3://{s3.bucket}/v2/artifacts/msenc/run-1/split/subsets", "--output-dir",
                            f"s3://{s3.bucket}/v2/artifacts/msenc/run-1/train/model", "--config",
                            f"s3://{s3.bucket}/v2/artifacts/msenc/run-1/train/model-config/train_config.yaml"]
    saved = TrainConfig.load(command[8], environ={})
    assert (saved.preset, saved.max_steps) == ("tiny", 2)
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"} and job["metadata"]["labels"]["msenc/run-id"] == "run-1"
    assert not (tmp_path / "minio-mirror" / "model").exists()  # nothing for KFP's launcher to upload over it


def test_train_step_refuses_unknown_backends_and_a_missing_job_image(tmp_path):
    from msenc_lib.launch.step import run_train_step
    from msenc_lib.train import TrainConfig

    with pytest.raises(ConfigError, match="backend must be one of local, pytorchjob"):
        run_train_step(TrainConfig(), "a", "a", "b", "b", backend="slurm")
    with pytest.raises(ConfigError, match="needs the image of the training pods"):
        run_train_step(TrainConfig(), "a", "s3://b/a", "b", "s3://b/m", backend="pytorchjob", job={"image": ""})
