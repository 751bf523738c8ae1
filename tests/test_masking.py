"""Masks: fixed keep counts, sorted unique indices, tube structure, and semantic sampling follows attention.

Mask values pinned by hand (written for mutation testing): the per-step seed a resumed run must reproduce, and the
clip-level positions of per-frame indices.
"""

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


def _seed_by_hand(base: int, step: int, rank: int, stream: int) -> int:
    """The documented mix, in plain Python ints: 32-bit weighted sum, xor-shift 15, multiply, xor-shift 12, 31 bits.
    Pinned because a resumed run must draw the masks and drop paths of the original (checkpoints hold no RNG)."""
    x = (base * 0x9E3779B1 + step * 0x85EBCA77 + rank * 0xC2B2AE3D + stream * 0x27D4EB2F) % 2**32
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) % 2**32
    x ^= x >> 12
    return x % 2**31


@pytest.mark.parametrize("base,step,rank,stream", [(0, 0, 0, 0), (0, 1, 0, 0), (7, 123, 3, 1), (2**31 - 1, 10**6, 31, 0),
                                                   (5, 0, 1, 0), (5, 0, 0, 1)])
def test_step_seed_pinned(base: int, step: int, rank: int, stream: int) -> None:
    assert masking.step_seed(base, step, rank, stream) == _seed_by_hand(base, step, rank, stream)
    assert masking.step_seed(base, step) == _seed_by_hand(base, step, 0, 0)  # rank 0, stream 0 by default


def test_step_seed_differs_by_rank_and_stream() -> None:
    assert masking.step_seed(0, 0) == 0
    s = masking.step_seed(3, 4)
    assert len({s, masking.step_seed(3, 4, 1), masking.step_seed(3, 4, 0, 1), masking.step_seed(3, 5)}) == 4


def test_frame_to_clip_indices_by_hand() -> None:
    idx = torch.tensor([[0, 3], [1, 2], [0, 1], [2, 3]])  # [B·T = 2·2, K = 2], b-major frames, N = 4
    got = masking.frame_to_clip_indices(idx, batch=2, frames=2, tokens_per_frame=4)
    assert torch.equal(got, torch.tensor([[0, 3, 5, 6], [0, 1, 6, 7]]))
    assert got.dtype == idx.dtype


def test_keep_per_frame_by_hand() -> None:
    assert masking.keep_per_frame(196, 0.8) == 40 and masking.keep_per_frame(196, 0.9) == 20
    assert masking.keep_per_frame(4, 0.5) == 2 and masking.keep_per_frame(4, 0.0) == 4
    assert masking.keep_per_frame(4, 0.74) == 2  # int(2.96) = 2 masked: rounding down keeps more
    with pytest.raises(ValueError):
        masking.keep_per_frame(4, 1.0)
    assert masking.keep_per_frame(1, 0.0) == 1


@pytest.mark.parametrize("kind", ["tube", "random"])
def test_masks_are_drawn_on_the_requested_device(kind: str) -> None:
    """The meta device stands in for a GPU on a CPU machine: a mask drawn on the host would land on "cpu"."""
    idx = masking.make_mask(kind, batch=2, frames=2, tokens_per_frame=4, keep=2, seed=1, device="meta")
    assert idx.device.type == "meta" and idx.shape == (2, 4)
    fn = masking.tube_mask if kind == "tube" else masking.random_mask
    assert fn(2, 2, 4, 2, 1, device="meta").device.type == "meta"


def test_make_mask_passes_every_argument_through() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 2, 8, generator=g), torch.randn(6, 2, 1 + 9, 8, generator=g)  # B·T = 3·2, N = 9
    want = masking.semantic_mask(q, k, 3, 2, 4, seed=11)
    got = masking.make_mask("semantic", batch=3, frames=2, tokens_per_frame=9, keep=4, seed=11, q_cls=q, k=k)
    assert torch.equal(got, want) and got.shape == (3, 8)
    assert torch.equal(masking.make_mask("tube", batch=3, frames=2, tokens_per_frame=9, keep=4, seed=11),
                       masking.tube_mask(3, 2, 9, 4, 11))
    assert torch.equal(masking.make_mask("random", batch=3, frames=2, tokens_per_frame=9, keep=4, seed=11),
                       masking.random_mask(3, 2, 9, 4, 11))
    with pytest.raises(ValueError):
        masking.make_mask("semantic", batch=3, frames=2, tokens_per_frame=9, keep=4, seed=11, q_cls=q)
    with pytest.raises(ValueError):
        masking.make_mask("semantic", batch=3, frames=2, tokens_per_frame=9, keep=4, seed=11, k=k)
