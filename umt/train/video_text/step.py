"""Stage 2's step: one micro-batch of video-text (or image-text) pre-training in named phases: teacher forward
(frozen, never in DDP, autocast as stage 1) → semantic mask at the batch's modality's ratio (video 0.8, image 0.5) →
the model's four losses (VTC, VTM, MLM, UTA) → backward of their weighted sum. The optimizer step, accumulation and
non-finite guard are :class:`~umt.train.step.TrainStep`'s; the teacher and the mask
:class:`~umt.train.distill.step.TeacherStep`'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from umt import ops
from umt.config import TrainConfig
from umt.losses import caption_keys
from umt import masking
from umt.masking import keep_per_frame
from umt.model import CLIPTeacher
from umt.model.vision_text import LOSS_NAMES
from umt.train.distill.step import TeacherStep
from umt.train.step import autocast_context

__all__ = ["VideoTextStep"]


class VideoTextStep(TeacherStep):
    """One stage-2 micro-batch: teacher → mask → :class:`~umt.model.vision_text.UMTVisionText` losses → backward
    (the optimizer step, accumulation and non-finite guard are :class:`~umt.train.step.TrainStep`'s).

    Args:
        model: :class:`UMTVisionText`, possibly DDP-wrapped.
        teacher: the frozen CLIP teacher (never wrapped), or None (teacher-free: UTA weight 0 and no semantic mask,
            as fine-tuned retrieval: every token visible, or a tube/random mask when ``mask.ratio`` > 0).
        optimizer, scheduler, cfg, device, amp_dtype: as :class:`~umt.train.distill.step.TeacherStep` (the
            teacher's autocast follows ``model.teacher_precision``).
    """

    def __init__(self, model: nn.Module, teacher: CLIPTeacher | None, optimizer: torch.optim.Optimizer, scheduler: Any,
                 cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        super().__init__(model, teacher, optimizer, scheduler, cfg, device, amp_dtype)
        #: visible tokens per frame: :attr:`keep` (video, ``mask.ratio``) and this (image, ``mask.image_ratio``)
        self.keep_image = keep_per_frame(self.tokens_per_frame, cfg.mask.image_ratio)
        t = cfg.text
        self.weights = {"vtc": t.vtc_weight, "vtm": t.vtm_weight, "mlm": t.mlm_weight, "uta": t.uta_weight}

    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        """Teacher, mask, the four losses and backward of ``scale · Σ weight·loss`` for one batch of the stage-2
        contract (:class:`~umt.data.synthetic.SyntheticPairLoader`); ``seed`` keys the mask, the VTM negatives and the
        MLM masks.

        Returns:
            ``{"loss": weighted total, "loss_vtc", "loss_vtm", "loss_mlm", "loss_uta"}`` (unweighted parts), detached,
            and ``"vtc_negatives"``: the candidates each VTC query is contrasted with besides its own pair, ``B ×
            world − 1`` (the all-gathered batch of this micro-batch; duplicates of an item among them count as
            positives in the loss). Gradient accumulation does not raise it: every micro-batch is its own softmax.
        """
        video = batch["video"]  # [B, 3, T, H, W]
        keep = self.keep_image if batch["modality"] == "image" else self.keep
        if self.teacher is None:  # teacher-free (fine-tuned retrieval): no UTA, no semantic mask
            target = None
            idx = None if keep == self.tokens_per_frame else masking.make_mask(
                self.cfg.mask.kind, batch=video.shape[0], frames=video.shape[2],
                tokens_per_frame=self.tokens_per_frame, keep=keep, seed=seed, device=video.device)  # [B, T·keep]
        else:
            tout = self.teacher_forward(video)
            idx = self.make_mask(tout, video, seed, keep=keep)  # [B, T·keep]
            self.keep_preview(video, tout, idx)
            target = ops.gather_targets(tout.targets, idx)  # [L, B, K, C_t]
        with self.no_sync(sync):
            with autocast_context(self.device, self.amp_dtype):
                index = (caption_keys(batch["text_ids"], batch["text_mask"]) if self.cfg.text.caption_positives
                         else batch["index"])  # [B]: equal = positives
                parts = self.model(video, idx, batch["text_ids"], batch["text_mask"], index, target, seed,
                                   mlm=self.weights["mlm"] > 0)
            loss = self.backward(sum(self.weights[k] * parts[k] for k in LOSS_NAMES), scale)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        negatives = torch.full((), float(video.shape[0] * world - 1), device=loss.device)
        return {"loss": loss, **{f"loss_{k}": parts[k].detach() for k in LOSS_NAMES}, "vtc_negatives": negatives}
