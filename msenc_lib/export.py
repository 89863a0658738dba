"""Copy a run's results to a stable place in object storage, and find the newest model there again.

``<export_uri>/<run>/<name>/`` per exported artifact (model, embeddings, evaluation, ...), published together
(one ``storage.publish`` of the run folder: a failed export leaves no part of the run), then
``<export_uri>/LATEST`` (one line: the run's name) is replaced. A scheduled retraining passes the same
``init_model_uri=<export_uri>`` every time and so always warm-starts from the newest exported model.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from msenc_lib import layout, storage
from msenc_lib.config import StageConfig
from msenc_lib.errors import InputDataError
from msenc_lib.layout import EXPORTED_MODEL as MODEL_NAME
from msenc_lib.layout import LATEST_FILE


class ExportConfig(StageConfig):
    stage = "export"

    update_latest: bool = Field(True, description="point <export_uri>/LATEST at this run afterwards")


class ExportResult(BaseModel):
    export_uri: str
    run_uri: str
    exported: dict[str, str]  # artifact name -> its URI under the run
    latest_uri: str | None
    seconds: float


def run_export(config: ExportConfig, artifacts: dict[str, str], export_uri: str, run_name: str,
               overwrite: bool = False) -> ExportResult:
    """Copy each ``name -> uri`` of ``artifacts`` to ``<export_uri>/<run_name>/<name>``; then move LATEST."""
    if not run_name or "/" in run_name:
        raise InputDataError(f"run name must be a non-empty folder name, got {run_name!r}")
    start = time.perf_counter()
    run_uri = storage.join(export_uri, run_name)
    exported = {}
    with storage.publish(run_uri, overwrite=overwrite) as staging:  # the run's artifacts appear together
        for name, src in artifacts.items():
            exported[name] = storage.join(run_uri, name)
            storage.stage_copy(src, staging / name)
    latest = None
    if config.update_latest:
        latest = storage.join(export_uri, LATEST_FILE)
        storage.write_text(latest, run_name + "\n")
    return ExportResult(export_uri=str(export_uri), run_uri=run_uri, exported=exported, latest_uri=latest,
                        seconds=round(time.perf_counter() - start, 3))


def resolve_model_uri(uri: str) -> str:
    """A model folder as is; an export location (holding LATEST) -> its newest run's model folder."""
    if layout.is_model(uri):
        return uri
    pointer = storage.join(uri, LATEST_FILE)
    if storage.exists(pointer):
        run = storage.read_text(pointer).strip()
        model = storage.join(uri, run, MODEL_NAME)
        if not layout.is_model(model):
            raise InputDataError(f"{pointer} names run {run!r}, but {model} holds no saved model (config.json)")
        return model
    raise InputDataError(f"{uri}: neither a saved model (config.json) nor an export location ({LATEST_FILE})")
