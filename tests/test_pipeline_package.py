"""The compiled pipeline package (images, the storage Secret in every executor, resources, placement,
caching), the components' interfaces, and upload/submit/schedule through kfp.Client to a KFP API (loopback
stand-in)."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.kfp_api import FakeKfpApi
from msenc_components import DEFAULT_IMAGE, DEFAULT_JOB_IMAGE
from msenc_lib.errors import ConfigError
from msenc_pipelines.cli import COMMITTED_PACKAGE, compile_pipeline
from msenc_pipelines.pipeline import DEFAULT_RESOURCES, PipelineOptions
from msenc_pipelines.submit import load_package, parse_params, schedule, submit, to_kfp_cron, upload

STAGES = {"fingerprint", "data", "preprocess", "split", "train", "embed", "evaluate", "export"}
ACCEPTANCE_FLAGS = ["--image", "R/msenc:1", "--job-image", "R/msenc-cuda:1", "--storage-secret", "S"]


def msenc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msenc_cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def stage_of(executor: str) -> str:
    name = executor.removeprefix("exec-")
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def executors(package: Path) -> tuple[dict, dict]:
    """(IR executors, their kubernetes platform section) of a package."""
    spec, platform = load_package(package)
    return (spec["deploymentSpec"]["executors"],
            platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {}))


def test_committed_package_is_up_to_date(tmp_path):
    fresh = tmp_path / "p.yaml"
    compile_pipeline(fresh)
    assert fresh.read_text() == COMMITTED_PACKAGE.read_text(), (
        "pipelines/msenc_pipeline.yaml is stale: run `msenc pipeline compile --output pipelines/msenc_pipeline.yaml`")


def test_committed_package_uses_the_documented_placeholder_images():
    execs, _ = executors(COMMITTED_PACKAGE)
    assert {stage_of(n) for n in execs} == STAGES
    assert {e["container"]["image"] for e in execs.values()} == {DEFAULT_IMAGE}
    assert DEFAULT_IMAGE.startswith("registry.example.com/") and "localhost/" not in COMMITTED_PACKAGE.read_text()
    assert parse_params([], COMMITTED_PACKAGE) == {}
    spec, _ = load_package(COMMITTED_PACKAGE)
    assert spec["root"]["inputDefinitions"]["parameters"]["job_image"]["defaultValue"] == DEFAULT_JOB_IMAGE
    # no step installs kfp at run time: the image carries it
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in execs.values())


def test_every_task_retries_with_backoff_and_every_body_ends_errors_in_one_line():
    """KFP retries a task whatever its exit status: 2 retries with backoff (README "Reliability"); each
    component body runs inside step_errors (the one-line error and its status)."""
    spec, _ = load_package(COMMITTED_PACKAGE)
    tasks = [t for comp in [spec["root"], *spec["components"].values()]
             for t in comp.get("dag", {}).get("tasks", {}).values() if "componentRef" in t and
             not t["componentRef"]["name"].startswith("comp-condition")]
    assert {stage_of(t["componentRef"]["name"].replace("comp-", "exec-")) for t in tasks} == STAGES
    for task in tasks:
        assert task["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "30s", "backoffFactor": 2.0,
                                       "backoffMaxDuration": "300s"}, task["taskInfo"]
    execs, _ = executors(COMMITTED_PACKAGE)
    for name, executor in execs.items():
        assert f'with step_errors("{stage_of(name)}"):' in executor["container"]["command"][-1], name


def test_acceptance_compile_injects_the_secret_and_resources_into_every_executor(tmp_path):
    """msenc pipeline compile --output P.yaml --image R/msenc:1 --job-image R/msenc-cuda:1 --storage-secret S"""
    package = tmp_path / "P.yaml"
    out = msenc("pipeline", "compile", "--output", str(package), *ACCEPTANCE_FLAGS)
    assert out.returncode == 0, out.stderr
    execs, platform = executors(package)
    assert set(execs) == set(platform), "every executor has a kubernetes platform section"
    for name, executor in execs.items():
        container = executor["container"]
        assert container["image"] == "R/msenc:1", name
        secret_env = {(s["secretName"], m["secretKey"], m["envVar"], s.get("optional", False))
                      for s in platform[name]["secretAsEnv"] for m in s["keyToEnv"]}
        assert secret_env == {("S", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", False),
                              ("S", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", False),
                              ("S", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL", True),
                              ("S", "AWS_DEFAULT_REGION", "AWS_DEFAULT_REGION", True)}, name
        r = container["resources"]
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(r)
        assert not any(e["name"].startswith("AWS_") for e in container.get("env", []))  # nothing literal
    spec, _ = load_package(package)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["job_image"]["defaultValue"] == "R/msenc-cuda:1"
    assert params["storage_secret"]["defaultValue"] == "S"
    text = package.read_text()
    assert "localhost/" not in text
    from kfp import components

    loaded = components.load_component_from_file(str(package))
    assert loaded.name == "msenc" and {"job_image", "namespace", "trainer_service_account"} <= set(
        loaded.component_spec.inputs)


def test_localhost_images_are_refused_for_a_cluster(tmp_path):
    out = msenc("pipeline", "compile", "--output", str(tmp_path / "p.yaml"), "--image", "localhost/msenc-python:dev")
    assert out.returncode == 2 and "cannot resolve localhost/" in out.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_secret_key_names_and_a_literal_endpoint(tmp_path):
    package = tmp_path / "p.yaml"
    out = msenc("pipeline", "compile", "--output", str(package), "--storage-secret", "mlpipeline-minio-artifact",
                "--access-key-key", "accesskey", "--secret-key-key", "secretkey", "--region-key", "",
                "--s3-endpoint", "http://minio-service.kubeflow.svc.cluster.local:9000")
    assert out.returncode == 0, out.stderr
    execs, platform = executors(package)
    for name in execs:
        mapped = {(m["secretKey"], m["envVar"]) for s in platform[name]["secretAsEnv"] for m in s["keyToEnv"]}
        assert mapped == {("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}
        assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio-service.kubeflow.svc.cluster.local:9000"} in \
            execs[name]["container"]["env"]
    spec, _ = load_package(package)
    train = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert train["access_key_key"]["runtimeValue"]["constant"] == "accesskey"  # the training pods' keys too
    assert train["s3_endpoint"]["runtimeValue"]["constant"].startswith("http://minio-service")


def test_resources_and_placement_are_settable_at_compile_time(tmp_path):
    package = tmp_path / "p.yaml"
    out = msenc("pipeline", "compile", "--output", str(package), "--cpu", "train=3:6", "--memory", "all=1Gi:2Gi",
                "--node-selector", "pool=cpu", "--toleration", "dedicated=ml:NoSchedule", "--train-gpus", "1",
                "--train-toleration", "nvidia.com/gpu:NoSchedule", "--train-node-selector",
                "nvidia.com/gpu.present=true", "--job-image", "R/msenc-cuda:1")
    assert out.returncode == 0, out.stderr
    execs, platform = executors(package)
    for name, executor in execs.items():
        r = executor["container"]["resources"]
        assert (r["resourceMemoryRequest"], r["resourceMemoryLimit"]) == ("1Gi", "2Gi")
        expected_cpu = ("3", "6") if stage_of(name) == "train" else (DEFAULT_RESOURCES[stage_of(name)].cpu_request,
                                                                     DEFAULT_RESOURCES[stage_of(name)].cpu_limit)
        assert (r["resourceCpuRequest"], r["resourceCpuLimit"]) == expected_cpu
        selector = platform[name]["nodeSelector"]["labels"]
        tolerations = [(t.get("key"), t.get("operator"), t.get("value"), t.get("effect")) for t in platform[name]["tolerations"]]
        if stage_of(name) == "train":
            assert selector == {"pool": "cpu", "nvidia.com/gpu.present": "true"}
            assert ("nvidia.com/gpu", "Exists", None, "NoSchedule") in tolerations
            assert r["accelerator"] == {"resourceCount": "1", "resourceType": "nvidia.com/gpu", "count": "1",
                                        "type": "nvidia.com/gpu"} or r["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert executor["container"]["image"] == "R/msenc-cuda:1"  # a GPU train step runs the CUDA image
        else:
            assert selector == {"pool": "cpu"} and tolerations == [("dedicated", "Equal", "ml", "NoSchedule")]
            assert "accelerator" not in r
    bad = msenc("pipeline", "compile", "--output", str(tmp_path / "q.yaml"), "--cpu", "trian=1")
    assert bad.returncode == 2 and "no step 'trian'" in bad.stderr
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        PipelineOptions(resources={"data": dict(cpu_request="lots", cpu_limit="2", memory_request="1Gi",
                                                memory_limit="2Gi")})
    bad = msenc("pipeline", "compile", "--output", str(tmp_path / "q.yaml"), "--memory", "embed=8 GB")
    assert bad.returncode == 2 and "not a Kubernetes quantity" in bad.stderr


def test_steps_reading_external_uris_are_cached_by_content():
    spec, _ = load_package(COMMITTED_PACKAGE)
    tasks = spec["root"]["dag"]["tasks"]
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()}
    assert not caching["fingerprint"] and not caching["fingerprint-2"]  # always run: they look at the content
    assert not caching["train"]  # warm starts read init_model_uri; GPU time
    assert caching["data"] and caching["split"] and caching["preprocess"]
    export = spec["components"]["comp-condition-1"]["dag"]["tasks"]["export"]
    assert not export.get("cachingOptions", {}).get("enableCache", False)  # writes outside the pipeline root
    assert tasks["data"]["inputs"]["parameters"]["source_fingerprint"]["taskOutputParameter"]["producerTask"] == "fingerprint"
    assert tasks["fingerprint"]["inputs"]["parameters"]["uri"]["componentInputParameter"] == "data_source_uri"
    assert tasks["split"]["inputs"]["parameters"]["split_config_fingerprint"]["taskOutputParameter"][
        "producerTask"] == "fingerprint-2"


def test_fingerprint_changes_with_the_content(tmp_path):
    from msenc_lib.storage import content_fingerprint

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.csv").write_text("x\n1\n")
    first = content_fingerprint(str(tmp_path / "raw"))
    assert first == content_fingerprint(str(tmp_path / "raw")) and content_fingerprint("") == ""
    (tmp_path / "raw" / "b.csv").write_text("x\n2\n")
    assert content_fingerprint(str(tmp_path / "raw")) != first
    with pytest.raises(FileNotFoundError):
        content_fingerprint(str(tmp_path / "missing"))


def _component_functions():
    from msenc_components.data import component as data
    from msenc_components.embed import component as embed
    from msenc_components.evaluate import component as evaluate
    from msenc_components.preprocess import component as preprocess
    from msenc_components.split import component as split
    from msenc_components.train import component as train

    from msenc_lib.data.synthetic import GenerateDataConfig
    from msenc_lib.embed import EmbedConfig
    from msenc_lib.evaluate import EvaluateConfig
    from msenc_lib.ingest import IngestConfig
    from msenc_lib.launch.pytorchjob import PyTorchJobConfig
    from msenc_lib.preprocess import PreprocessConfig
    from msenc_lib.split import SplitConfig
    from msenc_lib.train import TrainConfig

    return [(data.data, [GenerateDataConfig, IngestConfig]), (preprocess.preprocess, [PreprocessConfig]),
            (split.split, [SplitConfig]), (embed.embed, [EmbedConfig]), (evaluate.evaluate, [EvaluateConfig]),
            (train.train, [TrainConfig, PyTorchJobConfig])]


@pytest.mark.parametrize("func, configs", _component_functions(), ids=lambda v: getattr(v, "__name__", ""))
def test_component_defaults_equal_the_library_defaults(func, configs):
    for name, param in inspect.signature(func).parameters.items():
        if param.default is inspect.Parameter.empty or name == "config_yaml":
            continue
        field = next((cfg.model_fields[name] for cfg in configs if name in cfg.model_fields), None)
        if field is not None and not (func.__name__ == "train" and name in ("workers", "gpus_per_worker", "max_steps")
                                      or func.__name__ == "evaluate" and name == "seeds"):
            # (the pipeline's train step defaults to a 2-GPU-pod job, `msenc launch pytorchjob` to 1 CPU pod;
            # train's max_steps 0 and evaluate's seeds 0 keep the config document's)
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):
                default = ",".join(map(str, default))
            assert param.default == default or (param.default == "" and default in (None, {}, "")), (func.__name__, name)


def test_params_are_typed_and_checked():
    args = parse_params(["max_steps=50", "preset=small", "ratio_train=0.7", "data_source_uri=s3://b/raw"],
                        COMMITTED_PACKAGE)
    assert args == {"max_steps": 50, "preset": "small", "ratio_train": 0.7, "data_source_uri": "s3://b/raw"}
    with pytest.raises(ConfigError, match="no parameter 'max_step'"):
        parse_params(["max_step=5"], COMMITTED_PACKAGE)
    with pytest.raises(ConfigError, match="max_steps"):
        parse_params(["max_steps=many"], COMMITTED_PACKAGE)
    assert to_kfp_cron("0 3 * * 0") == "0 0 3 * * 0"
    with pytest.raises(ConfigError):
        to_kfp_cron("every sunday")


def test_submit_and_schedule_through_kfp_client():
    with FakeKfpApi() as api:
        run = submit(api.host, COMMITTED_PACKAGE, {"max_steps": 10}, experiment="battery", enable_caching=False,
                     pipeline_root="s3://bucket/pipelines")
        rec = schedule(api.host, COMMITTED_PACKAGE, "0 3 * * 0", {"init_model_uri": "s3://b/exports"},
                       experiment="battery", job_name="weekly")
    assert run.run_id == api.runs[0]["run_id"] and run.url.endswith(run.run_id)
    sent = api.runs[0]
    assert sent["runtime_config"] == {"parameters": {"max_steps": 10}, "pipeline_root": "s3://bucket/pipelines"}
    assert sent["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "msenc"
    # the platform section (the Secret injections) travels with the run
    assert "secretAsEnv" in json.dumps(sent["pipeline_spec"]["platform_spec"])
    # caching off for this run: every task's cache option is cleared in what is sent
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in
               sent["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"].values())
    rec_sent = api.recurring_runs[0]
    assert rec.recurring_run_id == rec_sent["recurring_run_id"] and rec_sent["display_name"] == "weekly"
    assert rec_sent["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert rec_sent["no_catchup"] is True and int(rec_sent["max_concurrency"]) == 1
    assert rec_sent["runtime_config"]["parameters"] == {"init_model_uri": "s3://b/exports"}
    assert len(api.experiments) == 1  # the experiment is reused, not created twice


def test_upload_creates_the_pipeline_then_adds_versions(tmp_path):
    with FakeKfpApi() as api:
        first = upload(api.host, COMMITTED_PACKAGE, name="msenc")
        out = msenc("pipeline", "upload", "--host", api.host, "--name", "msenc", "--version", "v2", *ACCEPTANCE_FLAGS)
        assert out.returncode == 0, out.stderr
        second = json.loads(out.stdout.strip().splitlines()[-1])
        bad = tmp_path / "bad.yaml"
        bad.write_text("not: a pipeline\n")
        refused = msenc("pipeline", "upload", "--host", api.host, "--package", str(bad))
    assert first.new_pipeline and first.version_name == "msenc"
    assert not second["new_pipeline"] and second["version_name"] == "v2" and second["pipeline_id"] == first.pipeline_id
    versions = api.versions[first.pipeline_id]
    assert [v["display_name"] for v in versions] == ["msenc", "v2"]
    images = {e["container"]["image"] for e in versions[1]["package"]["pipeline_spec"]["deploymentSpec"]["executors"].values()}
    assert images == {"R/msenc:1"}  # compiled for the flags given
    assert versions[1]["package"]["platform_spec"]  # with its platform section
    assert refused.returncode == 2 and "not a compiled KFP pipeline package" in refused.stderr


def test_submit_from_the_cli():
    with FakeKfpApi() as api:
        out = msenc("pipeline", "submit", "--host", api.host, "--param", "preset=small", "--param", "max_steps=20",
                    "--no-cache", "--pipeline-root", "minio://mlpipeline/custom", cwd=Path(__file__).parent)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["run_id"] == api.runs[0]["run_id"]
        assert api.runs[0]["runtime_config"] == {"parameters": {"preset": "small", "max_steps": 20},
                                                 "pipeline_root": "minio://mlpipeline/custom"}
        bad = msenc("pipeline", "submit", "--host", api.host, "--param", "nope=1")
        assert bad.returncode == 2 and "no parameter 'nope'" in bad.stderr


def test_annotate_refuses_fields_the_result_lacks():
    from pydantic import BaseModel

    from msenc_lib.kfp_support import annotate

    class Result(BaseModel):
        n_rows: int
        name: str
        extra: dict | None = None
        missing: int | None = None

    class Artifact:
        metadata: dict = {}

    artifact = Artifact()
    artifact.metadata = {}
    annotate(artifact, Result(n_rows=3, name="x"), ("n_rows", "name", "missing"))
    assert artifact.metadata == {"n_rows": 3, "name": "x"}  # None left out
    with pytest.raises(AttributeError, match="Result has no field.*n_cells"):
        annotate(artifact, Result(n_rows=3, name="x"), ("n_cells",))
    with pytest.raises(TypeError, match="not a scalar"):
        annotate(artifact, Result(n_rows=3, name="x", extra={"a": 1}), ("extra",))
