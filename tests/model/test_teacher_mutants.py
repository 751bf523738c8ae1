"""umt.model.teacher, the Hugging Face CLIP path and the load record: the HF → open_clip key mapping on a hand-made
state dict (transformers' ``CLIPVisionModel`` key names recorded as facts: ``vision_model.embeddings.*``,
``pre_layrnorm``, ``encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
``post_layernorm``, ``visual_projection``), the directory reader, where the activation is read (top level of a
``clip_vision_model`` config, ``vision_config`` of a ``clip`` one, quick_gelu when neither names one), the
``TeacherLoadInfo`` counts, the architecture check, the open_clip reader's ``logit_scale``/``position_ids`` fix-ups
and ``resize_pos_embed``'s edge cases. Tiny CLIPs only (``umt-tiny-clip``: width 64, 4 blocks, patch 16)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import umt.model.teacher as tm
from umt.model.teacher import (CLIPTeacher, TeacherLoadInfo, TeacherWeightsError, build_clip, hf_clip_to_open_clip,
                               load_clip_weights, resize_pos_embed, teacher_output_dim)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 32


# ------------------------------------------------------------------------------------------ key mapping
def _hf_sd(layers: int = 2, c: int = 4, proj: bool = True) -> dict[str, torch.Tensor]:
    """A hand-made HF CLIP state dict: every tensor a distinct constant, so each mapped key can be traced."""
    n = iter(range(1, 1000))
    sd = {}
    pre = "vision_model."

    def t(*shape: int) -> torch.Tensor:
        return torch.full(shape, float(next(n)))

    sd[pre + "embeddings.class_embedding"] = t(c)
    sd[pre + "embeddings.patch_embedding.weight"] = t(c, 3, 2, 2)
    sd[pre + "embeddings.position_embedding.weight"] = t(5, c)
    sd[pre + "embeddings.position_ids"] = torch.arange(5).view(1, 5)
    sd[pre + "pre_layrnorm.weight"], sd[pre + "pre_layrnorm.bias"] = t(c), t(c)
    sd[pre + "post_layernorm.weight"], sd[pre + "post_layernorm.bias"] = t(c), t(c)
    for i in range(layers):
        for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                    "mlp.fc2", "layer_norm1", "layer_norm2"):
            sd[f"{pre}encoder.layers.{i}.{mod}.weight"] = t(c, c)
            sd[f"{pre}encoder.layers.{i}.{mod}.bias"] = t(c)
    sd["text_model.embeddings.token_embedding.weight"] = t(7, c)
    sd["text_projection.weight"] = t(3, c)
    sd["logit_scale"] = t()
    if proj:
        sd["visual_projection.weight"] = torch.arange(3 * c, dtype=torch.float32).view(3, c)  # [E=3, C]
    return sd


def test_hf_keys_map_to_open_clip_names() -> None:
    sd = _hf_sd()
    out = hf_clip_to_open_clip(sd)
    p = "vision_model."
    simple = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
              "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
              "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
              "ln_post.bias": "post_layernorm.bias"}
    want_keys = {f"visual.{k}" for k in simple} | {"visual.proj"}
    for i in range(2):
        want_keys |= {f"visual.transformer.resblocks.{i}.attn.in_proj_weight",
                      f"visual.transformer.resblocks.{i}.attn.in_proj_bias"}
        for ours in ("attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            want_keys |= {f"visual.transformer.resblocks.{i}.{ours}.weight",
                          f"visual.transformer.resblocks.{i}.{ours}.bias"}
    assert set(out) == want_keys  # no text tower, no position_ids, no logit_scale
    for ours, theirs in simple.items():
        assert out[f"visual.{ours}"] is sd[p + theirs], ours
    pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(2):
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                assert out[f"visual.transformer.resblocks.{i}.{ours}.{kind}"] is \
                    sd[f"{p}encoder.layers.{i}.{theirs}.{kind}"], (i, ours, kind)
        for kind in ("weight", "bias"):
            got = out[f"visual.transformer.resblocks.{i}.attn.in_proj_{kind}"]
            q, k, v = (sd[f"{p}encoder.layers.{i}.self_attn.{x}_proj.{kind}"] for x in "qkv")
            assert got.shape[0] == 12 and torch.equal(got, torch.cat([q, k, v]))  # q, k, v stacked on dim 0
    proj = out["visual.proj"]  # [C, E]: the transpose of HF's [E, C]
    assert proj.shape == (4, 3) and proj.is_contiguous()
    assert proj[1, 2].item() == 2 * 4 + 1  # HF [e=2, c=1] = 2·C + 1


def test_hf_mapping_without_projection_and_without_a_vision_tower() -> None:
    out = hf_clip_to_open_clip(_hf_sd(layers=1, proj=False))
    assert "visual.proj" not in out and len(out) == 7 + 12
    with pytest.raises(TeacherWeightsError, match="no vision_model"):
        hf_clip_to_open_clip({"text_model.x": torch.zeros(1), "visual.conv1.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ HF directories
def _hf_dir(out: Path, *, act: str | None, model_type: str = "clip_vision_model", fmt: str = "safetensors",
            where: str = "top") -> Path:
    """A CLIPVisionModelWithProjection of umt-tiny-clip's vision tower at 32 px, the activation written where asked
    (``where="top"``: the config's top level, ``"vision"``: inside ``vision_config``, ``act=None``: nowhere)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
                           image_size=SIZE, patch_size=16, projection_dim=64, hidden_act=act or "gelu",
                           layer_norm_eps=1e-5)
    m = CLIPVisionModelWithProjection(cfg)
    m.save_pretrained(str(out))
    c = json.loads((out / "config.json").read_text())
    c.pop("hidden_act", None)
    c["model_type"] = model_type
    if act is not None:
        if where == "top":
            c["hidden_act"] = act
        else:
            c["vision_config"] = {"hidden_act": act}
    (out / "config.json").write_text(json.dumps(c))
    if fmt == "bin":
        from safetensors.torch import load_file

        sd = load_file(str(out / "model.safetensors"))
        (out / "model.safetensors").unlink()
        torch.save(sd, out / "pytorch_model.bin")
    return out


def _clip(quick: bool) -> torch.nn.Module:
    return build_clip("umt-tiny-clip", image_size=SIZE, quick_gelu=quick)


def test_hf_directory_load_record(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "hf", act="gelu")
    clip = _clip(False)
    info = load_clip_weights(clip, d)
    w = d / "model.safetensors"
    # the vision tower only: 7 simple tensors, 4 blocks × 12 (in/out proj, ln_1, ln_2, c_fc, c_proj; w + b), proj
    n = 7 + 4 * 12 + 1
    assert info == TeacherLoadInfo(format="hf-clip", path=str(d), sha256=hashlib.sha256(w.read_bytes()).hexdigest(),
                                   architecture={"patch_size": 16, "width": 64, "layers": 4, "grid": 2},
                                   loaded=n, resized=0, missing=0)
    assert info.to_dict()["architecture"] == {"patch_size": 16, "width": 64, "layers": 4, "grid": 2}
    assert len(clip.visual.state_dict()) == n


def test_hf_directory_from_a_bin_resized(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "hfbin", act="gelu", fmt="bin")
    clip = build_clip("umt-tiny-clip", image_size=48, quick_gelu=False)  # 3×3 grid: the 2×2 table is resized
    info = load_clip_weights(clip, d)
    assert info.resized == 1 and info.architecture["grid"] == 2 and info.format == "hf-clip"
    assert info.sha256 == hashlib.sha256((d / "pytorch_model.bin").read_bytes()).hexdigest()
    assert clip.visual.positional_embedding.shape == (10, 64)


def test_hf_directory_prefers_safetensors(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "both", act="gelu")
    (d / "pytorch_model.bin").write_bytes(b"not a checkpoint")  # never read
    info = load_clip_weights(_clip(False), d)
    assert info.sha256 == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


def test_hf_directory_of_another_size_names_the_file_and_a_missing_tensor_is_an_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    d = _hf_dir(tmp_path / "hf", act="gelu")
    wide = build_clip("ViT-B-16", image_size=SIZE, quick_gelu=False)  # width 768, 12 layers
    with pytest.raises(TeacherWeightsError, match=f"^teacher weights {d} hold a ViT with patch 16, width 64, 4 layers; "
                                                  "the configured model.teacher expects patch 16, width 768, 12 layers"):
        load_clip_weights(wide, d)
    sd = load_file(str(d / "model.safetensors"))
    del sd["vision_model.post_layernorm.weight"]  # one tensor short: loaded strictly, so refused
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key\\(s\\) in state_dict: \"ln_post.weight\""):
        load_clip_weights(_clip(False), d)


class _Touch:
    """Unpickling this runs code (creates ``path``): what a hostile ``pytorch_model.bin`` could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_hf_bin_is_read_without_running_its_code(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "hostile", act="gelu", fmt="bin")
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    marker = tmp_path / "code_ran"
    torch.save({**sd, "payload": _Touch(marker)}, d / "pytorch_model.bin")
    with pytest.raises(TeacherWeightsError, match=r"^teacher weights .*pytorch_model.bin: holds objects other than "
                                                  r"tensors and was not loaded \(unpickling them could run code\): "
                                                  "Weights only load failed"):
        load_clip_weights(_clip(False), d)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["top", "vision"])
@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_hf_activation_must_match(tmp_path: Path, act: str, where: str) -> None:
    d = _hf_dir(tmp_path / "a", act=act, model_type="clip_vision_model" if where == "top" else "clip", where=where)
    quick = act == "quick_gelu"
    load_clip_weights(_clip(quick), d)  # the matching model loads
    with pytest.raises(TeacherWeightsError, match=f"hidden_act='{act}'; set model.teacher_quick_gelu="
                                                  f"{str(quick).lower()}$"):
        load_clip_weights(_clip(not quick), d)


def test_hf_activation_defaults_to_quick_gelu(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "none", act=None)  # transformers' CLIPVisionConfig default is quick_gelu
    load_clip_weights(_clip(True), d)
    with pytest.raises(TeacherWeightsError, match="hidden_act='quick_gelu'; set model.teacher_quick_gelu=true"):
        load_clip_weights(_clip(False), d)


def test_hf_directory_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherWeightsError, match="without config.json"):
        load_clip_weights(_clip(False), empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(TeacherWeightsError, match="no model.safetensors or pytorch_model.bin"):
        load_clip_weights(_clip(False), empty)
    (empty / "config.json").write_text(json.dumps({}))
    with pytest.raises(TeacherWeightsError, match="model_type is None"):
        load_clip_weights(_clip(False), empty)


# ------------------------------------------------------------------------------------------ open_clip files
def test_open_clip_file_record_and_fix_ups(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = _clip(False)
    sd = dict(src.state_dict())
    n = len(sd)
    sd["logit_scale"] = sd["logit_scale"].reshape(1)  # some checkpoints store it as [1]
    sd["text.transformer.embeddings.position_ids"] = torch.arange(16)  # a stray buffer: dropped
    path = tmp_path / "oc.pt"
    torch.save(sd, path)
    clip = _clip(False)
    info = load_clip_weights(clip, path)
    assert (info.format, info.path, info.loaded, info.resized, info.missing) == ("open_clip", str(path), n, 0, 0)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert clip.logit_scale.shape == () and torch.equal(clip.logit_scale, src.logit_scale)


def test_open_clip_file_that_is_not_tensors(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": 1, "b": torch.zeros(1)}, path)
    with pytest.raises(TeacherWeightsError, match="not a state dict of tensors"):
        load_clip_weights(_clip(False), path)
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(TeacherWeightsError, match=r"\(open_clip\): no CLIP ViT vision tower"):
        load_clip_weights(_clip(False), path)


# ------------------------------------------------------------------------------------------ architecture
def test_vision_arch_reads_the_tower() -> None:
    sd = {"visual.conv1.weight": torch.zeros(8, 3, 14, 14), "visual.positional_embedding": torch.zeros(1 + 25, 8)}
    for i in (0, 1, 2):
        sd[f"visual.transformer.resblocks.{i}.ln_1.weight"] = torch.zeros(8)
        sd[f"visual.transformer.resblocks.{i}.ln_1.bias"] = torch.zeros(8)
    sd["visual.transformer.resblocksX.9.a"] = torch.zeros(1)  # not a block
    assert tm._vision_arch(sd) == {"patch_size": 14, "width": 8, "layers": 3, "grid": 5}
    with pytest.raises(TeacherWeightsError, match="no CLIP ViT vision tower"):
        tm._vision_arch({**sd, "visual.conv1.weight": torch.zeros(8, 3, 14)})  # not a 2-D conv
    with pytest.raises(TeacherWeightsError, match="no CLIP ViT vision tower"):
        tm._vision_arch({k: v for k, v in sd.items() if k != "visual.positional_embedding"})


@pytest.mark.parametrize("key,value", [("patch_size", 8), ("width", 32), ("layers", 3)])
def test_check_arch_each_field(key: str, value: int) -> None:
    found = {"patch_size": 16, "width": 64, "layers": 4, "grid": 9}  # the grid is resized, never refused
    tm._check_arch(found, _clip(False), Path("x"))
    with pytest.raises(TeacherWeightsError, match="expects patch 16, width 64, 4 layers"):
        tm._check_arch({**found, key: value}, _clip(False), Path("x"))


# ------------------------------------------------------------------------------------------ resize_pos_embed
def test_resize_pos_embed_edge_cases() -> None:
    clip = _clip(False)  # 2×2 grid
    sd: dict[str, torch.Tensor] = {}
    resize_pos_embed(sd, clip)
    assert sd == {}  # no table: nothing to do
    table = torch.randn(1 + 9, 64, dtype=torch.float16)
    sd = {"visual.positional_embedding": table}
    resize_pos_embed(sd, clip)
    got = sd["visual.positional_embedding"]
    assert got.shape == (5, 64) and got.dtype == torch.float16 and torch.equal(got[0], table[0])
    same = torch.randn(5, 64)
    sd = {"visual.positional_embedding": same}
    resize_pos_embed(sd, clip)
    assert sd["visual.positional_embedding"] is same
    with pytest.raises(RuntimeError, match="not a square grid"):
        resize_pos_embed({"visual.positional_embedding": torch.zeros(1 + 6, 64)}, clip)
    clip.visual.grid_size = 3  # a grid given as one int: square
    sd = {"visual.positional_embedding": torch.randn(1 + 4, 64)}
    resize_pos_embed(sd, clip)
    assert sd["visual.positional_embedding"].shape == (1 + 9, 64)
    clip.visual.grid_size = None  # a tower without a grid: left alone
    odd = {"visual.positional_embedding": torch.zeros(7, 64)}
    resize_pos_embed(odd, clip)
    assert odd["visual.positional_embedding"].shape == (7, 64)


def test_resize_pos_embed_rectangular_grid() -> None:
    clip = _clip(False)
    clip.visual.grid_size = (2, 3)
    old = torch.randn(1 + 4, 8)
    sd = {"visual.positional_embedding": old}
    resize_pos_embed(sd, clip)
    grid = old[1:].reshape(1, 2, 2, 8).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(2, 3), mode="bicubic", align_corners=False)
    got = sd["visual.positional_embedding"]
    assert got.shape == (7, 8)
    torch.testing.assert_close(got[1:], want.permute(0, 2, 3, 1).reshape(6, 8))


# ------------------------------------------------------------------------------------------ the teacher
def test_output_dims_and_unknown_names() -> None:
    assert teacher_output_dim("umt-tiny-clip") == 64
    assert teacher_output_dim("ViT-B-16") == 512 and teacher_output_dim("ViT-L-14") == 768
    with pytest.raises(ValueError, match="unknown teacher"):
        teacher_output_dim("no-such-clip")


def test_teacher_attributes_and_random_init() -> None:
    t = CLIPTeacher("umt-tiny-clip", image_size=SIZE, weights="", quick_gelu=False, align_layers=1)
    assert t.random_init is True and t.load_info is None
    assert (t.output_dim, t.patch_size, t.num_heads) == (64, 16, 2)  # head width 32


def test_teacher_keeps_its_load_info(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "hf", act="gelu")
    t = CLIPTeacher("umt-tiny-clip", image_size=SIZE, weights=d, quick_gelu=False, align_layers=1)
    assert t.random_init is False and t.load_info is not None and t.load_info.format == "hf-clip"


def test_clip_renormalisation_buffers() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    t = CLIPTeacher("umt-tiny-clip", image_size=SIZE, quick_gelu=False, align_layers=1, input_norm="clip",
                    video_mean=mean, video_std=std)
    cm, cs = tm.OPENAI_CLIP_MEAN, tm.OPENAI_CLIP_STD
    # x_video = (p − m) / s  →  x_clip = (p − cm) / cs = x_video · s / cs + (m − cm) / cs
    a = torch.tensor([s / c for s, c in zip(std, cs)]).view(1, 3, 1, 1)
    b = torch.tensor([(m - c) / d for m, c, d in zip(mean, cm, cs)]).view(1, 3, 1, 1)
    torch.testing.assert_close(t.norm_a, a)
    torch.testing.assert_close(t.norm_b, b)
    with pytest.raises(ValueError, match="input_norm"):
        CLIPTeacher("umt-tiny-clip", image_size=SIZE, input_norm="CLIP")
