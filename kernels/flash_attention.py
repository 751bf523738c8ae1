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

Layout and launch: ``o`` is written token-major, ``[B, N, H, D]``, so the head merge before the output projection
is a view; ``lse``/``δ`` are contiguous ``[B, H, N]`` (the backward indexes them as ``bh·N + n``). Every kernel runs
on a 1-D grid of ``B·H·ceil(N / block)`` programs (axis 0: no 65,535 cap on B·H). Tiles are not autotuned: one
config is pinned per (kernel, N, D, dtype, arch) (:func:`pick_config`), recorded (:func:`chosen_configs`) and
re-pinnable (:func:`pin_configs`), so a resumed run sums in the same order; the candidates and the pinned table are
checked ahead of time for sm_90 and sm_80 (``tests/test_kernels_aot.py``, ``benchmarks/kernel_resources.py``).

Inputs: fp16, bf16 (and fp32, computed with TF32 dots on a GPU); head dims 16, 32, 64, 128 (128 refused on sm_80,
where every backward tile spills); any strides. In the
Triton interpreter (CPU tests) ``tl.dot`` on bf16 is wrong (triton-lang/triton#11584), so there the kernels upcast
bf16 tiles to fp32 (a compile-time flag, off on a GPU).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

try:  # Triton is optional: without it only impl="torch" works.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on installs without the triton extra
    triton = None
    tl = None

__all__ = [
    "CANDIDATES",
    "KernelConfig",
    "attention_flops",
    "attention_reference",
    "chosen_configs",
    "config_key",
    "flash_attention",
    "flash_attention_with_lse",
    "grid_size",
    "pick_config",
    "pin_configs",
    "target_arch",
    "unsupported_reason",
]

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

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        n_blocks = tl.cdiv(N_CTX, BLOCK_M)
        bh = tl.program_id(0) // n_blocks  # one 1-D grid of B·H·blocks: no 65,535 cap on B·H (axes 1, 2)
        start_m = tl.program_id(0) % n_blocks
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
        n_blocks = tl.cdiv(N_CTX, BLOCK_M)
        bh = tl.program_id(0) // n_blocks  # one 1-D grid of B·H·blocks: no 65,535 cap on B·H (axes 1, 2)
        start_m = tl.program_id(0) % n_blocks
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

    @triton.jit
    def _attn_bwd_kv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
        sgb, sgh, sgn, sgd,  # strides of DK and DV (allocated alike)
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per BLOCK_N keys of one (b, h): dK, dV summed over every query block."""
        n_blocks = tl.cdiv(N_CTX, BLOCK_N)
        bh = tl.program_id(0) // n_blocks
        start_n = tl.program_id(0) % n_blocks
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

    @triton.jit
    def _attn_bwd_q_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, sm_scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
        sgb, sgh, sgn, sgd,  # strides of DQ
        H, N_CTX,
        HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per BLOCK_M queries of one (b, h): dQ summed over every key block."""
        n_blocks = tl.cdiv(N_CTX, BLOCK_M)
        bh = tl.program_id(0) // n_blocks  # one 1-D grid of B·H·blocks: no 65,535 cap on B·H (axes 1, 2)
        start_m = tl.program_id(0) % n_blocks
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


# ----------------------------------------------------------------------------------------------------------------
# Launch configurations: one pinned config per (kernel, N, D, dtype, arch), never re-benchmarked at run time
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one attention kernel (Triton's ``BLOCK_M``/``BLOCK_N``, warps, stages)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_C = KernelConfig
# Candidates per kernel and target family: what benchmarks.gpu_validation sweeps and tests/test_kernels_aot.py
# compiles (every one must compile, fit shared memory, and on sm_90 at D=64 in 16-bit not spill). The sm_80
# backward candidates are small tiles: at D=64 the 32×128/64×128 tiles of sm_90 sit at the 255-register cap on
# sm_80 and spill (measured with ptxas from triton 3.7.1).
CANDIDATES: dict[str, dict[str, tuple[KernelConfig, ...]]] = {
    "fwd": {
        "sm90": (_C(128, 64, 8, 3), _C(128, 64, 4, 3), _C(128, 32, 4, 4), _C(64, 64, 4, 3), _C(64, 32, 4, 4),
                 _C(128, 128, 8, 3), _C(64, 32, 4, 2)),
        "sm80": (_C(128, 64, 8, 3), _C(128, 64, 4, 3), _C(128, 32, 4, 4), _C(64, 64, 4, 3), _C(64, 32, 4, 4),
                 _C(64, 32, 4, 2), _C(64, 16, 4, 2)),
    },
    "bwd_kv": {
        "sm90": (_C(32, 128, 8, 3), _C(64, 128, 8, 3), _C(32, 64, 4, 3), _C(64, 64, 4, 3), _C(16, 64, 4, 2),
                 _C(32, 64, 8, 2)),
        "sm80": (_C(16, 64, 4, 2), _C(32, 64, 4, 2), _C(32, 64, 8, 2), _C(16, 128, 8, 2), _C(16, 32, 4, 2)),
    },
    "bwd_q": {
        "sm90": (_C(128, 32, 8, 3), _C(128, 64, 8, 3), _C(64, 32, 4, 3), _C(64, 64, 4, 3), _C(64, 16, 4, 2),
                 _C(64, 32, 8, 2)),
        "sm80": (_C(64, 16, 4, 2), _C(64, 32, 4, 2), _C(64, 32, 8, 2), _C(128, 16, 8, 2), _C(32, 16, 4, 2)),
    },
}
# The pinned choice per (kernel, arch, head dim, element bytes): among the candidates, no spills and the most
# resident warps at the fewest registers, from the AOT figures (benchmarks/results/*_kernel_resources.md; ptxas of
# triton 3.7.1). Re-pin from GPU timings with benchmarks.gpu_validation. Sequence length does not change the choice:
# every config handles ragged tails, and the choice must not depend on the batch either (exact resume).
# sm_80 at D=128 is refused (see _check): every backward tile spills there (32 B to 1.2 KB per thread).
_PINNED: dict[tuple[str, str, int, int], KernelConfig] = {
    **{("fwd", "sm90", d, 2): _C(128, 64, 8, 3) for d in (16, 32, 64, 128)},
    **{("fwd", "sm90", d, 4): _C(128, 64, 8, 3) for d in (16, 32, 64)},
    ("fwd", "sm90", 128, 4): _C(64, 32, 4, 2),  # 128×64 needs 256 KiB of shared memory in fp32
    **{("bwd_kv", "sm90", d, 2): _C(64, 64, 4, 3) for d in (16, 32, 64)},
    ("bwd_kv", "sm90", 128, 2): _C(32, 64, 8, 2),  # 64×64 spills 76 B at D=128
    **{("bwd_kv", "sm90", d, 4): _C(32, 64, 4, 3) for d in (16, 32, 64)},  # 64×64 spills 8 B in fp32
    ("bwd_kv", "sm90", 128, 4): _C(32, 64, 8, 2),
    **{("bwd_q", "sm90", d, b): _C(64, 64, 4, 3) for d in (16, 32, 64, 128) for b in (2, 4)
       if (d, b) != (128, 4)},
    ("bwd_q", "sm90", 128, 4): _C(64, 32, 8, 2),  # 64×64 spills 156 B
    # sm_80: 128×64 with 4 warps spills 16 B (bf16) at D=64; the backward takes small tiles (≤ 228 registers).
    **{("fwd", "sm80", d, b): _C(128, 64, 8, 3) for d in (16, 32, 64) for b in (2, 4)},
    **{("bwd_kv", "sm80", d, b): _C(16, 64, 4, 2) for d in (16, 32, 64) for b in (2, 4)},
    **{("bwd_q", "sm80", d, 2): _C(64, 16, 4, 2) for d in (16, 32, 64)},
    **{("bwd_q", "sm80", d, 4): _C(32, 16, 4, 2) for d in (16, 32, 64)},  # 64×16 sits at 255 registers in fp32
}
_INTERPRETER_CONFIG = KernelConfig(16, 16, 4, 1)  # tiny CPU shapes cross block boundaries and ragged tails
_DELTA_BLOCK = 64
_OVERRIDES: dict[str, KernelConfig] = {}
_CHOSEN: dict[str, dict[str, int]] = {}


def target_arch(device: torch.device) -> str:
    """Config family for ``device``: ``"interpreter"`` under ``TRITON_INTERPRET=1``, else ``"sm90"`` (Hopper and
    newer) or ``"sm80"`` (Ampere/Ada)."""
    if _INTERPRET or device.type != "cuda":
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80"


def config_key(kernel: str, n: int, d: int, dtype: torch.dtype, arch: str) -> str:
    """The name a launch configuration is recorded and pinned under, e.g. ``"fwd N=320 D=64 bfloat16 sm90"``."""
    return f"{kernel} N={n} D={d} {str(dtype).removeprefix('torch.')} {arch}"


def pick_config(kernel: str, n: int, d: int, dtype: torch.dtype, arch: str) -> KernelConfig:
    """The configuration of ``kernel`` (``"fwd"``, ``"bwd_kv"``, ``"bwd_q"``) for sequence length ``n``, head dim
    ``d``, ``dtype`` and ``arch`` (:func:`target_arch`): a pinned override (:func:`pin_configs`) if there is one,
    else the built-in table. A pure function of its arguments: a resumed run launches the same tiles, so the same
    summation order, as the run it resumes (autotuning could pick another config per process)."""
    key = config_key(kernel, n, d, dtype, arch)
    if key in _OVERRIDES:
        return _OVERRIDES[key]
    if arch == "interpreter":
        return _INTERPRETER_CONFIG
    cfg = _PINNED.get((kernel, arch, d, torch.empty((), dtype=dtype).element_size()))
    if cfg is None:
        why = unsupported_reason(d, arch)
        raise ValueError(f"no {kernel} attention config for head dim {d} in {dtype} on {arch}: {why}")
    return cfg


def unsupported_reason(d: int, arch: str) -> str | None:
    """Why the kernels refuse head dim ``d`` on ``arch`` (None when they accept it)."""
    if d not in _HEAD_DIMS:
        return f"head dim {d} not supported by the Triton kernel; expected one of {_HEAD_DIMS}"
    if arch == "sm80" and d == 128:
        return ("head dim 128 is not supported on sm_80 (A100): every backward tile spills registers there "
                "; use the PyTorch backend")
    return None


def _record(kernel: str, n: int, d: int, dtype: torch.dtype, arch: str) -> KernelConfig:
    cfg = pick_config(kernel, n, d, dtype, arch)
    _CHOSEN.setdefault(config_key(kernel, n, d, dtype, arch), cfg.as_dict())
    return cfg


def chosen_configs() -> dict[str, dict[str, int]]:
    """Every configuration launched in this process so far, ``{config_key: {block_m, block_n, num_warps,
    num_stages}}``; the trainer writes it to ``<run_dir>/kernel_configs.json``."""
    return dict(_CHOSEN)


def pin_configs(configs: dict[str, dict[str, int]]) -> None:
    """Pin configurations by :func:`config_key` (e.g. those a run recorded), overriding the built-in table.

    Raises:
        KeyError, TypeError: an entry is not a ``KernelConfig`` field mapping.
    """
    for key, cfg in configs.items():
        _OVERRIDES[key] = KernelConfig(**cfg)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("impl='triton' needs the triton package (pip install '.[triton]')")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"expected q, k, v of one shape [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    reason = unsupported_reason(q.shape[-1], target_arch(q.device))
    if reason is not None:
        raise ValueError(reason)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype among fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")


def _upcast(dtype: torch.dtype) -> bool:
    return _INTERPRET and dtype == torch.bfloat16


def _bhnd(x: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of ``x [B, N, H, D]`` in the kernels' (b, h, n, d) argument order."""
    sb, sn, sh, sd = x.stride()
    return sb, sh, sn, sd


def grid_size(b: int, h: int, n: int, block: int) -> tuple[int]:
    """The 1-D launch grid of every attention kernel: ``B·H·ceil(N / block)`` programs on axis 0 (limit 2³¹ − 1),
    so B·H is never capped by the 65,535 limit of grid axes 1 and 2 (L/14 teacher: 512 clips × 8 frames × 16 heads
    = 65,536). Programs of one (b, h) are consecutive, so they share K and V in L2."""
    return (b * h * triton.cdiv(n, block),)


@torch.library.custom_op("umt::flash_attn_fwd", mutates_args=())
def _flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q, k, v [B, H, N, D]`` → (``o [B, N, H, D]`` contiguous, fp32 ``lse [B, H, N]`` contiguous).

    ``o`` is written in token-major order so that ``o.view(B, N, H·D)`` feeds the output projection with no copy.
    """
    _check(q, k, v)
    b, h, n, d = q.shape
    o = q.new_empty(b, n, h, d)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    cfg = _record("fwd", n, d, q.dtype, target_arch(q.device))
    _attn_fwd_kernel[grid_size(b, h, n, cfg.block_m)](
        q, k, v, o, lse, d**-0.5, *q.stride(), *k.stride(), *v.stride(), *_bhnd(o), h, n,
        HEAD_DIM=d, UPCAST=_upcast(q.dtype), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return o, lse


@_flash_attn_fwd.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    return q.new_empty(b, n, h, d), q.new_empty(b, h, n, dtype=torch.float32)


@torch.library.custom_op("umt::flash_attn_bwd", mutates_args=())
def _flash_attn_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` (``[B, H, N, D]``) of :func:`_flash_attn_fwd` from ``do`` and the saved ``o``
    (both ``[B, N, H, D]``, any strides) and ``lse [B, H, N]`` (any strides: made contiguous, the kernels index it
    as ``bh·N + n``)."""
    b, h, n, d = q.shape
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return dq, dk, dv
    lse = lse.contiguous()  # [B, H, N]
    delta = torch.empty(b, h, n, dtype=torch.float32, device=q.device)  # not empty_like(lse): that keeps strides
    arch = target_arch(q.device)
    block = _INTERPRETER_CONFIG.block_m if arch == "interpreter" else _DELTA_BLOCK
    _attn_bwd_delta_kernel[grid_size(b, h, n, block)](
        o, do, delta, *_bhnd(o), *_bhnd(do), h, n, HEAD_DIM=d, BLOCK_M=block
    )
    upcast = _upcast(q.dtype)
    cfg = _record("bwd_kv", n, d, q.dtype, arch)
    _attn_bwd_kv_kernel[grid_size(b, h, n, cfg.block_n)](
        q, k, v, do, lse, delta, dk, dv, d**-0.5,
        *q.stride(), *k.stride(), *v.stride(), *_bhnd(do), *dk.stride(), h, n,
        HEAD_DIM=d, UPCAST=upcast, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    cfg = _record("bwd_q", n, d, q.dtype, arch)
    _attn_bwd_q_kernel[grid_size(b, h, n, cfg.block_m)](
        q, k, v, do, lse, delta, dq, d**-0.5,
        *q.stride(), *k.stride(), *v.stride(), *_bhnd(do), *dq.stride(), h, n,
        HEAD_DIM=d, UPCAST=upcast, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
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
    return _flash_attn_bwd(do, q, k, v, o, lse)  # do: [B, N, H, D], the gradient of the op's o


_flash_attn_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)


def flash_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton attention that also returns the per-row log-sum-exp.

    Args:
        q, k, v: ``[B, H, N, D]``, one dtype among fp16/bf16/fp32, D in (16, 32, 64, 128), any strides.

    Returns:
        ``o [B, H, N, D]`` (q's dtype; differentiable in q, k, v), a transposed view of token-major memory
        ``[B, N, H, D]``: ``o.transpose(1, 2).reshape(B, N, H·D)`` is free (no copy), and
        ``lse [B, H, N]`` fp32 contiguous, ``log Σ_j exp(q·k_j / sqrt(D))`` (natural log; not differentiable).

    Raises:
        ValueError: shapes, dtypes or head dim not supported. RuntimeError: triton not installed.
    """
    o, lse = _flash_attn_fwd(q, k, v)  # o: [B, N, H, D]
    return o.transpose(1, 2), lse  # [B, H, N, D] view


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """Non-causal attention ``softmax(q kᵀ / sqrt(D)) v``, ``[B, H, N, D] → [B, H, N, D]``.

    With ``impl="triton"`` the result is a view of ``[B, N, H, D]`` memory (see :func:`flash_attention_with_lse`),
    so callers merging heads with ``o.transpose(1, 2).reshape(B, N, H·D)`` copy nothing.

    Args:
        impl: ``"torch"`` (SDPA, any device/dtype) or ``"triton"`` (this file's kernels; see
            :func:`flash_attention_with_lse` for what they accept).

    Raises:
        ValueError: unknown ``impl``, or inputs the Triton kernel does not accept.
    """
    if impl == "torch":
        return attention_reference(q, k, v)
    if impl == "triton":
        return _flash_attn_fwd(q, k, v)[0].transpose(1, 2)  # [B, H, N, D] view of [B, N, H, D] memory
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")


def attention_flops(batch: int, heads: int, tokens: int, head_dim: int, backward: bool = False) -> float:
    """FLOPs of non-causal attention: ``4·B·H·N²·D`` forward (two matmuls), ×3.5 with the backward (five matmuls,
    one of them the recomputed ``q kᵀ``), as in Triton's fused-attention tutorial."""
    fwd = 4.0 * batch * heads * tokens**2 * head_dim
    return fwd * 3.5 if backward else fwd

