"""Configuration of the multiscale (MEGABYTE-style) encoder: a transformers ``PretrainedConfig``."""

from __future__ import annotations

import math
from typing import Any, Sequence

from transformers import PretrainedConfig

# Stage lists are ordered global -> local. The seed's model (IBM multiscale-beep-modeling): 65,536 tokens.
PRESETS: dict[str, dict[str, Any]] = {
    # seconds on one CPU core: unit tests, the CI pipeline run
    "tiny": dict(seq_lens=[64, 4, 4], hidden_sizes=[64, 32, 32], num_layers=[2, 1, 1],
                 num_attention_heads=[8, 4, 4], head_dim=8),
    # minutes on a laptop: the demo
    "small": dict(seq_lens=[256, 8, 4], hidden_sizes=[128, 64, 64], num_layers=[4, 2, 2],
                  num_attention_heads=[16, 8, 8], head_dim=8),
    # the original workflow's model: seq_lens 2048x8x4, hidden 256/64/64, layers 8/4/2, heads 32/16/4 of dim 8
    "seed": dict(seq_lens=[2048, 8, 4], hidden_sizes=[256, 64, 64], num_layers=[8, 4, 2],
                 num_attention_heads=[32, 16, 4], head_dim=8),
    # the seed's sizes and layers with 8 global heads of dim 32 (same parameters): the CPU attention kernel's cost
    # grows with heads x positions^2, so its global stage trains ~2x faster (benchmarks/README.md); whether it
    # embeds as well is for the quality benchmark to say
    "seed_wide": dict(seq_lens=[2048, 8, 4], hidden_sizes=[256, 64, 64], num_layers=[8, 4, 2],
                      num_attention_heads=[8, 16, 4], head_dim=[32, 8, 8]),
}


class MultiscaleEncoderConfig(PretrainedConfig):
    """Hyper-parameters of :class:`~msenc_lib.model.modeling.MultiscaleEncoderModel`.

    Stage ``k`` (``k = 0`` is the global stage) runs a bidirectional transformer over sequences of
    ``seq_lens[k]`` elements of width ``hidden_sizes[k]``; an element of stage ``k`` is a patch of
    ``prod(seq_lens[k+1:])`` tokens, and the last stage's elements are the tokens themselves. The context is
    ``prod(seq_lens)`` tokens. Attention of stage ``k`` has ``num_attention_heads[k]`` heads of ``head_dim`` (one
    size for all stages, or one per stage).

    Pretraining loss: ``ce_weight`` x cross-entropy + ``ntl_weight`` x number-token loss (``ntl_type``
    "mse" or "was") over the masked positions; the number-token loss needs ``digit_token_ids`` (ids of the
    tokens "0".."9", in that order) and is left out without them.
    """

    model_type = "msenc"

    def __init__(
        self,
        vocab_size: int = 32,
        seq_lens: Sequence[int] = (2048, 8, 4),
        hidden_sizes: Sequence[int] = (256, 64, 64),
        num_layers: Sequence[int] = (8, 4, 2),
        num_attention_heads: Sequence[int] = (32, 16, 4),
        head_dim: int | Sequence[int] = 8,
        ff_multiplier: int = 2,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        use_absolute_positions: bool = True,
        use_rotary: bool = True,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        mask_token_id: int | None = None,
        digit_token_ids: Sequence[int] | None = None,
        ce_weight: float = 0.7,
        ntl_weight: float = 0.3,
        ntl_type: str = "mse",
        **kwargs: Any,
    ):
        self.vocab_size = int(vocab_size)
        self.seq_lens = [int(x) for x in seq_lens]
        self.hidden_sizes = [int(x) for x in hidden_sizes]
        self.num_layers = [int(x) for x in num_layers]
        self.num_attention_heads = [int(x) for x in num_attention_heads]
        self.head_dim = int(head_dim) if isinstance(head_dim, (int, float, str)) else [int(x) for x in head_dim]
        self.ff_multiplier = int(ff_multiplier)
        self.attention_dropout = float(attention_dropout)
        self.hidden_dropout = float(hidden_dropout)
        self.use_absolute_positions = bool(use_absolute_positions)
        self.use_rotary = bool(use_rotary)
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.initializer_range = float(initializer_range)
        self.mask_token_id = mask_token_id
        self.digit_token_ids = None if digit_token_ids is None else [int(x) for x in digit_token_ids]
        self.ce_weight = float(ce_weight)
        self.ntl_weight = float(ntl_weight)
        self.ntl_type = ntl_type
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.check()

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def num_stages(self) -> int:
        return len(self.seq_lens)

    @property
    def max_context(self) -> int:
        """Tokens one sequence can hold: ``prod(seq_lens)``."""
        return math.prod(self.seq_lens)

    def stage_head_dim(self, stage: int) -> int:
        """The attention head size of ``stage``."""
        return self.head_dim if isinstance(self.head_dim, int) else self.head_dim[stage]

    def patch_size(self, stage: int) -> int:
        """Tokens in one element of ``stage`` (1 for the last stage)."""
        return math.prod(self.seq_lens[stage + 1:])

    def check(self) -> None:
        """Raise ``ValueError`` naming the field when the stage lists do not fit together."""
        n = len(self.seq_lens)
        if n < 1:
            raise ValueError("seq_lens: at least one stage is needed")
        for name in ("hidden_sizes", "num_layers", "num_attention_heads"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: {len(getattr(self, name))} entries for {n} stages (seq_lens={self.seq_lens})")
        for name in ("seq_lens", "hidden_sizes", "num_attention_heads"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name}: every entry must be >= 1, got {getattr(self, name)}")
        if any(v < 0 for v in self.num_layers):
            raise ValueError(f"num_layers: entries must be >= 0, got {self.num_layers}")
        if not isinstance(self.head_dim, int) and len(self.head_dim) != n:
            raise ValueError(f"head_dim: {len(self.head_dim)} entries for {n} stages (seq_lens={self.seq_lens})")
        if any(d < 2 or (self.use_rotary and d % 2) for d in map(self.stage_head_dim, range(n))):
            raise ValueError(f"head_dim: must be even and >= 2 with rotary embeddings, got {self.head_dim}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size: must be >= 2, got {self.vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id: {self.pad_token_id} outside the vocabulary of {self.vocab_size}")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id: {self.mask_token_id} outside the vocabulary of {self.vocab_size}")
        if self.digit_token_ids is not None and (
            len(self.digit_token_ids) != 10 or any(not 0 <= d < self.vocab_size for d in self.digit_token_ids)
        ):
            raise ValueError(f"digit_token_ids: need the 10 ids of '0'..'9' inside the vocabulary, got {self.digit_token_ids}")
        if self.ntl_type not in ("mse", "was"):
            raise ValueError(f"ntl_type: 'mse' or 'was', got {self.ntl_type!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MultiscaleEncoderConfig":
        """A preset (``tiny``, ``small``, ``seed``, ``seed_wide``) with overrides such as ``vocab_size`` or token
        ids."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
