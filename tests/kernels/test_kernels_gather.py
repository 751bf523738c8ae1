"""Token and target gathers: the Triton kernel (interpreter on CPU, real shapes on a GPU) against the reference,
forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from kernels.token_gather import gather_targets, gather_targets_reference, gather_tokens, gather_tokens_reference


def _kept(b: int, m: int, k: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, m, generator=g).argsort(1)[:, :k].sort(1).values.to(device)  # [B, K] unique, sorted


def test_reference_matches_boolean_mask_indexing() -> None:
    """The fixed-shape gather equals the original recipe's ``x[~mask]`` (kept rows in ascending order)."""
    torch.manual_seed(0)
    b, m, c, k = 3, 10, 4, 4
    x, idx = torch.randn(b, m, c), _kept(b, m, k)
    masked = torch.ones(b, m, dtype=torch.bool).scatter_(1, idx, False)
    assert torch.equal(gather_tokens_reference(x, idx), x[~masked].view(b, k, c))


@pytest.mark.triton
@pytest.mark.parametrize("pos_shape", [None, "2d", "3d"])
@pytest.mark.parametrize(("c", "dtype"), [(24, torch.float32), (300, torch.float16)])
def test_triton_gather_tokens_forward_and_grads(pos_shape: str | None, c: int, dtype: torch.dtype) -> None:
    torch.manual_seed(c)
    b, m, k = 2, 12, 5
    x = torch.randn(b, m, c, dtype=dtype, requires_grad=True)
    pos = None
    if pos_shape is not None:
        pos = torch.randn(m, c, dtype=dtype) if pos_shape == "2d" else torch.randn(1, m, c, dtype=dtype)
        pos.requires_grad_(True)
    idx = _kept(b, m, k, seed=c)
    out = gather_tokens(x, idx, pos, impl="triton")
    ref = gather_tokens_reference(x, idx, pos)
    assert out.shape == (b, k, c) and out.dtype == dtype
    assert torch.equal(out, ref)
    g = torch.randn(b, k, c, dtype=dtype)
    inputs = (x,) if pos is None else (x, pos)
    got, want = torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)
    for a, w in zip(got, want):
        assert a.shape == w.shape and a.dtype == w.dtype
        assert torch.allclose(a.float(), w.float(), atol=1e-3 if dtype == torch.float16 else 1e-6)
    # Rows that were not kept get exactly zero gradient.
    dropped = torch.ones(b, m, dtype=torch.bool).scatter_(1, idx, False)
    assert bool((got[0][dropped] == 0).all())


@pytest.mark.triton
def test_triton_gather_targets_one_launch_strided() -> None:
    torch.manual_seed(1)
    layers, b, m, c, k = 3, 2, 11, 20, 4
    t = torch.randn(b, layers, m, c).transpose(0, 1)  # [L, B, M, C], non-contiguous
    idx = _kept(b, m, k, seed=1)
    got = gather_targets(t, idx, impl="triton")
    assert got.shape == (layers, b, k, c)
    assert torch.equal(got, gather_targets_reference(t, idx))


def test_unknown_impl_raises() -> None:
    with pytest.raises(ValueError):
        gather_tokens(torch.zeros(1, 2, 3), torch.zeros(1, 1, dtype=torch.int64), impl="cuda")
    with pytest.raises(ValueError):
        gather_targets(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, dtype=torch.int64), impl="cuda")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize(("c", "c_t"), [(768, 512), (1024, 768)])
def test_gpu_real_shapes(c: int, c_t: int) -> None:
    """Batch 64, 8 × 196 tokens, 320 kept: exact forward, gradients equal to the reference (unique indices)."""
    b, m, k, layers = 64, 8 * 196, 320, 6
    idx = _kept(b, m, k, device="cuda")
    x = torch.randn(b, m, c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(m, c, device="cuda", dtype=torch.float32, requires_grad=True)
    t = torch.randn(layers, b, m, c_t, device="cuda", dtype=torch.bfloat16)
    torch.empty(4 * b * m * c, device="cuda").fill_(float("nan"))  # poison the caching allocator's free blocks
    out = gather_tokens(x, idx, pos, impl="triton")
    ref = gather_tokens_reference(x, idx, pos)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    got, want = torch.autograd.grad(out, (x, pos), g), torch.autograd.grad(ref, (x, pos), g)
    assert torch.equal(got[0], want[0])
    assert torch.allclose(got[1], want[1], rtol=1e-5, atol=1e-5)  # fp32 atomics: summation order differs
    torch.empty(2 * layers * b * m * c_t, device="cuda").fill_(float("nan"))
    assert torch.equal(gather_targets(t, idx, impl="triton"), gather_targets_reference(t, idx))


def test_patch_embedding_output_is_contiguous_and_equals_conv3d() -> None:
    """The patch embedding feeds token_gather a contiguous [B, M, C] (the Conv3d's flattened output had strides
    (C·M, 1, M): scalar strided loads in the gather), with the Conv3d's own result."""
    from umt.model.student import PatchEmbed3D

    torch.manual_seed(2)
    pe = PatchEmbed3D(patch_size=4, tubelet_size=1, in_chans=3, embed_dim=10)
    video = torch.randn(2, 3, 3, 8, 12)  # [B, 3, T, H, W] → M = 3·2·3 = 18
    x = pe(video)
    assert x.shape == (2, 18, 10) and x.is_contiguous()
    want = pe.proj(video).flatten(2).transpose(1, 2)  # [B, M, C], T-major
    assert torch.allclose(x, want, atol=1e-5)
    pe2 = PatchEmbed3D(patch_size=4, tubelet_size=3, in_chans=3, embed_dim=10)  # tubelets of 3 frames
    assert torch.allclose(pe2(video), pe2.proj(video).flatten(2).transpose(1, 2), atol=1e-5)
