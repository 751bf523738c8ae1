"""Masks: fixed keep counts, sorted unique indices, tube structure, and semantic sampling follows attention."""

from __future__ import annotations

import pytest
import torch

from umt import masking


def _check(idx: torch.Tensor, batch: int, total: int, kept: int) -> None:
    assert idx.shape == (batch, kept) and idx.dtype == torch.int64
    assert (idx[:, 1:] > idx[:, :-1]).all()  # sorted and unique
    assert idx.min() >= 0 and idx.max() < total


def test_keep_per_frame_matches_design() -> None:
    assert masking.keep_per_frame(196, 0.8) == 40
    with pytest.raises(ValueError):
        masking.keep_per_frame(4, 1.0)


def test_tube_and_random() -> None:
    b, t, n, k = 3, 4, 16, 5
    tube = masking.tube_mask(b, t, n, k, seed=7)
    _check(tube, b, t * n, t * k)
    per_frame = tube.view(b, t, k) - torch.arange(t).view(1, t, 1) * n
    assert (per_frame == per_frame[:, :1]).all()  # same spatial set in every frame
    assert not (per_frame[0, 0] == per_frame[1, 0]).all()  # differs across clips
    rnd = masking.random_mask(b, t, n, k, seed=7)
    _check(rnd, b, t * n, t * k)
    assert torch.equal(rnd, masking.random_mask(b, t, n, k, seed=7))
    assert not torch.equal(rnd, masking.random_mask(b, t, n, k, seed=8))


def test_semantic_keeps_k_per_frame_and_follows_attention() -> None:
    b, t, heads, d, n, k = 2, 2, 2, 8, 16, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b * t, heads, d, generator=g)
    keys = torch.randn(b * t, heads, 1 + n, d, generator=g)
    idx = masking.semantic_mask(q, keys, b, t, k, seed=1)
    _check(idx, b, t * n, t * k)
    frame_of = idx // n
    assert (frame_of.view(b, t, k) == torch.arange(t).view(1, t, 1)).all()  # exactly K in each frame

    # Make patch 3 strongly attended and patch 11 barely: over many seeds, 3 is kept far more often.
    keys = torch.zeros(1, 1, 1 + n, d)
    q = torch.zeros(1, 1, d)
    q[0, 0, 0] = 20.0  # score 20/sqrt(8) ≈ 7: weight e^7 vs 1 vs e^-7
    keys[0, 0, 1 + 3, 0] = 1.0
    keys[0, 0, 1 + 11, 0] = -1.0
    hits = torch.zeros(n)
    for seed in range(200):
        hits[masking.semantic_mask(q, keys, 1, 1, k, seed=seed)[0]] += 1
    assert hits[3] > 190 and hits[11] < 10
    assert hits.sum() == 200 * k


def test_step_seed_and_dispatch() -> None:
    seeds = {masking.step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= x < 2**31 for x in seeds)
    with pytest.raises(ValueError):
        masking.make_mask("semantic", batch=1, frames=1, tokens_per_frame=4, keep=2, seed=0)
    with pytest.raises(ValueError):
        masking.make_mask("bogus", batch=1, frames=1, tokens_per_frame=4, keep=2, seed=0)
