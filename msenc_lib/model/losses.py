"""Number-token loss (Zausinger et al., "Regress, Don't Guess"): a regression-like loss on digit tokens.

At a position whose label is a digit token y, the model's probabilities over the ten digit tokens
(renormalised among themselves) give p_0..p_9; then
- NTL-MSE:  (sum_k p_k * k - y)^2      (the original workflow's choice)
- NTL-WAS:  sum_k p_k * |k - y|       (Wasserstein-1 between the prediction and the label)
Both are ~0 when all probability sits on the right digit and grow with the distance of the wrong digits.
"""

from __future__ import annotations

from typing import Sequence

import torch


def number_token_loss(logits: torch.Tensor, labels: torch.Tensor, digit_token_ids: Sequence[int],
                      kind: str = "mse") -> torch.Tensor:
    """Mean number-token loss over the positions whose label is one of ``digit_token_ids`` ('0'..'9').

    ``logits`` (..., V) and ``labels`` (...) of the positions to score (e.g. the masked ones; -100 and other
    non-digit labels are skipped). Returns a zero that keeps the graph when no label is a digit.
    """
    if kind not in ("mse", "was"):
        raise ValueError(f"kind must be 'mse' or 'was', got {kind!r}")
    digits = torch.as_tensor(list(digit_token_ids), device=logits.device)
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    is_digit = labels.unsqueeze(-1) == digits  # (N, 10)
    rows = is_digit.any(-1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    value = is_digit[rows].float().argmax(-1).to(torch.float32)  # the label's digit value, (M,)
    probs = torch.softmax(logits[rows][:, digits].float(), dim=-1)  # (M, 10)
    values = torch.arange(10, device=logits.device, dtype=torch.float32)
    if kind == "mse":
        return ((probs @ values - value) ** 2).mean()
    return (probs * (values.unsqueeze(0) - value.unsqueeze(-1)).abs()).sum(-1).mean()
