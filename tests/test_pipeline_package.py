"""The compiled pipeline package, the components' interfaces, and submission to a KFP API (loopback stand-in)."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fakes.kfp_api import FakeKfpApi
from msenc_components import DEFAULT_IMAGE
from msenc_pipelines.cli import COMMITTED_PACKAGE, compile_pipeline
from msenc_pipelines.submit import parse_params, schedule, submit, to_kfp_cron

STAGES = {"data", "preprocess", "split", "train", "embed", "evaluate", "export"}


def test_committed_package_is_up_to_date(tmp_path):
    fresh = tmp_path / "p.yaml"
    compile_pipeline(fresh)
    assert fresh.read_text() == COMMITTED_PACKAGE.read_text(), (
        "pipelines/msenc_pipeline.yaml is stale: run `msenc pipeline compile --output pipelines/msenc_pipeline.yaml`")


def test_one_executor_per_stage_all_on_the_msenc_image(tmp_path):
    spec = yaml.safe_load(COMMITTED_PACKAGE.read_text())
    executors = spec["deploymentSpec"]["executors"]
    names = {name.removeprefix("exec-").rsplit("-", 1)[0] if name[-1].isdigit() else name.removeprefix("exec-")
             for name in executors}
    assert names == STAGES
    assert len(executors) == len(STAGES) + 1  # preprocess runs twice: training and embedding mode
    assert {e["container"]["image"] for e in executors.values()} == {DEFAULT_IMAGE}
    custom = tmp_path / "custom.yaml"
    compile_pipeline(custom, image="registry.example.com/msenc-python:1.2")
    images = {e["container"]["image"] for e in yaml.safe_load(custom.read_text())["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/msenc-python:1.2"}
    # no step installs kfp at run time: the image carries it
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values())


def test_package_loads_back_with_kfp():
    from kfp import components

    loaded = components.load_component_from_file(str(COMMITTED_PACKAGE))
    assert loaded.name == "msenc"
    assert {"data_size", "preset", "max_steps", "backend", "init_model_uri"} <= set(loaded.component_spec.inputs)


def _component_functions():
    from msenc_components.data import component as data
    from msenc_components.embed import component as embed
    from msenc_components.evaluate import component as evaluate
    from msenc_components.preprocess import component as preprocess
    from msenc_components.split import component as split

    from msenc_lib.data.synthetic import GenerateDataConfig
    from msenc_lib.embed import EmbedConfig
    from msenc_lib.evaluate import EvaluateConfig
    from msenc_lib.ingest import IngestConfig
    from msenc_lib.preprocess import PreprocessConfig
    from msenc_lib.split import SplitConfig

    return [(data.data, [GenerateDataConfig, IngestConfig]), (preprocess.preprocess, [PreprocessConfig]),
            (split.split, [SplitConfig]), (embed.embed, [EmbedConfig]), (evaluate.evaluate, [EvaluateConfig])]


@pytest.mark.parametrize("func, configs", _component_functions(), ids=lambda v: getattr(v, "__name__", ""))
def test_component_defaults_equal_the_library_defaults(func, configs):
    for name, param in inspect.signature(func).parameters.items():
        if param.default is inspect.Parameter.empty or name == "config_yaml":
            continue
        for cfg in configs:
            field = cfg.model_fields.get(name)
            if field is None:
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):
                default = ",".join(map(str, default))
            assert param.default == default or (param.default == "" and default is None), (func.__name__, name)


def test_params_are_typed_and_checked():
    args = parse_params(["max_steps=50", "preset=small", "ratio_train=0.7", "data_source_uri=s3://b/raw"],
                        COMMITTED_PACKAGE)
    assert args == {"max_steps": 50, "preset": "small", "ratio_train": 0.7, "data_source_uri": "s3://b/raw"}
    from msenc_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="no parameter 'max_step'"):
        parse_params(["max_step=5"], COMMITTED_PACKAGE)
    with pytest.raises(ConfigError, match="max_steps"):
        parse_params(["max_steps=many"], COMMITTED_PACKAGE)
    assert to_kfp_cron("0 3 * * 0") == "0 0 3 * * 0"
    with pytest.raises(ConfigError):
        to_kfp_cron("every sunday")


def test_submit_and_schedule_through_kfp_client():
    with FakeKfpApi() as api:
        run = submit(api.host, COMMITTED_PACKAGE, {"max_steps": 10}, experiment="battery")
        rec = schedule(api.host, COMMITTED_PACKAGE, "0 3 * * 0", {"init_model_uri": "s3://b/exports"},
                       experiment="battery", job_name="weekly")
    assert run.run_id == api.runs[0]["run_id"] and run.url.endswith(run.run_id)
    assert api.runs[0]["runtime_config"]["parameters"] == {"max_steps": 10}
    assert api.runs[0]["pipeline_spec"]["pipelineInfo"]["name"] == "msenc"
    sent = api.recurring_runs[0]
    assert rec.recurring_run_id == sent["recurring_run_id"] and sent["display_name"] == "weekly"
    assert sent["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert sent["runtime_config"]["parameters"] == {"init_model_uri": "s3://b/exports"}
    assert len(api.experiments) == 1  # the experiment is reused, not created twice


def test_submit_from_the_cli():
    with FakeKfpApi() as api:
        out = subprocess.run([sys.executable, "-m", "msenc_cli", "pipeline", "submit", "--host", api.host,
                              "--param", "preset=small", "--param", "max_steps=20"],
                             capture_output=True, text=True, cwd=Path(__file__).parent)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["run_id"] == api.runs[0]["run_id"]
        assert api.runs[0]["runtime_config"]["parameters"] == {"preset": "small", "max_steps": 20}
        bad = subprocess.run([sys.executable, "-m", "msenc_cli", "pipeline", "submit", "--host", api.host,
                              "--param", "nope=1"], capture_output=True, text=True)
        assert bad.returncode == 2 and "no parameter 'nope'" in bad.stderr
