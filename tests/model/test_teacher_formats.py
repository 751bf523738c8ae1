"""The three teacher weight formats: an open_clip checkpoint, OpenAI's TorchScript archive and a Hugging
Face CLIP directory holding the same weights give the same teacher, bit for bit, and equal open_clip's and
transformers' own forward passes. Every file is made here from a small random CLIP; nothing is downloaded.

The Hugging Face directory is written by ``save_pretrained`` from weights copied into transformers' own
``CLIPVisionModelWithProjection`` by the mapping below (open_clip → HF, the direction transformers' conversion script
goes); that mapping is checked independently by comparing transformers' forward with open_clip's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.train_utils import TRAIN_RUN, tiny_cfg
from tests.model.clip_utils import noisy_clip, trace_clip
from umt.model import CLIPTeacher
from umt.model.teacher import TeacherWeightsError

SIZE = 32  # 2×2 grid of 16 px patches


def _to_hf(clip: torch.nn.Module, out: Path, *, model_type_check: bool = True) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    v = clip.visual
    width, layers = v.conv1.weight.shape[0], len(v.transformer.resblocks)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=v.transformer.resblocks[0].attn.num_heads, image_size=SIZE,
                           patch_size=16, projection_dim=v.proj.shape[1], hidden_act="gelu", layer_norm_eps=1e-5)
    hf = CLIPVisionModelWithProjection(cfg).eval()
    m = hf.vision_model
    with torch.no_grad():
        m.embeddings.class_embedding.copy_(v.class_embedding)
        m.embeddings.patch_embedding.weight.copy_(v.conv1.weight)
        m.embeddings.position_embedding.weight.copy_(v.positional_embedding)
        m.pre_layrnorm.load_state_dict(v.ln_pre.state_dict())
        m.post_layernorm.load_state_dict(v.ln_post.state_dict())
        for blk, lay in zip(v.transformer.resblocks, m.encoder.layers):
            for name, w, b in zip("qkv", blk.attn.in_proj_weight.chunk(3), blk.attn.in_proj_bias.chunk(3)):
                getattr(lay.self_attn, f"{name}_proj").weight.copy_(w)
                getattr(lay.self_attn, f"{name}_proj").bias.copy_(b)
            lay.self_attn.out_proj.load_state_dict(blk.attn.out_proj.state_dict())
            lay.layer_norm1.load_state_dict(blk.ln_1.state_dict())
            lay.layer_norm2.load_state_dict(blk.ln_2.state_dict())
            lay.mlp.fc1.load_state_dict(blk.mlp.c_fc.state_dict())
            lay.mlp.fc2.load_state_dict(blk.mlp.c_proj.state_dict())
        hf.visual_projection.weight.copy_(v.proj.t())
    hf.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def three_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    clip = noisy_clip(SIZE)
    torch.save({"state_dict": clip.state_dict()}, d / "open_clip_pytorch_model.bin")
    _to_hf(clip, d / "hf")
    trace_clip(noisy_clip(SIZE), d / "ViT-tiny.pt", SIZE)  # noisy_clip is seeded: the same weights
    return {"open_clip": d / "open_clip_pytorch_model.bin", "openai-torchscript": d / "ViT-tiny.pt",
            "hf-clip": d / "hf"}


def _teacher(path: Path, size: int = SIZE) -> CLIPTeacher:
    return CLIPTeacher("umt-tiny-clip", image_size=size, weights=path, quick_gelu=False, align_layers=2)


def test_transformers_forward_equals_open_clips(three_formats: dict[str, Path]) -> None:
    """The test's own open_clip → HF copy is right: transformers' forward equals open_clip's on the same frames."""
    from transformers import CLIPVisionModelWithProjection

    clip = noisy_clip(SIZE)
    hf = CLIPVisionModelWithProjection.from_pretrained(str(three_formats["hf-clip"])).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).image_embeds, clip.encode_image(x), rtol=1e-5, atol=1e-5)


def test_three_formats_give_the_same_teacher(three_formats: dict[str, Path]) -> None:
    """Identical targets and semantic-mask scores (last-block CLS attention) from all three files, equal to
    transformers' own hidden states, and the load recorded (format, sha256, architecture, counts)."""
    from transformers import CLIPVisionModelWithProjection

    video = torch.randn(2, 3, 2, SIZE, SIZE)  # [B, 3, T, H, W]
    outs = {}
    for fmt, path in three_formats.items():
        t = _teacher(path)
        info = t.load_info
        assert info.format == fmt and len(info.sha256) == 64 and info.missing == 0 and info.resized == 0
        assert info.architecture == {"patch_size": 16, "width": 64, "layers": 4, "grid": 2}
        assert info.loaded >= 4 * 12 + 7  # every vision tensor (12 per block) and the rest
        o = t(video)
        outs[fmt] = (o.targets, o.cls_attention())
    ref_t, ref_a = outs["open_clip"]
    for fmt in ("openai-torchscript", "hf-clip"):
        torch.testing.assert_close(outs[fmt][0], ref_t, rtol=0, atol=0)
        torch.testing.assert_close(outs[fmt][1], ref_a, rtol=0, atol=0)
    # transformers' own forward: the last two layers' hidden states, through post_layernorm and the projection
    hf = CLIPVisionModelWithProjection.from_pretrained(str(three_formats["hf-clip"])).eval()
    frames = video.transpose(1, 2).reshape(4, 3, SIZE, SIZE)
    with torch.no_grad():
        hs = hf.vision_model(pixel_values=frames, output_hidden_states=True).hidden_states[-2:]  # 2 × [4, 5, 64]
        want = torch.stack([F.normalize(hf.visual_projection(hf.vision_model.post_layernorm(h[:, 1:])), dim=-1)
                            for h in hs])  # [2, 4, 4, 64]
    torch.testing.assert_close(ref_t, want.reshape(2, 2, 8, 64), rtol=1e-4, atol=1e-5)


def test_position_table_resized_alike_from_every_format(three_formats: dict[str, Path]) -> None:
    """A 2×2 table loaded into a 3×3 teacher (as CLIP-L/14's 16×16 into 14×14): the same bicubic resize whatever
    the source format, and counted."""
    tables = {}
    for fmt, path in three_formats.items():
        t = _teacher(path, size=48)
        assert t.load_info.resized == 1 and t.load_info.architecture["grid"] == 2
        tables[fmt] = t.visual.positional_embedding
    for fmt in ("openai-torchscript", "hf-clip"):
        torch.testing.assert_close(tables[fmt], tables["open_clip"], rtol=0, atol=0)


def test_wrong_files_and_architectures_get_clear_errors(three_formats: dict[str, Path], tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TeacherWeightsError, match="model_type is 'bert'"):
        _teacher(bert)
    junk = tmp_path / "notes.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TeacherWeightsError, match="not an OpenAI TorchScript archive, an open_clip checkpoint"):
        _teacher(junk)
    with pytest.raises(FileNotFoundError):
        _teacher(tmp_path / "missing.pt")
    # a ViT with 8-px patches (as a B/32 file for a B/16 recipe): named, not a shape error deep in load_state_dict
    sd = torch.load(three_formats["open_clip"], weights_only=True)["state_dict"]
    sd["visual.conv1.weight"] = sd["visual.conv1.weight"][:, :, :8, :8].contiguous()
    torch.save(sd, tmp_path / "p8.pt")
    with pytest.raises(TeacherWeightsError, match="patch 8, width 64, 4 layers; the configured model.teacher expects "
                                                  "patch 16"):
        _teacher(tmp_path / "p8.pt")
    # an HF directory of a quick-GELU model into a GELU teacher: told which flag to set
    cfg_file = three_formats["hf-clip"] / "config.json"
    cfg = json.loads(cfg_file.read_text())
    quick = tmp_path / "hf_quick"
    quick.mkdir()
    (quick / "config.json").write_text(json.dumps({**cfg, "hidden_act": "quick_gelu"}))
    (quick / "model.safetensors").write_bytes((three_formats["hf-clip"] / "model.safetensors").read_bytes())
    with pytest.raises(TeacherWeightsError, match="model.teacher_quick_gelu=true"):
        _teacher(quick)


def test_run_records_the_teacher_and_refuses_another_on_resume(tmp_path: Path) -> None:
    """config.json and checkpoints record format, sha256 and counts; resuming with a changed file is refused unless
    ``model.allow_teacher_change``."""
    from umt.config import ConfigError
    from umt.train.trainer import Trainer

    weights = tmp_path / "teacher.bin"
    torch.save(noisy_clip(SIZE).state_dict(), weights)
    w = f"model.teacher_weights={weights}"
    t = Trainer(tiny_cfg(*TRAIN_RUN, w, "optim.max_steps=2", "checkpoint.every_steps=1"), tmp_path / "run")
    t.fit()
    t.close()
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["teacher"]
    assert rec["format"] == "open_clip" and rec["missing"] == 0 and rec["path"] == str(weights)
    import hashlib

    assert rec["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    other = noisy_clip(SIZE)
    with torch.no_grad():
        other.visual.proj.mul_(2)
    torch.save(other.state_dict(), weights)  # the file changes under the run
    with pytest.raises(ConfigError, match="other teacher weights.*allow_teacher_change"):
        Trainer(tiny_cfg(*TRAIN_RUN, w, "optim.max_steps=3"), tmp_path / "run", resume="auto")
    t = Trainer(tiny_cfg(*TRAIN_RUN, w, "optim.max_steps=3", "model.allow_teacher_change=true"), tmp_path / "run", resume="auto")
    assert t.step == 2
    t.close()
