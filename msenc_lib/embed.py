"""``msenc embed``: one vector per (cell, cycle) from a trained encoder, with the targets joined.

Input is an embedding-mode preprocessed dataset (one token sequence per cell and cycle). Sequences longer
than the model's context are cut into chunks at time-step boundaries; pooling runs over real tokens only
(padding never enters a vector, unlike the original). Targets are the max per (cell, cycle) of the unified
columns, as the original. Output: ``embeddings.parquet`` (+ ``csv/<cell>.csv`` in the original layout).

At scale: the dataset is read and embedded one shard (whole cells) at a time and each shard's rows are written
as they are done (Parquet row groups, CSV appends), so memory holds one shard, not the dataset; within a shard,
chunks of similar length share a forward pass (``batch_tokens``); inference runs under bf16 autocast where bf16
is native (CUDA, CPUs with AMX/AVX512-BF16) and through compiled layers at long contexts.
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
from msenc_lib.progress import progress_bar

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
    bf16: bool = Field(True, description="bfloat16 autocast where bf16 is native (CUDA; CPUs with AMX or "
                       "AVX512-BF16); false: float32")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model's layers (eager if "
                                                  "compiling fails); auto: on for contexts of 16,384+ tokens")
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
    precision: str
    compiled: bool


@dataclass
class Chunk:
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


def token_batches(chunks: list[Chunk], batch_tokens: int) -> Iterator[list[Chunk]]:
    """Length-sorted batches whose padded size stays within the token budget."""
    order = sorted(chunks, key=lambda c: len(c.ids), reverse=True)
    batch: list[Chunk] = []
    for c in order:
        width = len(batch[0].ids) if batch else len(c.ids)
        if batch and width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(c)
    if batch:
        yield batch


def pool_chunks(hidden, mask, mode: str):
    """One batch of chunks' token states (B, L, D) pooled over their real tokens (``mask``), differentiably: per
    chunk its share of its row's vector (mean: the sum, max: the max, first: the first token) and its real-token
    count. A row's vector merges its chunks' shares: sum of sums / sum of counts, max of maxes, the first
    chunk's share."""
    if mode == "mean":
        part = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(1)
    elif mode == "max":
        part = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    else:
        part = hidden[:, 0]
    return part, mask.sum(1)


class _Pooler:
    """Accumulates token states per output row (numbered from ``first_row``) across chunks and batches."""

    def __init__(self, n_rows: int, dim: int, mode: str, first_row: int = 0):
        self.mode, self.first_row = mode, first_row
        fill = -np.inf if mode == "max" else 0.0
        self.acc = np.full((n_rows, dim), fill, dtype=np.float64)
        self.count = np.zeros(n_rows, dtype=np.int64)

    def add(self, rows: list[int], hidden, mask, firsts: list[bool]) -> None:
        part, n = pool_chunks(hidden, mask, self.mode)
        part, n = part.double().cpu().numpy(), n.cpu().numpy()
        for i, r in enumerate(r - self.first_row for r in rows):
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


def load_inputs(config: EmbedConfig, data_dir, model_dir):
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


def _shard_chunks(shard, first_row: int, meta, context: int, sep_id: int | None, vocab: int) -> list[Chunk]:
    """The chunks of every sequence of one shard; rows are numbered from ``first_row`` on (the dataset's order)."""
    import pyarrow.parquet as pq

    chunks: list[Chunk] = []
    for i, ids in enumerate(pq.read_table(shard, columns=["input_ids"]).column("input_ids").to_pylist()):
        row = first_row + i
        arr = np.asarray(ids, dtype=np.int64)
        if len(arr) == 0:
            raise InputDataError(f"{shard}: empty sequence for {meta.iloc[row].to_dict()}")
        if arr.max() >= vocab or arr.min() < 0:
            raise InputDataError(f"{shard}: token id {int(arr.max())} outside the model's vocabulary "
                                 f"of {vocab} for {meta.iloc[row].to_dict()}")
        pieces = chunk_sequence(arr, context, sep_id)
        chunks.extend(Chunk(row, piece, k == 0) for k, piece in enumerate(pieces))
    return chunks


class _Writer:
    """Appends finished rows to embeddings.parquet (one row group per shard) and to csv/<cell>.csv."""

    def __init__(self, staging, csv: bool):
        self.path = staging / layout.EMBEDDINGS_FILE
        self.csv_dir = staging / layout.EMBEDDINGS_CSV_DIR if csv else None
        self.parquet = None
        self.csv_started: set[str] = set()
        if self.csv_dir is not None:
            self.csv_dir.mkdir()

    def write(self, table, id_column: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, arrow.schema)
        self.parquet.write_table(arrow.cast(self.parquet.schema))
        if self.csv_dir is not None:
            for cell, group in table.groupby(id_column, sort=True):
                new = cell not in self.csv_started
                group.assign(index=group[id_column]).to_csv(self.csv_dir / f"{cell}.csv", index=False, header=new,
                                                            mode="w" if new else "a")
                self.csv_started.add(cell)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


def run_embed(config: EmbedConfig, data_uri: str, model_uri: str, unified_uri: str, output_uri: str,
              overwrite: bool = False) -> EmbedResult:
    """Embed every (cell, cycle) sequence of ``data_uri`` with the model at ``model_uri``."""
    import pandas as pd
    import pyarrow.parquet as pq
    import torch
    from msenc_lib import storage
    from msenc_lib.model.hardware import compile_pays, native_bf16
    from msenc_lib.tokenizer import special_token_ids

    start = time.perf_counter()
    with storage.local_copy(data_uri) as data_dir, storage.local_copy(model_uri) as model_dir:
        model, tokenizer, shards = load_inputs(config, data_dir, model_dir)
        keys = [config.id_column, config.time_column]
        metas = [pq.read_table(s, columns=keys).to_pandas() for s in shards]
        meta = pd.concat(metas, ignore_index=True)
        duplicated = meta.duplicated(keys)
        if duplicated.any():
            dup = meta[duplicated].iloc[0]
            raise InputDataError(f"{data_uri}: more than one sequence for {config.id_column}={dup[config.id_column]}, "
                                 f"{config.time_column}={dup[config.time_column]}")
        targets = _targets(config, unified_uri, sorted(meta[config.id_column].unique()))
        unmatched = meta.merge(targets[keys], on=keys, how="left", indicator=True)["_merge"] == "left_only"
        if unmatched.any():
            first = meta[unmatched.to_numpy()].iloc[0]
            raise InputDataError(f"{unified_uri}: no unified rows for {int(unmatched.sum())} embedded (cell, cycle) "
                                 f"pair(s), e.g. {config.id_column}={first[config.id_column]}, {config.time_column}="
                                 f"{first[config.time_column]}: is this the unified data the dataset was preprocessed "
                                 "from?")
        device = resolve_device(config.device)
        model.to(device).eval()
        context = int(np.prod(model.config.seq_lens))
        compiled = compile_pays(config.compile, device, context)
        if compiled:
            model.compile_layers()
        bf16 = config.bf16 and native_bf16(device)
        sep_id = special_token_ids(tokenizer).get("sep")
        dim = int(model.config.hidden_sizes[-1])
        pad_id, vocab = model.config.pad_token_id, model.config.vocab_size
        columns = [f"{layout.VALUE_PREFIX}{i}" for i in range(dim)]
        n_tokens = n_chunks = 0
        with storage.publish(output_uri, overwrite=overwrite) as staging, torch.inference_mode(), \
                progress_bar(total=len(meta), desc="embedding", unit="cycle", enabled=config.progress) as bar:
            writer = _Writer(staging, config.csv)
            try:
                first_row = 0
                for shard, shard_meta in zip(shards, metas):
                    chunks = _shard_chunks(shard, first_row, meta, context, sep_id, vocab)
                    pooler = _Pooler(len(shard_meta), dim, config.pooling, first_row)
                    for batch in token_batches(chunks, config.batch_tokens):
                        ids, mask = pad_batch(batch, pad_id)
                        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                        pooler.add([c.row for c in batch], hidden.float(), mask.to(device), [c.first for c in batch])
                    n_tokens += sum(len(c.ids) for c in chunks)
                    n_chunks += len(chunks)
                    rows = pd.concat([shard_meta.reset_index(drop=True),
                                      pd.DataFrame(pooler.result(), columns=columns)], axis=1)
                    rows = rows.merge(targets, on=keys, how="left", validate="one_to_one")
                    rows = rows[[*keys, *config.targets, *columns]].sort_values(keys, kind="stable")
                    writer.write(rows, config.id_column)
                    first_row += len(shard_meta)
                    bar.update(len(shard_meta))
            finally:
                writer.close()
            config.save(staging / layout.EMBED_CONFIG)
    seconds = time.perf_counter() - start
    return EmbedResult(output_uri=str(output_uri), n_rows=len(meta), n_cells=int(meta[config.id_column].nunique()),
                       dim=dim, n_tokens=int(n_tokens), n_chunks=n_chunks, seconds=round(seconds, 3),
                       tokens_per_s=round(n_tokens / max(seconds, 1e-9), 1), device=device,
                       precision="bf16" if bf16 else "fp32", compiled=compiled)


def pad_batch(batch: list[Chunk], pad_id: int):
    """Right-padded ids and the real-token mask of one batch."""
    import torch

    width = len(batch[0].ids)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, c in enumerate(batch):
        ids[i, : len(c.ids)] = torch.from_numpy(c.ids)
        mask[i, : len(c.ids)] = True
    return ids, mask
