"""Student ViT: every registered size trains (gradient on every parameter), positions, gather, timm export/load."""

from __future__ import annotations

import pytest
import timm
import torch

import umt.model  # noqa: F401 - registers umt_vit_* in timm
from umt.model import UMTPretrain, sincos_pos_table
from umt.model.student import STUDENT_ARCHS
from umt.train.export import export_student

SMALL = {"num_frames": 2, "img_size": 32}  # 2 × 2 × 2 = 8 tokens


def test_registry_lists_every_size() -> None:
    assert set(timm.list_models("umt_vit_*")) == set(STUDENT_ARCHS)


@pytest.mark.parametrize("name", sorted(STUDENT_ARCHS))
def test_every_size_forward_backward_grads_everywhere(name: str) -> None:
    torch.manual_seed(0)  # drop path draws from the global RNG: an unlucky draw drops a whole branch (zero grads)
    big = STUDENT_ARCHS[name][0] >= 768
    # B and L run on the meta device (shapes and autograd graph, no memory); the small ones compute for real.
    ctx = torch.device("meta") if big else torch.device("cpu")
    with ctx:
        student = timm.create_model(name, drop_path_rate=0.1, **SMALL)
        model = UMTPretrain(student, teacher_dim=32)
        video = torch.randn(2, 3, 2, 32, 32)
        idx = torch.tensor([[0, 2, 5, 7], [1, 3, 4, 6]])
    width, depth, _ = STUDENT_ARCHS[name]
    out = model(video, idx)
    assert out.shape == (min(6, depth), 2, 4, 32)
    out.float().pow(2).sum().backward() if big else (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        if not big:
            assert p.grad.abs().sum() > 0, pname
    if not big:
        norms = out.norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        assert not student.pos_embed.requires_grad
        assert "pos_embed" not in student.state_dict()


def test_sincos_table_values() -> None:
    t = sincos_pos_table(5, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 1.0] * 4))
    # Column 0 is sin(pos), column 1 cos(pos) (frequency 1).
    torch.testing.assert_close(t[:, 0], torch.sin(torch.arange(5.0)))
    torch.testing.assert_close(t[3, 2], torch.sin(torch.tensor(3.0 / 10000 ** (2 / 8))))


def test_visible_subset_equals_full_with_all_indices() -> None:
    torch.manual_seed(0)
    s = timm.create_model("umt_vit_pico_patch16_224", **SMALL).eval()
    video = torch.randn(2, 3, 2, 32, 32)
    all_idx = torch.arange(8).expand(2, 8)
    torch.testing.assert_close(s.forward_features(video), s.forward_features(video, all_idx))
    # The embedding of a kept token is the full embedding at that position (T-major flattening, pos added).
    idx = torch.tensor([[1, 6], [0, 7]])
    full = s.embed(video)
    torch.testing.assert_close(s.embed(video, idx), torch.gather(full, 1, idx[..., None].expand(2, 2, 96)))
    # Token 5 = frame 1, row 0, col 1: its embedding is the Conv3d applied to that 16×16 patch of frame 1.
    patch = video[:, :, 1:2, 0:16, 16:32]
    ref = torch.nn.functional.conv3d(patch, s.patch_embed.proj.weight, s.patch_embed.proj.bias).flatten(1)
    torch.testing.assert_close(full[:, 5], ref + s.pos_embed[5], rtol=1e-4, atol=1e-5)


def test_export_loads_through_timm(tmp_path) -> None:
    torch.manual_seed(1)
    s = timm.create_model("umt_vit_pico_patch16_224", **SMALL).eval()
    path = export_student(s, tmp_path / "student.safetensors", {"arch": "umt_vit_pico_patch16_224"})
    loaded = timm.create_model("umt_vit_pico_patch16_224", pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}, **SMALL).eval()
    video = torch.randn(1, 3, 2, 32, 32)
    torch.testing.assert_close(loaded.forward_features(video), s.forward_features(video))
    fresh = timm.create_model("umt_vit_pico_patch16_224", **SMALL)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, s.blocks[0].attn.qkv.weight)


def test_uma_head_layernorm_eps_matches_official() -> None:
    from umt.model.heads import UMAHeads

    heads = UMAHeads(96, 64, 2)
    assert [n.eps for n in heads.norm] == [1e-6, 1e-6]  # official norm_layer eps, torch default is 1e-5
