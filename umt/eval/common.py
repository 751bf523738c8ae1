"""What the evaluation commands share: the evaluation loader's config, process placement under torchrun, the
per-sample accumulator reduced across ranks and the no-overwrite rule (writes go through :mod:`umt.fileio`).

Evaluation batches follow the data contract of fine-tuning/evaluation (``/work/prompts/data_contract_ft.md``,
DataConfig ``train=False``)::

    {"video": float [R, 3, T, H, W], "label": int64 [R], "index": int64 [R] (-1 on padding rows),
     "view": int64 [R] (0 .. V-1; absent from loaders without multi-view evaluation: view 0)}

Rows of one sample may be spread over batches and over ranks, and ranks may run different numbers of batches, so
everything is accumulated per sample ``index`` on the device and reduced across ranks once, at the end
(:class:`IndexAccumulator`), never per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["parse_views", "eval_data_config", "iterate", "model_inputs", "loader_num_views",
           "IndexAccumulator", "DistContext", "init_distributed", "close_distributed", "dist_info",
           "autocast", "check_free", "CountError", "broadcast_flag"]

log = logging.getLogger(__name__)


class CountError(RuntimeError):
    """Some sample of the evaluation set was not seen exactly once per view (a loader that drops or repeats
    samples); the message names how many and the first of them."""


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` → ``(temporal, spatial) = (4, 3)``.

    Raises:
        ValueError: not ``TxS`` with both ≥ 1.
    """
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"views must be TEMPORALxSPATIAL with both >= 1 (e.g. 4x3), got {text!r}")
    return int(parts[0]), int(parts[1])


def eval_data_config(shards: str | Path, *, batch_size: int, num_frames: int, input_size: int,
                     views: tuple[int, int] = (1, 1), base: Any = None, **overrides: Any) -> Any:
    """The evaluation :class:`~umt.data.config.DataConfig` of ``shards``: ``train=False`` (segment centres or the
    ``(clip_idx + 1)/(N + 1)`` offsets of ``temporal_views`` clips, centre or 3 crops, no flip), every sample
    delivered (``drop_last=False``, padding rows ``index = -1``), normalisation and backend from ``base`` (the run's
    own DataConfig) when given.
    """
    from umt.data.config import DataConfig

    kw: dict[str, Any] = {}
    if base is not None:
        kw.update(backend=base.backend, num_workers=base.num_workers, mean=tuple(base.mean), std=tuple(base.std),
                  seed=base.seed)
    kw.update(shards=str(shards), batch_size=batch_size, num_frames=num_frames, input_size=input_size,
              num_sample=1, train=False, flip=False)
    kw.update(temporal_views=views[0], spatial_views=views[1], drop_last=False)
    kw.update(overrides)
    return DataConfig(**kw)


def loader_num_views(loader: Any) -> int:
    """Views per sample a loader delivers: ``loader.num_views``, else ``temporal_views × spatial_views`` of its
    ``cfg``, else 1."""
    n = getattr(loader, "num_views", None)
    if n is not None:
        return int(n)
    cfg = getattr(loader, "cfg", None)
    return int(getattr(cfg, "temporal_views", 1)) * int(getattr(cfg, "spatial_views", 1))


def model_inputs(loader: Any, device: torch.device, amp_dtype: torch.dtype | None
                 ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One pass over an evaluation loader as ``(video on device, batch)``: fp32 clips for an fp32 model (the GPU
    loader delivers bf16); the caller runs its model under :func:`autocast` ``(device, amp_dtype)``."""
    for batch in iterate(loader):
        video = batch["video"].to(device, non_blocking=True)
        yield (video.float() if amp_dtype is None else video), batch


def iterate(loader: Any) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over an evaluation loader (``epoch_iter(0)`` of a :class:`~umt.data.loader.VideoLoader`, else
    ``iter(loader)``)."""
    if hasattr(loader, "epoch_iter"):
        return loader.epoch_iter(0)
    return iter(loader)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (one tiny all-reduce; ``flag`` as is without a process group)."""
    rank, world = dist_info()
    if world == 1:
        return flag
    t = torch.tensor([int(flag) if rank == 0 else 0], device=device)
    dist.all_reduce(t)
    return bool(t.item())


class IndexAccumulator:
    """Per-sample sums of row vectors and per-(sample, view) row counts, accumulated on the device, reduced across
    ranks once.

    Row ``r`` of a batch adds ``values[r]`` to sample ``index[r]``'s sum and 1 to its ``(index, view)`` count;
    rows with ``index == -1`` (padding) go to a sink slot that is dropped. Fixed shapes, no host sync per batch
    (``index_add_`` into ``[N + 1, D]``). :meth:`reduce` all-reduces the tables (SUM; labels MIN/MAX) over the
    default process group, so every rank holds the same totals whatever rows it saw.

    Args:
        num_samples: N, the data set's samples (``loader.num_samples``); indices lie in ``[0, N)``.
        dim: D, the width of the summed vectors (classes for scores, channels for features).
        num_views: V, views per sample (``view`` lies in ``[0, V)``).
        device: where the tables live (the model's device; CUDA for NCCL).
    """

    def __init__(self, num_samples: int, dim: int, num_views: int, device: torch.device) -> None:
        if num_samples < 1 or dim < 1 or num_views < 1:
            raise ValueError(f"num_samples, dim and num_views must be >= 1, got {num_samples}, {dim}, {num_views}")
        self.n, self.d, self.v, self.device = num_samples, dim, num_views, torch.device(device)
        self.sums = torch.zeros(num_samples + 1, dim, dtype=torch.float32, device=self.device)  # [N+1, D]
        self.counts = torch.zeros((num_samples + 1) * num_views, dtype=torch.int64, device=self.device)  # [(N+1)·V]
        self.label_min = torch.full((num_samples + 1,), 2**62, dtype=torch.int64, device=self.device)  # [N+1]
        self.label_max = torch.full((num_samples + 1,), -2, dtype=torch.int64, device=self.device)  # [N+1]
        self.bad = torch.zeros(2, dtype=torch.int64, device=self.device)  # rows with index / view out of range
        self.rows = 0

    def add(self, values: torch.Tensor, index: torch.Tensor, label: torch.Tensor,
            view: torch.Tensor | None = None) -> None:
        """Add one batch: ``values [R, D]``, ``index``/``label``/``view`` int ``[R]``."""
        r = values.shape[0]
        if values.ndim != 2 or values.shape[1] != self.d or index.shape != (r,) or label.shape != (r,):
            raise ValueError(f"expected values [R, {self.d}] and index/label [R]; got {tuple(values.shape)}, "
                             f"{tuple(index.shape)}, {tuple(label.shape)}")
        dev = self.device
        index = index.to(dev, torch.int64)
        view = torch.zeros_like(index) if view is None else view.to(dev, torch.int64)
        bad_index = (index < -1) | (index >= self.n)
        bad_view = ((view < 0) | (view >= self.v)) & (index >= 0)
        self.bad += torch.stack([bad_index.sum(), bad_view.sum()])
        slot = torch.where((index >= 0) & ~bad_index & ~bad_view, index, self.n)  # [R]; padding → sink slot N
        self.sums.index_add_(0, slot, values.to(dev, torch.float32))
        self.counts.index_add_(0, slot * self.v + view.clamp(0, self.v - 1), torch.ones_like(slot))
        label = label.to(dev, torch.int64)
        self.label_min.scatter_reduce_(0, slot, label, reduce="amin")
        self.label_max.scatter_reduce_(0, slot, label, reduce="amax")
        self.rows += r

    def reduce(self) -> None:
        """All-reduce the tables over the default process group (no-op in a single process). Call once, on every
        rank, after the last batch (ranks may have added different numbers of batches)."""
        _, world = dist_info()
        if world == 1:
            return
        for t in (self.sums, self.counts, self.bad):
            dist.all_reduce(t)
        dist.all_reduce(self.label_min, op=dist.ReduceOp.MIN)
        dist.all_reduce(self.label_max, op=dist.ReduceOp.MAX)

    def check(self, what: str = "sample") -> None:
        """Every sample was seen exactly once in each of its V views, and all its rows carry one label.

        Raises:
            CountError: rows with an index outside ``[-1, N)`` or a view outside ``[0, V)``, samples missing, views
                missing or repeated, or rows of one sample with different labels.
        """
        bad_index, bad_view = (int(x) for x in self.bad.tolist())
        if bad_index or bad_view:
            raise CountError(f"{bad_index} rows with an index outside [-1, {self.n}) and {bad_view} with a view "
                             f"outside [0, {self.v})")
        counts = self.counts.view(self.n + 1, self.v)[: self.n].cpu()  # [N, V]
        wrong = (counts != 1).any(1)
        if bool(wrong.any()):
            i = int(wrong.nonzero()[0, 0])
            missing = int((counts.sum(1) == 0).sum())
            raise CountError(f"{int(wrong.sum())} of {self.n} {what}s not counted exactly once per view "
                             f"({missing} never seen; {what} {i} has per-view counts {counts[i].tolist()}, expected "
                             f"{self.v} × 1): the loader dropped or repeated samples (needs drop_last=False)")
        lo, hi = self.label_min[: self.n].cpu(), self.label_max[: self.n].cpu()
        if bool((lo != hi).any()):
            i = int((lo != hi).nonzero()[0, 0])
            raise CountError(f"rows of {what} {i} carry different labels ({int(lo[i])} and {int(hi[i])})")

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums [N, D] float32, labels [N] int64)`` on the device (after :meth:`reduce` and :meth:`check`)."""
        return self.sums[: self.n], self.label_max[: self.n]


@dataclasses.dataclass
class DistContext:
    """Where this evaluation process runs: ``rank`` of ``world_size`` on ``device`` (``owns_group``: this process
    created the process group and tears it down)."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; with several processes initialise the default group
    (NCCL on GPU, gloo on CPU) unless one exists.

    Raises:
        RuntimeError: ``device="cuda"`` without a GPU.
        ValueError: ``device`` not in auto|cpu|cuda.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto|cpu|cuda, got {device!r}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is available")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
        owns = True
    rank, world = dist_info()
    return DistContext(rank, world, dev, owns)


def close_distributed(ctx: DistContext) -> None:
    """Barrier, then destroy the process group if ``ctx`` created it (the barrier first: gloo can hang at exit when
    a rank destroys the group while a peer still uses it)."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_free(paths: Sequence[str | Path], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse to replace existing files unless ``overwrite``.

    Raises:
        FileExistsError: one of ``paths`` exists and ``overwrite`` is False (names it and ``flag``).
    """
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise FileExistsError(f"{p} already exists: choose another output or pass {flag}")
