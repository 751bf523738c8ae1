"""Seeded random video batches with the loader contract of :func:`umt.data.build_loader`.

For tests, benchmarks and development without shards. Selected by the trainer's ``synthetic_data`` switch (it is not
a ``DataConfig.backend`` value). Every batch is a pure function of (seed, epoch, rank, batch index), so
``epoch_iter(epoch, start_batch)`` resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from umt.data.config import DataConfig

__all__ = ["SyntheticVideoLoader"]


class SyntheticVideoLoader:
    """Random normalised videos ``{"video": [B, 3, T, H, W], "label": [B], "index": [B]}``.

    Args:
        cfg: data config (batch_size, num_sample, num_frames, input_size, seed are used).
        rank, world_size: this process's shard of the (virtual) dataset.
        device: where batches are put; bf16 on CUDA, fp32 elsewhere (as the real loader).
        num_samples: virtual dataset size (videos); batches per epoch per rank = ``num_samples // (world·batch)``.
        num_classes: labels are drawn in ``[0, num_classes)``.
    """

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, device: Any = "cpu",
                 num_samples: int = 1024, num_classes: int = 400) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.batch_size = cfg.batch_size * cfg.num_sample
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if len(self) < 1:
            raise ValueError(f"num_samples={num_samples} is too small for batch {cfg.batch_size} × {world_size} ranks")

    def __len__(self) -> int:
        return self.num_samples // (self.world_size * self.cfg.batch_size)

    def batch(self, epoch: int, i: int) -> dict[str, torch.Tensor]:
        """Batch ``i`` of ``epoch`` for this rank (deterministic)."""
        c = self.cfg
        g = torch.Generator().manual_seed(hash((c.seed, epoch, self.rank, i)) & 0x7FFFFFFF)
        b, t, s = self.batch_size, c.num_frames, c.input_size
        # Smooth-ish content: low-resolution noise upsampled, so neighbouring patches correlate like real frames.
        low = torch.randn(b, 3, t, max(s // 16, 1), max(s // 16, 1), generator=g)  # [B, 3, T, h, w]
        video = torch.nn.functional.interpolate(low, size=(t, s, s), mode="trilinear", align_corners=False)
        video = video + 0.1 * torch.randn(b, 3, t, s, s, generator=g)  # [B, 3, T, H, W]
        first = (i * self.world_size + self.rank) * c.batch_size
        index = (torch.arange(c.batch_size) + first).repeat_interleave(c.num_sample)  # [B]
        label = torch.randint(0, self.num_classes, (c.batch_size,), generator=g).repeat_interleave(c.num_sample)
        return {"video": video.to(self.device, self.dtype), "label": label.to(self.device),
                "index": index.to(self.device)}

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``start_batch, …, len(self) − 1`` of ``epoch``."""
        for i in range(start_batch, len(self)):
            yield self.batch(epoch, i)

    def close(self) -> None:
        """Nothing to release."""
