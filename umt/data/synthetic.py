"""Seeded random batches with the loader contracts of :func:`umt.data.build_loader` (video, stage 1 and
fine-tuning) and of the stage-2 MetaLoader (video-text and image-text pairs, :class:`SyntheticPairLoader`).

For tests, benchmarks and development without shards. Selected by the trainer's ``synthetic_data`` switch (it is not
a ``DataConfig.backend`` value). Every batch is a pure function of (seed, epoch, rank, batch index), so
``epoch_iter(epoch, start_batch)`` resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from umt.data.config import DataConfig

__all__ = ["SyntheticVideoLoader", "SyntheticPairLoader"]

# Integer tags of SyntheticPairLoader's seeds (hash() of a tuple of ints is the same in every process; of a str not).
_ORDER, _CAPTION, _CONTENT, _VIEW = 1, 2, 3, 4


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


class SyntheticPairLoader:
    """Seeded video-caption and image-caption batches, interleaved as the stage-2 MetaLoader interleaves them.

    Two virtual data sets: ``dataset`` 0 = ``num_videos`` videos (T = ``cfg.num_frames``), 1 = ``num_images`` images
    (T = 1), each item with one caption. Per epoch every rank walks its share of each data set in a seeded order
    (by seed, epoch and data set), in whole single-modality batches; the order of video and image batches is one
    permutation of the epoch's batches by (seed, epoch), the same on every rank. An item's content (low-resolution
    pattern) and its caption are functions of its id alone, so a caption matches its video; each view adds its own
    noise. Batch contract (that of ``umt.data.meta_loader``)::

        {"modality": "video" | "image", "video": [B, 3, T, H, W] (bf16 on CUDA, fp32 elsewhere),
         "text_ids": int64 [B, L] ([CLS] words [SEP] then [PAD]; L = the batch's longest <= max_len),
         "text_mask": int64 [B, L] (1 = real token), "index": int64 [B] (item id in its data set), "dataset": int}

    Args:
        cfg: data config (batch_size, num_frames, input_size, seed).
        max_len: longest caption in tokens, [CLS] and [SEP] included (``text.max_len``).
        cls_id, sep_id, pad_id: the tokenizer's special ids; vocab_size: V; words are drawn from
            ``[first_word, V)``.
        rank, world_size: this process's share.
        device: where batches are put.
        num_videos, num_images: virtual data set sizes (``num_images`` 0: video batches only).

    Raises:
        ValueError: fewer items than one global batch, or ``max_len < 3``.
    """

    def __init__(self, cfg: DataConfig, *, max_len: int, cls_id: int, sep_id: int, pad_id: int, vocab_size: int,
                 rank: int = 0, world_size: int = 1, device: Any = "cpu", num_videos: int = 1024,
                 num_images: int = 1024, first_word: int = 1000) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.batch_size = cfg.batch_size
        self.max_len, self.cls_id, self.sep_id, self.pad_id = max_len, cls_id, sep_id, pad_id
        self.vocab_size, self.first_word = vocab_size, min(first_word, vocab_size - 1)
        self.sizes = (num_videos, num_images)
        per_pass = world_size * cfg.batch_size
        self.batches = (num_videos // per_pass, num_images // per_pass)  # per rank per epoch
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if len(self) < 1:
            raise ValueError(f"{num_videos} videos and {num_images} images are too few for batch {cfg.batch_size} × "
                             f"{world_size} ranks")

    def __len__(self) -> int:
        return self.batches[0] + self.batches[1]

    def order(self, epoch: int) -> list[int]:
        """The data set of each batch of ``epoch`` (0 video, 1 image), shared by all ranks."""
        kinds = torch.tensor([0] * self.batches[0] + [1] * self.batches[1])
        g = torch.Generator().manual_seed(hash((self.cfg.seed, epoch, _ORDER)) & 0x7FFFFFFF)
        return kinds[torch.randperm(len(kinds), generator=g)].tolist()

    def _items(self, epoch: int, dataset: int, k: int) -> torch.Tensor:
        """Item ids of this rank's ``k``-th batch of ``dataset`` in ``epoch``."""
        g = torch.Generator().manual_seed(hash((self.cfg.seed, epoch, dataset)) & 0x7FFFFFFF)
        perm = torch.randperm(self.sizes[dataset], generator=g)
        first = (k * self.world_size + self.rank) * self.batch_size
        return perm[first:first + self.batch_size]

    def _caption(self, dataset: int, item: int) -> list[int]:
        g = torch.Generator().manual_seed(hash((dataset, item, _CAPTION)) & 0x7FFFFFFF)
        words = int(torch.randint(1, self.max_len - 1, (1,), generator=g))
        ids = torch.randint(self.first_word, self.vocab_size, (words,), generator=g).tolist()
        return [self.cls_id, *ids, self.sep_id]

    def batch(self, epoch: int, i: int) -> dict[str, Any]:
        """Batch ``i`` of ``epoch`` for this rank (deterministic)."""
        order = self.order(epoch)
        dataset = order[i]
        k = sum(1 for d in order[:i] if d == dataset)  # how many batches of this data set came before
        items = self._items(epoch, dataset, k)  # [B]
        c = self.cfg
        t, s = (c.num_frames if dataset == 0 else 1), c.input_size
        side = max(s // 16, 1)
        lows = []
        for item in items.tolist():  # the item's own pattern: the same whenever (and on whichever rank) it is drawn
            g = torch.Generator().manual_seed(hash((dataset, item, _CONTENT)) & 0x7FFFFFFF)
            lows.append(torch.randn(3, t, side, side, generator=g))
        low = torch.stack(lows)  # [B, 3, T, h, w]
        video = torch.nn.functional.interpolate(low, size=(t, s, s), mode="trilinear", align_corners=False)
        g = torch.Generator().manual_seed(hash((c.seed, epoch, self.rank, i, _VIEW)) & 0x7FFFFFFF)
        video = video + 0.1 * torch.randn(video.shape, generator=g)  # [B, 3, T, H, W]: this view's noise
        caps = [self._caption(dataset, item) for item in items.tolist()]
        n = max(len(x) for x in caps)
        ids = torch.full((len(caps), n), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(caps), n), dtype=torch.int64)
        for j, cap in enumerate(caps):
            ids[j, :len(cap)] = torch.tensor(cap)
            mask[j, :len(cap)] = 1
        return {"modality": "video" if dataset == 0 else "image", "video": video.to(self.device, self.dtype),
                "text_ids": ids.to(self.device), "text_mask": mask.to(self.device), "index": items.to(self.device),
                "dataset": dataset}

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches ``start_batch, …, len(self) − 1`` of ``epoch``."""
        for i in range(start_batch, len(self)):
            yield self.batch(epoch, i)

    def close(self) -> None:
        """Nothing to release."""
