"""Semantic-mask top-k: CLS→patch attention, head average, Gumbel-top-k, sorted kept indices.

UMT (Li et al., ICCV 2023, Sec. 3.1) keeps, per frame, the patch tokens the teacher's CLS token attends to most,
sampled without replacement with probability proportional to the head-averaged attention of the teacher's last
block. Sampling K items without replacement with weights p is exactly Gumbel-top-k: ``topk(log p + G, K)`` with
i.i.d. standard Gumbel noise G (Kool et al., ICML 2019, "Stochastic Beams and Where to Find Them").

Noise is counter-based: element ``(row, col)`` of the uniform draw for seed ``s`` is a pure function of
``(s, row * cols + col)`` (the 32-bit "lowbias32" integer hash, written in int64 so that torch and Triton compute the
same bits). The reference and the Triton kernel therefore produce identical masks for a given seed, on any device,
without a generator state to checkpoint and without a host sync.

Anatomy (Triton-tutorial style): reference → Triton kernel → public function with ``impl=`` → registration.
"""

from __future__ import annotations

import torch

__all__ = ["uniform_noise", "gumbel_topk", "cls_attention", "semantic_topk", "semantic_topk_reference"]

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
        float32 tensor ``[rows, cols]``; element (r, c) depends only on ``(seed, r * cols + c)``, with 24 random
        bits: ``(h >> 8) + 0.5) / 2**24``.
    """
    counter = torch.arange(rows * cols, device=device, dtype=torch.int64)
    s = seed if isinstance(seed, torch.Tensor) else torch.tensor(int(seed), device=device, dtype=torch.int64)
    key = _hash32((s.to(torch.int64) & _MASK32) ^ _GOLDEN)
    bits = _hash32((counter & _MASK32) ^ key)
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return u.view(rows, cols)


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


def semantic_topk(
    q_cls: torch.Tensor,
    k: torch.Tensor,
    keep: int,
    seed: int | torch.Tensor,
    num_prefix_tokens: int = 1,
    impl: str = "torch",
) -> torch.Tensor:
    """Kept patch indices per frame for UMT's semantic mask. See :func:`semantic_topk_reference`.

    Args:
        impl: ``"torch"`` (reference) or ``"triton"`` (fused kernel).

    Raises:
        ValueError: unknown ``impl``.
    """
    if impl == "torch":
        return semantic_topk_reference(q_cls, k, keep, seed, num_prefix_tokens)
    if impl == "triton":
        raise NotImplementedError("the Triton semantic top-k kernel is not built yet")
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")
