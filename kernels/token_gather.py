"""Token gather: keep the visible tokens of the student input and of the teacher targets.

Replaces boolean indexing (``x[~mask]``, which needs a host sync to size its output) with fixed-shape index
gathers. Anatomy: reference → Triton kernel → registration → public function with ``impl=``.

Both public ops run on one registered op, ``torch.ops.umt.gather_rows``: ``out[o, b, j] = src[o, b, idx[b, j]]``
(+ ``pos[idx[b, j]]``) over an outer dimension O (1 for the student's tokens, L = 6 aligned layers for the teacher's
targets, so all layers are gathered in ONE launch). Its backward is ``torch.ops.umt.scatter_rows``: the gradient
rows are stored back at ``idx`` into a zero tensor (plain stores: the kept indices of a mask are unique per row, so no
two programs write the same row), and, when the position table needs a gradient, added into an fp32 ``[M, C]``
buffer with atomics (positions repeat across the batch).

Why no fused "gather before the teacher's projection" kernel: the teacher targets are ``proj(ln_post(h))`` of
every aligned layer. Gathering the kept rows of ``h`` first (``gather_targets`` on ``[L, B·T, 1+N, C]`` hidden
states) and projecting only them cuts the projection's FLOPs and bytes by N/K = 196/40 ≈ 4.9×; that is a reordering
the model does with these two calls (gather, then LayerNorm + Linear on ``[L, B, T·K, C]``), and a fused
gather+GEMM kernel would save only the write and re-read of the gathered ``[L, B, T·K, C]`` rows (for UMT-B at batch
64: 6·64·320·768·2 B ≈ 189 MB, ≈ 60 µs at 3 TB/s), small next to the GEMM it feeds, so it is not built.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: without it only impl="torch" works.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on installs without the triton extra
    triton = None
    tl = None

__all__ = ["gather_tokens", "gather_targets", "gather_tokens_reference", "gather_targets_reference"]


def gather_tokens_reference(x: torch.Tensor, idx: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, j] = x[b, idx[b, j]] + pos_embed[idx[b, j]]``.

    Args:
        x: ``[B, M, C]`` tokens (M = T·N).
        idx: ``[B, K]`` int64 kept positions in ``[0, M)``.
        pos_embed: optional ``[M, C]`` (or ``[1, M, C]``) position table added on the way.

    Returns:
        ``[B, K, C]`` in ``x``'s dtype; differentiable in ``x`` (backward scatters into the kept rows).
    """
    b, k = idx.shape
    c = x.shape[-1]
    out = torch.gather(x, 1, idx.unsqueeze(-1).expand(b, k, c))  # [B, K, C]
    if pos_embed is not None:
        out = out + pos_embed.reshape(-1, c)[idx].to(out.dtype)  # [B, K, C]
    return out


def gather_targets_reference(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[l, b, j] = t[l, b, idx[b, j]]`` for all aligned layers at once.

    Args:
        t: ``[L, B, M, C_t]`` teacher targets of L layers.
        idx: ``[B, K]`` int64 kept positions.

    Returns:
        ``[L, B, K, C_t]``.
    """
    n_layers, b, _, c = t.shape
    k = idx.shape[1]
    return torch.gather(t, 2, idx.view(1, b, k, 1).expand(n_layers, b, k, c))


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel: one kernel, gather (forward) or scatter (backward) of BLOCK_R rows × BLOCK_C channels per program
# ----------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _rows_kernel(
        src_ptr, idx_ptr, pos_ptr, dst_ptr,
        O, B, K, C,
        s_so, s_sb, s_sm, s_sc,  # strides of the gathered side [O, B, M, C] (src in gather, dst in scatter)
        s_co, s_cb, s_ck, s_cc,  # strides of the compact side [O, B, K, C] (dst in gather, src in scatter)
        s_ib, s_ik, s_pm, s_pc,
        HAS_POS: tl.constexpr,
        SCATTER: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (o, b, j)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_r = rows < O * B * K
        mask = mask_r[:, None] & (offs_c[None, :] < C)
        o = rows // (B * K)
        b = (rows // K) % B
        j = rows % K
        m = tl.load(idx_ptr + b * s_ib + j * s_ik, mask=mask_r, other=0).to(tl.int64)  # [BLOCK_R]
        wide = o * s_so + b * s_sb + m * s_sm  # row offsets on the [O, B, M, C] side
        compact = o * s_co + b * s_cb + j * s_ck  # row offsets on the [O, B, K, C] side
        if SCATTER:
            g = tl.load(src_ptr + compact[:, None] + offs_c[None, :] * s_cc, mask=mask)
            tl.store(dst_ptr + wide[:, None] + offs_c[None, :] * s_sc, g, mask=mask)
            if HAS_POS:  # grad of the position table: sum over (o, b) of rows at the same position
                tl.atomic_add(pos_ptr + m[:, None] * s_pm + offs_c[None, :] * s_pc, g.to(tl.float32), mask=mask)
        else:
            x = tl.load(src_ptr + wide[:, None] + offs_c[None, :] * s_sc, mask=mask)
            if HAS_POS:  # same rounding as the reference: pos cast to x's dtype, then one add
                pe = tl.load(pos_ptr + m[:, None] * s_pm + offs_c[None, :] * s_pc, mask=mask)
                x = (x.to(tl.float32) + pe.to(x.dtype).to(tl.float32)).to(x.dtype)
            tl.store(dst_ptr + compact[:, None] + offs_c[None, :] * s_cc, x, mask=mask)


def _launch(
    wide: torch.Tensor, compact: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None, scatter: bool
) -> None:
    if triton is None:
        raise RuntimeError("impl='triton' needs the triton package (pip install '.[triton]')")
    n_o, b, _, c = wide.shape
    k = idx.shape[1]
    n_rows = n_o * b * k
    if n_rows == 0 or c == 0:
        return
    block_c = min(256, triton.next_power_of_2(c))
    block_r = max(1, 4096 // block_c)  # ~4096 elements per program: 8 KiB of bf16 in, 8 KiB out
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(c, block_c))
    pos_strides = pos.stride() if pos is not None else (0, 0)
    (src, dst) = (compact, wide) if scatter else (wide, compact)
    _rows_kernel[grid](
        src, idx, pos if pos is not None else idx, dst,
        n_o, b, k, c,
        *wide.stride(), *compact.stride(), *idx.stride(), *pos_strides,
        HAS_POS=pos is not None, SCATTER=scatter, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )


@torch.library.custom_op("umt::gather_rows", mutates_args=())
def _gather_rows(src: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """``src [O, B, M, C]``, ``idx [B, K]``, ``pos [M, C] | None`` → ``[O, B, K, C]``."""
    n_o, b, _, c = src.shape
    out = src.new_empty(n_o, b, idx.shape[1], c)
    _launch(src, out, idx, pos, scatter=False)
    return out


@_gather_rows.register_fake
def _(src: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return src.new_empty(src.shape[0], src.shape[1], idx.shape[1], src.shape[3])


@torch.library.custom_op("umt::scatter_rows", mutates_args=())
def _scatter_rows(
    grad: torch.Tensor, idx: torch.Tensor, m: int, pos_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``gather_rows``: ``grad [O, B, K, C]`` → (``[O, B, M, C]`` grad of src, fp32 ``[M, C]`` grad
    of pos, or an empty tensor when ``pos_grad`` is False). Assumes unique indices per row of ``idx``."""
    n_o, b, k, c = grad.shape
    grad = grad.contiguous()
    grad_src = grad.new_zeros(n_o, b, m, c)
    grad_pos = grad.new_zeros((m, c) if pos_grad else (0,), dtype=torch.float32)
    _launch(grad_src, grad, idx, grad_pos if pos_grad else None, scatter=True)
    return grad_src, grad_pos


@_scatter_rows.register_fake
def _(grad: torch.Tensor, idx: torch.Tensor, m: int, pos_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n_o, b, _, c = grad.shape
    return grad.new_empty(n_o, b, m, c), grad.new_empty((m, c) if pos_grad else (0,), dtype=torch.float32)


def _gather_rows_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    src, idx, pos = inputs
    ctx.save_for_backward(idx)
    ctx.m = src.shape[2]
    ctx.pos_dtype = pos.dtype if pos is not None else None
    ctx.pos_grad = pos is not None and ctx.needs_input_grad[2]


def _gather_rows_backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
    (idx,) = ctx.saved_tensors
    grad_src, grad_pos = _scatter_rows(grad, idx, ctx.m, ctx.pos_grad)
    return grad_src, None, grad_pos.to(ctx.pos_dtype) if ctx.pos_grad else None


_gather_rows.register_autograd(_gather_rows_backward, setup_context=_gather_rows_setup)


def gather_tokens(
    x: torch.Tensor, idx: torch.Tensor, pos_embed: torch.Tensor | None = None, impl: str = "torch"
) -> torch.Tensor:
    """Kept tokens ``[B, K, C]`` of ``x [B, M, C]`` at ``idx [B, K]`` (+ ``pos_embed [M, C]`` / ``[1, M, C]``).

    See :func:`gather_tokens_reference`. ``impl="triton"``: one launch forward; the backward scatters the gradient
    into ``x`` (and into ``pos_embed`` when it requires grad). The Triton backward assumes the indices in each row of
    ``idx`` are unique (every mask from :mod:`umt.masking` is); with repeated indices only one gradient row would be
    kept, where the reference would sum them.

    Raises:
        ValueError: unknown ``impl``.
    """
    if impl == "torch":
        return gather_tokens_reference(x, idx, pos_embed)
    if impl == "triton":
        c = x.shape[-1]
        pos = pos_embed.reshape(-1, c) if pos_embed is not None else None  # [M, C]
        return _gather_rows(x.unsqueeze(0), idx, pos).squeeze(0)  # [B, K, C]
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")


def gather_targets(t: torch.Tensor, idx: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """Kept targets ``[L, B, K, C_t]`` of ``t [L, B, M, C_t]`` at ``idx [B, K]``, all L layers in one launch.

    See :func:`gather_targets_reference`. ``impl``: ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: unknown ``impl``.
    """
    if impl == "torch":
        return gather_targets_reference(t, idx)
    if impl == "triton":
        return _gather_rows(t, idx, None)
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")
