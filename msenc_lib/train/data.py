"""Token windows over the training sequences, and the masked batches made from them.

The original cut each cell's text into CHARACTER windows (splitting numbers and separators). We cut TOKEN
windows of the model's context that always start at a time-step boundary (position 0 or right after a
``<|sep|>`` token): a cell of ``n`` tokens gives ``max(n // context, 1)`` windows per epoch. Each epoch
shifts a cell's windows by a seeded random offset (so the tail of a cell is seen too), snaps every start
back to the nearest time-step boundary, and shuffles all windows of all cells with a seeded permutation.

Sample ``g`` (a global counter over epochs) is fully determined by ``(seed, g)``, its masking included, so
micro-batch ``m`` of rank ``r`` (samples ``m*B*W + r*B ... + B``) is the same data whatever the number of
processes ``W``: two ranks with batch ``B`` see exactly the global batch of one process with ``2B``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msenc_lib.errors import InputDataError
from msenc_lib.model.masking import MaskingSpec, mask_tokens

log = logging.getLogger(__name__)

EVAL_MASK_SEED = 20_000  # a fixed masking seed for validation: eval losses compare across runs and seeds


@dataclass
class CellTokens:
    cell_key: str
    ids: np.ndarray  # int32 token ids of the cell's whole sequence
    row_starts: np.ndarray  # positions where a time step starts (0 and after each separator)


def read_sequences(sequences_dir: str | Path, sep_token_id: int, vocab_size: int | None = None) -> list[CellTokens]:
    """All sequences of a ``sequences/`` folder (Parquet shards), in file order; token ids are checked
    against ``vocab_size`` (the tokenizer's)."""
    import pyarrow.parquet as pq

    files = sorted(Path(sequences_dir).glob("*.parquet"))
    if not files:
        raise InputDataError(f"{sequences_dir}: no Parquet shards (expected sequences/part-*.parquet)")
    cells: list[CellTokens] = []
    for path in files:
        table = pq.read_table(path)
        for column in ("cell_key", "input_ids"):
            if column not in table.column_names:
                raise InputDataError(f"{path}: missing column '{column}' (have {table.column_names})")
        keys = table.column("cell_key").to_pylist()
        for row, (key, ids) in enumerate(zip(keys, table.column("input_ids").to_pylist())):
            if not ids:
                log.warning("%s row %d (cell %s): empty input_ids, skipped", path, row, key)
                continue
            arr = np.asarray(ids, dtype=np.int32)
            if vocab_size is not None and (int(arr.min()) < 0 or int(arr.max()) >= vocab_size):
                bad = int(arr.max()) if int(arr.max()) >= vocab_size else int(arr.min())
                raise InputDataError(f"{path} row {row} (cell {key}), field input_ids: token id {bad} outside the "
                                     f"tokenizer's vocabulary of {vocab_size}; was the split made with this "
                                     "tokenizer/ folder?")
            seps = np.flatnonzero(arr == sep_token_id) + 1
            starts = np.concatenate([[0], seps[seps < len(arr)]]).astype(np.int64)
            cells.append(CellTokens(str(key), arr, starts))
    return cells


def window_starts(cell: CellTokens, context: int, offset: int = 0) -> list[int]:
    """Starts of the cell's ``max(n // context, 1)`` windows: ``offset + i * context`` snapped back to the
    nearest time-step start (a window never starts inside a time step)."""
    n_windows = max(len(cell.ids) // context, 1)
    nominal = offset + context * np.arange(n_windows)
    idx = np.searchsorted(cell.row_starts, nominal, side="right") - 1
    return [int(s) for s in cell.row_starts[np.maximum(idx, 0)]]


class WindowDataset:
    """Seeded epochs of windows over ``cells``; ``sample(g)`` -> (input_ids, attention_mask, labels) of the
    global sample ``g``, masked with a generator seeded by ``(seed, g)``."""

    def __init__(self, cells: list[CellTokens], context: int, spec: MaskingSpec, seed: int, pad_token_id: int,
                 shuffle: bool = True, mask_seed: int | None = None):
        if not cells:
            raise InputDataError("no token sequences to cut windows from")
        self.cells = cells
        self.context = context
        self.spec = spec
        self.seed = seed
        self.mask_seed = seed if mask_seed is None else mask_seed
        self.pad = pad_token_id
        self.shuffle = shuffle
        self.windows_per_epoch = sum(max(len(c.ids) // context, 1) for c in cells)
        self._epoch: int | None = None
        self._plan: list[tuple[int, int]] = []

    def epoch_plan(self, epoch: int) -> list[tuple[int, int]]:
        """The (cell index, start) of every window of ``epoch``, in the order they are used."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            plan = []
            for ci, cell in enumerate(self.cells):
                n_windows = max(len(cell.ids) // self.context, 1)
                slack = len(cell.ids) - n_windows * self.context
                offset = int(rng.integers(0, slack + 1)) if (self.shuffle and slack > 0) else 0
                plan.extend((ci, s) for s in window_starts(cell, self.context, offset))
            if self.shuffle:
                plan = [plan[i] for i in rng.permutation(len(plan))]
            self._epoch, self._plan = epoch, plan
        return self._plan

    def window(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        ci, start = self.epoch_plan(g // self.windows_per_epoch)[g % self.windows_per_epoch]
        ids = torch.from_numpy(self.cells[ci].ids[start:start + self.context].astype(np.int64))
        attention = torch.ones(self.context, dtype=torch.long)
        if len(ids) < self.context:
            attention[len(ids):] = 0
            ids = torch.cat([ids, torch.full((self.context - len(ids),), self.pad, dtype=torch.long)])
        return ids, attention

    def sample(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, attention = self.window(g)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.mask_seed, g]).generate_state(1)[0]))
        corrupted, labels = mask_tokens(ids[None], self.spec, attention[None], gen)
        return corrupted[0], attention, labels[0]

    def batch(self, first: int, size: int) -> dict[str, torch.Tensor]:
        """Samples ``first .. first + size - 1`` stacked into a batch."""
        parts = [self.sample(g) for g in range(first, first + size)]
        return {"input_ids": torch.stack([p[0] for p in parts]), "attention_mask": torch.stack([p[1] for p in parts]),
                "labels": torch.stack([p[2] for p in parts])}


def count_targets(labels: torch.Tensor, digit_ids: list[int] | None) -> tuple[int, int]:
    """(masked positions, masked positions whose label is a digit): the denominators of the CE and the
    number-token loss means."""
    picked = labels != -100
    n_digits = int(torch.isin(labels[picked], torch.tensor(digit_ids)).sum()) if digit_ids else 0
    return int(picked.sum()), n_digits
