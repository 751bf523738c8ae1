"""Reference backend: shards → PyAV → torch, with the same sampling and augmentation semantics as the DALI graph.

It serves codecs that DALI's CPU decoder cannot (H.264/HEVC without a GPU) and is the oracle in tests. Samples are
read by random access through the DALI ``.idx`` files (offsets of each member in the tar), so an epoch's order is a
global permutation computed up front from ``(seed, epoch)``, and each sample's random draws come from its own
generator seeded with ``(seed, epoch, sample index)``: results do not depend on the number of DataLoader workers,
and starting an epoch at ``start_batch`` yields exactly the tail of the full epoch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from umt.data.config import DataConfig
from umt.data.sampling import FIX_OFFSETS_13, crop_pairs, eval_crop, multiscale_crop, tsn_indices
from umt.data.shards import decode_meta

__all__ = ["ClipParams", "ShardIndex", "augment_clip", "decode_frames", "draw_params", "load_sample"]


class ShardIndex:
    """Random access to samples (in manifest order) through the shards' DALI index files.

    Attributes:
        entries: per sample, ``(tar path, {ext: (offset, size)})``.
    """

    def __init__(self, shard_dir: str | Path, shards: Sequence[dict[str, Any]]) -> None:
        self.entries: list[tuple[str, dict[str, tuple[int, int]]]] = []
        for sh in shards:
            tar = Path(shard_dir) / sh["name"]
            lines = tar.with_suffix(".idx").read_text().splitlines()
            version, count = lines[0].split()
            if version != "v1.2":
                raise ValueError(f"{tar}.idx: unsupported index version {version}")
            for line in lines[1 : 1 + int(count)]:
                parts = line.split()
                comps = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
                self.entries.append((str(tar), comps))
        self._files: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, i: int, ext: str) -> bytes:
        """Bytes of component ``ext`` of sample ``i``.

        Raises:
            KeyError: the sample has no such component.
        """
        tar, comps = self.entries[i]
        off, size = comps[ext]
        f = self._files.get(tar)
        if f is None:  # one handle per tar per process (DataLoader workers open their own after fork)
            f = self._files[tar] = open(tar, "rb")
        f.seek(off)
        return f.read(size)

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries, "_files": {}}


def decode_frames(video: bytes, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (presentation order, 0-based; repeats allowed) with PyAV.

    Returns:
        uint8 [T, H, W, 3] RGB.

    Raises:
        ValueError: an index is beyond the last decodable frame.
    """
    import av

    want = sorted(set(int(i) for i in indices))
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(video)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        for k, frame in enumerate(c.decode(vs)):
            if k in want:
                got[k] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
            if k >= want[-1]:
                break
    missing = [i for i in want if i not in got]
    if missing:
        raise ValueError(f"frames {missing} not decodable (video has fewer frames)")
    return np.stack([got[int(i)] for i in indices])  # [T, H, W, 3]


@dataclass(frozen=True)
class ClipParams:
    """The random decisions for one sample: frame positions and, per repeated clip, crop and flip."""

    u: np.ndarray | None
    """[T] positions in the TSN segments (None: centres)."""
    crops: tuple[tuple[int, int, bool], ...]
    """Per clip (``num_sample`` of them): (pair index, offset index, flip); empty in evaluation."""


def draw_params(cfg: DataConfig, rng: np.random.Generator) -> ClipParams:
    """Draw the per-sample decisions the DALI graph draws (same distributions)."""
    if not cfg.train:
        return ClipParams(None, ())
    u = rng.random(cfg.num_frames, dtype=np.float32)  # [T] in [0, 1)
    n_pairs = len(crop_pairs(len(cfg.scales)))
    crops = tuple(
        (int(rng.integers(n_pairs)), int(rng.integers(len(FIX_OFFSETS_13))), bool(cfg.flip and rng.random() < 0.5))
        for _ in range(cfg.num_sample)
    )
    return ClipParams(u, crops)


def augment_clip(
    frames: np.ndarray, cfg: DataConfig, crop: tuple[int, int, bool] | None
) -> torch.Tensor:
    """Crop (multi-scale or, with ``crop=None``, the centre square), resize, flip and normalise one clip.

    Args:
        frames: uint8 [T, H0, W0, 3].
        crop: ``(pair index, offset index, flip)`` or None for evaluation.

    Returns:
        float32 [3, T, S, S], ``(x / 255 - mean) / std``.
    """
    t, h0, w0, _ = frames.shape
    s = cfg.input_size
    if crop is None:
        x, y, cw, ch = eval_crop(w0, h0)
        flip = False
    else:
        x, y, cw, ch = multiscale_crop(w0, h0, s, cfg.scales, crop[0], crop[1])
        flip = crop[2]
    v = torch.from_numpy(np.ascontiguousarray(frames[:, y : y + ch, x : x + cw]))  # [T, ch, cw, 3] uint8
    v = v.permute(0, 3, 1, 2).float()  # [T, 3, ch, cw]
    v = F.interpolate(v, size=(s, s), mode="bilinear", align_corners=False, antialias=True)  # [T, 3, S, S]
    if flip:
        v = v.flip(-1)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0
    v = (v - mean) / std
    return v.permute(1, 0, 2, 3).contiguous()  # [3, T, S, S]


def load_sample(index: ShardIndex, i: int, cfg: DataConfig, params: ClipParams) -> dict[str, torch.Tensor]:
    """Read, decode and augment sample ``i``: ``{"video": [k, 3, T, S, S], "label": [], "index": []}``."""
    meta = decode_meta(index.read(i, "meta"))
    ind = tsn_indices(meta["frames"], cfg.num_frames, params.u)  # [T]
    frames = decode_frames(index.read(i, "mp4"), ind)  # [T, H0, W0, 3]
    crops = params.crops or (None,) * cfg.num_sample
    clips = torch.stack([augment_clip(frames, cfg, c) for c in crops])  # [k, 3, T, S, S]
    return {
        "video": clips,
        "label": torch.tensor(meta["label"], dtype=torch.int64),
        "index": torch.tensor(meta["index"], dtype=torch.int64),
    }


class EpochDataset(torch.utils.data.Dataset):
    """The samples of one epoch for one rank, in order; item j is the j-th sample of the epoch."""

    def __init__(self, index: ShardIndex, cfg: DataConfig, order: np.ndarray, epoch: int) -> None:
        self.index, self.cfg, self.order, self.epoch = index, cfg, order, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        i = int(self.order[j])
        fixed = getattr(self, "fixed_crop", None)  # test hook, as in the DALI graph: centres, one crop, no flip
        if fixed is not None:
            params = ClipParams(None, ((fixed[0], fixed[1], False),) * self.cfg.num_sample)
        else:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, i])  # per-sample stream: worker-independent
            params = draw_params(self.cfg, rng)
        return load_sample(self.index, i, self.cfg, params)
