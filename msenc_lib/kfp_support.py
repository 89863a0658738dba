"""What KFP component bodies call: config from parameters, metrics logging, artifact metadata.

Component bodies (``components/<stage>/component.py``) import this inside the function, so it runs in
the msenc image; nothing here imports kfp.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pydantic import BaseModel

from msenc_lib.config import StageConfig, parse_document


def component_config(config_cls: type[StageConfig], config_yaml: str = "", **params: Any) -> StageConfig:
    """The stage config: the optional YAML/JSON document ``config_yaml``, then the component's parameters.

    Parameters always win over the document (they carry the library's defaults, so the document is for
    fields the component does not expose). List fields take comma-separated strings.
    """
    document = parse_document(config_yaml, "config_yaml parameter") if config_yaml.strip() else None
    return config_cls.load(document, overrides=params)


def log_metrics(metrics_artifact: Any, values: Mapping[str, Any]) -> dict[str, float]:
    """Log finite numbers to a KFP ``Metrics`` artifact (the UI shows them); returns what was logged."""
    logged = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics_artifact.log_metric(key, float(value))
            logged[key] = float(value)
    return logged


def annotate(artifact: Any, result: BaseModel, fields: tuple[str, ...]) -> None:
    """Copy a few scalar fields of a stage result into the artifact's metadata (shown in the UI)."""
    data = result.model_dump()
    for name in fields:
        value = data.get(name)
        if isinstance(value, (str, int, float, bool)):
            artifact.metadata[name] = value
