"""Where every stage's files lie: the names of what a stage writes or reads, and the readers for them.

One place for the artifact layouts of design.md §2, so that stages, components and tests agree on them::

    unified table (ingest, generate-data)   DIR/<cell_key>.parquet, DIR/_manifest.json, [DIR/_csv/unified.csv]
    preprocessed dataset (preprocess)       DIR/sequences/part-NNNNN.parquet, DIR/tokenizer/, DIR/manifest.json,
                                            DIR/preprocess_config.yaml, [DIR/text/<cell>.csv]
    split (split)                           DIR/split_cfg.json, DIR/manifest.json, DIR/tokenizer/,
                                            DIR/<subset>/sequences/..., DIR/<subset>/manifest.json
                                            (or DIR/<subset>/embeddings.parquet, or DIR/<subset>/<cell>.csv)
    model (train)                           DIR/config.json, DIR/model.safetensors, DIR/tokenizer/,
                                            DIR/train_config.yaml, DIR/metrics.jsonl, DIR/checkpoints/
    embeddings (embed)                      DIR/embeddings.parquet, DIR/embed_config.yaml, [DIR/csv/<cell>.csv]
    evaluation (evaluate)                   DIR/metrics.json, DIR/report.html, DIR/evaluate_config.yaml,
                                            DIR/predictions_cycle_life.csv, DIR/predictions_capacity.parquet, PNGs
    export location (export)                DIR/<run>/<artifact>/, DIR/LATEST

Every path is a local path or an s3:// URI (:mod:`msenc_lib.storage`).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from msenc_lib import storage
from msenc_lib.errors import ConfigError, InputDataError

# ------------------------------------------------------------------------------------------ unified table
UNIFIED_FORMAT = "msenc-unified"
UNIFIED_MANIFEST = "_manifest.json"
UNIFIED_CSV_DIR = "_csv"
UNIFIED_CSV = "unified.csv"
CELL_SUFFIX = ".parquet"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@,-]*$")


def cell_file_name(cell_key: str, suffix: str = CELL_SUFFIX) -> str:
    """``b1c0`` -> ``b1c0.parquet``; unsafe characters (and a leading ``_``/``.``) percent-encoded, so that
    ``pandas.read_parquet(DIR)`` (which skips ``_*``/``.*``) reads exactly the cells."""
    name = cell_key if _SAFE_NAME.match(cell_key) else urllib.parse.quote(cell_key, safe="")
    if name[:1] in ("_", "."):
        name = "%{:02X}".format(ord(name[0])) + name[1:]
    return name + suffix


def cell_key_from_file(name: str) -> str:
    return urllib.parse.unquote(storage.basename(name)[: -len(CELL_SUFFIX)])


def is_hidden(relative_path: str) -> bool:
    """Names starting with ``_`` or ``.`` (manifests, the CSV export, staging folders) are not data."""
    return any(part[:1] in ("_", ".") for part in relative_path.split("/") if part)


def relative_to(uri: str, base: str) -> str:
    base = base.rstrip("/") + "/"
    return uri[len(base):] if uri.startswith(base) else storage.basename(uri)


def unified_files(uri: str) -> list[str]:
    """The cell Parquet files of a unified directory (or ``[uri]`` for one file), sorted."""
    uri = str(uri)
    files = storage.list_files(uri, suffix=CELL_SUFFIX)
    if len(files) == 1 and files[0] == uri:
        return files
    return [f for f in files if not is_hidden(relative_to(f, uri))]


def read_unified_manifest(uri: str) -> dict[str, Any] | None:
    """The ``_manifest.json`` of a unified directory; None when there is none (e.g. files from elsewhere)."""
    try:
        return json.loads(storage.read_text(storage.join(uri, UNIFIED_MANIFEST)))
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------------- preprocessed dataset
DATASET_FORMAT = "msenc-preprocessed"
DATASET_FORMAT_VERSION = 1
SEQUENCES_DIR = "sequences"
TOKENIZER_DIR = "tokenizer"
TEXT_DIR = "text"
MANIFEST = "manifest.json"
PREPROCESS_CONFIG = "preprocess_config.yaml"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def sequence_files(uri: str) -> list[str]:
    """The Parquet shards under ``<uri>/sequences/`` (a preprocessed dataset or a split subset), sorted."""
    return storage.list_files(storage.join(str(uri), SEQUENCES_DIR), suffix=".parquet")


def read_sequence_table(uri: str):
    """All sequences of a preprocessed dataset (or split subset) as one Arrow table (small data, tests)."""
    import pyarrow as pa

    files = sequence_files(uri)
    if not files:
        raise InputDataError(f"{uri}: no {SEQUENCES_DIR}/*.parquet")
    return pa.concat_tables([storage.read_parquet(f) for f in files])


def read_dataset_manifest(uri: str) -> dict[str, Any]:
    """The ``manifest.json`` of a preprocessed dataset (or split subset)."""
    try:
        return json.loads(storage.read_text(storage.join(str(uri), MANIFEST)))
    except FileNotFoundError:
        raise InputDataError(f"{uri}: no {MANIFEST}; not a preprocessed dataset (run 'msenc preprocess')") from None


def has_tokenizer(directory: str | os.PathLike) -> bool:
    folder = Path(directory)
    return (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()


# ------------------------------------------------------------------------------------------------- split
SPLIT_FORMAT = "msenc-split"
SPLIT_CONFIG = "split_cfg.json"
SUBSETS = ("train", "validation", "test")
_SUBSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CELL_SUFFIXES = (".csv", ".parquet", ".txt")


def cell_key_of(name: str) -> str:
    """``b1c0.csv`` -> ``b1c0``: split configs list per-cell file names; bare keys are accepted too."""
    base = str(name).rsplit("/", 1)[-1]
    for suffix in _CELL_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def parse_split_config(data: Any, source: str) -> dict[str, list[str]]:
    """A ``split_cfg.json`` document (ours or the original's) -> subset -> cell keys, in document order
    (``train``, ``validation``, ``test`` always present)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a split config must be a JSON object of subset -> list of file names")
    if not any(s in data for s in SUBSETS):
        raise ConfigError(f"{source}: none of the subsets {list(SUBSETS)} is in the split config "
                          f"(keys: {list(data)})")
    out: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for subset, names in data.items():
        if not isinstance(subset, str) or not _SUBSET_NAME.match(subset):
            raise ConfigError(f"{source}: subset name {subset!r} is not a plain name")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{source}: subset {subset!r} must be a list of file names")
        cells = []
        for name in names:
            cell = cell_key_of(name)
            if cell in where:
                raise ConfigError(f"{source}: cell {cell!r} is listed in both {where[cell]!r} and {subset!r}")
            where[cell] = subset
            cells.append(cell)
        out[subset] = cells
    for s in SUBSETS:
        out.setdefault(s, [])
    return out


def split_config_document(assignment: dict[str, list[str]]) -> str:
    """``split_cfg.json`` text in the original's form (indent 4, ``<cell>.csv`` names, subsets in order)."""
    order = [*SUBSETS, *[s for s in assignment if s not in SUBSETS]]
    return json.dumps({s: [f"{c}.csv" for c in assignment.get(s, [])] for s in order}, indent=4)


def split_config_path(uri: str) -> str:
    """A ``split_cfg.json`` file as given, or the one inside a split folder."""
    uri = str(uri)
    return uri if uri.endswith(".json") or not storage.is_dir(uri) else storage.join(uri, SPLIT_CONFIG)


def read_split_document(uri: str) -> Any:
    """The JSON document of a ``split_cfg.json``, or of the one inside a split folder."""
    path = split_config_path(uri)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"split config not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None


def read_split_config(uri: str) -> dict[str, list[str]]:
    """Subset -> cell keys of a ``split_cfg.json`` (ours or the original's) or of a split folder holding one."""
    return parse_split_config(read_split_document(uri), split_config_path(uri))


# ------------------------------------------------------------------------------------------------- model
MODEL_CONFIG = "config.json"  # written last: its presence marks a complete model
MODEL_WEIGHTS = "model.safetensors"
TRAIN_CONFIG = "train_config.yaml"
METRICS_LOG = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"


def is_model(uri: str) -> bool:
    return storage.exists(storage.join(str(uri), MODEL_CONFIG))


def read_metrics_log(uri: str) -> list[dict[str, Any]]:
    """The rows of a model folder's ``metrics.jsonl`` (training rows have ``loss``, evaluations ``eval_loss``)."""
    text = storage.read_text(storage.join(str(uri), METRICS_LOG))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -------------------------------------------------------------------------------------------- embeddings
EMBEDDINGS_FILE = "embeddings.parquet"
EMBEDDINGS_CSV_DIR = "csv"
EMBED_CONFIG = "embed_config.yaml"
VALUE_PREFIX = "val_"


def embeddings_file(uri: str) -> str:
    """The ``embeddings.parquet`` of an embeddings folder, or the Parquet file given."""
    uri = str(uri)
    return uri if uri.endswith(".parquet") else storage.join(uri, EMBEDDINGS_FILE)


# -------------------------------------------------------------------------------------------- evaluation
EVALUATION_FORMAT = "msenc-evaluation"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
EVALUATE_CONFIG = "evaluate_config.yaml"
PREDICTIONS_CYCLE_LIFE = "predictions_cycle_life.csv"
PREDICTIONS_CAPACITY = "predictions_capacity.parquet"
PREDICTIONS_RUL = "predictions_rul.parquet"
EVALUATION_SUMMARY = "summary.md"  # the headline tables in Markdown (the KFP UI renders it)

# ------------------------------------------------------------------------------------------------ export
LATEST_FILE = "LATEST"  # one line: the newest run's folder name
EXPORTED_MODEL = "model"


# -------------------------------------------------------------------------------------------------- JSON
def write_json(path: str | os.PathLike, document: Any) -> None:
    """A manifest or metrics document in a staging folder (indent 1, final newline)."""
    Path(path).write_text(json.dumps(document, indent=1) + "\n")
