"""The fine-tuning step (official ``engine_for_finetuning.train_one_epoch``): mixup/CutMix of the micro-batch
(:mod:`umt.train.finetune.mixup`, seeded per micro-batch) → classifier forward (autocast) → the official criterion
(soft-target cross-entropy with mixup, label smoothing, or plain cross-entropy) on fp32 logits → backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from umt.config import TrainConfig
from umt.train.finetune.mixup import VideoMixup
from umt.train.step import TrainStep, autocast_context

__all__ = ["FinetuneStep"]


class FinetuneStep(TrainStep):
    """One fine-tuning micro-step: mixup/CutMix (seeded by the micro-batch's seed) → classifier forward (autocast)
    → soft-target cross-entropy (fp32 logits) → backward. Official ``engine_for_finetuning.train_one_epoch``.

    Args:
        model: the classifier, possibly DDP-wrapped or compiled.
        optimizer, scheduler, cfg, device, amp_dtype: as :class:`~umt.train.step.TrainStep`.
        num_classes: K.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig,
                 device: torch.device, amp_dtype: torch.dtype | None, num_classes: int) -> None:
        super().__init__(model, optimizer, scheduler, cfg, device, amp_dtype)
        f = cfg.finetune
        self.num_classes = num_classes
        self.mixup = (VideoMixup(num_classes, mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, prob=f.mixup_prob,
                                 switch_prob=f.mixup_switch_prob, label_smoothing=f.label_smoothing)
                      if f.mixup_active else None)
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        # official criterion choice: soft targets with mixup (smoothing inside them), else smoothing, else plain CE
        self.criterion: nn.Module
        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif f.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=f.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def mix(self, video: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/CutMix of ``video [B, 3, T, H, W]`` with ``label [B]`` (seeded by ``seed``): ``(mixed video, soft
        targets [B, K])``; ``(video, label)`` unchanged when mixing is off (``finetune.mixup_active``)."""
        if self.mixup is None:
            return video, label
        return self.mixup(video, label, seed)

    def forward_backward(self, video: torch.Tensor, target: torch.Tensor,
                         scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier forward (autocast), the criterion on fp32 logits against ``target`` (``[B]`` labels or
        ``[B, K]`` soft targets), backward of ``scale · loss``.

        Returns:
            ``(the detached, unscaled loss (0-dim), logits [B, K])``.
        """
        with autocast_context(self.device, self.amp_dtype):
            logits = self.model(video)  # [B, K]
        return self.backward(self.criterion(logits.float(), target), scale), logits

    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        """:meth:`mix`, then :meth:`forward_backward` of one micro-batch.

        Returns:
            ``{"loss": the cross-entropy, "top1": the fraction of clips whose argmax is the target's largest class
            (the label with the larger share of a mixed target)}``, detached 0-dim device tensors (no host sync).
        """
        video, target = self.mix(batch["video"], batch["label"], seed)  # [B, 3, T, H, W], [B] or [B, K] soft
        with self.no_sync(sync):
            loss, logits = self.forward_backward(video, target, scale)
        with torch.no_grad():
            hard = target.argmax(-1) if target.ndim == 2 else target  # [B]
            top1 = (logits.argmax(-1) == hard).float().mean()
        return {"loss": loss, "top1": top1}
