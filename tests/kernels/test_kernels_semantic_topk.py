"""Semantic-mask top-k: counter-based noise, Gumbel-top-k statistics, and the Triton kernel against the reference.

CPU: the reference's properties and many-seed statistics; the kernel in the Triton interpreter on tiny shapes
(identical indices for fixed seeds). GPU: real UMT shapes (512 frames × 12 heads × 197 keys), no host syncs.

The semantic top-k reference path against independent NumPy computations (written for mutation testing).

The counter-based noise is a contract (the Triton kernel must draw the same bits, and a resumed run the same masks),
so its bits are pinned here with lowbias32 written in NumPy's wrapping uint32 arithmetic, not the reference's int64
16-bit-split multiply. Attention and Gumbel-top-k are recomputed in float64 loops.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kernels.semantic_topk import cls_attention, gumbel_topk, semantic_topk, semantic_topk_reference, uniform_noise


def _check_indices(idx: torch.Tensor, rows: int, keep: int, n: int) -> None:
    assert idx.shape == (rows, keep) and idx.dtype == torch.int64
    assert bool((idx >= 0).all()) and bool((idx < n).all())
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices must be sorted ascending and unique"


# ------------------------------------------------------------------------------------------------ reference (CPU)


def test_uniform_noise_range_determinism_and_seed_forms() -> None:
    u = uniform_noise(7, 64, 196)
    assert u.shape == (64, 196) and u.dtype == torch.float32
    assert bool((u > 0).all()) and bool((u < 1).all())
    assert torch.equal(u, uniform_noise(7, 64, 196))
    assert torch.equal(u, uniform_noise(torch.tensor(7), 64, 196)), "int and tensor seeds must give the same bits"
    assert not torch.equal(u, uniform_noise(8, 64, 196))
    # Counter-based: element (r, c) depends on r * cols + c only, so a prefix of rows is reproduced exactly.
    assert torch.equal(uniform_noise(7, 3, 196), u[:3])
    # Roughly uniform: mean 1/2, variance 1/12.
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


def test_gumbel_topk_many_seeds_matches_sampling_without_replacement() -> None:
    """Inclusion frequencies of Gumbel-top-2 over 4 items equal the exact without-replacement probabilities."""
    p = torch.tensor([0.5, 0.25, 0.15, 0.10])
    rows = 40_000  # every row is an independent draw (the noise counter differs per row)
    idx = gumbel_topk(p.log().expand(rows, 4), 2, seed=123)
    _check_indices(idx, rows, 2, 4)
    freq = torch.bincount(idx.flatten(), minlength=4).double() / rows
    exact = torch.zeros(4, dtype=torch.float64)
    for i, j in itertools.permutations(range(4), 2):  # P(i first, j second) = p_i · p_j / (1 - p_i)
        pr = float(p[i] * p[j] / (1 - p[i]))
        exact[i] += pr
        exact[j] += pr
    assert torch.allclose(freq, exact, atol=0.01), (freq, exact)


def test_semantic_topk_reference_keeps_follow_attention() -> None:
    """Over many seeds, keep frequencies of the fused op rise with the head-averaged CLS attention."""
    torch.manual_seed(0)
    r, h, n, d, keep = 1, 2, 12, 8, 3
    q, k = torch.randn(r, h, d), torch.randn(r, h, 1 + n, d) * 2
    p = cls_attention(q, k)[0]  # [N]
    counts = torch.zeros(n)
    seeds = 600
    for s in range(seeds):
        counts += torch.bincount(semantic_topk_reference(q, k, keep, s)[0], minlength=n)
    freq = counts / seeds
    order = p.argsort()
    # The least and most attended patches are kept least and most often; correlation is strongly positive.
    assert freq[order[-1]] > freq[order[0]] + 0.3
    assert torch.corrcoef(torch.stack([freq, p]))[0, 1] > 0.8


def test_cls_attention_softmax_includes_cls_column() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 8), torch.randn(3, 2, 6, 8)
    p = cls_attention(q, k)
    full = torch.softmax(torch.einsum("rhd,rhmd->rhm", q, k) / 8**0.5, -1)  # [R, H, M]
    assert torch.allclose(p, full[:, :, 1:].mean(1), atol=1e-6)
    assert bool((p.sum(-1) < 1).all())


def test_gumbel_topk_rejects_bad_keep() -> None:
    with pytest.raises(ValueError):
        gumbel_topk(torch.zeros(2, 5), 6, 0)
    with pytest.raises(ValueError):
        semantic_topk(torch.zeros(1, 1, 4), torch.zeros(1, 1, 3, 4), 1, 0, impl="nope")


# ------------------------------------------------------------------------------------------- kernel (interpreter)


@pytest.mark.triton
@pytest.mark.parametrize(
    ("rows", "heads", "m", "d", "keep", "dtype"),
    [(4, 2, 21, 16, 5, torch.float32), (3, 3, 17, 8, 16, torch.float16), (2, 2, 197, 16, 40, torch.float32)],
)
def test_triton_identical_to_reference(rows: int, heads: int, m: int, d: int, keep: int, dtype: torch.dtype) -> None:
    torch.manual_seed(m)
    q = torch.randn(rows, heads, d).to(dtype)
    k = (torch.randn(rows, heads, m, d) * 2).to(dtype)
    for seed in (0, 2**40 + 5, torch.tensor(91)):
        got = semantic_topk(q, k, keep, seed, impl="triton")
        _check_indices(got, rows, keep, m - 1)
        assert torch.equal(got, semantic_topk_reference(q, k, keep, seed)), f"seed {seed}"


@pytest.mark.triton
def test_triton_strided_keys_and_prefix_tokens() -> None:
    """Keys as a strided view of a qkv-like tensor, two prefix tokens, keep == N (all patches)."""
    torch.manual_seed(1)
    qkv = torch.randn(3, 4, 2, 19, 16)  # [3, R, H, M, D]
    q, k = qkv[0, :, :, 0], qkv[1]  # [R, H, D], [R, H, M, D] (non-contiguous)
    got = semantic_topk(q, k, 7, 5, num_prefix_tokens=2, impl="triton")
    assert torch.equal(got, semantic_topk_reference(q, k, 7, 5, num_prefix_tokens=2))
    everything = semantic_topk(q, k, 17, 5, num_prefix_tokens=2, impl="triton")
    assert torch.equal(everything, torch.arange(17).expand(4, 17))


@pytest.mark.triton
def test_triton_few_seeds_follow_attention() -> None:
    """Through the kernel: one dominant patch is always kept, near-zero-attention patches almost never."""
    torch.manual_seed(2)
    rows, heads, n, d = 8, 1, 15, 16
    q = torch.zeros(rows, heads, d)
    q[..., 0] = 4.0
    k = torch.zeros(rows, heads, 1 + n, d)
    k[:, :, 1 + 3, 0] = 8.0  # patch 3 gets almost all the mass; the others share the rest equally
    k[:, :, 1 + 10, 0] = -8.0  # patch 10 gets ~e^-16 of patch 3's weight
    kept = torch.cat([semantic_topk(q, k, 4, s, impl="triton") for s in range(3)])  # [24, 4]
    assert bool((kept == 3).any(-1).all())
    assert not bool((kept == 10).any())


@pytest.mark.triton
def test_triton_traced_by_torch_compile() -> None:
    torch.manual_seed(3)
    q, k = torch.randn(2, 2, 16), torch.randn(2, 2, 9, 16)
    seed = torch.tensor(11)
    fn = torch.compile(lambda q, k, s: semantic_topk(q, k, 3, s, impl="triton"), backend="aot_eager", fullgraph=True)
    assert torch.equal(fn(q, k, seed), semantic_topk_reference(q, k, 3, seed))


# ------------------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize(("heads", "dtype"), [(12, torch.bfloat16), (16, torch.float16)])
def test_gpu_real_shapes_no_host_sync(heads: int, dtype: torch.dtype) -> None:
    """512 frames (batch 64 × 8) × 197 keys, D = 64, keep 40: identical to the reference, zero host syncs."""
    import umt.ops as ops

    torch.manual_seed(0)
    rows, m, d, keep = 512, 197, 64, 40
    q = torch.randn(rows, heads, d, device="cuda", dtype=dtype)
    k = torch.randn(rows, heads, m, d, device="cuda", dtype=dtype)
    x = torch.randn(64, 8 * 196, 768, device="cuda", dtype=dtype)
    pos = torch.randn(8 * 196, 768, device="cuda", dtype=dtype)
    seed = torch.tensor(1234, device="cuda")
    frame_offset = (torch.arange(64, device="cuda") * 196).repeat_interleave(8).view(64, 8, 1)
    with ops.use_backend("triton"):
        ops.gather_tokens(x, ops.semantic_topk(q, k, keep, seed)[:64, :40], pos)  # compile outside the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            idx = ops.semantic_topk(q, k, keep, seed)  # [512, 40]
            flat = (idx.view(64, 8, keep) + frame_offset).view(64, 8 * keep)  # [B, T·K] indices into T·N
            vis = ops.gather_tokens(x, flat, pos)  # [B, T·K, C]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _check_indices(idx.cpu(), rows, keep, m - 1)
    ref = semantic_topk_reference(q, k, keep, seed)
    # float32 rounding in a different summation order may swap a boundary pair in a rare row; never more.
    assert (idx != ref).any(-1).float().mean().item() < 0.01
    assert torch.equal(vis, x.gather(1, flat[..., None].expand(-1, -1, 768)) + pos[flat])


# --------------------------------------------------------------------------------- noise conversion at the edges


def _inverse_hash32(x: int) -> int:
    """Inverse of lowbias32 (each xorshift and odd multiply is a bijection on 32-bit words)."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * pow(0x846CA68B, -1, 2**32)) & m
    x ^= (x >> 15) ^ (x >> 30)
    x = (x * pow(0x7FEB352D, -1, 2**32)) & m
    return x ^ (x >> 16)


def _seed_with_all_ones_first_draw() -> int:
    """A seed whose draw (row 0, col 0) hashes to 0xFFFFFFFF, the draw the old conversion rounded to u = 1.0."""
    key = _inverse_hash32(0xFFFFFFFF)  # bits(0) = hash(0 ^ key)
    return _inverse_hash32(key) ^ 0x9E3779B9  # key = hash(seed ^ golden)


def test_inverse_hash_finds_the_extreme_draw() -> None:
    from kernels.semantic_topk import _hash32

    for x in (0, 1, 12345, 0xFFFFFFFF):
        assert _hash32(_inverse_hash32(x)) == x
    seed = _seed_with_all_ones_first_draw()
    key = _hash32((seed & 0xFFFFFFFF) ^ 0x9E3779B9)
    assert _hash32(0 ^ key) == 0xFFFFFFFF


def test_uniform_noise_never_reaches_one_or_zero() -> None:
    """The extreme hashes map to 2**-24 and 1 - 2**-24 exactly; the old ((h >> 8) + 0.5) / 2**24 gave 1.0."""
    from kernels.semantic_topk import bits_to_unit

    u = bits_to_unit(torch.tensor([0, 1, 2**32 - 1], dtype=torch.int64))
    assert u.dtype == torch.float32
    assert u.tolist() == [2.0**-24, 2.0**-24, 1.0 - 2.0**-24]
    noise = uniform_noise(_seed_with_all_ones_first_draw(), 1, 4)
    assert 0.0 < noise[0, 0].item() < 1.0 and noise[0, 0].item() == 1.0 - 2.0**-24
    assert bool(torch.isfinite(-torch.log(-torch.log(noise))).all())


@pytest.mark.triton
def test_triton_extreme_draw_gives_finite_noise() -> None:
    """A patch with ~zero attention whose noise draw is the largest hash: with u = 1.0 its Gumbel noise was +inf
    and the patch was always kept; with the exact conversion it is dropped, in the kernel as in the reference."""
    seed = _seed_with_all_ones_first_draw()
    n, d = 15, 16
    q = torch.zeros(1, 1, d)
    q[..., 0] = 4.0
    k = torch.zeros(1, 1, 1 + n, d)
    k[:, :, 1 + 0, 0] = -50.0  # patch 0 (counter 0): attention ~ e^-50
    ref = semantic_topk_reference(q, k, 3, seed)
    got = semantic_topk(q, k, 3, seed, impl="triton")
    assert torch.equal(got, ref)
    assert not bool((got == 0).any()), "the extreme draw made patch 0's noise infinite"


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
    # exact in float32 and inside (0, 1): (2 * (bits >> 9) + 1) * 2^-24 (the form (x + 0.5) * 2^-24 could reach 1.0)
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
