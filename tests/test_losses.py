"""UMA loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from umt.losses import uma_loss


def test_hand_computation() -> None:
    # L=1, B=1, K=2, C=2: cosines 1 (same vector) and cos(60°) = 0.5 → losses 0 and 1 → mean 0.5.
    s = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.5, math.sqrt(3) / 2]]]])
    assert uma_loss(s, t).item() == pytest.approx(0.5)
    # Opposite unit vectors: 2 − 2·(−1) = 4.
    assert uma_loss(s, -s).item() == pytest.approx(4.0)


def test_equals_squared_distance_mean_over_layers_batch_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(3, 2, 5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 2, 5, 8, generator=g), dim=-1)
    ref = ((s - t) ** 2).sum(-1).mean()
    torch.testing.assert_close(uma_loss(s, t), ref)
    with pytest.raises(ValueError):
        uma_loss(s, t[:, :, :4])
