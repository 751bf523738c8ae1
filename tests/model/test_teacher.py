"""Teacher: our per-block loop equals open_clip's own forward on the same (saved and reloaded) weights.

Teacher preprocessing against open_clip's and torchvision's own transforms: the pixels the teacher's patch embedding
sees, and the resized position table, not only their shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import image_transform

from tests.model.clip_utils import noisy_clip, trace_clip
from umt.data.config import IMAGENET_MEAN, IMAGENET_STD
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
    """The official UMT code shrinks CLIP-L/14's 16×16 table to 14×14 and the frames 224 → 196 with
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


def _conv1_input(teacher: CLIPTeacher, video: torch.Tensor) -> torch.Tensor:
    """What the teacher feeds its patch embedding for ``video [B, 3, T, H, W]``: ``[B·T, 3, S, S]``."""
    seen: list[torch.Tensor] = []
    h = teacher.visual.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        teacher(video)
    finally:
        h.remove()
    return seen[0]


def _video_from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, H, W]`` pixels in [0, 1] → the loader's ImageNet-normalised ``[B, 3, T, H, W]`` (torchvision)."""
    return TF.normalize(pixels.flatten(0, 1), IMAGENET_MEAN, IMAGENET_STD).view(pixels.shape).transpose(1, 2)


def test_clip_input_norm_equals_open_clips_own_normalize() -> None:
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 3, 32, 32)  # [B, T, 3, H, W] in [0, 1]
    video = _video_from_pixels(pixels)
    norm = image_transform(32, is_train=False).transforms[-1]  # open_clip's eval Normalize (CLIP mean/std)
    assert tuple(norm.mean) == tuple(OPENAI_DATASET_MEAN) and tuple(norm.std) == tuple(OPENAI_DATASET_STD)
    want = norm(pixels.flatten(0, 1))  # [B·T, 3, H, W], b-major frames
    t = CLIPTeacher("umt-tiny-clip", image_size=32, quick_gelu=False, align_layers=1, input_norm="clip")
    torch.testing.assert_close(_conv1_input(t, video), want, rtol=1e-5, atol=1e-5)


def test_imagenet_input_norm_feeds_the_video_as_is() -> None:
    torch.manual_seed(1)
    video = _video_from_pixels(torch.rand(2, 2, 3, 32, 32))
    t = CLIPTeacher("umt-tiny-clip", image_size=32, quick_gelu=False, align_layers=1, input_norm="imagenet")
    torch.testing.assert_close(_conv1_input(t, video), video.transpose(1, 2).flatten(0, 1), rtol=0, atol=0)


def test_frame_resize_is_bicubic() -> None:
    torch.manual_seed(2)
    video = torch.randn(1, 3, 2, 64, 64)
    t = CLIPTeacher("umt-tiny-clip", image_size=48, quick_gelu=False, align_layers=1)
    want = F.interpolate(video.transpose(1, 2).flatten(0, 1), size=(48, 48), mode="bicubic", align_corners=False)
    torch.testing.assert_close(_conv1_input(t, video), want, rtol=1e-5, atol=1e-5)


def test_frame_resize_happens_only_when_sizes_differ_and_keeps_frame_order() -> None:
    torch.manual_seed(3)
    video = torch.randn(2, 3, 2, 32, 32)
    video[1, :, 0] += 5.0  # clip 1, frame 0 stands out: it must be row b·T + t = 2
    t = CLIPTeacher("umt-tiny-clip", image_size=32, quick_gelu=False, align_layers=1)
    x = _conv1_input(t, video)
    assert x.shape == (4, 3, 32, 32)
    assert x.mean(dim=(1, 2, 3)).argmax().item() == 2
    t48 = CLIPTeacher("umt-tiny-clip", image_size=48, quick_gelu=False, align_layers=1)
    assert _conv1_input(t48, video).shape == (4, 3, 48, 48)


def _saved(tmp_path: Path, size: int) -> tuple[torch.Tensor, Path]:
    torch.manual_seed(4)
    clip = build_clip("umt-tiny-clip", image_size=size)
    with torch.no_grad():
        clip.visual.positional_embedding.normal_()  # a table with structure in every entry
    path = tmp_path / f"clip{size}.pt"
    torch.save({"state_dict": clip.state_dict()}, path)
    return clip.visual.positional_embedding.detach().clone(), path


def _resize_table(pos: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """The official resize, written out: CLS row kept; the g×g grid bicubic, align_corners=False, no antialias."""
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)  # [1, C, g, g], row-major (y, x)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])


def test_position_table_resize_keeps_cls_rows_and_columns(tmp_path: Path) -> None:
    """Whatever the cubic kernel: the CLS row is kept exactly, a table that varies only along y (rows) still varies
    only along y, and one constant over the grid stays constant (a transposed or shuffled grid fails this)."""
    torch.manual_seed(5)
    clip = build_clip("umt-tiny-clip", image_size=64)  # 4×4 grid
    c = clip.visual.positional_embedding.shape[1]
    rows = torch.randn(4, 1, c).expand(4, 4, c)  # [y, x, C]: depends on y only
    with torch.no_grad():
        clip.visual.positional_embedding[1:] = rows.reshape(16, c)
    path = tmp_path / "rows.pt"
    torch.save({"state_dict": clip.state_dict()}, path)
    for size, g in ((48, 3), (96, 6)):
        t = CLIPTeacher("umt-tiny-clip", image_size=size, weights=path, quick_gelu=False, align_layers=1)
        pos = t.visual.positional_embedding.detach()
        assert pos.shape == (1 + g * g, c)
        torch.testing.assert_close(pos[0], clip.visual.positional_embedding[0], rtol=0, atol=0)
        grid = pos[1:].view(g, g, c)  # [y, x, C]
        torch.testing.assert_close(grid, grid[:, :1].expand(g, g, c), rtol=0, atol=1e-6)  # constant along x
        assert (grid[0] - grid[-1]).abs().max() > 0.1  # ...and still varies along y


def test_position_table_upsized_bicubic(tmp_path: Path) -> None:
    pos, path = _saved(tmp_path, 48)  # 3×3 grid
    t = CLIPTeacher("umt-tiny-clip", image_size=64, weights=path, quick_gelu=False, align_layers=1)  # 4×4
    torch.testing.assert_close(t.visual.positional_embedding, _resize_table(pos, 3, 4), rtol=1e-5, atol=1e-6)


def test_position_table_downsized_bicubic_without_antialias(tmp_path: Path) -> None:
    pos, path = _saved(tmp_path, 64)  # 4×4 grid
    t = CLIPTeacher("umt-tiny-clip", image_size=48, weights=path, quick_gelu=False, align_layers=1)  # 3×3
    torch.testing.assert_close(t.visual.positional_embedding, _resize_table(pos, 4, 3), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_openai_torchscript_archive_is_resized_like_a_checkpoint(tmp_path: Path) -> None:
    """The OpenAI-style TorchScript path resizes the table as the open_clip checkpoint path does."""
    torch.manual_seed(6)
    clip = build_clip("umt-tiny-clip", image_size=48).eval()  # 3×3 grid
    with torch.no_grad():
        clip.visual.positional_embedding.normal_()
    ckpt = tmp_path / "clip.pt"
    torch.save({"state_dict": clip.state_dict()}, ckpt)
    mask = clip._buffers.pop("attn_mask")  # OpenAI's archives hold no attn_mask buffer: trace it as a constant
    clip.attn_mask = mask
    traced = torch.jit.trace(clip, (torch.randn(1, 3, 48, 48), torch.zeros(1, 16, dtype=torch.long)), strict=False,
                             check_trace=False)
    archive = tmp_path / "ViT-tiny.pt"
    traced.save(str(archive))
    a = CLIPTeacher("umt-tiny-clip", image_size=64, weights=archive, quick_gelu=False, align_layers=1)
    b = CLIPTeacher("umt-tiny-clip", image_size=64, weights=ckpt, quick_gelu=False, align_layers=1)
    assert a.visual.positional_embedding.shape == (17, 64)
    torch.testing.assert_close(a.visual.positional_embedding, b.visual.positional_embedding, rtol=0, atol=0)
    torch.testing.assert_close(a.visual.conv1.weight, clip.visual.conv1.weight, rtol=0, atol=0)


def test_teacher_defaults_are_umt_b() -> None:
    """The defaults build UMT-B's teacher: CLIP ViT-B/16 at 224 px, QuickGELU, 6 target layers, ImageNet input."""
    from open_clip.transformer import QuickGELU

    with torch.device("meta"):  # shapes only: nothing is allocated
        t = CLIPTeacher()
    assert (t.name, t.image_size, t.align_layers, t.input_norm) == ("ViT-B-16", 224, 6, "imagenet")
    assert (t.output_dim, t.patch_size, t.num_heads) == (512, 16, 12) and t.random_init
    assert t.visual.positional_embedding.shape == (197, 768)
    assert isinstance(t.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    tiny = CLIPTeacher("umt-tiny-clip", image_size=32, align_layers=1)
    assert torch.equal(tiny.norm_a, torch.ones(1, 3, 1, 1)) and torch.equal(tiny.norm_b, torch.zeros(1, 3, 1, 1))
    assert not any(p.requires_grad for p in tiny.parameters()) and not tiny.training
    assert "norm_a" not in tiny.state_dict() and "norm_b" not in tiny.state_dict()  # derived, never checkpointed
    assert CLIPTeacher("umt-tiny-clip", image_size=32, align_layers=4).align_layers == 4  # every block
    with pytest.raises(ValueError):
        CLIPTeacher("umt-tiny-clip", image_size=32, align_layers=5)  # 4 blocks
    with pytest.raises(ValueError):
        CLIPTeacher("umt-tiny-clip", image_size=32, align_layers=0)
    with pytest.raises(ValueError):
        CLIPTeacher("no-such-model", image_size=32, align_layers=1)


# ------------------------------------------------------------------------------------- loading (mutation survivors)


def test_targets_match_open_clip_with_every_weight_perturbed(tmp_path: Path) -> None:
    clip = noisy_clip()
    path = tmp_path / "noisy.pt"
    torch.save(clip.state_dict(), path)
    t = CLIPTeacher("umt-tiny-clip", image_size=32, weights=path, quick_gelu=False, align_layers=2)
    frames = torch.randn(2, 3, 32, 32)
    out = t(frames.view(1, 2, 3, 32, 32).transpose(1, 2))  # B=1, T=2
    ref = clip.visual.forward_intermediates(frames, indices=2, normalize_intermediates=True, intermediates_only=True,
                                            output_fmt="NLC")["image_intermediates"]
    ref = torch.stack([F.normalize(r @ clip.visual.proj, dim=-1) for r in ref])  # [2, 2, 4, C]
    torch.testing.assert_close(out.targets, ref.reshape(2, 1, 8, 64), rtol=1e-4, atol=1e-5)


def test_safetensors_and_strict_loading(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    clip = noisy_clip()
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    st = tmp_path / "clip.safetensors"  # not a zip archive: must not be taken for TorchScript
    save_file(sd, str(st))
    t = CLIPTeacher("umt-tiny-clip", image_size=32, weights=st, quick_gelu=False, align_layers=1)
    torch.testing.assert_close(t.visual.proj, clip.visual.proj, rtol=0, atol=0)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in sd.items() if k != "visual.proj"}, partial)
    with pytest.raises(RuntimeError):  # strict: a missing tensor is an error, not a silently random projection
        CLIPTeacher("umt-tiny-clip", image_size=32, weights=partial, quick_gelu=False, align_layers=1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_openai_archive_extra_entries_dropped_and_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.model import teacher as teacher_mod

    clip = noisy_clip()
    for name, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", 64)):
        clip.__dict__.pop(name, None)  # open_clip keeps two of them as plain ints
        clip.register_buffer(name, torch.tensor(value))  # as in OpenAI's released archives
    archive = trace_clip(clip, tmp_path / "openai.pt", 32)
    t = CLIPTeacher("umt-tiny-clip", image_size=32, weights=archive, quick_gelu=False, align_layers=1)
    torch.testing.assert_close(t.visual.proj, clip.visual.proj, rtol=0, atol=0)
    # An archive of a 2-block tower does not fit the 4-block teacher: strict load fails loudly.
    cfg = dict(teacher_mod.TEACHER_CONFIGS["umt-tiny-clip"])
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "layers": 2}
    monkeypatch.setitem(teacher_mod.TEACHER_CONFIGS, "umt-tiny-2l", cfg)
    small = trace_clip(build_clip("umt-tiny-2l", image_size=32).eval(), tmp_path / "small.pt", 32)
    with pytest.raises(teacher_mod.TeacherWeightsError, match="2 layers.*expects patch 16, width 64, 4 layers"):
        CLIPTeacher("umt-tiny-clip", image_size=32, weights=small, quick_gelu=False, align_layers=1)


def test_build_clip_leaves_the_config_table_alone_and_drops_custom_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.model import teacher as teacher_mod

    build_clip("umt-tiny-clip", image_size=48)
    assert teacher_mod.TEACHER_CONFIGS["umt-tiny-clip"]["vision_cfg"]["image_size"] == 224  # a copy was edited
    monkeypatch.setitem(teacher_mod.TEACHER_CONFIGS, "umt-tiny-custom",
                        {**teacher_mod.TEACHER_CONFIGS["umt-tiny-clip"], "custom_text": True})
    assert build_clip("umt-tiny-custom").visual.output_dim == 64  # open_clip's CLIP takes no custom_text argument


def test_non_batch_first_towers_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.model import teacher as teacher_mod

    real = teacher_mod.build_clip

    def seq_first(*a, **k):  # noqa: ANN002, ANN003, ANN202
        clip = real(*a, **k)
        clip.visual.transformer.batch_first = False
        return clip

    monkeypatch.setattr(teacher_mod, "build_clip", seq_first)
    with pytest.raises(ValueError, match="batch_first"):
        CLIPTeacher("umt-tiny-clip", image_size=32, quick_gelu=False, align_layers=1)
