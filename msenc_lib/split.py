"""``msenc split``: cell-level train / validation / test split, in the original's ``split_cfg.json`` schema.

Inputs (detected):

* a preprocessed dataset (``sequences/`` shards + ``tokenizer/``): weights are tokens per cell;
* an embeddings folder (``embeddings.parquet``, one row per cell and cycle): weights are rows per cell;
* a folder of per-cell ``<cell>.csv`` files (the original's layout): weights are file sizes, as the original.

A new split shuffles the cells with ``random.Random(seed)`` (the original's shuffle is unseeded) and fills
train until its weight reaches ``ratio_train`` of the total, then validation until ``ratio_validation``,
the rest is test (the original's greedy fill). ``--split-config FILE`` (the original's ``--config``) reuses
a ``split_cfg.json`` exactly, also one written by the original; a cell it names that the data lacks is an
error naming it; data cells it does not place are listed as a warning and left out. ``--preset severson``
is the paper's primary-train / primary-test / secondary-test split of the 124 standard cells; the other
presets of :mod:`msenc_lib.split_presets` (BatteryML's and BatteryLife's standard splits) work the same way.

Output::

    OUT/split_cfg.json                    {"train": ["<cell>.csv", ...], "validation": [...], "test": [...]}
    OUT/manifest.json                     counts, weights, warnings, source of the assignment
    OUT/tokenizer/                        (preprocessed input) the dataset's tokenizer
    OUT/<subset>/sequences/part-*.parquet (preprocessed input) same schema, rows of the subset's cells
    OUT/<subset>/manifest.json
    OUT/<subset>/embeddings.parquet       (embeddings input) [+ OUT/<subset>/csv/<cell>.csv]
    OUT/<subset>/<cell>.csv               (CSV-folder input) [+ OUT/<subset>.csv merged, --merge-files]
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from msenc_lib import layout, storage
from msenc_lib.config import StageConfig
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.progress import progress_bar
from msenc_lib.split_presets import get_preset, preset_names, resolve_preset

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------------ presets
def severson_split() -> dict[str, list[str]]:
    """The paper's split of the 124 cells as a ``split_cfg.json`` document of raw keys (``b1c0.csv``); the rule
    and its source: :mod:`msenc_lib.split_presets`."""
    preset = get_preset("severson")
    return {s: [f"{c.removeprefix('MATR_')}.csv" for c in ids] for s, ids in preset.listed.items()}


# --------------------------------------------------------------------------------------------- config
class SplitConfig(StageConfig):
    stage = "split"

    ratio_train: float = Field(0.8, ge=0.0, le=1.0, description="share of the weight (tokens, rows or bytes) "
                               "that goes to train")
    ratio_validation: float = Field(0.05, ge=0.0, le=1.0, description="share for validation; test gets the rest")
    seed: int = Field(0, description="seed of the cell shuffle of a new split")
    preset: str | None = Field(
        None, description="a standard split (msenc_lib.split_presets; ratios and seed are not used): 'severson' "
        "(primary train -> train, primary test -> test, secondary test -> the extra subset 'secondary_test'; "
        "validation empty), BatteryML's matr1, matr2, clo, hust, snl, cruh, crush, mix (no validation), "
        "BatteryLife's batterylife-<dataset> (train/validation/test), e.g. batterylife-matr, batterylife-li-ion")
    allow_missing_cells: bool = Field(
        False, description="a cell the preset lists but the data lacks is an error; true: leave it out with a "
        "warning")
    merge_files: bool = Field(True, description="the original's option; for a folder of per-cell CSVs it also "
                              "writes OUT/<subset>.csv with all of the subset's rows; token shards and "
                              "embeddings.parquet are one table per subset already, so there it changes nothing")
    progress: bool = Field(True, description="progress bar on stderr")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in preset_names():
            raise ValueError(f"unknown preset {v!r}; presets: {', '.join(preset_names())}")
        return v

    @model_validator(mode="after")
    def _ratios(self) -> "SplitConfig":
        if self.ratio_train + self.ratio_validation > 1.0 + 1e-12:
            raise ValueError(f"ratio_train + ratio_validation = {self.ratio_train + self.ratio_validation} > 1")
        return self


class SubsetInfo(BaseModel):
    n_cells: int
    weight: int
    n_rows: int


class SplitResult(BaseModel):
    output_uri: str
    input_kind: str
    weight_unit: str
    assignment: str  # "generated" | "file:<uri>" | "preset:<name>"
    subsets: dict[str, SubsetInfo]
    unplaced_cells: list[str]
    warnings: list[str]
    split_config_uri: str
    seconds: float


# ----------------------------------------------------------------------------------------------- input
def detect_input(input_uri: str) -> str:
    """'sequences' | 'embeddings' | 'csv'."""
    uri = str(input_uri)
    if layout.sequence_files(uri):
        return "sequences"
    if uri.endswith(".parquet") and storage.basename(uri) == layout.EMBEDDINGS_FILE and storage.exists(uri):
        return "embeddings"
    if storage.exists(storage.join(uri, layout.EMBEDDINGS_FILE)):
        return "embeddings"
    if _csv_files(uri):
        return "csv"
    if not storage.exists(uri):
        raise InputDataError(f"{uri}: nothing there")
    raise InputDataError(f"{uri}: neither a preprocessed dataset (sequences/*.parquet), an embeddings folder "
                         f"({layout.EMBEDDINGS_FILE}) nor a folder of per-cell .csv files")


def _csv_files(uri: str) -> dict[str, str]:
    """cell -> URI of the ``*.csv`` files directly in ``uri`` (not in subfolders), like the original."""
    out = {}
    for f in storage.list_files(uri, suffix=".csv"):
        rel = layout.relative_to(f, uri)
        if "/" not in rel:
            out[layout.cell_key_of(rel)] = f
    return out


def cell_weights(input_uri: str, kind: str) -> tuple[dict[str, int], dict[str, int], str]:
    """(weight per cell, rows per cell, weight unit)."""
    import pyarrow.compute as pc

    weights: dict[str, int] = {}
    rows: dict[str, int] = {}
    if kind == "sequences":
        for f in layout.sequence_files(input_uri):
            t = storage.read_parquet(f, ["cell_key", "n_tokens"])
            if t.num_rows == 0:
                continue
            g = t.group_by("cell_key").aggregate([("n_tokens", "sum"), ("n_tokens", "count")])
            for k, w, n in zip(g["cell_key"].to_pylist(), g["n_tokens_sum"].to_pylist(),
                               g["n_tokens_count"].to_pylist()):
                weights[k] = weights.get(k, 0) + int(w)
                rows[k] = rows.get(k, 0) + int(n)
        return weights, rows, "tokens"
    if kind == "embeddings":
        t = storage.read_parquet(layout.embeddings_file(input_uri), ["cell_key"])
        counts = pc.value_counts(t.column("cell_key").combine_chunks())
        for item in counts.to_pylist():
            weights[str(item["values"])] = int(item["counts"])
        return weights, dict(weights), "rows"
    for cell, f in _csv_files(input_uri).items():
        weights[cell] = int(storage.stat(f)["size"])
        rows[cell] = 1
    return weights, rows, "bytes"


# ------------------------------------------------------------------------------------------ assignment
def generate_split(weights: dict[str, int], ratio_train: float, ratio_validation: float,
                   seed: int) -> dict[str, list[str]]:
    """The original's greedy fill over a seeded shuffle of the cells (sorted first, so the result depends
    only on the cells, their weights and the seed)."""
    cells = sorted(weights)
    random.Random(seed).shuffle(cells)
    total = sum(weights.values())
    train_target, val_target = total * ratio_train, total * ratio_validation
    out: dict[str, list[str]] = {s: [] for s in layout.SUBSETS}
    cur_train = cur_val = 0
    for cell in cells:
        if cur_train < train_target:
            out["train"].append(cell)
            cur_train += weights[cell]
        elif cur_val < val_target:
            out["validation"].append(cell)
            cur_val += weights[cell]
        else:
            out["test"].append(cell)
    return out


def _check_against_data(assignment: dict[str, list[str]], weights: dict[str, int], source: str) -> list[str]:
    placed = [c for cells in assignment.values() for c in cells]
    missing = [c for c in placed if c not in weights]
    if missing:
        raise InputDataError(
            f"{source} names {len(missing)} cell(s) the data does not have: {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''} (the data has {len(weights)} cells, e.g. "
            f"{sorted(weights)[:5]})")
    placed_set = set(placed)
    return sorted(c for c in weights if c not in placed_set)


# ------------------------------------------------------------------------------------------------ write
def _write_sequences(input_uri: str, staging: Path, subset_of: dict[str, str], subsets: list[str],
                     progress: bool) -> dict[str, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from msenc_lib.preprocess import PARQUET_OPTIONS

    files = layout.sequence_files(input_uri)
    counters = {s: 0 for s in subsets}
    stats: dict[str, dict[str, Any]] = {s: {"n_sequences": 0, "n_tokens": 0, "cells": []} for s in subsets}
    schema = None
    for s in subsets:
        (staging / s / layout.SEQUENCES_DIR).mkdir(parents=True)
    for f in progress_bar(files, len(files), "splitting shards", progress, unit="shard"):
        with storage.local_copy(f) as local:
            pf = pq.ParquetFile(str(local))
            schema = pf.schema_arrow
            writers: dict[str, Any] = {}
            try:
                for rg in range(pf.num_row_groups):
                    t = pf.read_row_group(rg)
                    keys = t.column("cell_key")
                    present = pc.unique(keys).to_pylist()
                    for s in subsets:
                        mine = [c for c in present if subset_of.get(c) == s]
                        if not mine:
                            continue
                        part = t.filter(pc.is_in(keys, pa.array(mine, pa.string())))
                        if s not in writers:
                            path = staging / s / layout.SEQUENCES_DIR / layout.shard_name(counters[s])
                            counters[s] += 1
                            writers[s] = pq.ParquetWriter(str(path), schema, **PARQUET_OPTIONS)
                        writers[s].write_table(part, row_group_size=max(1, part.num_rows))
                        stats[s]["n_sequences"] += part.num_rows
                        stats[s]["n_tokens"] += int(pc.sum(part.column("n_tokens")).as_py() or 0)
                        stats[s]["cells"] += [c for c in mine if c not in stats[s]["cells"][-len(mine):]]
            finally:
                for w in writers.values():
                    w.close()
    for s in subsets:  # an empty subset still gets a (0-row) shard, so readers find the schema
        if counters[s] == 0 and schema is not None:
            pq.write_table(schema.empty_table(), str(staging / s / layout.SEQUENCES_DIR / layout.shard_name(0)),
                           **PARQUET_OPTIONS)
    return stats


def _write_embeddings(input_uri: str, staging: Path, subset_of: dict[str, str],
                      subsets: list[str]) -> dict[str, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = storage.read_parquet(layout.embeddings_file(input_uri))
    keys = table.column("cell_key")
    stats: dict[str, dict[str, Any]] = {}
    for s in subsets:
        mine = sorted(c for c, sub in subset_of.items() if sub == s)
        part = table.filter(pc.is_in(keys, pa.array(mine, pa.string())))
        (staging / s).mkdir(parents=True)
        pq.write_table(part.replace_schema_metadata(table.schema.metadata), str(staging / s / layout.EMBEDDINGS_FILE),
                       compression="zstd")
        stats[s] = {"n_rows": part.num_rows, "cells": mine}
    return stats


def _copy_cell_csvs(files: dict[str, str], staging: Path, subset_of: dict[str, str], subsets: list[str],
                    sub_dir: str, merge: bool) -> None:
    """Copy per-cell CSVs into OUT/<subset>/<sub_dir>/; with ``merge`` also OUT/<subset>.csv (one header)."""
    for s in subsets:
        target = staging / s / sub_dir if sub_dir else staging / s
        target.mkdir(parents=True, exist_ok=True)
        cells = [c for c in sorted(files) if subset_of.get(c) == s]
        merged = open(staging / f"{s}.csv", "wb") if merge else None
        header: bytes | None = None
        try:
            for cell in cells:
                data = storage.read_bytes(files[cell])
                (target / storage.basename(files[cell])).write_bytes(data)
                if merged is None:
                    continue
                first, _, body = data.partition(b"\n")
                if header is None:
                    header = first
                    merged.write(first + b"\n")
                elif first != header:
                    raise InputDataError(f"{files[cell]}: header differs from the other CSVs of subset {s!r}; "
                                         "cannot merge (pass --merge-files false)")
                if body:
                    merged.write(body if body.endswith(b"\n") else body + b"\n")
        finally:
            if merged is not None:
                merged.close()


def run_split(config: SplitConfig, input_uri: str, output_uri: str, split_config_uri: str | None = None,
              overwrite: bool = False) -> SplitResult:
    """Split the cells of ``input_uri`` (see the module doc) into ``output_uri``."""
    from msenc_lib import __version__

    start = time.perf_counter()
    input_uri = str(input_uri).rstrip("/") if not str(input_uri).endswith(".parquet") else str(input_uri)
    kind = detect_input(input_uri)
    weights, rows, unit = cell_weights(input_uri, kind)
    if not weights:
        raise InputDataError(f"{input_uri}: no cells found")
    warnings: list[str] = []
    if config.preset and split_config_uri:
        raise ConfigError("give either --preset or --split-config/--config, not both")
    if config.preset:
        source = f"preset {config.preset}"
        assignment = resolve_preset(config.preset, {c: None for c in weights}, allow_missing=config.allow_missing_cells,
                                    warn=warnings.append).subsets
        how = f"preset:{config.preset}"
    elif split_config_uri:
        source = f"split config {split_config_uri}"
        assignment = layout.read_split_config(str(split_config_uri))
        how = f"file:{split_config_uri}"
    else:
        source = "generated split"
        assignment = generate_split(weights, config.ratio_train, config.ratio_validation, config.seed)
        how = "generated"
    unplaced = _check_against_data(assignment, weights, source)
    if unplaced:
        warnings.append(f"{len(unplaced)} cell(s) of the data are not placed by the {source} and are left out: "
                        f"{unplaced[:20]}{' ...' if len(unplaced) > 20 else ''}")
    subsets = list(assignment)
    subset_of = {c: s for s, cells in assignment.items() for c in cells}
    if kind != "csv" and "merge_files" in config.model_fields_set:
        warnings.append(f"--merge-files only applies to a folder of per-cell CSVs; the {kind} input is written as "
                        "one table per subset anyway (option ignored)")

    with storage.publish(str(output_uri), overwrite=overwrite) as staging:
        (staging / layout.SPLIT_CONFIG).write_text(layout.split_config_document(assignment))
        details: dict[str, dict[str, Any]] = {}
        if kind == "sequences":
            details = _write_sequences(input_uri, staging, subset_of, subsets, config.progress)
            tok = storage.join(input_uri, layout.TOKENIZER_DIR)
            if storage.exists(tok):
                with storage.local_copy(tok) as local:
                    shutil.copytree(local, staging / layout.TOKENIZER_DIR)
            source_manifest = _maybe_json(storage.join(input_uri, layout.MANIFEST))
            for s in subsets:
                sub = {"format": layout.DATASET_FORMAT, "format_version": layout.DATASET_FORMAT_VERSION, "subset": s,
                       "mode": (source_manifest or {}).get("mode"), "tokenizer": f"../{layout.TOKENIZER_DIR}",
                       "n_cells": len(details[s]["cells"]), "n_sequences": details[s]["n_sequences"],
                       "n_tokens": details[s]["n_tokens"], "cells": details[s]["cells"]}
                layout.write_json(staging / s / layout.MANIFEST, sub)
        elif kind == "embeddings":
            details = _write_embeddings(input_uri, staging, subset_of, subsets)
            csv_dir = storage.join(input_uri, layout.EMBEDDINGS_CSV_DIR) if not input_uri.endswith(".parquet") else None
            csv_files = _csv_files(csv_dir) if csv_dir and storage.exists(csv_dir) else {}
            if csv_files:
                _copy_cell_csvs(csv_files, staging, subset_of, subsets, layout.EMBEDDINGS_CSV_DIR, merge=False)
        else:
            _copy_cell_csvs(_csv_files(input_uri), staging, subset_of, subsets, "", merge=config.merge_files)
        infos = {s: SubsetInfo(n_cells=len(assignment[s]), weight=sum(weights[c] for c in assignment[s]),
                               n_rows=sum(rows[c] for c in assignment[s])) for s in subsets}
        manifest = {
            "format": layout.SPLIT_FORMAT,
            "format_version": 1,
            "created_by": f"msenc {__version__} split",
            "input_uri": input_uri,
            "input_kind": kind,
            "weight_unit": unit,
            "assignment": how,
            "seed": config.seed if how == "generated" else None,
            "ratios": {"train": config.ratio_train, "validation": config.ratio_validation} if how == "generated"
            else None,
            "subsets": {s: {**infos[s].model_dump(), "cells": assignment[s]} for s in subsets},
            "unplaced_cells": unplaced,
            "warnings": warnings,
        }
        layout.write_json(staging / layout.MANIFEST, manifest)
    for w in warnings:
        log.warning(w)
    return SplitResult(output_uri=str(output_uri), input_kind=kind, weight_unit=unit, assignment=how,
                       subsets=infos, unplaced_cells=unplaced, warnings=warnings,
                       split_config_uri=storage.join(str(output_uri), layout.SPLIT_CONFIG),
                       seconds=round(time.perf_counter() - start, 3))


def _maybe_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


__all__ = ["SplitConfig", "SplitResult", "SubsetInfo", "run_split", "generate_split", "severson_split", "detect_input",
           "cell_weights"]
