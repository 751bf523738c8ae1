"""Stage 1's step and what it is built from: the student + UMA heads and the frozen CLIP teacher
(:func:`build_models`), their FLOP-model spec (:func:`umt_spec`), the teacher's autocast dtype, :class:`TeacherStep`
(teacher forward and semantic mask, shared with stage 2's step) and :class:`StageOneStep`, one training step in named
phases (benchmarks/bench_step.py times each).

Masks are seeded by host integers: a step never waits on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn

import umt.model  # noqa: F401 - registers the umt_vit_* names in timm
from umt import masking, ops
from umt.config import ConfigError, TrainConfig
from umt.flops import UMTSpec, ViTSpec
from umt.losses import uma_loss
from umt.model import CLIPTeacher, TeacherOutput, UMTPretrain
from umt.train.step import TrainStep, autocast_context

__all__ = ["build_models", "umt_spec", "teacher_autocast_dtype", "TeacherStep", "StageOneStep"]

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


class TeacherStep(TrainStep):
    """A step with stage 1's frozen teacher: its forward (autocast to :attr:`teacher_dtype`) and the mask drawn from
    its attention, shared by stage 1 (:class:`StageOneStep`) and stage 2
    (:class:`umt.train.video_text.step.VideoTextStep`).

    Args:
        model: the trainable module, possibly DDP-wrapped.
        teacher: the frozen teacher (never wrapped).
        optimizer, scheduler: from :func:`umt.train.step.build_optimizer` / :func:`umt.train.step.build_scheduler`.
        cfg: the run config.
        device: compute device; ``amp_dtype``: the student's autocast dtype (bf16) or None for fp32; the teacher
            uses :func:`teacher_autocast_dtype` (``model.teacher_precision``).

    Raises:
        ConfigError: unknown ``model.teacher_precision``.
    """

    def __init__(self, model: nn.Module, teacher: CLIPTeacher, optimizer: torch.optim.Optimizer,
                 scheduler: Any, cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        super().__init__(model, optimizer, scheduler, cfg, device, amp_dtype)
        self.teacher = teacher
        self.teacher_dtype = teacher_autocast_dtype(cfg.model.teacher_precision, amp_dtype)
        grid = cfg.data.input_size // 16
        self.tokens_per_frame = grid * grid
        #: visible tokens per frame of a video (``mask.ratio``)
        self.keep = masking.keep_per_frame(self.tokens_per_frame, cfg.mask.ratio)

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

    def keep_preview(self, video: torch.Tensor, tout: TeacherOutput, idx: torch.Tensor) -> None:
        """On an image-logging step (:attr:`keep_first_clip`), keep views of the first sample for the preview:
        ``(video [3, T, S, S], q_cls [T, H, D], k [T, H, 1+N, D], kept positions [T·K])``. Views only: no copy, no
        host sync (the trainer renders them on logging steps)."""
        if self.keep_first_clip:
            t = video.shape[2]
            self.first_clip = (video[0], tout.q_cls[:t], tout.k[:t], idx[0])


class StageOneStep(TeacherStep):
    """One UMT stage-1 optimizer step, in phases: per micro-batch (teacher → mask → student forward/backward), then
    the optimizer (:meth:`TrainStep.optimizer_step`).

    Args:
        model: :class:`UMTPretrain`, possibly DDP-wrapped; the others as :class:`TeacherStep`.
    """

    def forward_backward(self, video: torch.Tensor, idx: torch.Tensor, tout: TeacherOutput,
                         scale: float = 1.0) -> torch.Tensor:
        """Student forward, UMA loss against the gathered targets, backward of ``scale · loss`` (gradients add up
        over micro-batches). Returns the detached, unscaled loss (0-dim)."""
        target = ops.gather_targets(tout.targets, idx)  # [L, B, K, C_t]
        with autocast_context(self.device, self.amp_dtype):
            pred = self.model(video, idx)  # [L, B, K, C_t]
        return self.backward(uma_loss(pred, target), scale)

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
        self.keep_preview(video, tout, idx)
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
        losses, applied = self.run_step([{"video": v} for v in videos], seeds)
        return losses["loss"], applied
