"""Building blocks of a stage-1 run shared by the trainer and ``benchmarks/bench_step.py``: model/teacher/optimizer
builders, the LR schedule, and :class:`StageOneStep`, one training step in named phases.

A step never waits on the host: masks are seeded by host integers, the non-finite check is a device-side flag
consumed by the fused AdamW kernel (``found_inf``: the update and the step count are skipped on device), and the
skip counters stay on the device until a logging step reads them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn

import umt.model  # noqa: F401 - registers the umt_vit_* names in timm
from umt import masking, ops
from umt.flops import UMTSpec, ViTSpec
from umt.losses import uma_loss
from umt.model import CLIPTeacher, TeacherOutput, UMTPretrain
from umt.config import ConfigError, OptimConfig, TrainConfig, accumulation_steps

__all__ = ["build_models", "build_optimizer", "build_scheduler", "lr_multiplier", "param_groups", "peak_lr",
           "StageOneStep", "TrainStep", "umt_spec", "autocast_context", "teacher_autocast_dtype"]

log = logging.getLogger(__name__)


def build_models(cfg: TrainConfig, device: torch.device) -> tuple[UMTPretrain, CLIPTeacher]:
    """Student + UMA heads (trainable) and the frozen teacher, on ``device`` (fp32 weights).

    Raises:
        ConfigError: the teacher's patch grid does not match the student's.
    """
    d, m = cfg.data, cfg.model
    student = timm.create_model(m.student, num_frames=d.num_frames, img_size=d.input_size,
                                drop_path_rate=m.drop_path, align_layers=m.align_layers)
    teacher = CLIPTeacher(m.teacher, m.teacher_image_size, m.teacher_weights or None, m.teacher_quick_gelu,
                          m.align_layers, m.teacher_input_norm, video_mean=d.mean, video_std=d.std)
    if m.teacher_image_size // teacher.patch_size != d.input_size // student.patch_size:
        raise ConfigError(f"teacher grid {m.teacher_image_size}/{teacher.patch_size} != student grid "
                          f"{d.input_size}/{student.patch_size}: set model.teacher_image_size")
    model = UMTPretrain(student, teacher.output_dim)
    return model.to(device), teacher.to(device)


def umt_spec(cfg: TrainConfig, model: UMTPretrain, teacher: CLIPTeacher) -> UMTSpec:
    """FLOP-model spec (:mod:`umt.flops`) of this run's sizes, for MFU."""
    s = model.student
    tv = teacher.visual
    return UMTSpec(
        student=ViTSpec(s.embed_dim, len(s.blocks), s.patch_size),
        teacher=ViTSpec(tv.transformer.width, len(tv.transformer.resblocks), teacher.patch_size),
        teacher_dim=teacher.output_dim, teacher_size=teacher.image_size, num_frames=cfg.data.num_frames,
        input_size=cfg.data.input_size, mask_ratio=cfg.mask.ratio, align_layers=s.align_layers)


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


_TEACHER_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def teacher_autocast_dtype(teacher_precision: str, amp_dtype: torch.dtype | None) -> torch.dtype | None:
    """The teacher's autocast dtype: ``model.teacher_precision`` in a mixed-precision run (``amp_dtype`` set), fp32
    (None) in an fp32 run.

    Raises:
        ConfigError: unknown precision name.
    """
    if teacher_precision not in _TEACHER_DTYPES:
        raise ConfigError(f"teacher precision must be one of {sorted(_TEACHER_DTYPES)}, got {teacher_precision!r}")
    return None if amp_dtype is None else _TEACHER_DTYPES[teacher_precision]


class TrainStep:
    """What every task's step shares: gradient accumulation over micro-batches, DDP ``no_sync``, and the optimizer
    step with the non-finite guard (:meth:`optimizer_step`), all without a host sync.

    A task's step implements :meth:`train_batch` (forward, losses, backward of one micro-batch). With several
    micro-batches (gradient accumulation, ``optim.global_batch``) each one's loss is scaled by 1/micro-batches, so the
    summed gradient is that of the mean loss over the whole step's samples: equal-sized micro-batches give the
    gradient of one big batch. A DDP model skips the gradient all-reduce (``no_sync``) on all but the last.

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
        #: its batch's first sample) for :meth:`umt.train.tasks.Task.log_image`
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

class StageOneStep(TrainStep):
    """One UMT stage-1 optimizer step, in phases: per micro-batch (teacher → mask → student forward/backward), then
    the optimizer (:meth:`TrainStep.optimizer_step`).

    Args:
        model: :class:`UMTPretrain`, possibly DDP-wrapped.
        teacher: the frozen teacher (never wrapped).
        optimizer, scheduler: from :func:`build_optimizer` / :func:`build_scheduler`.
        cfg: the run config.
        device: compute device; ``amp_dtype``: the student's autocast dtype (bf16) or None for fp32; the teacher
            uses :func:`teacher_autocast_dtype` (``model.teacher_precision``).
    """

    def __init__(self, model: nn.Module, teacher: CLIPTeacher, optimizer: torch.optim.Optimizer,
                 scheduler: Any, cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        super().__init__(model, optimizer, scheduler, cfg, device, amp_dtype)
        self.teacher = teacher
        self.teacher_dtype = teacher_autocast_dtype(cfg.model.teacher_precision, amp_dtype)
        grid = cfg.data.input_size // 16
        self.tokens_per_frame = grid * grid
        self.keep = masking.keep_per_frame(self.tokens_per_frame, cfg.mask.ratio)
        # first_clip here: views of (video [3, T, S, S], q_cls [T, H, D], k [T, H, 1+N, D], kept positions [T·K])

    def teacher_forward(self, video: torch.Tensor) -> TeacherOutput:
        """Frozen teacher on ``video [B, 3, T, H, W]`` (autocast to :attr:`teacher_dtype`, bf16 on GPU by default)."""
        with torch.no_grad(), autocast_context(self.device, self.teacher_dtype):
            return self.teacher(video)

    def make_mask(self, tout: TeacherOutput, video: torch.Tensor, seed: int, keep: int | None = None) -> torch.Tensor:
        """Kept positions ``[B, T·K]`` (sorted) for this step's mask kind; ``keep`` tokens per frame (default
        :attr:`keep`, from ``mask.ratio``)."""
        b, _, t = video.shape[:3]
        with torch.no_grad():
            return masking.make_mask(self.cfg.mask.kind, batch=b, frames=t, tokens_per_frame=self.tokens_per_frame,
                                     keep=self.keep if keep is None else keep, seed=seed, q_cls=tout.q_cls, k=tout.k,
                                     device=video.device)

    def forward_backward(self, video: torch.Tensor, idx: torch.Tensor, tout: TeacherOutput,
                         scale: float = 1.0) -> torch.Tensor:
        """Student forward, UMA loss against the gathered targets, backward of ``scale · loss`` (gradients add up
        over micro-batches). Returns the detached, unscaled loss (0-dim)."""
        target = ops.gather_targets(tout.targets, idx)  # [L, B, K, C_t]
        with autocast_context(self.device, self.amp_dtype):
            pred = self.model(video, idx)  # [L, B, K, C_t]
        loss = uma_loss(pred, target)
        (loss * scale if scale != 1.0 else loss).backward()
        return loss.detach()

    def micro_step(self, video: torch.Tensor, seed: int, *, idx: torch.Tensor | None = None, scale: float = 1.0,
                   sync: bool = True) -> torch.Tensor:
        """Teacher, mask (``idx [B, T·K]`` when given, else drawn with ``seed``), forward and backward of one
        micro-batch, accumulating into ``.grad``. ``sync=False`` skips DDP's gradient all-reduce (``no_sync``).

        Returns:
            The detached loss of this micro-batch (0-dim, unscaled).
        """
        tout = self.teacher_forward(video)
        if idx is None:
            idx = self.make_mask(tout, video, seed)
        if self.keep_first_clip:  # views only: no copy, no host sync (the trainer renders on logging steps)
            t = video.shape[2]
            self.first_clip = (video[0], tout.q_cls[:t], tout.k[:t], idx[0])
        with self.no_sync(sync):
            return self.forward_backward(video, idx, tout, scale)

    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        """:meth:`micro_step` on ``batch["video"]``: ``{"loss": UMA loss}``."""
        return {"loss": self.micro_step(batch["video"], seed, scale=scale, sync=sync)}

    def __call__(self, video: torch.Tensor | Sequence[torch.Tensor],
                 seed: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over one batch ``[B, 3, T, H, W]`` or a sequence of equal-sized micro-batches (one
        mask seed each). Returns ``(mean loss, applied)`` as device tensors (no sync).

        Raises:
            ValueError: different numbers of micro-batches and seeds.
        """
        videos = [video] if isinstance(video, torch.Tensor) else list(video)
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if len(videos) != len(seeds) or not videos:
            raise ValueError(f"got {len(videos)} micro-batches and {len(seeds)} seeds")
        n = len(videos)
        losses = [self.micro_step(v, s, scale=1.0 / n, sync=i == n - 1) for i, (v, s) in enumerate(zip(videos, seeds))]
        loss = losses[0] if n == 1 else torch.stack(losses).mean()
        return loss, self.optimizer_step()
