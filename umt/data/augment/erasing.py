"""Random erasing for fine-tuning: one box per clip filled with per-pixel N(0, 1) noise, after normalisation.

Official fine-tuning (``single_modality/datasets/kinetics_sparse.py`` ``_aug_frame``) calls its copy of timm's
``RandomErasing(reprob=0.25, mode='pixel', max_count=1, num_splits=1)`` on the clip as [T, C, H, W]. That copy's
default ``cube=True`` makes it erase **one box for the whole clip** (``_erase_cube``): one probability draw per clip,
up to 100 attempts at an area fraction ``U(0.02, 1/3)`` and a log-uniform aspect in ``(0.3, 1/0.3)``,
``h = round(sqrt(area · aspect))``, ``w = round(sqrt(area / aspect))``, accepted when ``w < W`` and ``h < H``, placed
uniformly; the noise is fresh for every frame and channel. (timm's own ``RandomErasing`` on a 4-D tensor would treat
T as a batch and erase each frame independently; the official code does not.) This module matches the official
behaviour; the box comes from the sample's generator and the noise from a generator seeded per sample and clip,
so resume is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EraseBox", "draw_erase", "erase_noise"]

_MIN_AREA, _MAX_AREA = 0.02, 1.0 / 3.0  # timm RandomErasing defaults
_LOG_ASPECT = (math.log(0.3), math.log(1.0 / 0.3))  # min_aspect 0.3, max_aspect 1 / min_aspect
_ATTEMPTS = 100  # the official cube variant (timm's per-image variant tries 10)


@dataclass(frozen=True)
class EraseBox:
    """The erased box of one clip, in output pixels (after crop, resize and flip)."""

    y: int
    x: int
    h: int
    w: int
    noise_seed: int
    """Seeds the box's N(0, 1) noise (:func:`erase_noise`)."""


def draw_erase(rng: np.random.Generator, prob: float, height: int, width: int) -> EraseBox | None:
    """Draw whether and where to erase an ``height`` × ``width`` clip (timm's ``_erase_cube`` with ``count = 1``).

    Always draws the decision and a noise seed first, then attempts only when erasing.

    Returns:
        The box, or None (not erased: probability ``1 - prob``, or no attempt fitted).
    """
    u = rng.random()
    noise_seed = int(rng.integers(2**63))
    if u > prob:  # timm: ``if random.random() > self.probability: return``
        return None
    area = height * width
    for _ in range(_ATTEMPTS):
        target = (_MIN_AREA + (_MAX_AREA - _MIN_AREA) * rng.random()) * area
        aspect = math.exp(_LOG_ASPECT[0] + (_LOG_ASPECT[1] - _LOG_ASPECT[0]) * rng.random())
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            top = int(rng.random() * (height - h + 1))  # randint(0, H - h)
            left = int(rng.random() * (width - w + 1))
            return EraseBox(top, left, h, w, noise_seed)
    return None


def erase_noise(box: EraseBox, channels: int, frames: int) -> np.ndarray:
    """The box's content: float32 [C, T, h, w] standard normal, from ``box.noise_seed``."""
    return np.random.default_rng(box.noise_seed).standard_normal((channels, frames, box.h, box.w), dtype=np.float32)
