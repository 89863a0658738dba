"""The committed pipeline package run as a Kubeflow cluster would run it (tests/kfp_replay.py): each step in
its own process with only its pod's environment, artifacts under a ``minio://`` and an ``s3://`` pipeline root
on a loopback S3 server, the train step launching a PyTorchJob through the fake Kubernetes API
(tests/fake_k8s.py) whose pods run as local processes with the training operator's env.

The installation is multi-user Kubeflow: steps run as ``default-editor`` in the profile namespace, with
``manifests/overlays/profile`` applied and the storage Secret created there; KFP's own object-store
credentials (the launcher's) are not the Secret's.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from fake_k8s import FakeCluster
from kfp_replay import HARNESS_ENV, PipelineReplay, StepFailed
from msenc_pipelines.cli import COMMITTED_PACKAGE
from test_manifests import PROFILE, kustomize
from test_pipeline_local import TINY_ARGS as TINY  # the tiny data, a short training, a light evaluation

pytestmark = pytest.mark.slow

JOB = {"backend": "pytorchjob", "workers": 2, "gpus_per_worker": 0, "job_cpu": "1", "job_memory": "2Gi"}
IMAGE_ENV = {"PATH", "VIRTUAL_ENV", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR", "HF_HOME", "LANG"}
POD_ENV = {"KFP_POD_NAME", "KFP_POD_UID", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "HOSTNAME"}
STORAGE_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}


class Installation:
    """KFP's MinIO (bucket mlpipeline) and a data bucket on the loopback S3 server, a fake cluster with the
    profile, and the replays of a package there."""

    def __init__(self, endpoint: str, tmp: Path, cluster: FakeCluster):
        import boto3

        self.endpoint, self.tmp, self.cluster = endpoint, tmp, cluster
        self.bucket = f"msenc-{uuid.uuid4().hex[:8]}"
        # the launcher's own credentials (KFP's mlpipeline-minio-artifact): never seen by a step's code
        self.store = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="minio",
                                  aws_secret_access_key="minio123", region_name="us-east-1")
        for bucket in ("mlpipeline", self.bucket):
            try:
                self.store.create_bucket(Bucket=bucket)
            except self.store.exceptions.BucketAlreadyOwnedByYou:
                pass
        self.secret_value = f"secret-{uuid.uuid4().hex}"
        cluster.add_namespace(PROFILE)
        cluster.apply(kustomize("profile"))
        cluster.add_service_account(PROFILE, "default-editor")
        cluster.add_secret(PROFILE, "msenc-storage", {
            "AWS_ACCESS_KEY_ID": "msenc-access", "AWS_SECRET_ACCESS_KEY": self.secret_value,
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"})

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def replay(self, package: Path = COMMITTED_PACKAGE, root: str = "minio://mlpipeline/v2/artifacts",
               container=None) -> PipelineReplay:
        return PipelineReplay(package, cluster=self.cluster, namespace=PROFILE, service_account="default-editor",
                              object_store=self.store, workdir=self.tmp / "pods", pipeline_root=root,
                              container=container)

    def keys(self, uri: str) -> list[str]:
        scheme, _, rest = uri.partition("://")
        bucket, _, prefix = rest.partition("/")
        pages = self.store.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        return sorted(o["Key"][len(prefix.rstrip("/")) + 1:] for p in pages for o in p.get("Contents", []))

    def read(self, uri: str) -> bytes:
        bucket, _, key = uri.partition("://")[2].partition("/")
        return self.store.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture
def kubeflow(moto_server, tmp_path):
    with FakeCluster(tls=True) as cluster:
        yield Installation(moto_server, tmp_path, cluster)


def losses(install: Installation, model_uri: str) -> list[float]:
    rows = [json.loads(x) for x in install.read(model_uri.rstrip("/") + "/metrics.jsonl").decode().splitlines() if x]
    return [r["loss"] for r in rows if "loss" in r]


def assert_pod_hygiene(install: Installation, run, package: Path) -> None:
    """Each step had only its pod's environment, and the Secret's value is nowhere but in that env."""
    spec = yaml.safe_load_all(package.read_text())
    executors = next(spec)["deploymentSpec"]["executors"]
    for task in run.tasks.values():
        if task.executor is None or task.cached:
            continue
        ir_env = {e["name"] for e in executors[task.executor]["container"].get("env", [])}
        extra = set(task.env) - IMAGE_ENV - POD_ENV - STORAGE_ENV - ir_env - HARNESS_ENV  # (containers: no image env)
        assert not extra, (task.name, extra)
        assert task.env["AWS_SECRET_ACCESS_KEY"] == install.secret_value  # from the Secret, by the kubelet
        assert install.secret_value not in task.log and install.secret_value not in task.executor_input
        assert not any(a.startswith("AWS_") for a in json.dumps(task.pod["spec"]["containers"][0]["args"]).split('"'))
    for job in install.cluster.created:
        assert install.secret_value not in json.dumps(job)
    assert install.secret_value not in package.read_text()
    for log in install.cluster.pod_logs(PROFILE).values():
        assert install.secret_value not in log


def test_committed_package_runs_on_kubeflow_with_a_pytorchjob_export_and_warm_start(kubeflow):
    """The whole pipeline, twice: on KFP's MinIO (minio:// root) with the embedded data, training as a 2-pod
    PyTorchJob and exporting to object storage; then on an s3:// root, ingesting s3:// data and warm-starting
    the PyTorchJob from the export."""
    install = kubeflow
    exports = install.uri("exports")
    first = install.replay().run({**TINY, **JOB, "export_uri": exports}, run_name="msenc-replay-1")

    ran = {n for n, t in first.tasks.items() if t.executor and not t.skipped}
    assert {"fingerprint", "fingerprint-2", "data", "preprocess", "preprocess-2", "split", "train", "embed", "evaluate",
            "export"} <= ran
    model = first.tasks["train"].artifacts["model"]
    assert model.uri == f"minio://mlpipeline/v2/artifacts/msenc/{first.run_id}/train/model"
    assert model.metadata["backend"] == "pytorchjob" and model.metadata["steps"] == TINY["max_steps"]
    # the job wrote the model straight to the artifact's object-storage location
    keys = install.keys(model.uri)
    assert {"config.json", "model.safetensors", "metrics.jsonl", "tokenizer/tokenizer.json"} <= set(keys)
    assert install.keys(model.uri + "-config") == ["train_config.yaml"]

    # the PyTorchJob, as the API server received it
    (job,) = [j for j in install.cluster.created if j["metadata"]["name"] == model.metadata["job_name"]]
    train_pod = first.tasks["train"]
    assert job["metadata"]["labels"]["msenc/run-id"] == first.run_id and job["metadata"]["labels"]["msenc/step"] == "train"
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", train_pod.pod["metadata"]["name"],
                                                           train_pod.env["KFP_POD_UID"])
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert not any("minio" in a or a.startswith("/") for a in command[4:]), command
    assert command[command.index("--config") + 1] == model.uri.replace("minio://", "s3://") + "-config/train_config.yaml"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert (PROFILE, job["metadata"]["name"]) in install.cluster.deleted  # deleted when done
    assert "[{}-master-0]".format(job["metadata"]["name"]) in train_pod.log  # the master's log, streamed
    assert '"world_size": 2' in train_pod.log.replace('"world_size":2', '"world_size": 2')  # two ranks trained

    # downstream steps read the model the job wrote (through the launcher's download)
    assert first.tasks["embed"].artifacts["embeddings"].metadata["n_rows"] > 0
    assert b"<html" in install.read(first.outputs["Output"].uri)[:2000].lower()
    latest = install.read(exports + "/LATEST").decode().strip()
    assert latest == "msenc-replay-1"
    assert "model/model.safetensors" in install.keys(f"{exports}/{latest}")
    assert_pod_hygiene(install, first, COMMITTED_PACKAGE)

    # second run: s3:// pipeline root, s3:// input data, warm start from the export
    unified = first.tasks["data"].artifacts["unified"].uri
    for key in install.keys(unified):
        install.store.copy_object(Bucket=install.bucket, Key=f"raw/{key}",
                                  CopySource={"Bucket": "mlpipeline", "Key": unified.split("mlpipeline/", 1)[1] + "/" + key})
    second = install.replay(root=install.uri("pipelines")).run(
        {**TINY, **JOB, "max_steps": 5, "data_source_uri": install.uri("raw"), "init_model_uri": exports,
         "export_uri": exports}, run_name="msenc-replay-2")
    model2 = second.tasks["train"].artifacts["model"]
    assert model2.uri == install.uri("pipelines", "msenc", second.run_id, "train", "model")
    assert second.tasks["data"].artifacts["unified"].metadata["n_cells"] == 8
    assert install.read(exports + "/LATEST").decode().strip() == "msenc-replay-2"
    cold, warm = losses(install, model.uri), losses(install, model2.uri)
    assert warm[0] < cold[0] - 0.5 * (cold[0] - cold[-1]), (cold, warm)
    assert_pod_hygiene(install, second, COMMITTED_PACKAGE)


def _without_secret_injection(package: Path, out: Path, executors: set[str] | None = None) -> Path:
    docs = list(yaml.safe_load_all(package.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, config in platform.items():
        if executors is None or name in executors:
            config.pop("secretAsEnv", None)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


@pytest.mark.parametrize("stripped,arguments,failing", [
    ({"exec-fingerprint"}, {"data_source_uri": "s3://{bucket}/raw"}, "fingerprint"),
    ({"exec-train"}, JOB, "train"),
], ids=["data-source", "pytorchjob"])
def test_without_the_secret_injection_the_replay_fails(kubeflow, tmp_path, stripped, arguments, failing):
    """The replay hands a step nothing the package does not inject: without use_secret_as_env in the IR the
    step that calls boto3 itself has no credentials."""
    install = kubeflow
    install.store.put_object(Bucket=install.bucket, Key="raw/cells.csv", Body=b"cell_key,cycle_number\n")
    args = {k: v.format(bucket=install.bucket) if isinstance(v, str) else v for k, v in arguments.items()}
    package = _without_secret_injection(COMMITTED_PACKAGE, tmp_path / "no-secret.yaml", stripped)
    with pytest.raises(StepFailed) as err:
        install.replay(package).run({**TINY, **args})
    assert err.value.task == failing
    # the step ends with the one-line error and the environment-fault status, not a boto3 traceback
    assert f"msenc {failing}: error: " in err.value.log and "no object-storage credentials" in err.value.log
    assert "exit code 4" in str(err.value) and "Traceback" not in err.value.log


def test_a_missing_secret_stops_the_steps_as_on_a_cluster(kubeflow):
    install = kubeflow
    install.cluster.objects.pop(("Secret", PROFILE, "msenc-storage"))
    with pytest.raises(StepFailed, match='CreateContainerConfigError: secret "msenc-storage" not found'):
        install.replay().run(TINY)


def test_cache_reuses_steps_until_the_external_input_changes(kubeflow, tmp_path):
    """KFP's cache: unchanged inputs reuse data/preprocess/split; changed content behind the same
    data_source_uri runs them again (the fingerprint step keys the cache)."""
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    install = kubeflow
    run_generate_data(GenerateDataConfig(size="tiny", progress=False), str(tmp_path / "raw"))
    for path in sorted((tmp_path / "raw").rglob("*")):
        if path.is_file():
            install.store.upload_file(str(path), install.bucket, f"raw/{path.relative_to(tmp_path / 'raw').as_posix()}")
    replay = install.replay()
    args = {**TINY, "max_steps": 2, "data_source_uri": install.uri("raw")}
    first, again = replay.run(args), replay.run(args)
    cached = {n for n, t in again.tasks.items() if t.cached}
    assert {"data", "preprocess", "preprocess-2", "split"} <= cached
    assert not {"fingerprint", "fingerprint-2", "train"} & cached  # these always run
    dropped = next(k for k in install.keys(install.uri("raw")) if k.endswith(".parquet"))
    install.store.delete_object(Bucket=install.bucket, Key=f"raw/{dropped}")  # one cell less, same URI
    changed = replay.run(args)
    assert not changed.tasks["data"].cached and not changed.tasks["split"].cached
    assert changed.tasks["data"].artifacts["unified"].metadata["n_cells"] == first.tasks["data"].artifacts[
        "unified"].metadata["n_cells"] - 1


@pytest.mark.container
def test_committed_package_runs_step_by_step_in_the_msenc_image(kubeflow, docker_api, msenc_image):
    """The same replay with every step in the msenc image (built from these sources; it stands for the image
    the package names, which no registry here serves): the non-root image user, the pod's real paths
    (/minio, /tmp/kfp_outputs, the service-account mount), the package's command as the image runs it."""
    install = kubeflow
    exports = install.uri("exports")
    run = install.replay(container=(docker_api.client, msenc_image)).run(
        {**TINY, **JOB, "max_steps": 10, "export_uri": exports}, run_name="msenc-in-image")
    model = run.tasks["train"].artifacts["model"]
    assert model.metadata["backend"] == "pytorchjob" and model.metadata["steps"] == 10
    assert {"config.json", "model.safetensors"} <= set(install.keys(model.uri))
    (job,) = [j for j in install.cluster.created if j["metadata"]["name"] == model.metadata["job_name"]]
    assert job["metadata"]["ownerReferences"][0]["uid"] == run.tasks["train"].env["KFP_POD_UID"]
    assert install.read(exports + "/LATEST").decode().strip() == "msenc-in-image"
    assert b"<html" in install.read(run.outputs["Output"].uri)[:2000].lower()
    assert_pod_hygiene(install, run, COMMITTED_PACKAGE)
