"""Semantic-mask top-k: CLS→patch attention, head average, Gumbel-top-k, sorted kept indices.

UMT (Li et al., ICCV 2023, Sec. 3.1) keeps, per frame, the patch tokens the teacher's CLS token attends to most,
sampled without replacement with probability proportional to the head-averaged attention of the teacher's last
block. Sampling K items without replacement with weights p is exactly Gumbel-top-k: ``topk(log p + G, K)`` with
i.i.d. standard Gumbel noise G (Kool et al., ICML 2019, "Stochastic Beams and Where to Find Them").

Noise is counter-based: element ``(row, col)`` of the uniform draw for seed ``s`` is a pure function of
``(s, row * cols + col)`` (the 32-bit "lowbias32" integer hash, written in int64 so that torch and Triton compute the
same bits). The reference and the Triton kernel therefore produce identical masks for a given seed, on any device,
without a generator state to checkpoint and without a host sync.

Anatomy (Triton-tutorial style): reference → Triton kernel → registration (``torch.ops.umt.semantic_topk``, a
``torch.library.custom_op`` with a fake implementation, so ``torch.compile`` traces through it) → public function
with ``impl=``.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: without it only impl="torch" works.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on installs without the triton extra
    triton = None
    tl = None

__all__ = ["bits_to_unit", "uniform_noise", "gumbel_topk", "cls_attention", "semantic_topk", "semantic_topk_reference"]

_MASK32 = 0xFFFFFFFF
# lowbias32 constants (C. Wellons, "Prospecting for hash functions", 2018).
_H1 = 0x7FEB352D
_H2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow (split c into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int64 values in [0, 2**32) (a tensor, or a Python int: the same operators apply)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _H1)
    x = x ^ (x >> 15)
    x = _mul32(x, _H2)
    return x ^ (x >> 16)


def uniform_noise(seed: int | torch.Tensor, rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Counter-based uniform noise in the open interval (0, 1).

    Args:
        seed: integer seed (Python int, or an int64 0-dim tensor on ``device`` to avoid a host sync).
        rows, cols: output shape.
        device: where to compute.

    Returns:
        float32 tensor ``[rows, cols]``; element (r, c) depends only on ``(seed, r * cols + c)``: 23 random bits
        of the hash h, see :func:`bits_to_unit`.
    """
    counter = torch.arange(rows * cols, device=device, dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        key = _hash32((seed.to(device=device, dtype=torch.int64) & _MASK32) ^ _GOLDEN)  # 0-dim, stays on device
    else:
        key = _hash32((int(seed) & _MASK32) ^ _GOLDEN)  # Python int: the same bits, no host→device copy
    bits = _hash32((counter & _MASK32) ^ key)
    return bits_to_unit(bits).view(rows, cols)


def bits_to_unit(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 in [0, 2**32)) → float32 in the open interval (0, 1), exactly.

    ``u = (2·(h >> 9) + 1) / 2**24``: the odd integers 1 … 2**24 − 1 over 2**24, all exact in float32 (24-bit
    significand), so ``2**-24 <= u <= 1 − 2**-24`` and the Gumbel noise ``-log(-log u)`` is always finite. (The
    former ``((h >> 8) + 0.5) / 2**24`` rounds to 1.0 when ``h >> 8 == 2**24 − 1``, once per 2**24 draws: an
    infinite score.) The kernel computes the same expression in uint32.
    """
    return (((bits >> 9) << 1) | 1).to(torch.float32) * (1.0 / (1 << 24))


def gumbel_topk(logits: torch.Tensor, keep: int, seed: int | torch.Tensor) -> torch.Tensor:
    """Sample ``keep`` columns per row without replacement, with probability ∝ ``softmax(logits)``.

    Args:
        logits: ``[R, N]`` unnormalised log-probabilities (e.g. ``log p``); any float dtype.
        keep: K, number of indices kept per row, ``1 <= K <= N``.
        seed: noise seed, see :func:`uniform_noise`.

    Returns:
        int64 ``[R, K]``, indices in ``[0, N)``, unique per row, sorted ascending.

    Raises:
        ValueError: if ``keep`` is out of range.
    """
    rows, n = logits.shape
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {keep}")
    u = uniform_noise(seed, rows, n, logits.device)
    gumbel = -torch.log(-torch.log(u))  # [R, N]
    idx = torch.topk(logits.float() + gumbel, keep, dim=-1, sorted=False).indices  # [R, K]
    return torch.sort(idx, dim=-1).values


def cls_attention(q_cls: torch.Tensor, k: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Head-averaged attention of the CLS query to the patch keys, from one query row (no full attention map).

    The softmax runs over all ``M`` keys (CLS included), as in the teacher's real attention; the CLS column is
    then dropped, as the official UMT code does (``attn[:, :, 0, 1:].mean(1)``).

    Args:
        q_cls: ``[R, H, D]`` the CLS token's query per row (R = B·T frames), before scaling.
        k: ``[R, H, M, D]`` keys of all M = prefix + N tokens.
        num_prefix_tokens: leading non-patch tokens in ``k`` (1 for CLIP's CLS).

    Returns:
        float32 ``[R, N]``, rows sum to ``1 - mean_h p_h(prefix)``.
    """
    scale = q_cls.shape[-1] ** -0.5
    scores = torch.einsum("rhd,rhmd->rhm", q_cls.float() * scale, k.float())  # [R, H, M]
    return scores.softmax(dim=-1)[:, :, num_prefix_tokens:].mean(dim=1)  # [R, N]


def semantic_topk_reference(
    q_cls: torch.Tensor, k: torch.Tensor, keep: int, seed: int | torch.Tensor, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """PyTorch reference of the fused op: ``gumbel_topk(log(cls_attention(q_cls, k)), keep, seed)``.

    Shapes as in :func:`cls_attention`; returns int64 ``[R, K]`` sorted ascending.
    """
    p = cls_attention(q_cls, k, num_prefix_tokens)  # [R, N]
    return gumbel_topk(torch.log(p.clamp_min(1e-30)), keep, seed)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _hash32_tl(x):
        """lowbias32 on uint32 (wrapping multiplies), bit-identical to :func:`_hash32` on int64."""
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit(do_not_specialize=["seed_val"])  # one compiled kernel for every seed value
    def _semantic_topk_kernel(
        q_ptr,  # [R, H, D]
        k_ptr,  # [R, H, M, D]
        seed_ptr,  # [] int64 (read when SEED_IN_TENSOR)
        seed_val,  # int seed (used otherwise)
        out_ptr,  # [R, K] int64
        stride_qr, stride_qh, stride_qd,
        stride_kr, stride_kh, stride_km, stride_kd,
        M, N, K, H, D, prefix, sm_scale,
        SEED_IN_TENSOR: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One program per row r: scores, per-head softmax, head mean, log p + Gumbel, top-K, sorted store."""
        row = tl.program_id(0)
        offs_m = tl.arange(0, BLOCK_M)  # key column m in [0, M); patch column = m - prefix
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < M
        mask_d = offs_d < D
        q_row = q_ptr + row.to(tl.int64) * stride_qr
        k_row = k_ptr + row.to(tl.int64) * stride_kr
        p_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for h in range(0, H):
            q = tl.load(q_row + h * stride_qh + offs_d * stride_qd, mask=mask_d, other=0.0).to(tl.float32)
            q = q * sm_scale  # scale the query first, as the reference does
            kt = tl.load(
                k_row + h * stride_kh + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd,
                mask=mask_m[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_M, BLOCK_D]
            s = tl.sum(kt * q[None, :], axis=1)  # [BLOCK_M]
            s = tl.where(mask_m, s, float("-inf"))
            e = tl.exp(s - tl.max(s, axis=0))
            p_sum += e / tl.sum(e, axis=0)
        p = p_sum / H  # head average, [BLOCK_M]
        valid = mask_m & (offs_m >= prefix)
        col = offs_m - prefix
        # Counter-based uniform noise, same bits as uniform_noise(seed, R, N)[row, col].
        if SEED_IN_TENSOR:
            seed = tl.load(seed_ptr).to(tl.int64) & 0xFFFFFFFF
        else:
            seed = seed_val.to(tl.int64) & 0xFFFFFFFF
        key = _hash32_tl(seed.to(tl.uint32) ^ 0x9E3779B9)
        counter = (row.to(tl.int64) * N + col) & 0xFFFFFFFF
        bits = _hash32_tl(counter.to(tl.uint32) ^ key)
        u = (((bits >> 9) << 1) | 1).to(tl.float32) * (1.0 / 16777216.0)  # exact, in (0, 1): bits_to_unit
        score = tl.log(tl.maximum(p, 1e-30)) - tl.log(-tl.log(u))  # log p + Gumbel
        score = tl.where(valid, score, float("-inf"))
        # Pack (order-preserving int32 image of the float score, column) into unique int64 keys, so that one sort
        # gives the K-th largest key and a >= test selects exactly K columns.
        sbits = score.to(tl.int32, bitcast=True)
        sortable = sbits ^ ((sbits >> 31) & 0x7FFFFFFF)
        packed = (sortable.to(tl.int64) << 32) | (BLOCK_M - 1 - offs_m).to(tl.int64)  # lower column wins ties
        ranked = tl.sort(packed, descending=True)
        kth = tl.sum(tl.where(offs_m == K - 1, ranked, 0), axis=0)
        kept = (packed >= kth) & valid
        pos = tl.cumsum(kept.to(tl.int32), axis=0) - 1  # rank among kept columns = ascending order
        tl.store(out_ptr + row.to(tl.int64) * K + pos, col.to(tl.int64), mask=kept)


@torch.library.custom_op("umt::semantic_topk", mutates_args=())
def _semantic_topk_op(
    q_cls: torch.Tensor, k: torch.Tensor, keep: int, seed: torch.Tensor | None, seed_int: int, prefix: int
) -> torch.Tensor:
    """Registered op: launches :func:`_semantic_topk_kernel` (one program per row). The seed is the 0-dim int64
    tensor ``seed`` when given (read on the device), else the Python int ``seed_int`` (a kernel argument): neither
    needs a host sync or a host→device copy."""
    if triton is None:
        raise RuntimeError("impl='triton' needs the triton package (pip install '.[triton]')")
    rows, heads, m, d = k.shape
    n = m - prefix
    out = torch.empty(rows, keep, dtype=torch.int64, device=k.device)
    if rows == 0:
        return out
    block_m = max(16, triton.next_power_of_2(m))
    seed_in_tensor = seed is not None
    _semantic_topk_kernel[(rows,)](
        q_cls, k, seed.reshape(()) if seed_in_tensor else out, int(seed_int) & 0xFFFFFFFF, out,
        *q_cls.stride(), *k.stride(),
        m, n, keep, heads, d, prefix, d**-0.5,
        SEED_IN_TENSOR=seed_in_tensor,
        BLOCK_M=block_m,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        num_warps=8 if block_m * d >= 16384 else 4,
    )
    return out


@_semantic_topk_op.register_fake
def _(
    q_cls: torch.Tensor, k: torch.Tensor, keep: int, seed: torch.Tensor | None, seed_int: int, prefix: int
) -> torch.Tensor:
    return k.new_empty(k.shape[0], keep, dtype=torch.int64)


def semantic_topk(
    q_cls: torch.Tensor,
    k: torch.Tensor,
    keep: int,
    seed: int | torch.Tensor,
    num_prefix_tokens: int = 1,
    impl: str = "torch",
) -> torch.Tensor:
    """Kept patch indices per frame for UMT's semantic mask. See :func:`semantic_topk_reference`.

    The Triton path is one kernel launch (``torch.ops.umt.semantic_topk``): it reads ``q_cls`` and ``k`` once, never
    builds the attention map and never syncs with the host. For a fixed seed its indices equal the reference's,
    except where two perturbed scores at the K-th place differ by less than float32 rounding (the two compute the
    dot products in different orders).

    Args:
        q_cls: ``[R, H, D]`` CLS query per frame (unscaled).
        k: ``[R, H, M, D]`` keys, M = ``num_prefix_tokens`` + N; any float dtype, any strides.
        keep: K, kept patches per row, ``1 <= K <= N``.
        seed: Python int or int64 0-dim tensor (on the device, to avoid a host sync).
        num_prefix_tokens: leading non-patch keys (1 for CLIP's CLS).
        impl: ``"torch"`` (reference) or ``"triton"`` (fused kernel).

    Returns:
        int64 ``[R, K]``, sorted ascending, unique, in ``[0, N)``.

    Raises:
        ValueError: unknown ``impl``, bad shapes or ``keep`` out of range.
        RuntimeError: ``impl="triton"`` without the triton package.
    """
    if impl == "torch":
        return semantic_topk_reference(q_cls, k, keep, seed, num_prefix_tokens)
    if impl == "triton":
        if k.dim() != 4 or q_cls.shape != (k.shape[0], k.shape[1], k.shape[3]):
            raise ValueError(f"expected q_cls [R, H, D] and k [R, H, M, D], got {tuple(q_cls.shape)}, {tuple(k.shape)}")
        n = k.shape[2] - num_prefix_tokens
        if not 1 <= keep <= n:
            raise ValueError(f"keep must be in [1, {n}], got {keep}")
        if isinstance(seed, torch.Tensor):
            return _semantic_topk_op(q_cls, k, keep, seed.to(device=k.device, dtype=torch.int64), 0, num_prefix_tokens)
        return _semantic_topk_op(q_cls, k, keep, None, int(seed) & 0xFFFFFFFF, num_prefix_tokens)
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")
