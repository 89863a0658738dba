"""``msenc embed``: one vector per (cell, cycle) from a trained encoder, with the targets joined.

Input is an embedding-mode preprocessed dataset (one token sequence per cell and cycle). Sequences longer
than the model's context are cut into chunks at time-step boundaries; pooling runs over real tokens only
(padding never enters a vector, unlike the original). Targets are the max per (cell, cycle) of the unified
columns, as the original. Output: ``embeddings.parquet`` (+ ``csv/<cell>.csv`` in the original layout).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, Field

from msenc_lib import layout
from msenc_lib.config import StageConfig
from msenc_lib.data.schema import CHARGE_POLICY_COLUMNS
from msenc_lib.errors import InputDataError

log = logging.getLogger(__name__)

DEFAULT_TARGETS = [*CHARGE_POLICY_COLUMNS, "charge_capacity"]


class EmbedConfig(StageConfig):
    stage = "embed"
    renamed = {"name_id": "id_column", "time_id": "time_column"}  # the original embedd CLI's names

    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                               description="unified columns joined to each row (max per cell and cycle)")
    pooling: Literal["mean", "max", "first"] = Field(
        "mean", description="how token states become one vector: mean or max over the real tokens, or the "
        "first token")
    batch_tokens: int = Field(262_144, gt=0, description="token budget of one forward pass (padding included); "
                              "sequences of similar length are batched together")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, then mps, then cpu")
    bf16: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    id_column: str = Field("cell_key", description="cell id column")
    time_column: str = Field("cycle_number", description="cycle column")
    csv: bool = Field(False, description="also write csv/<cell>.csv in the original layout "
                      "(cell_key, cycle_number, targets, val_0..val_{d-1}, index)")
    progress: bool = Field(True, description="progress bar on stderr")


class EmbedResult(BaseModel):
    output_uri: str
    n_rows: int
    n_cells: int
    dim: int
    n_tokens: int
    n_chunks: int
    seconds: float
    tokens_per_s: float
    device: str


@dataclass
class _Chunk:
    row: int
    ids: np.ndarray
    first: bool  # the row's first chunk (for "first" pooling)


def chunk_sequence(ids: np.ndarray, context: int, sep_id: int | None) -> list[np.ndarray]:
    """Cut a token sequence into pieces of at most ``context`` tokens, each ending after a separator when
    one lies in the window (so time steps stay whole); a window without a separator is cut hard."""
    pieces, start, n = [], 0, len(ids)
    while n - start > context:
        end = start + context
        if sep_id is not None:
            seps = np.flatnonzero(ids[start:end] == sep_id)
            if len(seps):
                end = start + int(seps[-1]) + 1
        pieces.append(ids[start:end])
        start = end
    pieces.append(ids[start:])
    return pieces


def _batches(chunks: list[_Chunk], batch_tokens: int) -> Iterator[list[_Chunk]]:
    """Length-sorted batches whose padded size stays within the token budget."""
    order = sorted(chunks, key=lambda c: len(c.ids), reverse=True)
    batch: list[_Chunk] = []
    for c in order:
        width = len(batch[0].ids) if batch else len(c.ids)
        if batch and width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(c)
    if batch:
        yield batch


class _Pooler:
    """Accumulates token states per output row across chunks and batches."""

    def __init__(self, n_rows: int, dim: int, mode: str):
        self.mode = mode
        fill = -np.inf if mode == "max" else 0.0
        self.acc = np.full((n_rows, dim), fill, dtype=np.float64)
        self.count = np.zeros(n_rows, dtype=np.int64)

    def add(self, rows: list[int], hidden, mask, firsts: list[bool]) -> None:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "mean":
            part = (hidden * m).sum(1).double().cpu().numpy()
        elif self.mode == "max":
            part = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).double().cpu().numpy()
        else:
            part = hidden[:, 0].double().cpu().numpy()
        n = mask.sum(1).cpu().numpy()
        for i, r in enumerate(rows):
            if self.mode == "mean":
                self.acc[r] += part[i]
            elif self.mode == "max":
                self.acc[r] = np.maximum(self.acc[r], part[i])
            elif firsts[i]:
                self.acc[r] = part[i]
            self.count[r] += int(n[i])

    def result(self) -> np.ndarray:
        if self.mode == "mean":
            return (self.acc / np.maximum(self.count, 1)[:, None]).astype(np.float32)
        return self.acc.astype(np.float32)


def resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _load_inputs(config: EmbedConfig, data_dir, model_dir):
    """Model, the dataset's manifest and tokenizer, with the checks that need no inference."""
    import pyarrow.parquet as pq
    from transformers import AutoModel, AutoTokenizer

    import msenc_lib.model  # noqa: F401  (registers the msenc model classes with the Auto* factories)

    manifest = layout.read_dataset_manifest(str(data_dir))
    if manifest.get("mode") != "embedding":
        raise InputDataError(
            f"{data_dir}: the dataset was preprocessed in {manifest.get('mode')!r} mode (one sequence per cell); "
            "embedding needs one sequence per cell and cycle: run 'msenc preprocess --is-training-shuffled false'")
    if not layout.is_model(str(model_dir)):
        raise InputDataError(f"{model_dir}: no {layout.MODEL_CONFIG} - not a saved model (expected save_pretrained "
                             "output)")
    model = AutoModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(data_dir / layout.TOKENIZER_DIR)
    if len(tokenizer) != model.config.vocab_size or tokenizer.pad_token_id != model.config.pad_token_id:
        raise InputDataError(
            f"the model's vocabulary ({model.config.vocab_size} tokens, pad id {model.config.pad_token_id}) does "
            f"not match the dataset's tokenizer ({len(tokenizer)} tokens, pad id {tokenizer.pad_token_id}): "
            "embed with the tokenizer the model was trained with")
    shards = layout.sequence_files(str(data_dir))
    if not shards:
        raise InputDataError(f"{data_dir}/{layout.SEQUENCES_DIR}: no Parquet shards")
    columns = pq.read_schema(shards[0]).names
    for col in (config.id_column, config.time_column, "input_ids"):
        if col not in columns:
            raise InputDataError(f"{shards[0]}: column {col!r} missing (columns: {columns})")
    return model, tokenizer, shards


def _targets(config: EmbedConfig, unified_uri: str, cells: list[str]):
    """Max of each target per (cell, cycle), from the unified data of the given cells."""
    from msenc_lib.data.unified import iter_unified_cells, read_unified

    _, first = next(iter_unified_cells(unified_uri, None, cells[:1]), (None, None))
    if first is None:
        raise InputDataError(f"{unified_uri}: none of the dataset's cells (e.g. {cells[:3]}) is in the unified data")
    missing = [c for c in [config.id_column, config.time_column, *config.targets] if c not in first.column_names]
    if missing:
        raise InputDataError(f"{unified_uri}: target column(s) {missing} absent from the unified data "
                             f"(columns: {first.column_names})")
    keys = [config.id_column, config.time_column]
    table = read_unified(unified_uri, columns=keys + config.targets, cells=cells)
    return table.groupby(keys, sort=True)[config.targets].max().reset_index()


def run_embed(config: EmbedConfig, data_uri: str, model_uri: str, unified_uri: str, output_uri: str,
              overwrite: bool = False) -> EmbedResult:
    """Embed every (cell, cycle) sequence of ``data_uri`` with the model at ``model_uri``."""
    import pandas as pd
    import pyarrow.parquet as pq
    import torch
    from tqdm.auto import tqdm

    from msenc_lib import storage
    from msenc_lib.tokenizer import special_token_ids

    start = time.perf_counter()
    with storage.local_copy(data_uri) as data_dir, storage.local_copy(model_uri) as model_dir:
        model, tokenizer, shards = _load_inputs(config, data_dir, model_dir)
        meta = pd.concat([pq.read_table(s, columns=[config.id_column, config.time_column]).to_pandas() for s in shards],
                         ignore_index=True)
        targets = _targets(config, unified_uri, sorted(meta[config.id_column].unique()))
        device = resolve_device(config.device)
        model.to(device).eval()
        context = int(np.prod(model.config.seq_lens))
        sep_id = special_token_ids(tokenizer).get("sep")
        dim = int(model.config.hidden_sizes[-1])
        pooler = _Pooler(len(meta), dim, config.pooling)
        chunks: list[_Chunk] = []
        row = 0
        vocab = model.config.vocab_size
        for shard in shards:
            ids_col = pq.read_table(shard, columns=["input_ids"]).column("input_ids").to_pylist()
            for ids in ids_col:
                arr = np.asarray(ids, dtype=np.int64)
                if len(arr) == 0:
                    raise InputDataError(f"{shard}: empty sequence for {meta.iloc[row].to_dict()}")
                if arr.max() >= vocab or arr.min() < 0:
                    raise InputDataError(f"{shard}: token id {int(arr.max())} outside the model's vocabulary "
                                         f"of {vocab} for {meta.iloc[row].to_dict()}")
                pieces = chunk_sequence(arr, context, sep_id)
                chunks.extend(_Chunk(row, piece, k == 0) for k, piece in enumerate(pieces))
                row += 1
        n_tokens = sum(len(c.ids) for c in chunks)
        autocast = device == "cuda" and config.bf16
        pad_id = model.config.pad_token_id
        with torch.inference_mode(), tqdm(total=n_tokens, desc="embedding", unit="tok", unit_scale=True,
                                          disable=not config.progress) as bar:
            for batch in _batches(chunks, config.batch_tokens):
                width = len(batch[0].ids)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.bool)
                for i, c in enumerate(batch):
                    ids[i, : len(c.ids)] = torch.from_numpy(c.ids)
                    mask[i, : len(c.ids)] = True
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                pooler.add([c.row for c in batch], hidden.float(), mask.to(device), [c.first for c in batch])
                bar.update(sum(len(c.ids) for c in batch))
        vectors = pooler.result()

    values = pd.DataFrame(vectors, columns=[f"{layout.VALUE_PREFIX}{i}" for i in range(dim)])
    table = pd.concat([meta, values], axis=1)
    if table.duplicated([config.id_column, config.time_column]).any():
        dup = table[table.duplicated([config.id_column, config.time_column])].iloc[0]
        raise InputDataError(f"{data_uri}: more than one sequence for {config.id_column}={dup[config.id_column]}, "
                             f"{config.time_column}={dup[config.time_column]}")
    table = table.merge(targets, on=[config.id_column, config.time_column], how="left", validate="one_to_one",
                        indicator=True)
    unmatched = table[table["_merge"] == "left_only"]
    if len(unmatched):
        first = unmatched.iloc[0]
        raise InputDataError(f"{unified_uri}: no unified rows for {len(unmatched)} embedded (cell, cycle) pair(s), "
                             f"e.g. {config.id_column}={first[config.id_column]}, "
                             f"{config.time_column}={first[config.time_column]}:"
                             " is this the unified data the dataset was preprocessed from?")
    table = table[[config.id_column, config.time_column, *config.targets, *values.columns]]
    table = table.sort_values([config.id_column, config.time_column], kind="stable").reset_index(drop=True)

    with storage.publish(output_uri, overwrite=overwrite) as staging:
        table.to_parquet(staging / layout.EMBEDDINGS_FILE, index=False)
        if config.csv:
            csv_dir = staging / layout.EMBEDDINGS_CSV_DIR
            csv_dir.mkdir()
            for cell, group in table.groupby(config.id_column, sort=True):
                group.assign(index=group[config.id_column]).to_csv(csv_dir / f"{cell}.csv", index=False)
        config.save(staging / layout.EMBED_CONFIG)
    seconds = time.perf_counter() - start
    return EmbedResult(output_uri=str(output_uri), n_rows=len(table), n_cells=int(table[config.id_column].nunique()),
                       dim=dim, n_tokens=int(n_tokens), n_chunks=len(chunks), seconds=round(seconds, 3),
                       tokens_per_s=round(n_tokens / max(seconds, 1e-9), 1), device=device)
