"""The optimisation loop: steps, evaluation, early stopping, checkpoints, metrics.

Loss weighting: the model's loss is ``ce_weight * mean CE over the masked positions + ntl_weight * mean NTL
over the masked digit positions`` of ITS batch. For one optimizer step over several micro-batches and ranks
to equal that loss on the whole global batch, each micro-batch's CE is weighted by its share of the step's
masked positions and its NTL by its share of the masked digit positions (both counted before the forward
pass and summed over ranks), times the world size because DDP averages gradients over ranks. The weights go
in through the model's ``loss_weights`` argument.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from msenc_lib.model.hardware import compile_pays, native_bf16
from msenc_lib.progress import progress_bar
from msenc_lib.train.checkpoint import MetricsLog, load_checkpoint, save_checkpoint
from msenc_lib.train.data import WindowDataset, count_targets
from msenc_lib.train.distributed import DistContext

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    step: int
    completed: bool
    final_loss: float
    best_eval_loss: float | None
    best_step: int | None
    stopped_early: bool
    tokens_per_s: float


def _optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases and norm weights
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per parameter instead of ~10 (foreach): each kernel is an OpenMP region whose sleeping
    # threads must wake; clipping + step measured a median 0.12 s fused vs 0.26 s foreach at the seed config
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon, fused=fused)


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, max_steps: int, warmup_ratio: float):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(max_steps * warmup_ratio), max_steps)


def use_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast: asked for, or ``auto`` where bf16 matmuls are native (CUDA, CPUs with AMX/AVX512-BF16:
    measured faster there, with the float32 loss curve kept; benchmarks/README.md)."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device_type))


class Trainer:
    def __init__(self, cfg, model, train_data: WindowDataset, val_data: WindowDataset | None, ctx: DistContext,
                 output_uri: str, digit_ids: list[int] | None):
        self.cfg = cfg
        self.ctx = ctx
        self.output_uri = output_uri
        self.digit_ids = digit_ids if (cfg.ntl_weight and digit_ids) else None
        self.train_data = train_data
        self.val_data = val_data
        self.model = model.to(ctx.device)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.compiled = compile_pays(cfg.compile, ctx.device.type, train_data.context)
        if self.compiled:
            self.model.compile_layers(memory_budget=cfg.activation_memory_budget)
        self.n_parameters = sum(p.numel() for p in model.parameters())
        log.info("model: %s parameters (preset %s, context %d tokens, %d train windows per epoch)",
                 f"{self.n_parameters:,}", cfg.preset, train_data.context, train_data.windows_per_epoch)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                               else None)
        else:
            self.ddp = self.model
        self.optimizer = _optimizer(self.model, cfg, ctx.device)
        self.scheduler = _cosine_with_warmup(self.optimizer, cfg.max_steps, cfg.warmup_ratio)
        self.bf16 = use_bf16(cfg.precision, ctx.device.type)
        log.info("precision %s, layers %s", "bf16 autocast" if self.bf16 else "float32",
                 "compiled" if self.compiled else "eager")
        self.step = 0
        self.resumed_step: int | None = None
        self.best_eval: float | None = None
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None  # CPU copy when not the current weights
        self.bad_evals = 0
        self.stopped_early = False
        self.log_window: dict[str, float] = {"loss": 0.0, "ce": 0.0, "ntl": 0.0, "n": 0}
        self.metrics = MetricsLog(output_uri, enabled=ctx.is_main)
        self.metrics.log_params({k: v for k, v in cfg.model_dump().items()})

    # --------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng, "metrics": self.metrics.rows,
                "best_eval": self.best_eval, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early, "log_window": dict(self.log_window),
                "samples_seen": self._samples_before(self.step),
                "config": self.cfg.model_dump(mode="json")}

    def save(self) -> None:
        if self.ctx.is_main:
            best = None if self.best_weights is None else {"step": self.best_step, "model": self.best_weights}
            uri = save_checkpoint(self.output_uri, self.step, self._state(), best, self.cfg.save_total_limit)
            self.metrics.flush()
            log.info("checkpoint %s", uri)
        self.ctx.barrier()

    def restore(self, uri: str) -> None:
        state, best = load_checkpoint(uri)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.step = self.resumed_step = int(state["step"])
        self.best_eval, self.best_step, self.bad_evals = state["best_eval"], state["best_step"], state["bad_evals"]
        self.best_weights = best["model"] if best is not None else None
        self.log_window = dict(state["log_window"])
        self.stopped_early = bool(state["stopped_early"])  # an early-stopped run stays stopped
        self.metrics.rows = list(state["metrics"])
        self.metrics.flush()  # drop rows logged after this checkpoint
        changed = {k: (v, getattr(self.cfg, k)) for k, v in state["config"].items()
                   if k not in ("resume", "stop_after", "progress", "overwrite") and getattr(self.cfg, k, v) != v}
        if changed:
            log.warning("resuming with changed settings (checkpoint -> now): %s", changed)
        log.info("resumed from %s at step %d", uri, self.step)

    def final_model(self):
        """The model to save: the best-by-eval-loss weights if evaluation ran, else the last."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return self.model

    # ---------------------------------------------------------------------------------- steps
    def _samples_before(self, step: int) -> int:
        return step * self.cfg.grad_accum_steps * self.cfg.batch_size * self.ctx.world_size

    def _micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        b, world = self.cfg.batch_size, self.ctx.world_size
        first = self._samples_before(step)
        return [self.train_data.batch(first + a * b * world + self.ctx.rank * b, b)
                for a in range(self.cfg.grad_accum_steps)]

    def _autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        cfg, ctx, module = self.cfg, self.ctx, self.model
        micro = self._micro_batches(self.step)
        counts = [count_targets(mb["labels"], self.digit_ids) for mb in micro]
        m_total, d_total, _ = ctx.all_reduce_sum([sum(c[0] for c in counts), sum(c[1] for c in counts), 0])
        self.ddp.train()
        ce_part = ntl_part = 0.0
        tokens = 0
        for a, (mb, (m, d)) in enumerate(zip(micro, counts)):
            w_ce = cfg.ce_weight * ctx.world_size * m / m_total if m_total else 0.0
            w_ntl = cfg.ntl_weight * ctx.world_size * d / d_total if d_total else 0.0
            mb = {k: v.to(ctx.device) for k, v in mb.items()}
            tokens += int(mb["attention_mask"].sum())
            sync = contextlib.nullcontext() if (a == len(micro) - 1 or not ctx.distributed) else self.ddp.no_sync()
            with sync, self._autocast():
                out = self.ddp(**mb, loss_weights=(w_ce, w_ntl))
                out.loss.backward()
            ce_part += float(out.ce_loss) * m / m_total if m_total else 0.0
            ntl_part += float(out.ntl_loss) * d / d_total if d_total else 0.0
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        ce, ntl, tokens_all = ctx.all_reduce_sum([ce_part, ntl_part, tokens])
        return {"loss": cfg.ce_weight * ce + cfg.ntl_weight * ntl, "ce": ce, "ntl": ntl, "lr": lr,
                "tokens": tokens_all}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss on the validation windows (fixed masking seed), sharded over ranks, summed exactly."""
        data, cfg, ctx = self.val_data, self.cfg, self.ctx
        n = data.windows_per_epoch if cfg.eval_max_windows is None else min(cfg.eval_max_windows,
                                                                            data.windows_per_epoch)
        mine = list(range(ctx.rank, n, ctx.world_size))
        self.model.eval()
        ce_sum = ntl_sum = m_sum = d_sum = 0.0
        for i in range(0, len(mine), cfg.eval_batch_size):
            idx = mine[i:i + cfg.eval_batch_size]
            parts = [data.sample(g) for g in idx]
            batch = {"input_ids": torch.stack([p[0] for p in parts]),
                     "attention_mask": torch.stack([p[1] for p in parts]),
                     "labels": torch.stack([p[2] for p in parts])}
            m, d = count_targets(batch["labels"], self.digit_ids)
            with self._autocast():
                out = self.model(**{k: v.to(ctx.device) for k, v in batch.items()})
            ce_sum += float(out.ce_loss) * m
            ntl_sum += float(out.ntl_loss) * d
            m_sum += m
            d_sum += d
        ce_sum, ntl_sum, m_sum, d_sum = ctx.all_reduce_sum([ce_sum, ntl_sum, m_sum, d_sum])
        ce = ce_sum / m_sum if m_sum else 0.0
        ntl = ntl_sum / d_sum if d_sum else 0.0
        return {"eval_loss": cfg.ce_weight * ce + cfg.ntl_weight * ntl, "eval_ce": ce, "eval_ntl": ntl,
                "eval_windows": n}

    def _after_eval(self, row: dict[str, float]) -> None:
        loss = row["eval_loss"]
        if self.best_eval is None or loss < self.best_eval:
            self.best_eval, self.best_step, self.bad_evals = loss, self.step, 0
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
            if self.cfg.early_stopping_patience and self.bad_evals >= self.cfg.early_stopping_patience:
                self.stopped_early = True

    # ---------------------------------------------------------------------------------- loop
    def train(self) -> Outcome:
        cfg, ctx = self.cfg, self.ctx
        stop_at = min(cfg.max_steps, cfg.stop_after) if cfg.stop_after else cfg.max_steps
        bar = None
        if cfg.progress and ctx.is_main:
            bar = progress_bar(total=cfg.max_steps, initial=self.step, desc="train", unit="step")
        window_tokens = window_time = 0.0
        total_tokens = total_time = 0.0
        acc = self.log_window  # running sums since the last metrics row (part of the resume state)
        last_loss = float("nan")
        saved_at = None
        if self.metrics.rows:
            last_loss = next((r["loss"] for r in reversed(self.metrics.rows) if "loss" in r), last_loss)
        while self.step < stop_at and not self.stopped_early:
            t0 = time.perf_counter()
            stats = self.train_step()
            dt = time.perf_counter() - t0
            window_tokens += stats["tokens"]
            window_time += dt
            total_tokens += stats["tokens"]
            total_time += dt
            for k in ("loss", "ce", "ntl"):
                acc[k] += stats[k]
            acc["n"] += 1
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss is {stats['loss']} at step {self.step}; lower the learning rate")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                n = acc["n"]
                last_loss = acc["loss"] / n
                self.metrics.add({"step": self.step, "loss": last_loss, "ce": acc["ce"] / n, "ntl": acc["ntl"] / n,
                                  "lr": stats["lr"], "tokens_per_s": round(window_tokens / max(window_time, 1e-9), 1)})
                acc.update(loss=0.0, ce=0.0, ntl=0.0, n=0)
                window_tokens = window_time = 0.0
            evaluate = self.val_data is not None and cfg.eval_every and (
                self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
            if evaluate:
                row = self.evaluate()
                self._after_eval(row)
                self.metrics.add({"step": self.step, **row, "best_eval_loss": self.best_eval})
                if self.stopped_early:
                    log.info("early stopping at step %d: no better eval loss in %d evaluations (best %.4f at "
                             "step %d)", self.step, self.bad_evals, self.best_eval, self.best_step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
                saved_at = self.step
        if bar is not None:
            bar.close()
        if saved_at != self.step and self.step > 0:
            self.save()  # the final or interrupted state, for --resume
        completed = self.step >= cfg.max_steps or self.stopped_early
        self.metrics.close()
        return Outcome(step=self.step, completed=completed, final_loss=last_loss, best_eval_loss=self.best_eval,
                       best_step=self.best_step, stopped_early=self.stopped_early,
                       tokens_per_s=round(total_tokens / total_time, 1) if total_time else 0.0)
