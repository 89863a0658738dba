"""The multiscale encoder: a hierarchical (MEGABYTE-style) bidirectional transformer over long token streams.

Shape of the computation, for the seed config (seq_lens 2048x8x4, hidden 256/64/64):

    tokens (B, 65536) --embed--> (B, 65536, 64)
    stage 0 (global):  B sequences of 2048 patches of 32 tokens; a patch = LayerNorm/Linear of its 32
                       token embeddings -> 256-d; 8 transformer layers; each output is projected to
                       8 x 64 and added to the 8 sub-patches of stage 1
    stage 1:           B*2048 sequences of 8 patches of 4 tokens (64-d); 4 layers; projected to 4 x 64
    stage 2 (local):   B*16384 sequences of 4 tokens (64-d); 2 layers
    -> last_hidden_state (B, 65536, 64): one vector per token

Differences from the original (mblm 0.4.0 ``MBLMEncoder``), on purpose:
- an encoder needs no decoder shift: patch i of a stage receives the coarser stage's output i (no start
  token, no offset by one);
- real padding masks at every stage: a padded token contributes nothing (its embedding is zeroed, it is
  masked as an attention key, and sequences of a stage that hold only padding are skipped), so a padded
  position never changes a real one;
- ``scaled_dot_product_attention`` (flash kernels on CPU and GPU, no materialised attention matrices) on long
  sequences; on the local stages' 4-8 elements an explicit softmax(q k^T) v, whose matrices are as small as q;
- ``compile_layers()`` runs the layers through ``torch.compile`` (with an eager fallback);
- one token-embedding table shared by all stages;
- the masked-LM head runs only on the labelled positions, in chunks (no (B, L, V) logits during training).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from msenc_lib.model.configuration import MultiscaleEncoderConfig
from msenc_lib.model.losses import DEFAULT_CHUNK_ELEMENTS, IGNORE_INDEX, masked_lm_losses

try:  # transformers >= 5: initialisers that leave loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- building blocks
# Sequences up to this many elements (the local stages: 8 and 4 in the seed) get an explicit softmax(q k^T) v when
# compiled or training (measured on CPU at 4-8 elements: 3x faster compiled, 1.3x eager fwd+bwd) and SDPA otherwise
# (eager inference: SDPA 1.5x faster); longer ones always get SDPA's flash kernel.
EXPLICIT_ATTENTION_MAX_LEN = 64


def rotary_tables(length: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) of position x frequency, in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2j], x[2j+1]) of the last axis by the position's angles, in float32. Eagerly one
    complex multiply (5x faster than the real form there); compiled, the real form, which inductor fuses (it
    generates no complex code)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        even, odd = pairs.unbind(-1)
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x.dtype)
    return torch.view_as_real(torch.view_as_complex(pairs) * torch.complex(cos, sin)).flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
              dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (N, H, S, D), keys masked where ``key_mask`` (N, S) is False."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    compiling = torch.compiler.is_compiling()
    if q.shape[-2] > EXPLICIT_ATTENTION_MAX_LEN or not (compiling or torch.is_grad_enabled()):
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
            # the CPU flash kernel's bf16 backward measured 3.6x slower than its float32 one: train it in float32
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    q = q * q.shape[-1] ** -0.5
    # compiled, products summed over the last axis become loops fused with the softmax (5% faster than bmm there)
    scores = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) if compiling else q @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(-1), dropout) if dropout else scores.softmax(-1)
    return (probs.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2) if compiling else probs @ v


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with rotary q/k and an optional key-padding mask."""

    def __init__(self, config: MultiscaleEncoderConfig, stage: int):
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.heads, self.head_dim = config.num_attention_heads[stage], config.stage_head_dim(stage)
        self.qkv = nn.Linear(dim, 3 * self.heads * self.head_dim, bias=False)
        self.out = nn.Linear(self.heads * self.head_dim, dim, bias=False)
        self.dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        n, s, _ = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = attention(q, k, v, key_mask, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, s, self.heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, config: MultiscaleEncoderConfig, stage: int):
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.up = nn.Linear(dim, config.ff_multiplier * dim)
        self.down = nn.Linear(config.ff_multiplier * dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.dropout(F.gelu(self.up(x)))))


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer layer (RMSNorm), checkpointable."""

    def __init__(self, config: MultiscaleEncoderConfig, stage: int):
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.attn_norm = nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.attn = Attention(config, stage)
        self.ff_norm = nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.ff = FeedForward(config, stage)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), key_mask, rotary)
        return x + self.ff(self.ff_norm(x))


class Stage(nn.Module):
    """One level of the hierarchy: learned positions + transformer layers + final norm."""

    def __init__(self, config: MultiscaleEncoderConfig, stage: int):
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.positions = nn.Embedding(config.seq_lens[stage], dim) if config.use_absolute_positions else None
        self.layers = nn.ModuleList(Block(config, stage) for _ in range(config.num_layers[stage]))
        self.norm = nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.rotary = config.use_rotary
        self.head_dim, self.theta = config.stage_head_dim(stage), config.rope_theta

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.positions is not None:
            x = x + self.positions.weight[: x.shape[1]]
        rotary = rotary_tables(x.shape[1], self.head_dim, self.theta, x.device) if self.rotary else None
        for layer in self.layers:
            x = layer(x, key_mask, rotary)
        return self.norm(x)


class PatchEmbedding(nn.Module):
    """A patch of ``patch`` token embeddings (concatenated) -> one element of width ``dim``."""

    def __init__(self, patch: int, token_dim: int, dim: int):
        super().__init__()
        self.patch = patch
        self.norm_in = nn.LayerNorm(patch * token_dim)
        self.proj = nn.Linear(patch * token_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L, Dt) -> (B, L / patch, dim)
        b, length, dt = tokens.shape
        return self.norm_out(self.proj(self.norm_in(tokens.reshape(b, length // self.patch, self.patch * dt))))


class CompiledFunction:
    """``torch.compile(fn)`` that falls back to ``fn`` for good, with one warning, when compiling fails (no C++
    compiler, an unsupported platform): the compiled graph runs nothing before it is built, so the eager re-run
    starts from the same state. An error the eager function raises too is raised as such.

    ``memory_budget`` < 1 (torch's ``activation_memory_budget``) lets the compiled backward recompute cheap
    activations instead of keeping them."""

    def __init__(self, fn, memory_budget: float | None = None, **options):
        self.fn = fn
        self.compiled = torch.compile(fn, **options)
        self.memory_budget = memory_budget
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                with self._budget():
                    return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the eager run below tells a compile failure from a real one
                out = self.fn(*args, **kwargs)
                self.failed = True
                log.warning("torch.compile failed, running eagerly from now on: %s", str(error).splitlines()[0])
                return out
        return self.fn(*args, **kwargs)

    def _budget(self):
        if self.memory_budget is None:
            return contextlib.nullcontext()
        import torch._functorch.config

        return torch._functorch.config.patch(activation_memory_budget=self.memory_budget)


# ------------------------------------------------------------------------------------------------ models
class MultiscaleEncoderPreTrainedModel(PreTrainedModel):
    config_class = MultiscaleEncoderConfig
    config: MultiscaleEncoderConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def compile_layers(self, memory_budget: float | None = None, **options) -> None:
        """Run every transformer layer through ``torch.compile`` (one graph per stage shape: fused norms, rotary,
        GELU, residuals and short-sequence attention; see benchmarks/README.md for the measured gain). Each
        layer falls back to eager execution if compilation fails (:class:`CompiledFunction`); ``memory_budget``
        < 1 trades recomputation for activation memory."""
        for module in self.modules():
            if isinstance(module, Block) and not isinstance(module.forward, CompiledFunction):
                module.forward = CompiledFunction(module.forward, memory_budget, **options)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class MultiscaleEncoderModel(MultiscaleEncoderPreTrainedModel):
    """The encoder: ``forward(input_ids, attention_mask)`` -> ``last_hidden_state`` (B, L, hidden_sizes[-1])."""

    # loading a pretrained masked-LM checkpoint as the bare encoder leaves its LM head out, as intended
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MultiscaleEncoderConfig):
        super().__init__(config)
        token_dim = config.hidden_sizes[-1]
        last = config.num_stages - 1
        self.embed_tokens = nn.Embedding(config.vocab_size, token_dim, padding_idx=config.pad_token_id)
        self.patch_embeddings = nn.ModuleList(
            PatchEmbedding(config.patch_size(k), token_dim, config.hidden_sizes[k]) for k in range(last))
        self.stages = nn.ModuleList(Stage(config, k) for k in range(config.num_stages))
        # a stage-k output -> the seq_lens[k+1] elements of its patch at stage k+1
        self.to_finer = nn.ModuleList(
            nn.Linear(config.hidden_sizes[k], config.seq_lens[k + 1] * config.hidden_sizes[k + 1])
            for k in range(last))
        self.post_init()
        log.info("MultiscaleEncoderModel: %s parameters, context %d tokens, stages %s",
                 f"{self.num_parameters():,}", config.max_context, config.seq_lens)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _run_stage(self, k: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stage k on (N, S, D) elements with element mask (N, S); sequences without a real element are
        skipped (their outputs stay zero), and keys are masked only where a sequence has padding."""
        if bool(mask.all()):
            return self.stages[k](x, None)
        rows = mask.any(dim=1)
        if bool(rows.all()):
            return self.stages[k](x, mask)
        idx = rows.nonzero().squeeze(1)
        sub_mask = mask[idx]
        done = self.stages[k](x[idx], None if bool(sub_mask.all()) else sub_mask)
        out = done.new_zeros((x.shape[0], *done.shape[1:]))  # the stage's dtype: under autocast not always x's
        out[idx] = done
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        cfg = self.config
        batch, length = input_ids.shape
        if length > cfg.max_context:
            raise ValueError(f"input of {length} tokens exceeds the model's context of {cfg.max_context} "
                             f"(seq_lens {cfg.seq_lens}); split it into chunks")
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(torch.bool))
        # pad to whole global patches; padding is masked everywhere
        patch0 = cfg.patch_size(0)
        padded = -(-length // patch0) * patch0
        if padded != length:
            input_ids = F.pad(input_ids, (0, padded - length), value=cfg.pad_token_id)
            mask = F.pad(mask, (0, padded - length), value=False)
        tokens = self.embed_tokens(input_ids) * mask.unsqueeze(-1).to(self.embed_tokens.weight.dtype)

        h = None
        for k in range(cfg.num_stages):
            patch = cfg.patch_size(k)
            n_elements = padded // patch  # per batch item
            x = self.patch_embeddings[k](tokens) if k < cfg.num_stages - 1 else tokens
            seq = n_elements if k == 0 else cfg.seq_lens[k]
            x = x.reshape(-1, seq, cfg.hidden_sizes[k])
            if h is not None:
                x = x + self.to_finer[k - 1](h).reshape(x.shape)
            element_mask = mask.reshape(batch, n_elements, patch).any(-1).reshape(-1, seq)
            h = self._run_stage(k, x, element_mask)
        hidden = h.reshape(batch, padded, cfg.hidden_sizes[-1])[:, :length]
        if return_dict is False:
            return (hidden,)
        return BaseModelOutput(last_hidden_state=hidden)


@dataclass
class MultiscaleMaskedLMOutput(ModelOutput):
    """``loss`` = ce_weight * ``ce_loss`` + ntl_weight * ``ntl_loss``; ``logits`` (B, L, V) only without
    labels or when asked for (``return_logits=True``)."""

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    ntl_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None


class MultiscaleEncoderForMaskedLM(MultiscaleEncoderPreTrainedModel):
    """Encoder + LM head; masked-LM + number-token loss over the labelled positions (labels -100 elsewhere).

    The loss never builds the (positions, vocabulary) logits at once: the head runs over the labelled rows
    in chunks of at most ``loss_chunk_elements`` logits (see :func:`~msenc_lib.model.losses.masked_lm_losses`).
    """

    loss_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS

    def __init__(self, config: MultiscaleEncoderConfig):
        super().__init__(config)
        self.encoder = MultiscaleEncoderModel(config)
        self.lm_head = nn.Linear(config.hidden_sizes[-1], config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = False,
        return_dict: bool | None = None,
        loss_weights: tuple[float, float] | None = None,
        **kwargs,
    ) -> MultiscaleMaskedLMOutput:
        """``loss_weights`` (ce, ntl) replaces the config's weights for this call: a trainer weights each
        micro-batch by its share of the global batch's masked (digit) positions."""
        hidden = self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.lm_head(hidden) if (labels is None or return_logits) else None
        if labels is None:
            return MultiscaleMaskedLMOutput(logits=logits, last_hidden_state=hidden)
        cfg = self.config
        ce_weight, ntl_weight = loss_weights if loss_weights is not None else (cfg.ce_weight, cfg.ntl_weight)
        picked = labels != IGNORE_INDEX
        use_ntl = bool(ntl_weight) and cfg.digit_token_ids is not None
        ce, ntl = masked_lm_losses(hidden[picked], self.lm_head.weight, self.lm_head.bias, labels[picked],
                                   digit_token_ids=cfg.digit_token_ids if use_ntl else None,
                                   ntl_kind=cfg.ntl_type, chunk_elements=self.loss_chunk_elements)
        if ntl is None:
            ntl = ce.new_zeros(())
        loss = ce_weight * ce + ntl_weight * ntl
        return MultiscaleMaskedLMOutput(loss=loss, ce_loss=ce.detach(), ntl_loss=ntl.detach(), logits=logits,
                                        last_hidden_state=hidden, num_masked=picked.sum())
