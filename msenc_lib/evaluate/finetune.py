"""The ``finetuned/lstm`` row: the pretrained encoder and the LSTM head trained end to end (``finetune``).

Per cell, the cycles ``k, 2k, ... <= n`` (k = ``finetune_stride``; a missing cycle takes the latest sequence of
its k-cycle window) are read from the embedding-mode token sequences; each cycle goes through the encoder and is
pooled as ``msenc embed`` pools it (:func:`msenc_lib.embed.pool_chunks`, same chunking at time-step
boundaries, padding never pooled); the cycle vectors go through :class:`~.sequence.LSTMHead`, read out at the
row's cycle. Per seed:

1. the head is fitted on the frozen encoder's vectors as the ``embedding_seq/lstm`` row is (up to ``seq_epochs``
   full-batch steps, features standardised with the train cells' frozen vectors), keeping the step with the
   lowest validation error: a head that has memorised the train cells leaves the encoder no gradient;
2. encoder and head are trained together on the train cells (``finetune_batch_cells`` per AdamW step, the
   encoder at ``finetune_lr``, the head at ``seq_lr``), one validation RMSE per epoch;
3. the epoch with the lowest validation RMSE (epoch 0 = step 1's head on the frozen encoder) predicts; without
   validation rows or with ``finetune_early_stopping`` off (steps 1 and 2 then run all their epochs), the last
   epoch does.

Float32 throughout, seeded (``torch.manual_seed``, the cell order from numpy): a seed gives the same fit on the
same machine. The model folder is only read; every seed starts from the loaded weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from msenc_lib import layout, storage
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.evaluate.config import EvaluateConfig
from msenc_lib.evaluate.sequence import LSTMHead, SequenceFit, standardisation, train_full_batch
from msenc_lib.progress import progress_bar

Row = tuple[str, float]


def embeddings_pooling(embeddings_uri: str) -> str | None:
    """The pooling recorded beside the embeddings (their ``embed_config.yaml``), if any."""
    import yaml

    uri = str(embeddings_uri)
    folder = (uri.rsplit("/", 1)[0] if "/" in uri else ".") if uri.endswith(".parquet") else uri
    path = storage.join(folder, layout.EMBED_CONFIG)
    if not storage.exists(path):
        return None
    doc = yaml.safe_load(storage.read_text(path)) or {}
    return doc.get("pooling") if isinstance(doc, dict) else None


@dataclass
class _Cell:
    cycles: np.ndarray  # the cycles that have a sequence, sorted
    ids: list[np.ndarray]  # their token ids


class FineTuner:
    """The model and the needed token sequences of ``cells``, read once; :meth:`fit_predict` per seed."""

    def __init__(self, cfg: EvaluateConfig, model_uri: str, sequences_uri: str, cells: list[str], last_cycle: int,
                 pooling: str | None):
        import torch

        from msenc_lib.embed import EmbedConfig, load_inputs, resolve_device
        from msenc_lib.tokenizer import special_token_ids

        self.cfg = cfg
        mode = cfg.finetune_pooling or pooling or "mean"
        try:
            embed_cfg = EmbedConfig(pooling=mode, progress=False)
        except ValueError as e:
            raise ConfigError(f"finetune_pooling {mode!r}: not a pooling mode of embed ({e.errors()[0]['msg']})"
                              ) from None
        self.pooling = embed_cfg.pooling
        self.device = resolve_device(cfg.finetune_device)
        self.model_uri, self.sequences_uri = str(model_uri), str(sequences_uri)
        with storage.local_copy(model_uri) as model_dir, storage.local_copy(sequences_uri) as data_dir:
            model, tokenizer, shards = load_inputs(embed_cfg, data_dir, model_dir)
            self.cells = self._read(shards, embed_cfg.id_column, embed_cfg.time_column, cells, last_cycle,
                                    model.config.vocab_size)
        model.float().eval()
        for p in model.parameters():
            p.requires_grad_(True)
        self.model = model
        self.context = int(np.prod(model.config.seq_lens))
        self.sep_id = special_token_ids(tokenizer).get("sep")
        self.pad_id = model.config.pad_token_id
        self.dim = int(model.config.hidden_sizes[-1])
        self._frozen: dict[tuple[str, ...], torch.Tensor] = {}  # the pretrained encoder's vectors per cell set

    # ------------------------------------------------------------------------------------------ inputs
    def _read(self, shards: list[str], id_col: str, time_col: str, cells: list[str], last_cycle: int,
              vocab: int) -> dict[str, _Cell]:
        """Per cell, the latest sequence of each stride window (c-k, c] up to ``last_cycle`` (the only ones a
        row may read)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        k = self.cfg.finetune_stride
        found: dict[str, list[tuple[float, np.ndarray]]] = {c: [] for c in cells}
        seen: set[str] = set()
        for shard in shards:
            seen.update(str(c) for c in pc.unique(pq.read_table(shard, columns=[id_col]).column(id_col)).to_pylist())
            table = pq.read_table(shard, columns=[id_col, time_col, "input_ids"],
                                  filters=[(id_col, "in", list(cells)), (time_col, ">=", self.cfg.min_cycle),
                                           (time_col, "<=", last_cycle)])
            names = table.column(id_col).to_pylist()
            cyc = table.column(time_col).to_numpy().astype(np.float64)
            latest: dict[tuple[str, float], int] = {}
            for i, (cell, end) in enumerate(zip(names, np.ceil(cyc / k) * k)):
                j = latest.get((cell, end))
                if j is None or cyc[j] < cyc[i]:
                    latest[(cell, end)] = i
            idx = sorted(latest.values())
            for i, tokens in zip(idx, table.column("input_ids").take(idx).to_pylist()):
                arr = np.asarray(tokens, dtype=np.int64)
                if not arr.size or arr.max() >= vocab or arr.min() < 0:
                    raise InputDataError(f"{shard}: {id_col}={names[i]}, {time_col}={cyc[i]:g}: "
                                         + ("empty token sequence" if not arr.size else
                                            f"token id {int(arr.max())} outside the model's vocabulary of {vocab}"))
                found[names[i]].append((cyc[i], arr))
        missing = [c for c in cells if c not in seen]
        if missing:
            raise InputDataError(f"finetune: the token sequences {self.sequences_uri} lack {len(missing)} cell(s) "
                                 f"of the split: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        out = {}
        for cell, items in found.items():
            items.sort(key=lambda t: t[0])
            out[cell] = _Cell(np.array([c for c, _ in items], dtype=np.float64), [t for _, t in items])
        return out

    def grid(self, n: float) -> np.ndarray:
        """The cycles a row at cycle ``n`` reads: multiples of the stride in min_cycle..n."""
        k = self.cfg.finetune_stride
        first = math.ceil(max(self.cfg.min_cycle, 1) / k) * k
        return np.arange(first, int(n) + 1, k, dtype=np.float64)

    def _picks(self, cell: str, n: float) -> tuple[list[int] | None, str | None]:
        """Per grid cycle the index of its sequence (the latest of its window), or the reason a row has none."""
        grid = self.grid(n)
        k = self.cfg.finetune_stride
        if not grid.size:
            return None, (f"finetuned: no cycle divisible by finetune_stride {k} in {self.cfg.min_cycle}..{n:g}")
        have = self.cells[cell]
        picks = []
        for g in grid:
            lo = max(g - k + 1, self.cfg.min_cycle)
            at = np.flatnonzero((have.cycles >= lo) & (have.cycles <= g))
            if not at.size:
                return None, f"finetuned: no token sequence of cycles {lo:g}..{g:g} in {self.sequences_uri}"
            picks.append(int(at[-1]))
        return picks, None

    def reasons(self, rows: list[Row]) -> dict[int, str]:
        out = {}
        for i, (cell, n) in enumerate(rows):
            _, why = self._picks(cell, n)
            if why:
                out[i] = why
        return out

    # ------------------------------------------------------------------------------------------ encoding
    def encode(self, model, seqs: list[np.ndarray]):
        """One pooled vector per token sequence (n, D), chunked and pooled as ``msenc embed`` does;
        differentiable when grad is enabled."""
        import torch

        from msenc_lib.embed import Chunk, chunk_sequence, pad_batch, pool_chunks, token_batches

        chunks = [Chunk(i, piece, k == 0) for i, ids in enumerate(seqs)
                  for k, piece in enumerate(chunk_sequence(ids, self.context, self.sep_id))]
        rows, firsts, parts, counts = [], [], [], []
        for batch in token_batches(chunks, self.cfg.finetune_batch_tokens):
            ids, mask = pad_batch(batch, self.pad_id)
            mask = mask.to(self.device)
            hidden = model(input_ids=ids.to(self.device), attention_mask=mask).last_hidden_state
            part, n = pool_chunks(hidden.float(), mask, self.pooling)
            parts.append(part)
            counts.append(n)
            rows += [c.row for c in batch]
            firsts += [c.first for c in batch]
        part, count = torch.cat(parts), torch.cat(counts).to(torch.float32)
        row = torch.tensor(rows, device=part.device)
        out = part.new_zeros((len(seqs), part.shape[1]))
        if self.pooling == "mean":
            total = count.new_zeros(len(seqs)).index_add(0, row, count)
            return out.index_add(0, row, part) / total.clamp(min=1).unsqueeze(1)
        if self.pooling == "max":
            return out.scatter_reduce(0, row.unsqueeze(1).expand_as(part), part, "amax", include_self=False)
        first = torch.tensor(firsts, device=part.device)
        return out.index_copy(0, row[first], part[first])

    def _cell_vectors(self, model, cells: list[str], reads: dict[str, list[int]]):
        """(len(cells), T, D): each cell's grid vectors, zero-padded after its last grid cycle."""
        import torch

        seqs, where = [], []
        for ci, cell in enumerate(cells):
            for t, j in enumerate(reads[cell]):
                seqs.append(self.cells[cell].ids[j])
                where.append((ci, t))
        vecs = self.encode(model, seqs)
        T = max(len(reads[c]) for c in cells)
        X = vecs.new_zeros((len(cells), T, vecs.shape[1]))
        ci = torch.tensor([w[0] for w in where], device=vecs.device)
        ti = torch.tensor([w[1] for w in where], device=vecs.device)
        return X.index_put((ci, ti), vecs)

    def _no_grad_vectors(self, model, cells: list[str], reads: dict[str, list[int]], desc: str = ""):
        import torch

        per = max(1, self.cfg.finetune_batch_cells * 4)
        out = []
        with torch.no_grad():
            for i in progress_bar(range(0, len(cells), per), desc=desc, enabled=self.cfg.progress and bool(desc),
                                  unit="batch"):
                out.append(self._cell_vectors(model, cells[i:i + per], reads))
        T = max(x.shape[1] for x in out)
        return torch.cat([torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[1])) for x in out])

    # ------------------------------------------------------------------------------------------ fitting
    def fit_predict(self, rows: list[Row], y: np.ndarray, train: np.ndarray, validation: np.ndarray, seed: int
                    ) -> SequenceFit:
        """Fit on the train rows (early stopping on ``validation``), predict every row (fitting space)."""
        import torch
        from torch import nn

        cfg = self.cfg
        cells = sorted({c for c, _ in rows})
        cell_index = {c: i for i, c in enumerate(cells)}
        reads: dict[str, list[int]] = {}
        row_pos = np.zeros(len(rows), dtype=np.int64)
        for i, (cell, n) in enumerate(rows):
            picks, why = self._picks(cell, n)
            if why:
                raise InputDataError(f"cell {cell}, n={n:g}: {why}")
            if len(picks) > len(reads.get(cell, [])):
                reads[cell] = picks
            row_pos[i] = len(picks) - 1
        row_cell = np.array([cell_index[c] for c, _ in rows], dtype=np.int64)
        train, validation = np.asarray(train, dtype=bool), np.asarray(validation, dtype=bool)
        key = tuple(cells)
        if key not in self._frozen:  # the same for every seed
            self._frozen[key] = self._no_grad_vectors(self.model.to(self.device), cells, reads, "frozen encoder")
        X0 = self._frozen[key]
        mu, sd = standardisation(X0.cpu().numpy(), row_cell, row_pos, train)
        mu_t, sd_t = (torch.from_numpy(v).to(self.device) for v in (mu, sd))
        y_mu, y_sd = float(y[train].mean()), float(y[train].std() + 1e-9)
        yt = torch.from_numpy(((np.asarray(y, dtype=np.float64) - y_mu) / y_sd).astype(np.float32)).to(self.device)
        pos_t = torch.from_numpy(row_pos).to(self.device)

        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        head = LSTMHead(self.dim, cfg.seq_hidden, cfg.seq_layers).to(self.device)
        Xs0 = (X0 - mu_t) / sd_t
        cell_t = torch.from_numpy(row_cell).to(self.device)
        val_rows = np.flatnonzero(validation)
        select = cfg.finetune_early_stopping and val_rows.size > 0
        train_full_batch(head, lambda r: head(Xs0)[cell_t[r], pos_t[r]], np.flatnonzero(train), yt,
                         epochs=cfg.seq_epochs, lr=cfg.seq_lr, weight_decay=cfg.seq_weight_decay,
                         monitor=val_rows if select else None)

        encoder = copy.deepcopy(self.model).to(self.device)

        def predict(rows_idx: np.ndarray, X=None):
            """Predictions of rows (fitting space, standardised) from the current weights, without grad."""
            head.eval()
            with torch.no_grad():
                if X is None:
                    want = sorted({cells[c] for c in row_cell[rows_idx]})
                    Xw = (self._no_grad_vectors(encoder, want, reads) - mu_t) / sd_t
                    local = {c: i for i, c in enumerate(want)}
                    ci = torch.tensor([local[cells[c]] for c in row_cell[rows_idx]], device=self.device)
                    return head(Xw)[ci, pos_t[rows_idx]]
                return head(X)[cell_t[rows_idx], pos_t[rows_idx]]

        def val_rmse(X=None) -> float:
            """The validation rows' RMSE in the fitting space (log10 cycles for cycle life)."""
            if not val_rows.size:
                return math.nan
            err = predict(val_rows, X) - yt[val_rows]
            return float(err.pow(2).mean().sqrt()) * y_sd

        def snapshot():
            return ({k: v.detach().clone() for k, v in encoder.state_dict().items()},
                    {k: v.detach().clone() for k, v in head.state_dict().items()})

        best_rmse, best_epoch, best_state = val_rmse(Xs0), 0, snapshot()
        history = [best_rmse]
        opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": cfg.finetune_lr},
                                 {"params": head.parameters(), "lr": cfg.seq_lr}], weight_decay=cfg.seq_weight_decay)
        train_cells = sorted({cells[c] for c in row_cell[train]})
        rows_of = {c: np.flatnonzero(train & (row_cell == cell_index[c])) for c in train_cells}
        per = cfg.finetune_batch_cells
        steps = -(-len(train_cells) // per)
        bar = progress_bar(total=cfg.finetune_epochs * steps, desc=f"fine-tuning (seed {seed})",
                           enabled=cfg.progress, unit="step")
        epoch = 0
        with bar:
            for epoch in range(1, cfg.finetune_epochs + 1):
                encoder.train()
                head.train()
                order = [train_cells[i] for i in rng.permutation(len(train_cells))]
                for s in range(0, len(order), per):
                    batch = order[s:s + per]
                    r = np.concatenate([rows_of[c] for c in batch])
                    local = {c: i for i, c in enumerate(batch)}
                    X = (self._cell_vectors(encoder, batch, reads) - mu_t) / sd_t
                    ci = torch.tensor([local[cells[c]] for c in row_cell[r]], device=self.device)
                    loss = nn.functional.mse_loss(head(X)[ci, pos_t[r]], yt[r])
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_([*encoder.parameters(), *head.parameters()], 1.0)
                    opt.step()
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss.item():.3g}")
                encoder.eval()
                rmse = val_rmse()
                history.append(rmse)
                if not select or rmse < best_rmse:
                    best_rmse, best_epoch, best_state = rmse, epoch, snapshot()
                elif epoch - best_epoch >= cfg.finetune_patience:
                    break
        encoder.load_state_dict(best_state[0])
        head.load_state_dict(best_state[1])
        encoder.eval()
        pred = predict(np.arange(len(rows))).double().cpu().numpy() * y_sd + y_mu
        hp = {"hidden": cfg.seq_hidden, "layers": cfg.seq_layers, "head_lr": cfg.seq_lr, "encoder_lr": cfg.finetune_lr,
              "weight_decay": cfg.seq_weight_decay, "head_warmup_epochs": cfg.seq_epochs, "epochs_run": epoch,
              "best_epoch": best_epoch, "stride": cfg.finetune_stride, "cycles_per_cell": int(row_pos.max()) + 1,
              "batch_cells": per, "pooling": self.pooling, "early_stopping": select,
              "validation_rmse_log10": [round(v, 4) if math.isfinite(v) else None for v in history]}
        return SequenceFit(model="lstm", predictions=pred, train_rmse=math.nan, hyperparameters=hp)
