"""UMA loss (unmasked token alignment; UMT Sec. 3.1, DESIGN.md "Student heads and loss"). Pure functions."""

from __future__ import annotations

import torch

__all__ = ["uma_loss"]


def uma_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over layers × batch × visible tokens of ``2 − 2·⟨s, t⟩`` (the squared distance of unit vectors).

    Args:
        pred: ``[L, B, K, C]`` student head outputs, unit vectors.
        target: ``[L, B, K, C]`` teacher targets at the same visible positions, unit vectors.

    Returns:
        0-dim float32 tensor (no host sync).

    Raises:
        ValueError: shape mismatch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    cos = (pred.float() * target.float()).sum(dim=-1)  # [L, B, K]
    return (2.0 - 2.0 * cos).mean()
