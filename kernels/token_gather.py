"""Token gather: keep the visible tokens of the student input and of the teacher targets.

Replaces boolean indexing (``x[~mask]``, which needs a host sync to size its output) with fixed-shape index
gathers. Anatomy: reference → Triton kernel → public function with ``impl=`` → registration.
"""

from __future__ import annotations

import torch

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


def gather_tokens(
    x: torch.Tensor, idx: torch.Tensor, pos_embed: torch.Tensor | None = None, impl: str = "torch"
) -> torch.Tensor:
    """See :func:`gather_tokens_reference`. ``impl``: ``"torch"`` or ``"triton"``."""
    if impl == "torch":
        return gather_tokens_reference(x, idx, pos_embed)
    if impl == "triton":
        raise NotImplementedError("the Triton token gather kernel is not built yet")
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")


def gather_targets(t: torch.Tensor, idx: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """See :func:`gather_targets_reference`. ``impl``: ``"torch"`` or ``"triton"``."""
    if impl == "torch":
        return gather_targets_reference(t, idx)
    if impl == "triton":
        raise NotImplementedError("the Triton target gather kernel is not built yet")
    raise ValueError(f"unknown impl {impl!r}; expected 'torch' or 'triton'")
