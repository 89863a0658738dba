"""Masked-LM corruption as in the original workflow: per sequence, exactly round(15%) of the candidate
tokens (real, non-special) are chosen at random; of those the first 80% become the mask token, the next 10%
a random non-special token, the rest stay as they are. Labels hold the original ids at the chosen positions
and -100 elsewhere. Padding and special tokens are never chosen."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import torch


@dataclass(frozen=True)
class MaskingSpec:
    mask_token_id: int
    special_token_ids: tuple[int, ...]
    vocab_size: int
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    @classmethod
    def create(cls, mask_token_id: int, special_token_ids: Iterable[int], vocab_size: int,
               **kwargs) -> "MaskingSpec":
        specials = tuple(sorted({int(i) for i in special_token_ids} | {int(mask_token_id)}))
        return cls(int(mask_token_id), specials, int(vocab_size), **kwargs)


def mask_tokens(input_ids: torch.Tensor, spec: MaskingSpec, attention_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(corrupted_ids, labels)`` for a (B, L) batch; deterministic for a seeded ``generator``."""
    ids = input_ids.long()
    specials = torch.tensor(spec.special_token_ids, dtype=torch.long)
    candidate = ~torch.isin(ids, specials)
    if attention_mask is not None:
        candidate &= attention_mask.bool()
    n_pick = torch.round(candidate.sum(1).double() * spec.probability).long()  # per sequence
    n_mask = (n_pick.double() * spec.mask_fraction).floor().long()
    n_random = (n_pick.double() * (spec.mask_fraction + spec.random_fraction)).floor().long()

    # a random order of the candidates in each row: rank 0, 1, ... first; non-candidates last
    scores = torch.rand(ids.shape, generator=generator)
    scores[~candidate] = 2.0
    order = scores.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(ids.shape[1]).expand_as(order))

    picked = rank < n_pick[:, None]
    to_mask = rank < n_mask[:, None]
    to_random = picked & ~to_mask & (rank < n_random[:, None])
    allowed = _replacement_ids(spec.vocab_size, spec.special_token_ids)
    random_ids = allowed[torch.randint(len(allowed), ids.shape, generator=generator)]

    corrupted = ids.clone()
    corrupted[to_mask] = spec.mask_token_id
    corrupted[to_random] = random_ids[to_random]
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    return corrupted, labels


@lru_cache(maxsize=8)
def _replacement_ids(vocab_size: int, special_token_ids: tuple[int, ...]) -> torch.Tensor:
    """The ids a "random token" replacement draws from: the whole vocabulary but the special tokens."""
    specials = set(special_token_ids)
    return torch.tensor([i for i in range(vocab_size) if i not in specials], dtype=torch.long)
