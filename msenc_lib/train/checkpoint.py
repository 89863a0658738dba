"""Resume state under ``<output>/checkpoints/`` and the metrics file ``<output>/metrics.jsonl``.

``checkpoints/step-00000040/state.pt`` holds the model, optimizer, scheduler and RNG states, the step (the
data position follows from it), the early-stopping state and the metric rows so far; ``best.pt`` beside it
the best-by-eval-loss weights when they are not the current ones. ``checkpoints/LATEST`` names the newest
complete checkpoint (written after it). The last ``keep`` checkpoints are kept. Only rank 0 writes.

Each checkpoint folder is written with :func:`storage.publish` (staged, then renamed or uploaded; its published
marker, with every file's size and SHA-256, comes last), so a crash at any byte leaves either a whole
checkpoint or one that fails its checksum. Resuming takes the newest checkpoint that passes, skipping (with
a warning) any newer one that is partial or corrupt. The files are tensors and plain containers, loaded with
``torch.load(weights_only=True)``: no code is unpickled.
"""

from __future__ import annotations

import io
import os
import json
import logging
from typing import Any

import torch

from msenc_lib import storage
from msenc_lib.errors import InputDataError, StorageError
from msenc_lib.layout import CHECKPOINTS_DIR as CHECKPOINTS
from msenc_lib.layout import METRICS_LOG as METRICS_FILE

log = logging.getLogger(__name__)

LATEST = "LATEST"
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_checkpoint(output_uri: str, step: int, state: dict[str, Any], best_weights: dict | None,
                    keep: int) -> str:
    """Write checkpoint ``step`` atomically, point LATEST at it, prune all but the newest ``keep``."""
    root = storage.join(output_uri, CHECKPOINTS)
    uri = storage.join(root, checkpoint_name(step))
    with storage.publish(uri, overwrite=True) as staging:
        (staging / STATE_FILE).write_bytes(_to_bytes(state))
        if best_weights is not None:
            (staging / BEST_FILE).write_bytes(_to_bytes(best_weights))
    storage.write_text(storage.join(root, LATEST), checkpoint_name(step) + "\n")
    for old in list_checkpoints(output_uri)[:-max(keep, 1)]:
        storage.remove(storage.join(root, old))
    return uri


def list_checkpoints(output_uri: str) -> list[str]:
    """Names of the complete checkpoints (``step-*`` folders holding a state file), oldest first."""
    root = storage.join(output_uri, CHECKPOINTS)
    names = set()
    for f in storage.list_files(root):
        rel = f[len(root):].lstrip("/").split("/")
        if len(rel) == 2 and rel[0].startswith("step-") and rel[1] == STATE_FILE:
            names.add(rel[0])
    return sorted(names)


def latest_checkpoint(output_uri: str) -> str | None:
    """URI of the newest complete checkpoint (not verified: :func:`load_latest` does), or None."""
    root = storage.join(output_uri, CHECKPOINTS)
    pointer = storage.join(root, LATEST)
    if storage.exists(pointer):
        name = storage.read_text(pointer).strip()
        if storage.exists(storage.join(root, name, STATE_FILE)):
            return storage.join(root, name)
    found = list_checkpoints(output_uri)
    return storage.join(root, found[-1]) if found else None


class CorruptCheckpoint(InputDataError):
    """A checkpoint that is partial, fails its checksum or does not load."""


def load_checkpoint(uri: str) -> tuple[dict[str, Any], dict | None]:
    """The state and best weights of the checkpoint ``uri``, each file checked against the checkpoint's
    published marker first (:class:`CorruptCheckpoint` otherwise)."""
    try:
        files = storage.published_files(uri)
    except StorageError as e:
        raise CorruptCheckpoint(str(e)) from None
    loaded = []
    for name in (STATE_FILE, BEST_FILE):
        if name not in files:
            if name == STATE_FILE:
                raise CorruptCheckpoint(f"{uri}: no {STATE_FILE} in its published marker")
            loaded.append(None)
            continue
        try:
            data = storage.read_bytes(storage.join(uri, name))
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{storage.join(uri, name)} is missing") from None
        problem = storage.check_published_bytes(uri, name, data, files)
        if problem:
            raise CorruptCheckpoint(problem)
        try:
            loaded.append(_from_bytes(data))
        except Exception as e:  # matching checksums: written so by a bug or another torch
            raise CorruptCheckpoint(f"{storage.join(uri, name)} does not load: {str(e).splitlines()[0]}") from None
    return loaded[0], loaded[1]


def load_latest(output_uri: str) -> tuple[str, dict[str, Any], dict | None] | None:
    """``(uri, state, best)`` of the newest checkpoint that is whole; newer partial or corrupt ones are skipped
    with a warning. ``None`` when there is no checkpoint; :class:`CorruptCheckpoint` when none is whole."""
    root = storage.join(output_uri, CHECKPOINTS)
    names = list_checkpoints(output_uri)
    problems = []
    for name in reversed(names):
        uri = storage.join(root, name)
        try:
            state, best = load_checkpoint(uri)
        except CorruptCheckpoint as e:
            log.warning("skipping checkpoint %s: %s", name, e)
            problems.append(f"{name}: {e}")
            continue
        if problems:
            log.warning("resuming from the older checkpoint %s", name)
        return uri, state, best
    if problems:
        raise CorruptCheckpoint(f"no whole checkpoint in {root} to resume from ({'; '.join(problems)}): run "
                                "without --resume, with --overwrite, to start again")
    return None


class MetricsLog:
    """Metric rows (dicts) kept in memory; appended to a local ``metrics.jsonl`` as they come, and the whole
    file rewritten by :meth:`flush` (at checkpoints and at the end; the only way on S3)."""

    def __init__(self, output_uri: str, enabled: bool, rows: list[dict] | None = None):
        self.uri = storage.join(output_uri, METRICS_FILE)
        self.enabled = enabled
        self.rows: list[dict] = list(rows or [])
        self._local = not storage.is_s3(output_uri)
        if enabled and self._local:
            os.makedirs(output_uri, exist_ok=True)
        self._mlflow = _mlflow_run() if enabled else None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        if self._local:
            with open(self.uri, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if self._mlflow is not None:
            step = int(row.get("step", 0))
            self._mlflow.log_metrics({k: float(v) for k, v in row.items()
                                      if k != "step" and isinstance(v, (int, float))}, step=step)

    def flush(self) -> None:
        if self.enabled:
            storage.write_text(self.uri, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log_params(self, params: dict) -> None:
        if self._mlflow is not None:
            self._mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def _mlflow_run():
    """The ``mlflow`` module with an active run when mlflow is installed and MLFLOW_TRACKING_URI is set."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    try:
        import mlflow
    except ImportError:
        log.info("MLFLOW_TRACKING_URI is set but mlflow is not installed: metrics go to metrics.jsonl only")
        return None
    if mlflow.active_run() is None:
        mlflow.start_run()
    return mlflow
