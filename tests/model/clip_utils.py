"""Small CLIP models for the teacher tests: perturbed weights and OpenAI-style TorchScript archives."""

from __future__ import annotations

from pathlib import Path

import torch

from umt.model import build_clip


def noisy_clip(size: int = 32) -> torch.nn.Module:
    """A tiny CLIP with every parameter perturbed: non-zero attention biases, norms away from (1, 0)."""
    torch.manual_seed(7)
    clip = build_clip("umt-tiny-clip", image_size=size).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return clip


def trace_clip(clip: torch.nn.Module, path: Path, size: int) -> Path:
    """Save ``clip`` traced to TorchScript at ``path``, like OpenAI's archives (no ``attn_mask`` buffer)."""
    mask = clip._buffers.pop("attn_mask")  # OpenAI's archives hold no attn_mask buffer: trace it as a constant
    clip.attn_mask = mask
    traced = torch.jit.trace(clip, (torch.randn(1, 3, size, size), torch.zeros(1, 16, dtype=torch.long)),
                             strict=False, check_trace=False)
    traced.save(str(path))
    return path
