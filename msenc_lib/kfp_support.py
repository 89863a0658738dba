"""What KFP component bodies call: config from parameters, metrics logging, artifact metadata.

Component bodies (``components/<stage>/component.py``) import this inside the function, so it runs in
the msenc image; nothing here imports kfp.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping

from pydantic import BaseModel

from msenc_lib.config import StageConfig, parse_document


@contextlib.contextmanager
def step_errors(step: str) -> Iterator[None]:
    """Around a component body: an error a user can act on ends the step with its one-line message and its
    exit status (msenc_lib.errors), as the CLI does; a bug keeps its traceback."""
    from msenc_lib.errors import report

    try:
        yield
    except Exception as e:
        code = report(e, step)
        if code is None:
            raise
        raise SystemExit(code) from None


def component_config(config_cls: type[StageConfig], config_yaml: str = "", **params: Any) -> StageConfig:
    """The stage config: the optional YAML/JSON document ``config_yaml``, then the component's parameters.

    Parameters always win over the document (they carry the library's defaults, so the document is for
    fields the component does not expose). List fields take comma-separated strings.
    """
    document = parse_document(config_yaml, "config_yaml parameter") if config_yaml.strip() else None
    return config_cls.load(document, overrides=params)


def unified_table(output_path: str, source_uri: str = "", config_yaml: str = "", **params: Any) -> BaseModel:
    """The data step: ingest ``source_uri`` (``format`` in ``params``), or without one generate the embedded
    synthetic data (``size``, ``seed``); ``config_yaml`` sets further fields of the config used."""
    if source_uri:
        from msenc_lib.ingest import IngestConfig, run_ingest

        cfg = component_config(IngestConfig, config_yaml, format=params.get("format", "auto"), progress=False)
        return run_ingest(cfg, source_uri, output_path, overwrite=True)
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    cfg = component_config(GenerateDataConfig, config_yaml, size=params.get("size", "tiny"),
                           seed=params.get("seed", 0), progress=False)
    return run_generate_data(cfg, output_path, overwrite=True)


def log_metrics(metrics_artifact: Any, values: Mapping[str, Any]) -> dict[str, float]:
    """Log finite numbers to a KFP ``Metrics`` artifact (the UI shows them); returns what was logged."""
    logged = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics_artifact.log_metric(key, float(value))
            logged[key] = float(value)
    return logged


def annotate(artifact: Any, result: BaseModel, fields: tuple[str, ...]) -> None:
    """Copy a few scalar fields of a stage result into the artifact's metadata (shown in the UI); None values
    are left out. A name the result does not have is a programming error and raises."""
    data = result.model_dump()
    unknown = [name for name in fields if name not in data]
    if unknown:
        raise AttributeError(f"{type(result).__name__} has no field(s) {', '.join(unknown)} "
                             f"(it has: {', '.join(data)})")
    for name in fields:
        value = data[name]
        if isinstance(value, (str, int, float, bool)):
            artifact.metadata[name] = value
        elif value is not None:
            raise TypeError(f"{type(result).__name__}.{name} is a {type(value).__name__}, not a scalar: "
                            "artifact metadata shows scalars only")
