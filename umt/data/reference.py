"""Reference backend: shards → seeking PyAV decode → torch augmentation, with the DALI graph's semantics.

It is the oracle in tests and needs nothing beyond PyAV and torch. Order, draws and decoding come from
:mod:`umt.data.clips`, exactly as the DALI pipeline's external source uses them; only the augmentation (crop, resize,
flip, normalise) is done here with torch instead of DALI. Samples are read by random access through the DALI ``.idx``
files, so an epoch's order is a global permutation computed up front and starting at ``start_batch`` yields exactly
the tail of the full epoch, for free.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from umt.data.config import DataConfig
from umt.data.augment.erasing import EraseBox, erase_noise
from umt.data.augment.randaugment import RandAugmentDraws, parse_rand_augment, rand_augment_reference
from umt.data.clips import ClipParams, ClipSource, read_clip
from umt.data.format import ShardIndex
from umt.data.views import multi_view, read_views, views_reference

__all__ = ["EpochDataset", "augment_clip", "load_sample"]


def augment_clip(
    frames: np.ndarray,
    cfg: DataConfig,
    window: tuple[int, int, int, int, bool],
    ra: RandAugmentDraws | None = None,
    erase: EraseBox | None = None,
) -> torch.Tensor:
    """(RandAugment on the whole frames,) crop, resize (``cfg.interp``: bilinear or bicubic, antialiased; bicubic
    clamped to [0, 255]), flip, normalise (and erase) one clip.

    Args:
        frames: uint8 [T, H0, W0, 3].
        window: ``(x, y, crop_w, crop_h, flip)`` from :func:`umt.data.clips.clip_windows`.
        ra: the clip's RandAugment draws (``cfg.rand_augment``), applied before the crop as officially.
        erase: the clip's erased box, filled after normalisation with :func:`umt.data.augment.erasing.erase_noise`.

    Returns:
        float32 [3, T, S, S], ``(x / 255 - mean) / std``.
    """
    s = cfg.input_size
    x, y, cw, ch, flip = window
    if ra is not None:
        whole = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H0, W0] uint8
        whole = rand_augment_reference(whole, parse_rand_augment(cfg.rand_augment), ra)
        frames = whole.permute(0, 2, 3, 1).numpy()  # [T, H0, W0, 3]
    v = torch.from_numpy(np.ascontiguousarray(frames[:, y : y + ch, x : x + cw]))  # [T, ch, cw, 3] uint8
    v = v.permute(0, 3, 1, 2).float()  # [T, 3, ch, cw]
    v = F.interpolate(v, size=(s, s), mode=cfg.interp, align_corners=False, antialias=True)  # [T, 3, S, S]
    if cfg.interp == "bicubic":
        v = v.clamp(0.0, 255.0)  # cubic overshoots; torchvision's uint8 output clamps too
    if flip:
        v = v.flip(-1)  # horizontal: the W axis
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0
    v = (v - mean) / std
    v = v.permute(1, 0, 2, 3).contiguous()  # [3, T, S, S]
    if erase is not None:
        v[:, :, erase.y : erase.y + erase.h, erase.x : erase.x + erase.w] = torch.from_numpy(
            erase_noise(erase, 3, v.shape[1])
        )  # [3, T, h, w]
    return v


def load_sample(
    index: ShardIndex, i: int, cfg: DataConfig, params: ClipParams, *, pad: bool = False
) -> dict[str, torch.Tensor]:
    """Read, decode and augment sample ``i``: ``{"video": [k, 3, T, S, S], "label": [], "index": []}`` (k views:
    ``num_sample`` in training, ``temporal_views · spatial_views`` in multi-view evaluation); ``pad``: label and
    index -1 (a padding row of ``drop_last=False``)."""
    if multi_view(cfg):
        vc = read_views(index, i, cfg)
        assert vc.frames is not None
        clips, meta = views_reference(vc.frames, vc, cfg), vc.meta  # [V, 3, T, S, S]
    else:
        clip = read_clip(index, i, cfg, params)
        assert clip.frames is not None
        clips = torch.stack(
            [
                augment_clip(
                    clip.frames,
                    cfg,
                    w,
                    params.ra[j] if params.ra else None,
                    params.erase[j] if params.erase else None,
                )
                for j, w in enumerate(clip.windows)
            ]
        )  # [k, 3, T, S, S]
        meta = clip.meta
    return {
        "video": clips,
        "label": torch.tensor(-1 if pad else meta["label"], dtype=torch.int64),
        "index": torch.tensor(-1 if pad else meta["index"], dtype=torch.int64),
    }


class EpochDataset(torch.utils.data.Dataset):
    """The samples of one epoch for one rank, in order, from ``start_batch`` on (item j: the j-th of that tail).

    A sample that fails to read is replaced as in the DALI source (:meth:`umt.data.clips.ClipSource.fetch`: the
    next entry of the whole epoch's order that reads); item j's ``"skipped"`` (int64 []) counts the failed entries.
    """

    def __init__(self, source: ClipSource) -> None:
        self.source = source
        self.epoch = source.first_epoch
        self.full_order = source.order(self.epoch)
        """The whole epoch's order: a replacement may come from before ``start_batch`` or wrap around."""
        self.start = source.start_batch * source.cfg.batch_size
        self.order = self.full_order[self.start :]

    def __len__(self) -> int:
        return len(self.order)

    def read_at(self, j: int) -> dict[str, torch.Tensor]:
        """Entry ``j`` of the whole epoch's order, read, decoded and augmented (data errors propagate)."""
        i, pad = self.source.resolve(self.full_order, j)
        return load_sample(self.source.index, i, self.source.cfg, self.source.params(self.epoch, i), pad=pad)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        item, k = self.source.fetch(self.full_order, self.start + j, self.read_at)
        return {**item, "skipped": torch.tensor(k, dtype=torch.int64)}
