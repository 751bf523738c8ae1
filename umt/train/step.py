"""What every task's training step shares: AdamW parameter groups and peak LR, the optimizer and its LR schedule,
autocast, and :class:`TrainStep` (gradient accumulation, DDP ``no_sync``, the backward of a micro-batch's scaled loss,
the optimizer step with its non-finite guard). Each stage's own step subclasses it (``umt.train.distill.step``,
``umt.train.video_text.step``, ``umt.train.finetune.step``).

A step never waits on the host: the non-finite check is a device-side flag consumed by the fused AdamW kernel
(``found_inf``: the update and the step count are skipped on device), and the skip counters stay on the device until
a logging step reads them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from umt.config import OptimConfig, TrainConfig, accumulation_steps

__all__ = ["build_optimizer", "build_scheduler", "lr_multiplier", "param_groups", "peak_lr", "TrainStep",
           "autocast_context"]

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on ≥2-D weights, none on biases and 1-D parameters (norms, q/v biases)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_lr(cfg: TrainConfig, world_size: int) -> tuple[float, float]:
    """``(peak, min)`` LR scaled by global batch / 256, global batch = batch·world·accumulation·num_sample
    (``optim.global_batch``·num_sample when set): the same on 8 or 32 GPUs for the same ``global_batch``.

    Raises:
        ConfigError: ``optim.global_batch`` is not a multiple of batch × world (:func:`accumulation_steps`).
    """
    clips = cfg.data.batch_size * world_size * accumulation_steps(cfg, world_size)
    scale = clips * cfg.data.num_sample / 256.0
    return cfg.optim.lr * scale, cfg.optim.min_lr * scale


def build_optimizer(model: nn.Module, ocfg: OptimConfig, lr: float, device: torch.device,
                    groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (default :func:`param_groups` of ``model``; a group with ``lr_scale`` gets
    ``lr × lr_scale``): torch's fused kernel (``auto``/``fused``), ``foreach``, or apex FusedAdam.

    Raises:
        ImportError: ``impl="apex"`` without apex.
    """
    if groups is None:
        groups = param_groups(model, ocfg.weight_decay)
    # a group's ``lr_scale`` (layer-wise decay) sets its own peak LR; the scheduler's multiplier applies to each
    groups = [{**g, "lr": lr * g["lr_scale"]} if "lr_scale" in g else g for g in groups]
    if ocfg.impl == "apex":
        from apex.optimizers import FusedAdam  # type: ignore[import-not-found]

        return FusedAdam(groups, lr=lr, betas=ocfg.betas, adam_w_mode=True)
    fused = ocfg.impl in ("auto", "fused")
    return torch.optim.AdamW(groups, lr=lr, betas=ocfg.betas, fused=fused, foreach=None if fused else True)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR / peak at ``step``: linear warm-up from 0, then cosine from 1 to ``min_ratio`` (official UMT
    ``cosine_scheduler``, per step)."""
    if step < warmup_steps:
        return step / max(warmup_steps, 1)
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    lr: float, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over optimizer steps with :func:`lr_multiplier` (warm-up and cosine in epochs × steps/epoch)."""
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    total = cfg.optim.epochs * steps_per_epoch
    ratio = min_lr / lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, warmup, total, ratio))


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` (bf16/fp16) where it is set, else a no-op."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class TrainStep:
    """What every task's step shares: gradient accumulation over micro-batches, DDP ``no_sync``, and the optimizer
    step with the non-finite guard (:meth:`optimizer_step`), all without a host sync.

    A task's step implements :meth:`train_batch` (forward, losses, and :meth:`backward` of one micro-batch). With
    several micro-batches (gradient accumulation, ``optim.global_batch``) each one's loss is scaled by 1/micro-batches,
    so the summed gradient is that of the mean loss over the whole step's samples: equal-sized micro-batches give the
    gradient of one big batch. A DDP model skips the gradient all-reduce (``no_sync``) on all but the last.
    :meth:`run_step` is one whole optimizer step over given micro-batches (benchmarks and tests; the trainer runs
    the same sequence itself, fetching each micro-batch as it goes).

    Args:
        model: the trainable module, possibly DDP-wrapped.
        optimizer, scheduler: from :func:`build_optimizer` / :func:`build_scheduler`.
        cfg: the run config (``optim.clip_grad``).
        device: compute device; ``amp_dtype``: autocast dtype (bf16) or None for fp32.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig,
                 device: torch.device, amp_dtype: torch.dtype | None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        #: set by the trainer on image-logging steps: the step then keeps ``first_clip`` (task-specific views of
        #: its batch's first sample) for :meth:`umt.train.task.Task.log_image`
        self.keep_first_clip = False
        self.first_clip: tuple[torch.Tensor, ...] | None = None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.skip_native = isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))
        #: Device-side counters: all skipped steps, and the current run of consecutive skipped steps.
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive = torch.zeros((), dtype=torch.int64, device=device)

    def no_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` when ``sync`` is False and the model is DDP-wrapped, else a no-op."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if (not sync and no_sync is not None) else contextlib.nullcontext()

    @staticmethod
    def backward(loss: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Backward of ``scale · loss`` (0-dim; ``scale`` = 1/micro-batches, so that the gradients summed over a
        step's micro-batches are those of their mean loss). Call it inside :meth:`no_sync`.

        Returns:
            ``loss`` detached and unscaled (0-dim, on the device: no host sync).
        """
        (loss * scale if scale != 1.0 else loss).backward()
        return loss.detach()

    @staticmethod
    def mean_losses(losses: Sequence[dict[str, torch.Tensor]],
                    keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The mean of each loss over one step's micro-batches (``keys``, default the first's), 0-dim each; one
        micro-batch's own tensors when there is one.

        Raises:
            IndexError: ``losses`` is empty.
        """
        keys = list(losses[0] if keys is None else keys)
        if len(losses) == 1:
            return {k: losses[0][k] for k in keys}
        return {k: torch.stack([x[k] for x in losses]).mean() for k in keys}

    def optimizer_step(self) -> torch.Tensor:
        """Clip (optional), skip on a non-finite global grad norm without a host sync, step, schedule.

        With DDP the gradients are already averaged, so every rank sees the same norm and skips alike.

        Returns:
            0-dim bool tensor: the update was applied.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)  # 0-dim, on device
        ok = torch.isfinite(norm)
        if self.cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.optim.clip_grad, norm, foreach=True)
        saved = None
        if self.skip_native:
            # The fused AdamW kernel skips params, moments and step count where found_inf != 0 (on device).
            self.optimizer.found_inf = (~ok).float()
        else:
            # Fallback: zero the gradients of a bad step, and put the weights back after the step (weight decay and
            # the moments would still move them); the moments still decay once (documented difference).
            zero = torch.zeros((), device=norm.device)
            for g in grads:
                g.copy_(torch.where(ok, torch.nan_to_num(g, 0.0, 0.0, 0.0), zero))
            saved = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        if saved is not None:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(torch.where(ok, p, s))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        bad = (~ok).to(torch.int64)
        self.skipped += bad
        self.consecutive.mul_(bad).add_(bad)
        return ok

    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        """Forward, losses and backward of ``scale · loss`` for one micro-batch (a loader's batch dict), with
        ``seed`` for its random draws (masks). ``sync=False``: skip DDP's all-reduce.

        Returns:
            Detached, unscaled 0-dim losses on the device, ``"loss"`` (the total) first, named as the task's
            ``metrics``.
        """
        raise NotImplementedError

    def run_step(self, batches: Sequence[dict[str, Any]],
                 seeds: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step over equal-sized micro-batches (one seed each): :meth:`train_batch` of each with
        ``scale = 1/len(batches)`` and DDP's all-reduce on the last only, then :meth:`optimizer_step`.

        Returns:
            ``(mean losses over the micro-batches, applied)``: 0-dim device tensors (no host sync).

        Raises:
            ValueError: no micro-batch, or different numbers of micro-batches and seeds.
        """
        if len(batches) != len(seeds) or not batches:
            raise ValueError(f"got {len(batches)} micro-batches and {len(seeds)} seeds")
        n = len(batches)
        losses = [self.train_batch(b, s, scale=1.0 / n, sync=i == n - 1)
                  for i, (b, s) in enumerate(zip(batches, seeds))]
        return self.mean_losses(losses), self.optimizer_step()

