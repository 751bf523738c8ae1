"""The semantic top-k reference path against independent NumPy computations (issue 16, mutation testing).

The counter-based noise is a contract (the Triton kernel must draw the same bits, and a resumed run the same masks),
so its bits are pinned here with lowbias32 written in NumPy's wrapping uint32 arithmetic, not the reference's int64
16-bit-split multiply. Attention and Gumbel-top-k are recomputed in float64 loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.semantic_topk import cls_attention, gumbel_topk, semantic_topk, semantic_topk_reference, uniform_noise


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _noise(seed: int, rows: int, cols: int) -> np.ndarray:
    key = _lowbias32(np.array([(seed % 2**32) ^ 0x9E3779B9], np.uint64))[0]
    bits = _lowbias32(np.arange(rows * cols, dtype=np.uint64) % 2**32 ^ np.uint64(key))
    # exact in float32 and inside (0, 1): (2 * (bits >> 9) + 1) * 2^-24 (issue 10: the old (x + 0.5) * 2^-24 reached 1.0)
    u = (np.uint32(2) * (bits >> np.uint32(9)) + np.uint32(1)).astype(np.float32) * np.float32(2.0**-24)
    return u.astype(np.float64).reshape(rows, cols)


@pytest.mark.parametrize("seed", [0, 1, 123, 2**31 - 1, 2**32 + 5, -1])
def test_uniform_noise_bits_pinned(seed: int) -> None:
    with np.errstate(over="ignore"):
        want = _noise(seed, 3, 7)
    got = uniform_noise(seed, 3, 7)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    np.testing.assert_array_equal(got.double().numpy(), want)
    if seed >= 0:
        np.testing.assert_array_equal(uniform_noise(torch.tensor(seed), 3, 7).double().numpy(), want)
    if 0 <= seed < 2**31:  # an int32 seed tensor is widened before the 32-bit mask, not wrapped
        np.testing.assert_array_equal(uniform_noise(torch.tensor(seed, dtype=torch.int32), 3, 7).double().numpy(),
                                      want)


def test_uniform_noise_on_the_requested_device() -> None:
    assert uniform_noise(3, 2, 5, device="meta").device.type == "meta"
    assert uniform_noise(torch.tensor(3), 2, 5, device="meta").device.type == "meta"


def _cls_attention_by_hand(q: np.ndarray, k: np.ndarray, prefix: int) -> np.ndarray:
    r, h, m, d = k.shape
    out = np.zeros((r, m - prefix))
    for i in range(r):
        for j in range(h):
            s = np.array([q[i, j] @ k[i, j, c] for c in range(m)]) / np.sqrt(d)
            p = np.exp(s - s.max())
            out[i] += (p / p.sum())[prefix:] / h
    return out


@pytest.mark.parametrize("prefix", [1, 2])
def test_cls_attention_by_hand(prefix: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, prefix + 6, 8, generator=g)
    want = _cls_attention_by_hand(q.double().numpy(), k.double().numpy(), prefix)
    got = cls_attention(q, k, prefix) if prefix != 1 else cls_attention(q, k)
    assert got.dtype == torch.float32 and got.shape == (3, 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    got16 = cls_attention(q.to(torch.bfloat16), k.to(torch.bfloat16), prefix)  # computed in float32 from bf16 inputs
    assert got16.dtype == torch.float32


def test_gumbel_topk_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0, 0.5, 1.0, -3.0, 0.2, 0.1], [1.0] * 8])
    u = _noise(42, 2, 8)
    perturbed = logits.double().numpy() - np.log(-np.log(u))
    want = np.sort(np.argsort(-perturbed, axis=1)[:, :3], axis=1)
    got = gumbel_topk(logits, 3, seed=42)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(gumbel_topk(logits.to(torch.bfloat16), 3, seed=42).numpy(), want)  # any dtype
    assert gumbel_topk(logits, 8, seed=1).tolist() == [list(range(8))] * 2
    np.testing.assert_array_equal(gumbel_topk(logits, 1, seed=42).numpy(), np.argmax(perturbed, axis=1)[:, None])
    for bad in (0, 9):
        with pytest.raises(ValueError):
            gumbel_topk(logits, bad, seed=1)


def test_semantic_topk_reference_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 2, 8, generator=g), torch.randn(4, 2, 1 + 10, 8, generator=g) * 2
    p = _cls_attention_by_hand(q.double().numpy(), k.double().numpy(), 1)
    score = np.log(p) - np.log(-np.log(_noise(9, 4, 10)))
    want = np.sort(np.argsort(-score, axis=1)[:, :3], axis=1)
    np.testing.assert_array_equal(semantic_topk_reference(q, k, 3, 9).numpy(), want)
    np.testing.assert_array_equal(semantic_topk(q, k, 3, 9).numpy(), want)  # impl="torch" by default
    np.testing.assert_array_equal(semantic_topk(q, k, 3, torch.tensor(9), impl="torch").numpy(), want)
    # Two prefix tokens: the first two keys are never kept.
    k2 = torch.cat([k[:, :, :1], k], dim=2)  # [4, 2, 12, 8]
    idx = semantic_topk_reference(q, k2, 3, 9, num_prefix_tokens=2)
    assert idx.max() < 10 and idx.shape == (4, 3)
    p2 = _cls_attention_by_hand(q.double().numpy(), k2.double().numpy(), 2)
    score2 = np.log(p2) - np.log(-np.log(_noise(9, 4, 10)))
    want2 = np.sort(np.argsort(-score2, axis=1)[:, :3], axis=1)
    np.testing.assert_array_equal(idx.numpy(), want2)
    np.testing.assert_array_equal(semantic_topk(q, k2, 3, 9, num_prefix_tokens=2).numpy(), want2)


def test_semantic_topk_argument_checks() -> None:
    q, k = torch.randn(2, 2, 8), torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match="unknown impl"):
        semantic_topk(q, k, 2, 0, impl="cuda")
    # The Triton path checks its arguments before any launch (so these run without a kernel).
    with pytest.raises(ValueError, match="keep must be"):
        semantic_topk(q, k, 5, 0, impl="triton")  # 4 patches: keep 5 is out of range
    with pytest.raises(ValueError, match="keep must be"):
        semantic_topk(q, k, 0, 0, impl="triton")
    with pytest.raises(ValueError, match="expected q_cls"):
        semantic_topk(q[:, :1], k, 2, 0, impl="triton")  # head count differs
    with pytest.raises(ValueError, match="expected q_cls"):
        semantic_topk(q, k[0], 2, 0, impl="triton")  # keys not 4-D
