"""Flash attention: output, log-sum-exp and every gradient against an fp64 reference.

CPU: the Triton interpreter on tiny shapes (blocks of 16, so ragged tails and several blocks are crossed), fp32,
fp16 and bf16 (bf16 tiles are upcast inside the kernel there, see the module docstring). GPU: the real sequence
lengths (64 … 4096 including 197, 320, 1568), head dims 64 and 128, bf16/fp16, poisoned memory, error no worse than
PyTorch's own SDPA kernel in the same dtype.
"""

from __future__ import annotations

import pytest
import torch

from kernels.flash_attention import attention_flops, attention_reference, flash_attention, flash_attention_with_lse

# Relative (Frobenius) error bounds against fp64 in the interpreter: fp32 is exact up to rounding; fp16/bf16 are
# dominated by rounding P to the input dtype before P·V (unit roundoff 2^-11 and 2^-8).
_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def _fp64_reference(q, k, v, do):  # noqa: ANN001, ANN202
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o = attention_reference(q64, k64, v64)
    grads = torch.autograd.grad(o, (q64, k64, v64), do.double())
    lse = torch.logsumexp(q64 @ k64.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return o.detach(), lse, grads


@pytest.mark.triton
@pytest.mark.parametrize(
    ("n", "d", "dtype"),
    [(40, 64, torch.float32), (40, 64, torch.float16), (37, 64, torch.bfloat16), (20, 128, torch.float32), (16, 64, torch.float16)],
)
def test_triton_matches_fp64(n: int, d: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n + d)
    b, h = 1, 2
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(b, h, n, d, dtype=dtype)
    o, lse = flash_attention_with_lse(q, k, v)
    assert o.shape == q.shape and o.dtype == dtype and lse.shape == (b, h, n) and lse.dtype == torch.float32
    grads = torch.autograd.grad(o, (q, k, v), do)
    o64, lse64, grads64 = _fp64_reference(q, k, v, do)
    tol = _TOL[dtype]
    assert _rel(o, o64) < tol
    assert _rel(lse, lse64) < 1e-6
    for name, g, g64 in zip("qkv", grads, grads64):
        assert g.dtype == dtype and g.shape == q.shape
        assert _rel(g, g64) < 2 * tol, f"d{name}"


@pytest.mark.triton
def test_triton_strided_inputs_from_fused_qkv() -> None:
    """q, k, v as permuted views of one qkv projection, as the student's attention passes them."""
    torch.manual_seed(0)
    b, n, h, d = 2, 23, 2, 32
    qkv = torch.randn(b, n, 3, h, d, requires_grad=True).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D], strided
    q, k, v = qkv.unbind(0)
    out = flash_attention(q, k, v, impl="triton")
    ref = attention_reference(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, qkv, g)
    (want,) = torch.autograd.grad(ref, qkv, g)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.triton
def test_triton_rejects_what_it_cannot_run() -> None:
    x = torch.randn(1, 1, 8, 80)
    with pytest.raises(ValueError, match="head dim"):
        flash_attention(x, x, x, impl="triton")
    with pytest.raises(ValueError, match="shape"):
        flash_attention(x, x[:, :, :4], x, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        flash_attention(x, x, x, impl="flash")


def test_attention_flops_formula() -> None:
    # 4·B·H·N²·D forward; ×3.5 with the backward (Triton fused-attention tutorial's count).
    assert attention_flops(2, 3, 5, 7) == 4 * 2 * 3 * 25 * 7
    assert attention_flops(2, 3, 5, 7, backward=True) == 3.5 * 4 * 2 * 3 * 25 * 7


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("n", [64, 197, 320, 1568, 4096])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_real_lengths(n: int, d: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n)
    b, h = max(1, 8192 // n), 4
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(b, h, n, d, device="cuda", dtype=dtype)
    torch.empty(16 * b * h * n * d, device="cuda").fill_(float("nan"))  # poison the allocator's free blocks
    o, lse = flash_attention_with_lse(q, k, v)
    grads = torch.autograd.grad(o, (q, k, v), do)
    o64, lse64, grads64 = _fp64_reference(q, k, v, do)
    # PyTorch's SDPA in the same dtype sets the bar: ours may be at most 2× its error (+ a small floor).
    so = attention_reference(q, k, v)
    sgrads = torch.autograd.grad(so, (q, k, v), do)
    assert torch.isfinite(o).all() and all(torch.isfinite(g).all() for g in grads)
    assert _rel(o, o64) <= 2 * _rel(so, o64) + 1e-3
    assert _rel(lse, lse64) < 1e-5
    for g, sg, g64 in zip(grads, sgrads, grads64):
        assert _rel(g, g64) <= 2 * _rel(sg, g64) + 1e-3


@pytest.mark.triton
def test_triton_attention_traced_by_torch_compile_with_autograd() -> None:
    """The registered op (fake impl + register_autograd) traces with fullgraph and gives the eager gradients."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 1, 20, 16, requires_grad=True) for _ in range(3))
    fn = torch.compile(lambda q, k, v: flash_attention(q, k, v, impl="triton").sum(), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(fn(q, k, v), (q, k, v))
    want = torch.autograd.grad(attention_reference(q, k, v).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5)


# -------------------------------------------------------------------------------------- fixed defects


@pytest.mark.triton
def test_triton_output_is_token_major_so_merging_heads_copies_nothing() -> None:
    """o is written as [B, N, H, D]: the [B, H, N, D] result is a transposed view and the head merge is a view."""
    torch.manual_seed(5)
    b, n, h, d = 2, 19, 3, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    o = flash_attention(q, k, v, impl="triton")
    assert o.shape == (b, h, n, d)
    assert o.transpose(1, 2).is_contiguous()
    merged = o.transpose(1, 2).reshape(b, n, h * d)  # what the models do
    assert merged.data_ptr() == o.data_ptr() and merged._base is not None, "the head merge copied"
    assert torch.allclose(o, attention_reference(q, k, v), atol=1e-5)
    fake = torch.ops.umt.flash_attn_fwd.default(q.to("meta"), k.to("meta"), v.to("meta"))
    assert fake[0].shape == (b, n, h, d) and fake[0].is_contiguous() and fake[1].shape == (b, h, n)


@pytest.mark.triton
def test_triton_backward_with_non_contiguous_lse() -> None:
    """The backward indexes lse (and delta) as bh·N + n: an lse with other strides must give the same gradients."""
    torch.manual_seed(6)
    b, h, n, d = 2, 3, 21, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    o, lse = torch.ops.umt.flash_attn_fwd(q, k, v)
    do = torch.randn_like(o)
    want = torch.ops.umt.flash_attn_bwd(do, q, k, v, o, lse)
    lse_strided = lse.transpose(0, 2).contiguous().transpose(0, 2)  # same values, strides (1, N·B, B)
    assert torch.equal(lse_strided, lse) and not lse_strided.is_contiguous()
    got = torch.ops.umt.flash_attn_bwd(do, q, k, v, o, lse_strided)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.triton
def test_grid_puts_batch_times_heads_on_axis_0() -> None:
    """L/14 teacher at 512 clips per GPU: B·H = 512·8·16 = 65,536 > 65,535, the cap of grid axes 1 and 2."""
    import kernels.flash_attention as fa

    for block in (16, 32, 64, 128):
        grid = fa.grid_size(512 * 8, 16, 197, block)
        assert len(grid) == 1 and grid[0] == 512 * 8 * 16 * -(-197 // block) and grid[0] < 2**31
    # The grids the wrappers actually launch (recorded around the real kernels in the interpreter).
    grids: list[tuple] = []
    names = ("_attn_fwd_kernel", "_attn_bwd_delta_kernel", "_attn_bwd_kv_kernel", "_attn_bwd_q_kernel")
    real = {n: getattr(fa, n) for n in names}

    class _Spy:
        def __init__(self, kernel) -> None:  # noqa: ANN001
            self.kernel = kernel

        def __getitem__(self, grid):  # noqa: ANN001, ANN204
            grids.append(grid)
            return self.kernel[grid]

    b, h, n = 3, 2, 37
    q = torch.randn(b, h, n, 16, requires_grad=True)
    try:
        for name in names:
            setattr(fa, name, _Spy(real[name]))
        o = flash_attention(q, q, q, impl="triton")
        o.sum().backward()
    finally:
        for name in names:
            setattr(fa, name, real[name])
    assert len(grids) == 4
    assert all(len(g) == 1 and g[0] == b * h * -(-n // 16) for g in grids), grids
    assert torch.allclose(o, attention_reference(q, q, q), atol=1e-5)


@pytest.mark.triton
def test_configs_are_pinned_recorded_and_overridable() -> None:
    """No autotuning: the config is a pure function of (kernel, N, D, dtype, arch), recorded, and can be pinned."""
    import kernels.flash_attention as fa

    assert not hasattr(fa._attn_fwd_kernel, "configs"), "autotuning re-benchmarks per process: no exact resume"
    for kernel in ("fwd", "bwd_kv", "bwd_q"):
        for arch in ("sm90", "sm80"):
            for d in (64,):
                for dtype in (torch.bfloat16, torch.float16, torch.float32):
                    cfg = fa.pick_config(kernel, 320, d, dtype, arch)
                    assert cfg == fa.pick_config(kernel, 1568, d, dtype, arch)
                    assert cfg in fa.CANDIDATES[kernel][arch]
    q = torch.randn(1, 2, 18, 16, requires_grad=True)
    flash_attention(q, q, q, impl="triton").sum().backward()
    chosen = fa.chosen_configs()
    for kernel in ("fwd", "bwd_kv", "bwd_q"):
        assert chosen[fa.config_key(kernel, 18, 16, torch.float32, "interpreter")] == fa._INTERPRETER_CONFIG.as_dict()
    key = fa.config_key("fwd", 320, 64, torch.bfloat16, "sm90")
    try:
        fa.pin_configs({key: {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}})
        assert fa.pick_config("fwd", 320, 64, torch.bfloat16, "sm90") == fa.KernelConfig(64, 32, 4, 2)
    finally:
        fa._OVERRIDES.pop(key, None)


@pytest.mark.triton
def test_sm80_refuses_head_dim_128_and_ops_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """On sm_80 every D=128 backward tile spills (AOT figures): the kernel refuses it with a clear error and the
    umt.ops switch runs SDPA instead."""
    import kernels.flash_attention as fa
    import umt.ops as ops

    x = torch.randn(1, 1, 8, 128)
    monkeypatch.setattr(fa, "target_arch", lambda device: "sm80")
    with pytest.raises(ValueError, match="sm_80"):
        flash_attention(x, x, x, impl="triton")
    with pytest.raises(ValueError, match="sm_80"):
        fa.pick_config("bwd_kv", 320, 128, torch.bfloat16, "sm80")
    with ops.use_backend("triton"):
        assert torch.allclose(ops.attention(x, x, x), attention_reference(x, x, x))
    assert fa.pick_config("bwd_kv", 320, 128, torch.bfloat16, "sm90") in fa.CANDIDATES["bwd_kv"]["sm90"]
