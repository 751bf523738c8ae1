"""Mixup / CutMix for video clips with timm's :class:`timm.data.Mixup`, seeded per step (exact resume).

timm's ``Mixup`` mixes the last two dimensions of a 4-D batch: its CutMix writes ``x[:, :, y0:y1, x0:x1]``. A video
batch ``[B, 3, T, H, W]`` is therefore folded to ``[B, 3·T, H, W]`` (a view: the mix happens in place on the clip),
so one λ and one box cover every frame of a clip. The official fine-tuning code does the same with its own copy of
timm's ``Mixup`` (``single_modality/datasets/mixup.py``, which indexes ``x[..., y0:y1, x0:x1]`` on the 5-D batch):
mode ``batch`` (one λ per GPU batch), the batch paired with its reverse (``x.flip(0)``), λ corrected for a clipped
box, label smoothing inside the mixed targets.

timm draws λ, the mixup/CutMix switch and the box from NumPy's global RNG. :class:`VideoMixup` seeds it with the
step's seed for the call and puts the previous global state back afterwards, so the mix is a pure function of
(seed, batch) and the global RNG is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["VideoMixup", "numpy_seeded"]


@contextlib.contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Run the block with NumPy's global RNG seeded by ``seed`` (mod 2³²), then restore the previous state."""
    state = np.random.get_state()
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        np.random.set_state(state)


class VideoMixup:
    """timm ``Mixup`` (mode ``batch``) over video clips, seeded per call.

    Args:
        num_classes: K, the width of the soft targets.
        mixup_alpha, cutmix_alpha: Beta parameters (0 disables that kind; official 0.8 and 1.0).
        prob: probability of mixing a batch at all (official 1.0).
        switch_prob: probability of CutMix instead of mixup when both are on (official 0.5).
        label_smoothing: smoothing of the one-hot targets before mixing (official 0.1).

    Raises:
        ValueError: both alphas are 0.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("VideoMixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        from timm.data import Mixup

        self.num_classes = num_classes
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                           mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, video: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``video [B, 3, T, H, W]`` (in place when it is contiguous) with its reverse.

        Args:
            label: int64 ``[B]`` in ``[0, K)``.
            seed: this micro-batch's seed (the trainer's per-(step, rank) seed): same seed, same λ and box.

        Returns:
            ``(mixed video [B, 3, T, H, W], soft targets float32 [B, K])``; each target row sums to 1.

        Raises:
            ValueError: an odd batch (timm pairs row i with row B − 1 − i) or not a 5-D video.
        """
        if video.ndim != 5:
            raise ValueError(f"expected a video batch [B, 3, T, H, W], got shape {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if b % 2:
            raise ValueError(f"mixup/cutmix need an even batch, got {b} clips")
        x = video.contiguous()
        folded = x.view(b, c * t, h, w)  # [B, 3·T, H, W], a view: timm's in-place mix lands in x
        with numpy_seeded(seed):
            _, target = self.mixup(folded, label)
        return x, target.float()
