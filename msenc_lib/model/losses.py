"""Pretraining losses: the number-token loss, and a chunked cross-entropy through the LM head.

Number-token loss (Zausinger et al., "Regress, Don't Guess"): a regression-like loss on digit tokens.
At a position whose label is a digit token y, the model's probabilities over the ten digit tokens
(renormalised among themselves) give p_0..p_9; then
- NTL-MSE:  (sum_k p_k * k - y)^2      (the original workflow's choice)
- NTL-WAS:  sum_k p_k * |k - y|       (Wasserstein-1 between the prediction and the label)
Both are ~0 when all probability sits on the right digit and grow with the distance of the wrong digits.

Chunked cross-entropy (:func:`masked_lm_losses`): at the original's 49k-token vocabulary, the logits of the
~10k masked positions of a 65k-token sequence are ~2 GB in float32, and their softmax gradient as much again.
The LM head's matmul, the log-softmax and its gradient are done instead one chunk of rows at a time in one
reused buffer, so at most ``chunk_elements`` logits exist at once. The number-token loss only needs the ten
digit columns: they are copied out of each chunk and get their gradient through ordinary autograd.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100
DEFAULT_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 logits per chunk: the fastest measured at vocab 49,155


def digit_values(labels: torch.Tensor, digit_token_ids: Sequence[int]) -> torch.Tensor:
    """The digit (0..9) each label stands for, ``-1`` where the label is not a digit token (or is ignored)."""
    digits = torch.as_tensor(list(digit_token_ids), device=labels.device)
    hits = labels.unsqueeze(-1) == digits  # (..., 10)
    return torch.where(hits.any(-1), hits.float().argmax(-1).to(labels.dtype), torch.full_like(labels, -1))


def number_token_loss_from_digit_logits(digit_logits: torch.Tensor, values: torch.Tensor,
                                        kind: str = "mse") -> torch.Tensor:
    """Mean number-token loss from the logits of the tokens '0'..'9' (``(..., 10)``, in that order) and the
    digit value of each label (``(...)``, ``-1`` = not a digit: skipped). A zero that keeps the graph when no
    label is a digit."""
    if kind not in ("mse", "was"):
        raise ValueError(f"kind must be 'mse' or 'was', got {kind!r}")
    digit_logits = digit_logits.reshape(-1, digit_logits.shape[-1])
    values = values.reshape(-1)
    rows = values >= 0
    if not bool(rows.any()):
        return digit_logits.sum() * 0.0
    value = values[rows].to(torch.float32)
    probs = torch.softmax(digit_logits[rows].float(), dim=-1)  # (M, 10)
    scale = torch.arange(10, device=digit_logits.device, dtype=torch.float32)
    if kind == "mse":
        return ((probs @ scale - value) ** 2).mean()
    return (probs * (scale.unsqueeze(0) - value.unsqueeze(-1)).abs()).sum(-1).mean()


def number_token_loss(logits: torch.Tensor, labels: torch.Tensor, digit_token_ids: Sequence[int],
                      kind: str = "mse") -> torch.Tensor:
    """Mean number-token loss over the positions whose label is one of ``digit_token_ids`` ('0'..'9').

    ``logits`` (..., V) and ``labels`` (...) of the positions to score (e.g. the masked ones; -100 and other
    non-digit labels are skipped). Returns a zero that keeps the graph when no label is a digit.
    """
    digits = torch.as_tensor(list(digit_token_ids), device=logits.device)
    return number_token_loss_from_digit_logits(logits.index_select(-1, digits), digit_values(labels, digit_token_ids),
                                               kind)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``(sum of CE(hidden @ weight.T + bias, targets), logits[:, columns])``, one chunk of rows at a time.

    The CE gradient of a chunk (softmax minus one-hot) is used right away, in the forward pass, while the
    chunk's logits are still in the buffer; backward scales the stored gradients by the incoming one and adds
    the (small) gradient of the copied-out columns.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, columns, chunk_rows: int, with_grad: bool):  # type: ignore[override]
        h, w = hidden.float(), weight.float()
        b = None if bias is None else bias.float()
        n, vocab = h.shape[0], w.shape[0]
        total = h.new_zeros(())
        column_logits = h.new_empty(n, columns.numel())
        grad_h = torch.empty_like(h) if with_grad else None
        grad_w = torch.zeros_like(w) if with_grad else None
        grad_b = torch.zeros_like(b) if with_grad and b is not None else None
        buffer = h.new_empty(min(chunk_rows, n), vocab)  # reused: a fresh one per chunk is page-faulted each time
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            hc, yc = h[start:stop], targets[start:stop]
            logits = buffer[: stop - start]
            if b is None:
                torch.mm(hc, w.t(), out=logits)
            else:
                torch.addmm(b, hc, w.t(), out=logits)
            column_logits[start:stop] = logits.index_select(1, columns)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc.unsqueeze(1)).squeeze(1)).sum()
            if with_grad:
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place
                probs[torch.arange(stop - start, device=yc.device), yc] -= 1.0
                torch.mm(probs, w, out=grad_h[start:stop])
                grad_w.addmm_(probs.t(), hc)
                if grad_b is not None:
                    grad_b += probs.sum(0)
        ctx.save_for_backward(h, w, columns, grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total, column_logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, grad_columns):  # type: ignore[override]
        h, w, columns, grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_h is None:
            raise RuntimeError("chunked cross-entropy: the forward pass ran without gradients")
        with torch.autocast(h.device.type, enabled=False):  # backward runs under the caller's autocast
            grad_h = grad_h * grad_total
            grad_w = grad_w * grad_total
            grad_b = None if grad_b is None else grad_b * grad_total
            if grad_columns is not None:
                gp = grad_columns.float()
                grad_h = grad_h.addmm_(gp, w.index_select(0, columns))
                grad_w.index_add_(0, columns, gp.t() @ h)
                if grad_b is not None:
                    grad_b.index_add_(0, columns, gp.sum(0))
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        return (grad_h.to(h_dtype), grad_w.to(w_dtype), None if grad_b is None else grad_b.to(b_dtype),
                None, None, None, None)


def masked_lm_losses(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                     digit_token_ids: Sequence[int] | None = None, ntl_kind: str = "mse",
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean cross-entropy and number-token loss of the linear LM head ``(weight, bias)`` on ``hidden (N, D)``.

    Same values and gradients as ``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets)`` and
    :func:`number_token_loss` on those logits, computed in float32 with at most ``chunk_elements`` logits alive
    at a time. ``targets (N)`` are vocabulary ids (no -100: pass only the labelled rows). The NTL is ``None``
    without ``digit_token_ids``. Both are zeros that keep the graph when ``N == 0``.
    """
    if ntl_kind not in ("mse", "was"):
        raise ValueError(f"ntl kind must be 'mse' or 'was', got {ntl_kind!r}")
    n, vocab = hidden.shape[0], weight.shape[0]
    if n == 0:
        zero = hidden.sum() * 0.0 + weight.sum() * 0.0 + (0.0 if bias is None else bias.sum() * 0.0)
        return zero.float(), (None if digit_token_ids is None else zero.float())
    if bool(targets.min() < 0) or bool(targets.max() >= vocab):
        raise ValueError(f"labels: ids must be in [0, {vocab}) or {IGNORE_INDEX}, got "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    columns = torch.as_tensor(list(digit_token_ids) if digit_token_ids is not None else [], dtype=torch.long,
                              device=hidden.device)
    with_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    chunk_rows = max(1, chunk_elements // vocab)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        total, digit_logits = _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, columns, chunk_rows,
                                                               with_grad)
    ce = total / n
    if digit_token_ids is None:
        return ce, None
    return ce, number_token_loss_from_digit_logits(digit_logits, digit_values(targets, digit_token_ids), ntl_kind)
