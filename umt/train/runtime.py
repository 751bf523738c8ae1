"""Where a run's processes run: rank and world from torchrun's environment, the device, the autocast dtype, and
the process group's set-up and teardown.

Tasks receive a :class:`Runtime` to build their models and loaders on; the trainer builds it with
:func:`init_runtime`. It lives apart from the trainer so that a task never imports the training loop.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from umt.config import TrainConfig
from umt.train.preempt import restart_count

__all__ = ["Runtime", "init_runtime", "close_process_group"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Process placement: rank/world from torchrun's environment, device, autocast dtype."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    amp_dtype: torch.dtype | None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(cfg: TrainConfig) -> Runtime:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, pick the device, init the process group (NCCL on
    GPU, gloo on CPU) when there are several processes.

    Raises:
        RuntimeError: ``device="cuda"`` without a GPU.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA GPU is available")
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _warn_shared_store()
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return Runtime(rank, world, local, device, torch.bfloat16 if bf16 else None)


def _warn_shared_store() -> None:
    """torchrun (torch 2.5 to at least 2.13) keeps one TCPStore for every attempt of a job, and the workers' keys carry
    no attempt prefix: a restarted rank can read the address its dead peer published in the previous attempt and fail
    to connect ("Connection refused"; 3 restarts in 4 failed in ``tests/test_preempt.py``). pytorch/pytorch#135712
    and #167288; torchrun's own opt-out, ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, gives every attempt a fresh store.
    """
    if restart_count() > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log.warning("torchrun restart %d with its shared TCPStore: the process group may connect to a dead peer's "
                    "address (pytorch/pytorch#135712); launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
                    restart_count())


def close_process_group() -> None:
    """Tear the process group down on every rank without gloo's exit hang.

    With gloo, a rank that destroys the group while a peer's DDP reducer still uses it can hang at interpreter exit
    (seen 2 runs in 12 on 2 CPU cores; CI timed out on it). Callers drop their DDP wrappers first; this collects
    them, waits for every rank, then destroys the group.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
