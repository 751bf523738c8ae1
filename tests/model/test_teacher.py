"""Teacher: our per-block loop equals open_clip's own forward on the same (saved and reloaded) weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from umt.model import CLIPTeacher, build_clip


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory):
    torch.manual_seed(0)
    clip = build_clip("umt-tiny-clip", image_size=48).eval()
    path = tmp_path_factory.mktemp("teacher") / "tiny_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)  # DDP-style ckpt
    return clip, path


def test_targets_and_cls_attention_match_open_clip(saved_clip) -> None:
    clip, path = saved_clip
    teacher = CLIPTeacher("umt-tiny-clip", image_size=48, weights=path, quick_gelu=False, align_layers=2)
    assert not teacher.random_init
    video = torch.randn(2, 3, 3, 48, 48)  # B=2, T=3, 3×3 patches per frame
    out = teacher(video)
    assert out.targets.shape == (2, 2, 3 * 9, 64)
    frames = video.transpose(1, 2).reshape(6, 3, 48, 48)  # b-major frames

    # Reference: open_clip's forward_intermediates with ln_post, then proj and L2.
    ref = clip.visual.forward_intermediates(frames, indices=2, normalize_intermediates=True,
                                            intermediates_only=True, output_fmt="NLC")["image_intermediates"]
    ref = torch.stack([F.normalize(r @ clip.visual.proj, dim=-1) for r in ref])  # [2, 6, 9, 64]
    torch.testing.assert_close(out.targets, ref.reshape(2, 2, 27, 64), rtol=1e-4, atol=1e-5)

    # The last block output through ln_post/proj equals encode_image for the CLS token (pooled path).
    pooled = clip.encode_image(frames)
    captured = {}
    last = clip.visual.transformer.resblocks[-1]
    h = last.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    clip.encode_image(frames)
    h.remove()
    x = captured["x"]
    w = last.attn(last.ln_1(x), last.ln_1(x), last.ln_1(x), need_weights=True, average_attn_weights=True)[1]
    torch.testing.assert_close(out.cls_attention(), w[:, 0, 1:], rtol=1e-4, atol=1e-6)
    assert pooled.shape == (6, 64)


def test_frozen_and_random_init_flag() -> None:
    t = CLIPTeacher("umt-tiny-clip", image_size=32, weights=None, quick_gelu=False, align_layers=1)
    assert t.random_init
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_position_table_resized_when_loading(saved_clip) -> None:
    _, path = saved_clip  # saved at 48 px (3×3 grid + CLS)
    t = CLIPTeacher("umt-tiny-clip", image_size=64, weights=path, quick_gelu=False, align_layers=1)
    assert t.visual.positional_embedding.shape == (1 + 16, 64)
    out = t(torch.randn(1, 3, 1, 64, 64))
    assert out.targets.shape == (1, 1, 16, 64) and out.k.shape[2] == 17


def test_clip_renormalisation_and_resize() -> None:
    t = CLIPTeacher("umt-tiny-clip", image_size=32, quick_gelu=False, align_layers=1, input_norm="clip")
    video = torch.zeros(1, 3, 1, 64, 64)  # ImageNet-normalised mean pixel → resized to 32 px
    out = t(video)
    assert out.targets.shape == (1, 1, 4, 64)
    with pytest.raises(ValueError):
        CLIPTeacher("umt-tiny-clip", image_size=32, input_norm="bogus")
    with pytest.raises(FileNotFoundError):
        CLIPTeacher("umt-tiny-clip", image_size=32, weights="/nonexistent.pt")


def test_position_table_and_frames_resized_bicubic_without_antialias(tmp_path) -> None:
    """Issue 9: the official UMT code shrinks CLIP-L/14's 16×16 table to 14×14 and the frames 224 → 196 with
    ``F.interpolate(mode="bicubic", align_corners=False)`` and no antialiasing; so must we (downsizing, where
    antialiasing changes the values)."""
    torch.manual_seed(0)
    big = build_clip("umt-tiny-clip", image_size=80).eval()  # 5×5 grid
    path = tmp_path / "clip80.pt"
    torch.save(big.state_dict(), path)
    t = CLIPTeacher("umt-tiny-clip", image_size=64, weights=path, quick_gelu=False, align_layers=1)  # 4×4
    old = big.visual.positional_embedding.detach()
    grid = old[1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    want_aa = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
    got = t.visual.positional_embedding.detach()
    torch.testing.assert_close(got[0], old[0])  # CLS row kept
    torch.testing.assert_close(got[1:], want.permute(0, 2, 3, 1).reshape(16, -1))
    assert not torch.allclose(got[1:], want_aa.permute(0, 2, 3, 1).reshape(16, -1), atol=1e-4)

    video = torch.randn(1, 3, 2, 80, 80)  # 80 px frames → the teacher's 64 px
    frames = video.transpose(1, 2).reshape(2, 3, 80, 80)
    small = F.interpolate(frames, size=(64, 64), mode="bicubic", align_corners=False)
    ref = t(small.reshape(1, 2, 3, 64, 64).transpose(1, 2))
    torch.testing.assert_close(t(video).targets, ref.targets)
