"""UMA heads and the stage-1 pre-training wrapper (student backbone + heads), the module DDP wraps."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from umt.model.student import UMTStudent

__all__ = ["UMAHeads", "UMTPretrain"]


class UMAHeads(nn.Module):
    """The 6 UMA alignment heads (docs/design.md, "Stage 1"): per layer ``Linear(D_s → D_t)`` → ``LayerNorm``.

    The caller passes the student's last-L-block outputs already through its final LayerNorm; the heads add the
    visible tokens' position embedding again, project, normalise and L2-normalise. Thrown away after pre-training.
    The LayerNorms use eps 1e-6 like the official code's ``norm_layer``, not torch's default 1e-5.
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_layers: int = 6) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(num_layers))
        self.norm = nn.ModuleList(nn.LayerNorm(teacher_dim, eps=1e-6) for _ in range(num_layers))
        for lin in self.proj:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, feats: torch.Tensor, pos_vis: torch.Tensor) -> torch.Tensor:
        """``feats [L, B, K, D_s]``, ``pos_vis [B, K, D_s]`` → unit vectors ``[L, B, K, D_t]``."""
        x = feats + pos_vis.to(feats.dtype)  # [L, B, K, D_s]
        out = [self.norm[j](self.proj[j](x[j])) for j in range(len(self.proj))]  # L × [B, K, D_t]
        return F.normalize(torch.stack(out), dim=-1)  # [L, B, K, D_t]


class UMTPretrain(nn.Module):
    """Student backbone + UMA heads: ``(video [B, 3, T, H, W], idx [B, K]) → [L, B, K, D_t]`` unit vectors."""

    def __init__(self, student: UMTStudent, teacher_dim: int) -> None:
        super().__init__()
        self.student = student
        self.heads = UMAHeads(student.embed_dim, teacher_dim, student.align_layers)

    def forward(self, video: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        feats = self.student.forward_align(video, idx)  # [L, B, K, D_s]
        pos = self.student.pos_embed  # [M, D_s]
        pos_vis = pos[idx]  # [B, K, D_s]
        return self.heads(feats, pos_vis)  # [L, B, K, D_t]
