"""UMA heads against a hand-written formula on a tiny model (docs/design.md, "UMA heads and loss")."""

from __future__ import annotations

import pytest
import timm
import torch

from umt.masking import random_mask
from umt.model import UMTPretrain


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _tiny_pretrain(teacher_dim: int = 24, layers: int = 2) -> UMTPretrain:
    torch.manual_seed(0)
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32, align_layers=layers)
    model = UMTPretrain(student, teacher_dim).double()
    with torch.no_grad():  # non-trivial affine parameters everywhere, so that each one is checked
        for p in model.heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.student.norm.weight.add_(0.3 * torch.randn_like(model.student.norm.weight))
        model.student.norm.bias.add_(0.3 * torch.randn_like(model.student.norm.bias))
    return model.eval()


def test_uma_heads_match_a_hand_written_formula() -> None:
    """final LN(block output) → + pos embed of the visible positions → Linear_j → LN_j → L2 (docs/design.md)."""
    layers = 2
    model = _tiny_pretrain(layers=layers)
    s = model.student
    video = torch.randn(2, 3, 2, 32, 32, dtype=torch.float64)
    idx = random_mask(2, 2, 4, 2, seed=3)  # [B=2, K=4] of T·N = 8 positions
    blocks_out: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, a, out: blocks_out.append(out)) for blk in s.blocks[-layers:]]
    got = model(video, idx)  # [L, B, K, D_t]
    for h in hooks:
        h.remove()
    assert got.shape == (layers, 2, 4, 24)
    pos = s.pos_embed.double()[idx]  # [B, K, D_s]: the fixed sin-cos rows of the visible positions
    for j in range(layers):
        x = _layer_norm(blocks_out[j], s.norm.weight, s.norm.bias, 1e-6)  # the student's final LayerNorm
        x = x + pos
        y = x @ model.heads.proj[j].weight.T + model.heads.proj[j].bias
        y = _layer_norm(y, model.heads.norm[j].weight, model.heads.norm[j].bias, 1e-6)
        want = y / y.norm(dim=-1, keepdim=True)
        # eps 1e-5 (torch's default) vs 1e-6 moves these outputs by < 1e-5 (their variance is O(1)); a missing step
        # or a wrong order moves them by O(1).
        torch.testing.assert_close(got[j], want, rtol=0, atol=5e-5)


def test_uma_heads_layernorm_eps_is_official() -> None:
    model = _tiny_pretrain()
    assert [n.eps for n in model.heads.norm] == [1e-6, 1e-6]


def test_uma_heads_default_count_and_dtype_follow_the_features() -> None:
    from umt.model import UMAHeads

    heads = UMAHeads(8, 4)
    assert len(heads.proj) == len(heads.norm) == 6  # one per aligned layer, 6 by default (docs/design.md, "Stage 1")
    heads = heads.to(torch.bfloat16)
    feats = torch.randn(6, 2, 3, 8, dtype=torch.bfloat16)
    pos = torch.randn(2, 3, 8)  # the student's fp32 sin-cos table, cast to the features' dtype
    out = heads(feats, pos)
    assert out.dtype == torch.bfloat16 and out.shape == (6, 2, 3, 4)
