"""Flash attention (non-causal), forward and backward.

Anatomy (Triton-tutorial style): reference → Triton kernels → registration (``torch.ops.umt.flash_attn_fwd`` /
``flash_attn_bwd``, ``torch.library.custom_op`` with fake implementations and ``register_autograd``, so
``torch.compile`` and autograd see one op) → public function with ``impl=``.

Algorithm: FlashAttention-2 (Dao, 2023, arXiv 2307.08691), written after the structure of Triton's fused-attention
tutorial (``python/tutorials/06-fused-attention.py``). Forward: one program per ``BLOCK_M`` query rows of one
(batch, head); an online softmax in base 2 over ``BLOCK_N`` key blocks, fp32 accumulation; it stores the output and
the per-row log-sum-exp ``lse = log Σ_j exp(q·k_j / sqrt(D))`` (natural log, fp32 ``[B, H, N]``), which is all the
backward needs. Backward: ``δ = rowsum(dO ∘ O)``; one kernel per key block accumulates dK and dV over all query
blocks, one per query block accumulates dQ over all key blocks (no atomics, deterministic).

Sequence lengths need not be multiples of the block sizes (197 per teacher frame, 320 visible student tokens, 1568
full clips): the last key block is masked to ``-inf`` before the softmax, tail query rows are loaded as zeros and
never stored. Every loop runs its full blocks unmasked and the one ragged block masked.

On the teacher's last block the log-sum-exp of the CLS row would give the semantic mask its softmax normaliser, but
that saves no pass: the fused top-k kernel (:mod:`kernels.semantic_topk`) must read the keys anyway to form the
CLS→patch scores, and its own per-head max/sum over 197 keys costs nothing next to that read. So the mask kernel
takes ``q_cls`` and ``k`` only, and the teacher's attention may run in any backend.

Inputs: fp16, bf16 (and fp32, computed with TF32 dots on a GPU); head dims 16, 32, 64, 128; any strides. In the
Triton interpreter (CPU tests) ``tl.dot`` on bf16 is wrong (triton-lang/triton#11584), so there the kernels upcast
bf16 tiles to fp32 (a compile-time flag, off on a GPU).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # Triton is optional: without it only impl="torch" works.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on installs without the triton extra
    triton = None
    tl = None

__all__ = ["attention_flops", "attention_reference", "flash_attention", "flash_attention_with_lse"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_HEAD_DIMS = (16, 32, 64, 128)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(D)) v`` through PyTorch SDPA.

    Args:
        q, k, v: ``[B, H, N, D]``.

    Returns:
        ``[B, H, N, D]``.
    """
    return F.scaled_dot_product_attention(q, k, v)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------

if triton is not None:
    if _INTERPRET:  # tiny shapes on CPU: small blocks so that tests cross block boundaries and ragged tails
        _FWD_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
        _BWD_KV_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
        _BWD_Q_CONFIGS = _BWD_KV_CONFIGS
    else:  # GPU: autotuned per (N, D, dtype); configs that do not fit are skipped by the autotuner
        _FWD_CONFIGS = [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 4), (128, 128, 8, 3)]
        ]
        _BWD_KV_CONFIGS = [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in [(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3)]
        ]
        _BWD_Q_CONFIGS = [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in [(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)]
        ]

    @triton.jit
    def _fwd_block(
        acc, m_i, l_i, q, k_base, v_base, start_n, N_CTX, skn, skd, svn, svd, qk_scale,
        offs_d, BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr,
    ):
        cols = start_n + tl.arange(0, BLOCK_N)
        if MASK:
            kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd, mask=cols[None, :] < N_CTX, other=0.0)
            v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd, mask=cols[:, None] < N_CTX, other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd)  # [D, BLOCK_N]
            v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd)  # [BLOCK_N, D]
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, kt) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        if MASK:
            qk = tl.where(cols[None, :] < N_CTX, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, m_new, l_i

    @triton.autotune(configs=_FWD_CONFIGS, key=["N_CTX", "HEAD_DIM"])
    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd, mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        qk_scale = sm_scale * 1.4426950408889634  # exp(x) = exp2(x·log2 e)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        n_full = (N_CTX // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            acc, m_i, l_i = _fwd_block(
                acc, m_i, l_i, q, k_base, v_base, start_n, N_CTX, skn, skd, svn, svd, qk_scale, offs_d,
                BLOCK_N, False, UPCAST,
            )
        if n_full < N_CTX:
            acc, m_i, l_i = _fwd_block(
                acc, m_i, l_i, q, k_base, v_base, n_full, N_CTX, skn, skd, svn, svd, qk_scale, offs_d,
                BLOCK_N, True, UPCAST,
            )
        acc = acc / l_i[:, None]
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # natural log
        tl.store(LSE + bh.to(tl.int64) * N_CTX + offs_m, lse, mask=row_ok)
        tl.store(
            O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod,
            acc.to(O.dtype.element_ty),
            mask=row_ok[:, None],
        )

    @triton.jit
    def _attn_bwd_delta_kernel(
        O, DO, DELTA, sob, soh, son, sod, sdb, sdh, sdn, sdd, H, N_CTX,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        """``δ[b, h, n] = Σ_d O·dO`` in fp32."""
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX
        o = tl.load(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :] * sdd, mask=row_ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(DELTA + bh.to(tl.int64) * N_CTX + offs_m, delta, mask=row_ok)

    @triton.jit
    def _bwd_kv_block(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, N_CTX, sqn, sqd, sdn, sdd, qk_scale,
        offs_d, BLOCK_M: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr,
    ):
        rows = start_m + tl.arange(0, BLOCK_M)
        if MASK:
            qt = tl.load(q_base + rows[None, :] * sqn + offs_d[:, None] * sqd, mask=rows[None, :] < N_CTX, other=0.0)
            do = tl.load(do_base + rows[:, None] * sdn + offs_d[None, :] * sdd, mask=rows[:, None] < N_CTX, other=0.0)
            lse = tl.load(lse_base + rows, mask=rows < N_CTX, other=float("inf"))  # p = 0 on tail rows
            delta = tl.load(delta_base + rows, mask=rows < N_CTX, other=0.0)
        else:
            qt = tl.load(q_base + rows[None, :] * sqn + offs_d[:, None] * sqd)  # [D, BLOCK_M]
            do = tl.load(do_base + rows[:, None] * sdn + offs_d[None, :] * sdd)  # [BLOCK_M, D]
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        qkt = tl.dot(k, qt) * qk_scale  # [BLOCK_N, BLOCK_M], log2 units
        pt = tl.math.exp2(qkt - (lse * 1.4426950408889634)[None, :])  # Pᵀ
        dv += tl.dot(pt.to(do.dtype), do)
        dpt = tl.dot(v, tl.trans(do))  # (dO Vᵀ)ᵀ, [BLOCK_N, BLOCK_M]
        dst = pt * (dpt - delta[None, :])  # dSᵀ
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt))
        return dk, dv

    @triton.autotune(configs=_BWD_KV_CONFIGS, key=["N_CTX", "HEAD_DIM"])
    @triton.jit
    def _attn_bwd_kv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
        sgb, sgh, sgn, sgd,  # strides of DK and DV (allocated alike)
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per BLOCK_N keys of one (b, h): dK, dV summed over every query block."""
        start_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = cols < N_CTX
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + offs_d[None, :] * skd, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :] * svd, mask=col_ok[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdb + h * sdh
        lse_base = LSE + bh.to(tl.int64) * N_CTX
        delta_base = DELTA + bh.to(tl.int64) * N_CTX
        qk_scale = sm_scale * 1.4426950408889634
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        m_full = (N_CTX // BLOCK_M) * BLOCK_M
        for start_m in range(0, m_full, BLOCK_M):
            dk, dv = _bwd_kv_block(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, N_CTX, sqn, sqd, sdn, sdd, qk_scale,
                offs_d, BLOCK_M, False, UPCAST,
            )
        if m_full < N_CTX:
            dk, dv = _bwd_kv_block(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base, m_full, N_CTX, sqn, sqd, sdn, sdd, qk_scale,
                offs_d, BLOCK_M, True, UPCAST,
            )
        dk = dk * sm_scale
        g_off = b * sgb + h * sgh + cols[:, None] * sgn + offs_d[None, :] * sgd
        tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _bwd_q_block(
        dq, q, do, lse2, delta, k_base, v_base, start_n, N_CTX, skn, skd, svn, svd, qk_scale,
        offs_d, BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr,
    ):
        cols = start_n + tl.arange(0, BLOCK_N)
        if MASK:
            kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd, mask=cols[None, :] < N_CTX, other=0.0)
            vt = tl.load(v_base + cols[None, :] * svn + offs_d[:, None] * svd, mask=cols[None, :] < N_CTX, other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd)  # [D, BLOCK_N]
            vt = tl.load(v_base + cols[None, :] * svn + offs_d[:, None] * svd)  # [D, BLOCK_N]
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        qk = tl.dot(q, kt) * qk_scale
        p = tl.math.exp2(qk - lse2[:, None])  # [BLOCK_M, BLOCK_N]
        if MASK:
            p = tl.where(cols[None, :] < N_CTX, p, 0.0)
        dp = tl.dot(do, vt)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
        return dq

    @triton.autotune(configs=_BWD_Q_CONFIGS, key=["N_CTX", "HEAD_DIM"])
    @triton.jit
    def _attn_bwd_q_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
        sgb, sgh, sgn, sgd,  # strides of DQ
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per BLOCK_M queries of one (b, h): dQ summed over every key block."""
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = rows < N_CTX
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + offs_d[None, :] * sqd, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + offs_d[None, :] * sdd, mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.load(LSE + bh.to(tl.int64) * N_CTX + rows, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + bh.to(tl.int64) * N_CTX + rows, mask=row_ok, other=0.0)
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        qk_scale = sm_scale * 1.4426950408889634
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        n_full = (N_CTX // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            dq = _bwd_q_block(
                dq, q, do, lse2, delta, k_base, v_base, start_n, N_CTX, skn, skd, svn, svd, qk_scale, offs_d,
                BLOCK_N, False, UPCAST,
            )
        if n_full < N_CTX:
            dq = _bwd_q_block(
                dq, q, do, lse2, delta, k_base, v_base, n_full, N_CTX, skn, skd, svn, svd, qk_scale, offs_d,
                BLOCK_N, True, UPCAST,
            )
        dq = dq * sm_scale
        tl.store(
            DQ + b * sgb + h * sgh + rows[:, None] * sgn + offs_d[None, :] * sgd,
            dq.to(DQ.dtype.element_ty),
            mask=row_ok[:, None],
        )


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("impl='triton' needs the triton package (pip install '.[triton]')")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"expected q, k, v of one shape [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] not in _HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} not supported by the Triton kernel; expected one of {_HEAD_DIMS}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype among fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")


def _upcast(dtype: torch.dtype) -> bool:
    return _INTERPRET and dtype == torch.bfloat16


@torch.library.custom_op("umt::flash_attn_fwd", mutates_args=())
def _flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q, k, v [B, H, N, D]`` → (``o [B, H, N, D]``, fp32 ``lse [B, H, N]``)."""
    _check(q, k, v)
    b, h, n, d = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, d**-0.5, *q.stride(), *k.stride(), *v.stride(), *o.stride(), h, n,
        HEAD_DIM=d, UPCAST=_upcast(q.dtype),
    )
    return o, lse


@_flash_attn_fwd.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("umt::flash_attn_bwd", mutates_args=())
def _flash_attn_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of :func:`_flash_attn_fwd` from ``do [B, H, N, D]`` and the saved o, lse."""
    b, h, n, d = q.shape
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    block = 16 if _INTERPRET else 64
    _attn_bwd_delta_kernel[(triton.cdiv(n, block), b * h)](
        o, do, delta, *o.stride(), *do.stride(), h, n, HEAD_DIM=d, BLOCK_M=block
    )
    upcast = _upcast(q.dtype)
    grid_kv = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * h)  # noqa: E731
    _attn_bwd_kv_kernel[grid_kv](
        q, k, v, do, lse, delta, dk, dv, d**-0.5,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), h, n,
        HEAD_DIM=d, UPCAST=upcast,
    )
    grid_q = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)  # noqa: E731
    _attn_bwd_q_kernel[grid_q](
        q, k, v, do, lse, delta, dq, d**-0.5,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), h, n,
        HEAD_DIM=d, UPCAST=upcast,
    )
    return dq, dk, dv


@_flash_attn_bwd.register_fake
def _(do, q, k, v, o, lse):  # noqa: ANN001, ANN202
    fmt = torch.contiguous_format
    return (torch.empty_like(q, memory_format=fmt), torch.empty_like(k, memory_format=fmt),
            torch.empty_like(v, memory_format=fmt))


def _fwd_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    q, k, v = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)


def _fwd_backward(ctx, do: torch.Tensor, dlse: torch.Tensor | None):  # noqa: ANN202
    # lse is returned for callers that need it (e.g. to read attention probabilities of a few rows); it is not
    # differentiable: its gradient is ignored.
    q, k, v, o, lse = ctx.saved_tensors
    return _flash_attn_bwd(do, q, k, v, o, lse)


_flash_attn_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)


def flash_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton attention that also returns the per-row log-sum-exp.

    Args:
        q, k, v: ``[B, H, N, D]``, one dtype among fp16/bf16/fp32, D in (16, 32, 64, 128), any strides.

    Returns:
        ``o [B, H, N, D]`` (contiguous, q's dtype; differentiable in q, k, v) and
        ``lse [B, H, N]`` fp32, ``log Σ_j exp(q·k_j / sqrt(D))`` (natural log; not differentiable).

    Raises:
        ValueError: shapes, dtypes or head dim not supported. RuntimeError: triton not installed.
    """
    return _flash_attn_fwd(q, k, v)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """Non-causal attention ``softmax(q kᵀ / sqrt(D)) v``, ``[B, H, N, D] → [B, H, N, D]``.

    Args:
        impl: ``"torch"`` (SDPA, any device/dtype) or ``"triton"`` (this file's kernels; see
            :func:`flash_attention_with_lse` for what they accept).

    Raises:
        ValueError: unknown ``impl``, or inputs the Triton kernel does not accept.
    """
    if impl == "torch":
        return attention_reference(q, k, v)
    if impl == "triton":
        return _flash_attn_fwd(q, k, v)[0]
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")


def attention_flops(batch: int, heads: int, tokens: int, head_dim: int, backward: bool = False) -> float:
    """FLOPs of non-causal attention: ``4·B·H·N²·D`` forward (two matmuls), ×3.5 with the backward (five matmuls,
    one of them the recomputed ``q kᵀ``), as in Triton's fused-attention tutorial."""
    fwd = 4.0 * batch * heads * tokens**2 * head_dim
    return fwd * 3.5 if backward else fwd

