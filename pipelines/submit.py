"""Submit the compiled msenc pipeline to a Kubeflow Pipelines host, once or on a schedule (kfp.Client).

Scheduled retraining is a KFP recurring run of the same package: each run gets its own artifacts under
the pipeline root, and the ``init_model_uri`` parameter warm-starts training from an earlier model.
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


class ScheduleResult(BaseModel):
    host: str
    experiment: str
    recurring_run_id: str
    job_name: str
    cron: str


def pipeline_parameters(package_path: str | Path) -> dict[str, dict[str, Any]]:
    """The root parameters of a compiled pipeline: name -> {"type": KFP type, "default": value}."""
    spec = yaml.safe_load(Path(package_path).read_text())
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


def submit(host: str, package_path: str | Path, arguments: dict[str, Any], experiment: str = "msenc",
           run_name: str | None = None, namespace: str | None = None, token: str | None = None,
           enable_caching: bool | None = None) -> SubmitResult:
    """Start one run of the compiled pipeline; returns its id and UI address."""
    client = _client(host, namespace, token)
    run_name = run_name or _run_name("msenc")
    result = client.create_run_from_pipeline_package(
        str(package_path), arguments=arguments, run_name=run_name, experiment_name=experiment,
        namespace=namespace, enable_caching=enable_caching)
    return SubmitResult(host=host, experiment=experiment, run_id=result.run_id, run_name=run_name,
                        url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}")


def schedule(host: str, package_path: str | Path, cron: str, arguments: dict[str, Any],
             experiment: str = "msenc", job_name: str | None = None, namespace: str | None = None,
             token: str | None = None, max_concurrency: int = 1, enable_caching: bool | None = False,
             ) -> ScheduleResult:
    """Create a recurring run (scheduled retraining) of the compiled pipeline."""
    client = _client(host, namespace, token)
    exp = client.create_experiment(name=experiment, namespace=namespace)
    job_name = job_name or _run_name("msenc-retrain")
    kfp_cron = to_kfp_cron(cron)
    rec = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job_name, cron_expression=kfp_cron,
        max_concurrency=max_concurrency, pipeline_package_path=str(package_path), params=arguments,
        enable_caching=enable_caching)
    return ScheduleResult(host=host, experiment=experiment, recurring_run_id=rec.recurring_run_id,
                          job_name=job_name, cron=kfp_cron)
