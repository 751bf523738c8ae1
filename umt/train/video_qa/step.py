"""The video-QA step (official ``multi_modality/tasks/vqa.py``, ``train``): question through the text encoder fused
with every visual token → each answer through the decoder → the weighted answer language-model loss
(:func:`umt.model.qa.qa_loss`) → backward. The optimizer step, accumulation and non-finite guard are
:class:`~umt.train.step.TrainStep`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from umt.train.step import TrainStep, autocast_context

__all__ = ["VideoQAStep"]


class VideoQAStep(TrainStep):
    """One QA micro-batch of the contract of :class:`umt.train.video_qa.task.QABatches`: ``video [B, 3, T, H, W]``,
    ``q_ids``/``q_mask [B, L_q]``, ``a_ids``/``a_mask [N, L_a]``, ``owner [N]`` (the question of each answer) and
    ``weights [N]``."""

    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        """Forward (autocast) and backward of ``scale · loss``.

        Returns:
            ``{"loss": the answer loss}``, detached (no host sync).
        """
        with self.no_sync(sync):
            with autocast_context(self.device, self.amp_dtype):
                loss = self.model(batch["video"], batch["q_ids"], batch["q_mask"], batch["a_ids"], batch["a_mask"],
                                  batch["owner"], batch["weights"])
            loss = self.backward(loss, scale)
        return {"loss": loss}
