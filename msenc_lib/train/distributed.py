"""Process-group setup from the launcher's env, and the few collectives training needs.

``WORLD_SIZE > 1`` means distributed: torchrun sets ``RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT``; the Kubeflow Training Operator sets the same minus ``LOCAL_RANK`` (one process per pod, so
it defaults to 0). Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from msenc_lib.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of ``values`` over all ranks (float64, identical on every rank)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def any_true(self, flag: bool) -> bool:
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Pick the device and, when ``WORLD_SIZE > 1``, join the process group (``env://`` rendezvous)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank % max(torch.cuda.device_count(), 1))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1:
        if not 0 <= rank < world:
            raise ConfigError(f"environment: RANK={rank} outside WORLD_SIZE={world}")
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {missing} not set (torchrun or the training operator set them)")
        if not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
            ctx.initialized_here = True
        log.info("distributed: rank %d of %d (local rank %d) on %s, backend %s", rank, world, local_rank, dev,
                 dist.get_backend())
    return ctx
