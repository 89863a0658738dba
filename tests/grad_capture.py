"""``msenc train`` (arguments as for ``python -m msenc_cli train``) that also saves, at every optimizer step,
the gradients the optimizer is about to apply: ``$GRADS_DIR/rank<RANK>-step<k>.pt`` (a list of tensors in
parameter order). ``GRAD_SCALE`` multiplies them first: a stand-in for a wrong global gradient scale, to show
that the DDP test catches one. Run as a script (one per rank, or under torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


def capture_gradients(directory: str | Path, rank: int = 0, scale: float = 1.0):
    """Save (and optionally scale) the gradients at every optimizer step; returns the hook's handle."""
    steps = [0]

    def hook(optimizer, args, kwargs):
        grads = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if scale != 1.0:
                        p.grad.mul_(scale)
                    grads.append(p.grad.detach().clone())
        torch.save(grads, Path(directory) / f"rank{rank}-step{steps[0]}.pt")
        steps[0] += 1

    return register_optimizer_step_pre_hook(hook)


def load_gradients(directory: str | Path, rank: int = 0) -> list[list[torch.Tensor]]:
    files = sorted(Path(directory).glob(f"rank{rank}-step*.pt"), key=lambda p: int(p.stem.split("step")[1]))
    return [torch.load(f) for f in files]


def worst_gradient_difference(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    """Largest difference between two runs' gradients, relative to each tensor's largest entry in ``b``."""
    assert len(a) == len(b) > 0 and all(len(x) == len(y) for x, y in zip(a, b))
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
               for step_a, step_b in zip(a, b) for x, y in zip(step_a, step_b))


if __name__ == "__main__":
    from msenc_cli.main import main

    capture_gradients(os.environ["GRADS_DIR"], int(os.environ.get("RANK", "0")),
                      float(os.environ.get("GRAD_SCALE", "1")))
    sys.exit(main(["train", *sys.argv[1:]]))
