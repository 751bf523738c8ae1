"""Multi-view evaluation: ``temporal_views`` clips × ``spatial_views`` crops per video, as the official test does.

Official ``single_modality/datasets/kinetics_sparse.py``, mode ``test`` (``test_num_segment`` clips,
``test_num_crop`` crops, ``short_side_size = input_size``):

* **Frames of temporal clip c** of ``n`` (``_get_seq_frames(N, T, clip_idx=c)``; ``data.sampling="ssv2"``: the
  official ``ssv2.py`` test clips, segment starts then centres, :func:`umt.data.sampling.ssv2_test_indices`)::

      seg = max(0, (N - 1) / T);  index_i = min(round(seg · i) + int(seg / (n + 1) · (c + 1)), N - 1)

  (``round`` is NumPy's, half to even): in every segment the offset ``(c + 1) / (n + 1)`` of its length.
* **Resize**: the short side to ``S``, the long side to ``int(S · long / short)`` (``functional.get_resize_sizes``;
  unchanged when the short side is already ``S``).
* **Spatial crop s** of ``m``: an ``S``-long window along the long side of the resized frame (H if ``H >= W``),
  starting at ``int(s · (L - S) / (m - 1))`` (``m = 1``: ``int((L - S) / 2)``); the whole short side.

View ``v = c · m + s`` (the official loop order). Every view's frames are decoded once per video: the source decodes
the union of the clips' frames with the seeking decoder, and each temporal clip is resized once for its ``m`` crops.
The official test resizes with OpenCV's bilinear filter without antialiasing; both backends here use ``data.interp``
with antialiasing, like the single-view evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from umt.data.config import DataConfig
from umt.data.decode import DecodeStats, decode_sampled
from umt.data.format import META_FIELDS, ShardIndex, decode_meta

if TYPE_CHECKING:
    import torch

__all__ = [
    "ViewsClip",
    "multi_view",
    "num_views",
    "read_views",
    "temporal_view_indices",
    "spatial_view_anchor",
    "short_side_resize",
    "views_outputs",
    "views_reference",
]


def multi_view(cfg: DataConfig) -> bool:
    """Whether ``cfg`` asks for the multi-view evaluation (``train=False`` and more than one view)."""
    return not cfg.train and cfg.temporal_views * cfg.spatial_views > 1


def num_views(cfg: DataConfig) -> int:
    """Rows per video in a batch: ``num_sample`` (training), ``temporal_views · spatial_views`` (multi-view) or 1."""
    if cfg.train:
        return cfg.num_sample
    return cfg.temporal_views * cfg.spatial_views if multi_view(cfg) else 1


def temporal_view_indices(num_frames: int, num_segments: int, clip: int, num_clips: int,
                          sampling: str = "tsn") -> np.ndarray:
    """Frame indices of temporal clip ``clip`` of ``num_clips`` (official ``_get_seq_frames`` in test mode; with
    ``sampling="ssv2"`` the official ``ssv2.py`` test clips instead, :func:`umt.data.sampling.ssv2_test_indices`).

    Args:
        num_frames: N, frames in the video (>= 1).
        num_segments: T, frames per clip.
        clip: c in [0, num_clips).

    Returns:
        int32 [T], non-decreasing, in [0, N).

    Raises:
        ValueError: ``num_frames < 1`` or ``clip`` out of range.
    """
    if sampling == "ssv2":
        from umt.data.sampling import ssv2_test_indices

        return ssv2_test_indices(num_frames, num_segments, clip, num_clips)
    if num_frames < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"need num_frames >= 1 and 0 <= clip < {num_clips}, got {num_frames}, {clip}")
    seg = max(0.0, float(num_frames - 1) / num_segments)
    duration = seg / (num_clips + 1)
    idx = [min(int(np.round(seg * i)) + int(duration * (clip + 1)), num_frames - 1) for i in range(num_segments)]
    return np.asarray(idx, np.int32)


def short_side_resize(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` (official ``get_resize_sizes``)."""
    if min(width, height) == size:
        return width, height
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def spatial_view_anchor(width: int, height: int, size: int, crop: int, num_crops: int) -> tuple[int, int]:
    """``(x, y)`` of spatial crop ``crop`` of ``num_crops`` in a frame already resized to ``(width, height)``.

    Raises:
        ValueError: ``crop`` out of range.
    """
    if not 0 <= crop < num_crops:
        raise ValueError(f"crop must be in [0, {num_crops}), got {crop}")
    long_side = max(width, height)
    if num_crops == 1:
        start = int(1.0 * (long_side - size) / 2)
    else:
        start = int(crop * (1.0 * (long_side - size) / (num_crops - 1)))
    return (0, start) if height >= width else (start, 0)


@dataclass
class ViewsClip:
    """One video's evaluation views as read: per temporal clip the indices (and frames), the resize, the crops."""

    meta: dict[str, int]
    indices: list[np.ndarray]
    """Per temporal clip, int32 [T] frame indices."""
    resized: tuple[int, int]
    """(width, height) of every frame after the short-side resize."""
    anchors: list[tuple[int, int]]
    """Per view ``v = c · m + s``: ``(x, y)`` of its ``S`` × ``S`` crop in the resized frame."""
    frames: list[np.ndarray] | None = None
    """Per temporal clip, uint8 [T, H0, W0, 3] (None with ``decode=False``)."""
    encoded: bytes | None = None
    stats: DecodeStats | None = None


def read_views(index: ShardIndex, i: int, cfg: DataConfig, *, decode: bool = True) -> ViewsClip:
    """Read sample ``i``'s views: one seeking decode of the union of every temporal clip's frames.

    Args:
        index: the data set's :class:`umt.data.format.ShardIndex`.
        cfg: data settings with ``train=False``.

    Raises:
        ValueError: the stored video has fewer decodable frames than its meta says.
    """
    meta = decode_meta(index.read(i, "meta"))
    n_t, n_s, size = cfg.temporal_views, cfg.spatial_views, cfg.input_size
    ind = [temporal_view_indices(meta["frames"], cfg.num_frames, c, n_t, cfg.sampling) for c in range(n_t)]
    rw, rh = short_side_resize(meta["width"], meta["height"], size)
    anchors = [spatial_view_anchor(rw, rh, size, s, n_s) for _ in range(n_t) for s in range(n_s)]
    video = index.read(i, "mp4")
    out = ViewsClip(meta, ind, (rw, rh), anchors)
    if not decode:
        out.encoded = video
        return out
    keyframes = None
    if "json" in index.entries[i][1]:
        keyframes = json.loads(index.read(i, "json")).get("keyframes")
    out.stats = DecodeStats()
    frames = decode_sampled(video, np.concatenate(ind), keyframes, stats=out.stats)  # [n_t·T, H0, W0, 3]
    t = cfg.num_frames
    out.frames = [frames[c * t : (c + 1) * t] for c in range(n_t)]
    return out


def views_outputs(
    index: ShardIndex, i: int, cfg: DataConfig, *, decode: bool, pad: bool = False
) -> tuple[np.ndarray, ...]:
    """The DALI external source's outputs for sample ``i`` in multi-view evaluation (:mod:`umt.data.dali.views`).

    Returns ``(frames_0 .. frames_{n-1}, meta, size, anchor_0 .. anchor_{V-1})``: per temporal clip uint8
    [T, H0, W0, 3] (``decode=False``: one uint8 [bytes] encoded video instead, and the per-clip int32 [T] indices
    appended at the end), meta int32 [9] (:data:`umt.data.clips.SOURCE_META_FIELDS`; label and index -1 when
    ``pad``), the resized ``(H, W)`` as float32 [2],
    per view the crop's int32 [2] ``(x, y)``.
    """
    clip = read_views(index, i, cfg, decode=decode)
    if pad:
        clip.meta = {**clip.meta, "label": -1, "index": -1}
    # [9]: umt.data.clips.SOURCE_META_FIELDS, ``skipped`` 0 (the source sets it)
    meta = np.array([clip.meta[k] for k in META_FIELDS] + [0], np.int32)
    video = clip.frames if decode else [np.frombuffer(clip.encoded, np.uint8)]  # type: ignore[arg-type]
    size = np.array([clip.resized[1], clip.resized[0]], np.float32)  # (H, W): DALI's order for FHWC
    out = [*video, meta, size] + [np.array(a, np.int32) for a in clip.anchors]
    if not decode:
        out += [ix.astype(np.int32) for ix in clip.indices]
    return tuple(out)


def views_reference(frames: list[np.ndarray], clip: ViewsClip, cfg: DataConfig) -> torch.Tensor:
    """The reference backend's views of one video: float32 [V, 3, T, S, S], normalised.

    Each temporal clip is resized once (``cfg.interp``, antialiased, bicubic clamped) and cut ``spatial_views`` times.
    """
    import torch
    import torch.nn.functional as F

    size = cfg.input_size
    rw, rh = clip.resized
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0
    views = []
    for c, fr in enumerate(frames):
        v = torch.from_numpy(np.ascontiguousarray(fr)).permute(0, 3, 1, 2).float()  # [T, 3, H0, W0]
        if (rh, rw) != tuple(v.shape[-2:]):
            v = F.interpolate(v, size=(rh, rw), mode=cfg.interp, align_corners=False, antialias=True)  # [T, 3, rh, rw]
        if cfg.interp == "bicubic":
            v = v.clamp(0.0, 255.0)
        v = (v - mean) / std
        for s in range(cfg.spatial_views):
            x, y = clip.anchors[c * cfg.spatial_views + s]
            views.append(v[:, :, y : y + size, x : x + size].permute(1, 0, 2, 3))  # [3, T, S, S]
    return torch.stack(views)  # [V, 3, T, S, S]
