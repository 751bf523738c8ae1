"""Flash attention (non-causal), forward and backward.

Anatomy: reference → Triton kernels → autograd wrapper → public function with ``impl=`` → registration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["flash_attention", "attention_reference"]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(D)) v`` through PyTorch SDPA.

    Args:
        q, k, v: ``[B, H, N, D]``.

    Returns:
        ``[B, H, N, D]``.
    """
    return F.scaled_dot_product_attention(q, k, v)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """Non-causal attention ``[B, H, N, D] → [B, H, N, D]``. ``impl``: ``"torch"`` (SDPA) or ``"triton"``."""
    if impl == "torch":
        return attention_reference(q, k, v)
    if impl == "triton":
        raise NotImplementedError("the Triton flash-attention kernel is not built yet")
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")
