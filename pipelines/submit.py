"""The compiled msenc pipeline on a Kubeflow Pipelines host (kfp.Client): upload it for the UI, run it once
or on a schedule.

Scheduled retraining is a KFP recurring run of the same package: each run gets its own artifacts under
the pipeline root, and the ``init_model_uri`` parameter warm-starts training from an earlier model. A
schedule starts only the next run after a pause (no catch-up) and one run at a time by default.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from msenc_lib.errors import ConfigError

_KFP_TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": bool,
}


class SubmitResult(BaseModel):
    host: str
    experiment: str
    run_id: str
    run_name: str
    url: str


class UploadResult(BaseModel):
    host: str
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    new_pipeline: bool
    url: str


class ScheduleResult(BaseModel):
    host: str
    experiment: str
    recurring_run_id: str
    job_name: str
    cron: str
    max_concurrency: int
    no_catchup: bool


def load_package(package_path: str | Path) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a compiled package; the platform spec (the second YAML document,
    kfp-kubernetes' settings per executor) is ``{}`` when the package has none."""
    docs = [d for d in yaml.safe_load_all(Path(package_path).read_text()) if d]
    if not docs or "root" not in docs[0]:
        raise ConfigError(f"{package_path}: not a compiled KFP pipeline package")
    return docs[0], (docs[1] if len(docs) > 1 else {})


def pipeline_parameters(package_path: str | Path) -> dict[str, dict[str, Any]]:
    """The root parameters of a compiled pipeline: name -> {"type": KFP type, "default": value}."""
    spec, _ = load_package(package_path)
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: {"type": p["parameterType"], "default": p.get("defaultValue")} for name, p in params.items()}


def parse_params(pairs: list[str], package_path: str | Path) -> dict[str, Any]:
    """``["max_steps=200", "backend=pytorchjob"]`` -> typed arguments, checked against the pipeline."""
    known = pipeline_parameters(package_path)
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param expects NAME=VALUE, got {pair!r}")
        if name not in known:
            raise ConfigError(f"the pipeline has no parameter {name!r}; it has: {', '.join(sorted(known))}")
        kind = _KFP_TYPES.get(known[name]["type"], str)
        try:
            if kind is bool:
                value: Any = {"true": True, "false": False}[raw.strip().lower()]
            else:
                value = kind(raw)
        except (ValueError, KeyError):
            raise ConfigError(f"--param {name}: expected {known[name]['type']}, got {raw!r}") from None
        out[name] = value
    return out


def to_kfp_cron(expression: str) -> str:
    """KFP's cron has a seconds field: a 5-field ``"0 3 * * 0"`` becomes ``"0 0 3 * * 0"``."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"--cron expects 5 fields (min hour day month weekday) or 6 with seconds, got {expression!r}")


def _client(host: str, namespace: str | None, token: str | None):
    import kfp

    kwargs: dict[str, Any] = {"host": host, "existing_token": token}
    if namespace:
        kwargs["namespace"] = namespace
    return kfp.Client(**kwargs)


def _run_name(prefix: str) -> str:
    return f"{prefix}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def upload(host: str, package_path: str | Path, name: str = "msenc", version: str | None = None,
           description: str | None = None, namespace: str | None = None, token: str | None = None) -> UploadResult:
    """The package as the pipeline ``name`` in the UI. A new pipeline gets the package as its first version
    (named like the pipeline, KFP's rule); an existing one a new version ``version`` (default: ``<name>-<UTC
    time>``)."""
    load_package(package_path)  # refuse anything but a compiled package before talking to the host
    client = _client(host, namespace, token)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package_path), pipeline_name=name, description=description,
                                             namespace=namespace).pipeline_id
        first = client.list_pipeline_versions(pipeline_id).pipeline_versions[0]
        version_id, version_name, new = first.pipeline_version_id, first.display_name, True
    else:
        version_name = version or _run_name(name)
        version_id = client.upload_pipeline_version(str(package_path), pipeline_version_name=version_name,
                                                    pipeline_id=pipeline_id, description=description
                                                    ).pipeline_version_id
        new = False
    return UploadResult(host=host, pipeline_id=pipeline_id, pipeline_name=name, version_id=version_id,
                        version_name=version_name, new_pipeline=new,
                        url=f"{host.rstrip('/')}/#/pipelines/details/{pipeline_id}/version/{version_id}")


def submit(host: str, package_path: str | Path, arguments: dict[str, Any], experiment: str = "msenc",
           run_name: str | None = None, namespace: str | None = None, token: str | None = None,
           enable_caching: bool | None = None, pipeline_root: str | None = None,
           service_account: str | None = None) -> SubmitResult:
    """Start one run of the compiled pipeline; returns its id and UI address. ``enable_caching=False`` runs
    every step anew; ``pipeline_root`` puts the run's artifacts under another object-storage prefix."""
    client = _client(host, namespace, token)
    run_name = run_name or _run_name("msenc")
    result = client.create_run_from_pipeline_package(
        str(package_path), arguments=arguments, run_name=run_name, experiment_name=experiment,
        namespace=namespace, enable_caching=enable_caching, pipeline_root=pipeline_root,
        service_account=service_account)
    return SubmitResult(host=host, experiment=experiment, run_id=result.run_id, run_name=run_name,
                        url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}")


def schedule(host: str, package_path: str | Path, cron: str, arguments: dict[str, Any],
             experiment: str = "msenc", job_name: str | None = None, namespace: str | None = None,
             token: str | None = None, max_concurrency: int = 1, no_catchup: bool = True,
             enable_caching: bool | None = None, pipeline_root: str | None = None,
             service_account: str | None = None) -> ScheduleResult:
    """Create a recurring run (scheduled retraining) of the compiled pipeline: by default one run at a time
    and no catch-up of the runs missed while paused."""
    client = _client(host, namespace, token)
    exp = client.create_experiment(name=experiment, namespace=namespace)
    job_name = job_name or _run_name("msenc-retrain")
    kfp_cron = to_kfp_cron(cron)
    rec = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job_name, cron_expression=kfp_cron,
        max_concurrency=max_concurrency, no_catchup=no_catchup, pipeline_package_path=str(package_path),
        params=arguments, enable_caching=enable_caching, pipeline_root=pipeline_root,
        service_account=service_account)
    return ScheduleResult(host=host, experiment=experiment, recurring_run_id=rec.recurring_run_id,
                          job_name=job_name, cron=kfp_cron, max_concurrency=max_concurrency, no_catchup=no_catchup)
