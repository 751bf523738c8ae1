"""Peer loaders for side-by-side data benchmarks (benchmark-only; install with ``pip install '.[peers]'``).

* :class:`OfficialUMTDataset`: the official UMT stage-1 loader as its paper and code describe it, written here
  from that description (no code copied): decord ``VideoReader(num_threads=1)``, TSN indices (one random frame per
  equal segment), ``get_batch``, a PIL image per frame, ``GroupMultiScaleCrop(224, [1, .875, .75, .66])`` (PIL crop +
  bilinear resize per frame), random horizontal flip, stack, ``/255``, normalise; served by a torch ``DataLoader``.
* :class:`SPDLDataset`: SPDL 0.8 (``spdl.io.demux_video`` + ``sample_decode_video``, which seeks to key frames),
  then the same crop/flip/normalise in torch. SPDL's wheel carries no FFmpeg: :func:`spdl_env` points
  ``LD_LIBRARY_PATH`` at the FFmpeg that PyAV bundles (ENVIRONMENT.md).

* :class:`DecordDataset`: decord's ``get_batch`` (as the official loader) with the torch crop/flip/normalise of
  :class:`SPDLDataset`: the decoder alone, without PIL.
* :class:`TorchCodecDataset`: TorchCodec's ``VideoDecoder.get_frames_at`` (seeks to key frames), then the same
  torch augmentation. Its PyPI wheels link the CUDA build of torch and need a system FFmpeg: it runs only where
  ``import torchcodec`` works, and the benchmark skips it elsewhere.

All take a list of video files and yield ``[3, T, 224, 224]`` float clips, like our loader.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from umt.data.config import IMAGENET_MEAN, IMAGENET_STD, UMT_CROP_SCALES

__all__ = ["DecordDataset", "OfficialUMTDataset", "SPDLDataset", "TorchCodecDataset", "spdl_env"]


def _tsn_random(n: int, t: int, rng: random.Random) -> list[int]:
    """One random frame per equal segment (the official ``_get_seq_frames`` in training)."""
    seg = n / t
    return [min(n - 1, int(seg * i + rng.random() * seg)) for i in range(t)]


def _multiscale_box(w: int, h: int, size: int, rng: random.Random) -> tuple[int, int, int, int]:
    """GroupMultiScaleCrop's window: neighbouring scale pair of the short side, one of 13 fixed offsets."""
    base = min(w, h)
    sizes = [int(base * s) for s in UMT_CROP_SCALES]
    sizes = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [(sw, sh) for i, sh in enumerate(sizes) for j, sw in enumerate(sizes) if abs(i - j) <= 1]
    cw, ch = rng.choice(pairs)
    sx, sy = (w - cw) // 4, (h - ch) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    mx, my = rng.choice(grid)
    return mx * sx, my * sy, cw, ch


def _pil_augment(frames: np.ndarray, size: int, rng: random.Random) -> torch.Tensor:
    """The official group transforms on PIL images: crop + bilinear resize per frame, flip, stack, normalise."""
    from PIL import Image

    imgs = [Image.fromarray(f).convert("RGB") for f in frames]  # T PIL images
    x, y, cw, ch = _multiscale_box(imgs[0].width, imgs[0].height, size, rng)
    imgs = [im.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR) for im in imgs]
    if rng.random() < 0.5:
        imgs = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in imgs]
    arr = np.concatenate([np.asarray(im) for im in imgs], axis=2)  # [S, S, 3T] (the official Stack)
    v = torch.from_numpy(arr).permute(2, 0, 1).float().div(255)  # [3T, S, S]
    v = v.view(len(imgs), 3, size, size)  # [T, 3, S, S]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((v - mean) / std).permute(1, 0, 2, 3)  # [3, T, S, S]


class _VideoFiles(torch.utils.data.Dataset):
    """One clip of ``num_frames`` at ``size``² per video file; per-item draws seeded by (seed, item)."""

    def __init__(self, files: Sequence[str | Path], num_frames: int = 8, size: int = 224, seed: int = 0) -> None:
        self.files, self.t, self.size, self.seed = [str(f) for f in files], num_frames, size, seed

    def __len__(self) -> int:
        return len(self.files)


class OfficialUMTDataset(_VideoFiles):
    """The official stage-1 loader's per-sample work (decord + PIL), one clip per video."""

    def __getitem__(self, i: int) -> torch.Tensor:
        import decord

        rng = random.Random(self.seed * 1_000_003 + i)
        vr = decord.VideoReader(self.files[i], num_threads=1, ctx=decord.cpu(0))
        idx = _tsn_random(len(vr), self.t, rng)
        frames = vr.get_batch(idx).asnumpy()  # [T, H, W, 3] uint8
        return _pil_augment(frames, self.size, rng)


def spdl_env() -> dict[str, str]:
    """Environment in which ``import spdl.io`` finds FFmpeg: PyAV's bundled libraries under their plain names.

    Creates a folder of symlinks (``libavcodec.so.62`` → PyAV's hashed file name) in the temp directory.
    """
    import tempfile

    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    out = Path(tempfile.gettempdir()) / "umt_spdl_ffmpeg"
    out.mkdir(exist_ok=True)
    for f in libs.glob("lib*.so*"):
        name = f.name
        stem = name.split("-")[0]  # libavcodec
        if not stem.startswith(("libav", "libsw")):
            continue
        major = name.split(".so.")[1].split(".")[0]
        for link in (out / f"{stem}.so", out / f"{stem}.so.{major}"):
            if not link.exists():
                link.symlink_to(f)
    return {**os.environ, "LD_LIBRARY_PATH": f"{out}:{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def _torch_augment(arr: np.ndarray, size: int, rng: random.Random) -> torch.Tensor:
    """The official crop window, flip and normalisation on uint8 frames [T, H, W, 3], in torch (antialiased resize)."""
    import torch.nn.functional as F

    h, w = arr.shape[1:3]
    x, y, cw, ch = _multiscale_box(w, h, size, rng)
    v = torch.from_numpy(np.ascontiguousarray(arr[:, y : y + ch, x : x + cw])).permute(0, 3, 1, 2).float()
    v = F.interpolate(v, size=(size, size), mode="bilinear", antialias=True) / 255  # [T, 3, S, S]
    if rng.random() < 0.5:
        v = v.flip(-1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((v - mean) / std).permute(1, 0, 2, 3)  # [3, T, S, S]


class DecordDataset(_VideoFiles):
    """decord's ``get_batch`` (one thread), then the torch augmentation of :func:`_torch_augment`."""

    def __getitem__(self, i: int) -> torch.Tensor:
        import decord

        rng = random.Random(self.seed * 1_000_003 + i)
        vr = decord.VideoReader(self.files[i], num_threads=1, ctx=decord.cpu(0))
        idx = _tsn_random(len(vr), self.t, rng)
        return _torch_augment(vr.get_batch(idx).asnumpy(), self.size, rng)  # [T, H, W, 3] in


class TorchCodecDataset(_VideoFiles):
    """TorchCodec's ``get_frames_at`` (CPU, one thread), then the torch augmentation of :func:`_torch_augment`."""

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchcodec.decoders import VideoDecoder

        rng = random.Random(self.seed * 1_000_003 + i)
        dec = VideoDecoder(self.files[i], device="cpu", num_ffmpeg_threads=1, dimension_order="NHWC")
        idx = _tsn_random(dec.metadata.num_frames, self.t, rng)
        return _torch_augment(dec.get_frames_at(idx).data.numpy(), self.size, rng)


class SPDLDataset(_VideoFiles):
    """SPDL's sampled decode (key-frame seeking), then the official crop/flip/normalise in torch."""

    def __getitem__(self, i: int) -> torch.Tensor:
        import spdl.io

        rng = random.Random(self.seed * 1_000_003 + i)
        packets = spdl.io.demux_video(self.files[i])
        n = len(packets)
        idx = _tsn_random(n, self.t, rng)
        order = sorted(set(idx))
        frames = spdl.io.sample_decode_video(packets, order)
        buf = spdl.io.convert_frames(frames)
        arr = spdl.io.to_numpy(buf)  # [T', H, W, 3]
        return _torch_augment(arr[[order.index(k) for k in idx]], self.size, rng)

