"""UMT token masks: which student tokens stay visible (docs/design.md, "Semantic masking").

All three kinds keep a fixed number of tokens and return sorted int64 indices of fixed shape: no boolean indexing,
no host sync. Noise is counter-based (:func:`umt.ops.uniform_noise`), keyed by an integer seed that the trainer
derives on the host from (base seed, step, rank) with :func:`step_seed`, so resuming reproduces every mask without
checkpointing a generator.

- ``semantic``: per frame, Gumbel-top-k on the log of the teacher's head-averaged CLS→patch attention of its last
  block (:func:`umt.ops.semantic_topk`), i.e. sampling without replacement ∝ attention (UMT Sec. 3.1).
- ``tube``: one uniformly random spatial set per clip, repeated over all frames (VideoMAE's tube masking).
- ``random``: uniformly random over all T·N tokens of the clip (T·K kept, not necessarily K per frame).
"""

from __future__ import annotations

import torch

from umt import ops

__all__ = ["MASK_KINDS", "keep_per_frame", "step_seed", "frame_to_clip_indices", "semantic_mask", "tube_mask",
           "random_mask", "make_mask"]

MASK_KINDS = ("semantic", "tube", "random")


def keep_per_frame(tokens_per_frame: int, mask_ratio: float) -> int:
    """Visible tokens per frame: ``N − int(ratio·N)`` (40 of 196 at 0.8, as the official code rounds)."""
    keep = tokens_per_frame - int(mask_ratio * tokens_per_frame)
    if not 1 <= keep <= tokens_per_frame:
        raise ValueError(f"mask ratio {mask_ratio} keeps {keep} of {tokens_per_frame} tokens")
    return keep


def step_seed(base_seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Host-side 31-bit seed for one (step, rank, stream); a pure function, so resume reproduces it."""
    x = (base_seed * 0x9E3779B1 + step * 0x85EBCA77 + rank * 0xC2B2AE3D + stream * 0x27D4EB2F) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x & 0x7FFFFFFF


def frame_to_clip_indices(idx: torch.Tensor, batch: int, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """Per-frame kept indices ``[B·T, K]`` (b-major) → clip-level sorted positions ``[B, T·K]`` (T-major tokens)."""
    k = idx.shape[-1]
    offset = torch.arange(frames, device=idx.device, dtype=idx.dtype).view(1, frames, 1) * tokens_per_frame
    return (idx.view(batch, frames, k) + offset).reshape(batch, frames * k)  # [B, T·K]


def semantic_mask(q_cls: torch.Tensor, k: torch.Tensor, batch: int, frames: int, keep: int, seed: int) -> torch.Tensor:
    """Semantic mask from the teacher's last-block CLS query ``[B·T, H, D]`` and keys ``[B·T, H, 1+N, D]``.

    Returns:
        int64 ``[B, T·keep]`` sorted clip-level positions.
    """
    n = k.shape[2] - 1
    idx = ops.semantic_topk(q_cls, k, keep, seed)  # [B·T, K]
    return frame_to_clip_indices(idx, batch, frames, n)


def tube_mask(batch: int, frames: int, tokens_per_frame: int, keep: int, seed: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """One random spatial set of ``keep`` tokens per clip, repeated over the T frames: ``[B, T·keep]`` sorted."""
    logits = torch.zeros(batch, tokens_per_frame, device=device)
    idx = ops.gumbel_topk(logits, keep, seed)  # [B, K]
    idx = idx.unsqueeze(1).expand(batch, frames, keep).reshape(batch * frames, keep)  # [B·T, K]
    return frame_to_clip_indices(idx, batch, frames, tokens_per_frame)


def random_mask(batch: int, frames: int, tokens_per_frame: int, keep: int, seed: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``T·keep`` tokens drawn uniformly without replacement from the clip's T·N: ``[B, T·keep]`` sorted."""
    logits = torch.zeros(batch, frames * tokens_per_frame, device=device)
    return ops.gumbel_topk(logits, frames * keep, seed)  # [B, T·K]


def make_mask(kind: str, *, batch: int, frames: int, tokens_per_frame: int, keep: int, seed: int,
              q_cls: torch.Tensor | None = None, k: torch.Tensor | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Dispatch on ``kind`` (one of :data:`MASK_KINDS`); ``semantic`` needs ``q_cls`` and ``k``.

    Raises:
        ValueError: unknown kind, or semantic without the teacher's q/k.
    """
    if kind == "semantic":
        if q_cls is None or k is None:
            raise ValueError("semantic masking needs the teacher's CLS query and keys")
        return semantic_mask(q_cls, k, batch, frames, keep, seed)
    if kind == "tube":
        return tube_mask(batch, frames, tokens_per_frame, keep, seed, device)
    if kind == "random":
        return random_mask(batch, frames, tokens_per_frame, keep, seed, device)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
