"""Official UMT checkpoints (umt.model.official, umt.convert) without the files: key sets from the fixture dumped off
the official classes (tests/model/fixtures/official_keys.json), values through tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from transformers import BertConfig

import umt.model  # noqa: F401 - registers umt_vit_*
from umt import convert
from umt.model import official
from umt.model.heads import UMAHeads
from umt.model.load import BackboneLoadError, load_backbone, read_backbone
from umt.model.student import UMTStudent
from umt.model.text import BertTextEncoder
from umt.model.vision_text import UMTVisionText, load_pretrained

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "official_keys.json").read_text())
SPECIAL = {"cls": 1, "sep": 2, "pad": 0, "mask": 3}


def fixture_keys(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The fixture's ``name`` entry expanded: key → (shape, dtype)."""
    out = {}
    for e in FIXTURE["kinds"][name]["keys"]:
        tpl, shape, dtype = e[0], tuple(e[1]), e[2]
        if len(e) == 4:
            for i in range(*e[3]):
                out[tpl.replace("{i}", str(i))] = (shape, dtype)
        else:
            out[tpl] = (shape, dtype)
    assert len(out) == FIXTURE["kinds"][name]["num_keys"]
    return out


def meta_sd(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, (s, d) in fixture_keys(name).items()}


def shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


# ------------------------------------------------------------------- our models, on the meta device (key sets)
SIZES = {"B": ("umt_vit_base_patch16_224", 512, 512, dict(hidden_size=768, num_hidden_layers=12,
                                                          num_attention_heads=12, intermediate_size=3072), 9),
         "L": ("umt_vit_large_patch16_224", 768, 768, dict(hidden_size=1024, num_hidden_layers=24,
                                                           num_attention_heads=16, intermediate_size=4096), 19)}


def our_keys(kind: str, size: str, frames: int = 8, img: int = 224) -> dict[str, tuple[int, ...]]:
    arch, tdim, emb, bert, fusion = SIZES[size]
    with torch.device("meta"):
        if kind == "finetune":
            return shapes(timm.create_model(arch, num_classes=400, num_frames=frames, img_size=img,
                                            pretrain_num_frames=8, pretrain_img_size=224).state_dict())
        student = timm.create_model(arch, num_frames=8 if kind == "pretrain" else 4)
        heads = UMAHeads(student.embed_dim, tdim, 6)
        if kind == "pretrain":
            return {**{f"student.{k}": v for k, v in shapes(student.state_dict()).items()},
                    **{f"heads.{k}": v for k, v in shapes(heads.state_dict()).items()}}
        text = BertTextEncoder(BertConfig(vocab_size=30522, **bert), fusion, student.embed_dim, SPECIAL)
        return shapes(UMTVisionText(student, heads, text, emb).state_dict())


CASES = [("pretrain", s, f"pretrain_{s}", 8, 224) for s in "BL"] + \
        [("finetune", s, f"finetune_{s}_f{t}_res{r}", t, r) for s in "BL" for t, r in ((8, 224), (16, 224), (8, 384))] + \
        [("stage2", s, f"stage2_{s}", 4, 224) for s in "BL"]


@pytest.mark.parametrize("kind,size,name,frames,img", CASES, ids=[c[2] for c in CASES])
def test_fixture_key_sets(kind: str, size: str, name: str, frames: int, img: int) -> None:
    """Every official key is consumed, every key of ours is set with its shape, and our layout goes back to the
    fixture's key set exactly (with the kept extras, and rebuilt without them)."""
    sd = meta_sd(name)
    off = official.from_official({"model": sd}, name)
    assert off.kind == kind and off.meta["arch"] == SIZES[size][0]
    assert (off.meta["num_frames"], off.meta["img_size"]) == (frames, img)
    assert shapes(off.model) == our_keys(kind, size, frames, img)
    extra = {k for k in sd if k.startswith("clip_teacher.") or k in ("pos_embed",
                                                                      "text_encoder.bert.embeddings.position_ids")}
    assert set(off.extra) == extra and len(off.model) + len(off.extra) == len(sd)
    back = official.to_official(kind, off.model, off.extra, num_frames=frames, img_size=img)
    assert shapes(back) == shapes(sd)
    rebuilt = official.to_official(kind, off.model, num_frames=frames, img_size=img)
    assert shapes(rebuilt) == {k: v for k, v in shapes(sd).items() if not k.startswith("clip_teacher.")}
    if kind == "stage2":
        assert (off.meta["fusion_layer"], off.meta["embed_dim"]) == (SIZES[size][4], SIZES[size][2])


# ------------------------------------------------------------------------------ values, through tiny models
def _randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def official_names(kind: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys → official names, written out here independently of umt.model.official (the test's oracle)."""
    out = {}
    for k, v in sd.items():
        if kind == "pretrain":
            k = re.sub(r"^student\.", "encoder.", k)
            k = re.sub(r"^heads\.proj\.(\d+)\.", r"clip_decoder.\1.head.", k)
            k = re.sub(r"^heads\.norm\.(\d+)\.", r"clip_decoder.\1.norm.", k)
        elif kind == "stage2":
            k = re.sub(r"^student\.", "vision_encoder.encoder.", k)
            k = re.sub(r"^heads\.proj\.(\d+)\.", r"vision_encoder.clip_decoder.\1.head.", k)
            k = re.sub(r"^heads\.norm\.(\d+)\.", r"vision_encoder.clip_decoder.\1.norm.", k)
            k = re.sub(r"^pool_norm\.", "vision_encoder.pool_norm.", k)
            k = re.sub(r"^text\.embeddings\.", "text_encoder.bert.embeddings.", k)
            k = re.sub(r"^text\.layers\.", "text_encoder.bert.encoder.layer.", k)
            k = re.sub(r"^text\.mlm_head\.", "text_encoder.cls.", k)
        out[k] = v.detach().clone()
    return out


def tiny_stage2(vocab: int = 100) -> UMTVisionText:
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32)
    text = BertTextEncoder(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64), 2, 96, SPECIAL)
    return UMTVisionText(student, UMAHeads(96, 48, 4), text, 24)


def test_pretrain_values_entry_points_and_round_trip(tmp_path: Path) -> None:
    """A stage-1 official file: read_backbone/load_backbone, model.init_from of stage 2 (heads), export, convert ⇄."""
    student = _randomise(timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32))
    heads = _randomise(UMAHeads(96, 48, 4), 1)
    ours = {**{f"student.{k}": v for k, v in student.state_dict().items()},
            **{f"heads.{k}": v for k, v in heads.state_dict().items()}}
    off_sd = official_names("pretrain", ours)
    src = tmp_path / "b16_ptk710_f8_res224.pth"
    torch.save({"model": off_sd, "epoch": 200}, src)

    st = read_backbone(src)
    assert st.kind == "official-pretrain" and st.arch == "umt_vit_pico_patch16_224"
    fresh = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32)
    rep = load_backbone(fresh, st)
    assert not rep.missing and sorted(rep.dropped) == sorted(k for k in ours if k.startswith("heads."))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, off_sd[f"encoder.{k}"]), k
    # the UMA heads land in a stage-2 model (model.init_from)
    vt = tiny_stage2()
    rep2 = load_pretrained(vt, str(src))
    assert torch.equal(vt.heads.proj[3].weight, off_sd["clip_decoder.3.head.weight"])
    assert torch.equal(vt.heads.norm[0].bias, off_sd["clip_decoder.0.norm.bias"])
    assert not any(k.startswith(("student.", "heads.")) for k in rep2["missing"])

    mid, back = tmp_path / "ours.pt", tmp_path / "back.pth"
    assert convert.main([str(src), str(mid)]) == 0
    assert convert.main([str(src), str(mid)]) == 2  # never overwritten silently
    assert convert.main([str(mid), str(back), "--to", "official"]) == 0
    got = torch.load(back, weights_only=True)["model"]
    assert list(got) == list(off_sd) and all(torch.equal(got[k], off_sd[k]) and got[k].dtype == off_sd[k].dtype
                                             for k in off_sd)
    # the backbone as safetensors, loaded by timm
    st_file = tmp_path / "backbone.safetensors"
    assert convert.main([str(src), str(st_file)]) == 0
    m = timm.create_model("umt_vit_pico_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(st_file)},
                          num_frames=2, img_size=32)
    assert torch.equal(m.blocks[2].mlp.fc1.weight, off_sd["encoder.blocks.2.mlp.fc1.weight"])


def test_finetune_logits_match_and_16_frame_table(tmp_path: Path) -> None:
    """umt_vit_base_patch16_224 (2 blocks, small input) from a converted official classifier gives our classifier's
    logits; a 16-frame file's pos_embed is consumed, checked and rebuilt bit for bit."""
    kw = dict(num_classes=5, depth=2, align_layers=2, num_frames=2, img_size=32)
    ref = _randomise(timm.create_model("umt_vit_base_patch16_224", **kw)).eval()
    off_sd = official_names("finetune", ref.state_dict())
    src = tmp_path / "ft.pth"
    torch.save({"module": off_sd}, src)  # DeepSpeed's wrapper
    dst = tmp_path / "ft.safetensors"
    assert convert.main([str(src), str(dst)]) == 0
    got = timm.create_model("umt_vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(dst)},
                            **kw).eval()
    x = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(x), ref(x))
    assert torch.equal(got.head.weight, off_sd["head.weight"])

    # 16 frames at 224: the official file carries the interpolated table
    big = _randomise(timm.create_model("umt_vit_pico_patch16_224", num_classes=3, num_frames=16,
                                       pretrain_num_frames=8, pretrain_img_size=224))
    sd16 = {**official_names("finetune", big.state_dict()),
            "pos_embed": official.official_pos_embed(16, 224, 96)}
    f16 = tmp_path / "l16_f16.pth"
    torch.save({"model": sd16}, f16)
    st = read_backbone(f16)
    assert (st.num_frames, st.img_size, st.pretrain_num_frames, st.pretrain_img_size) == (16, 224, 8, 224)
    assert torch.equal(big.pos_embed, sd16["pos_embed"][0])
    from umt.eval.classify import build_classifier

    clf, _ = build_classifier(f16)  # python -m umt.eval classify --checkpoint l16_..._f16_res224.pth
    assert torch.equal(clf.pos_embed, sd16["pos_embed"][0]) and torch.equal(clf.head.bias, sd16["head.bias"])
    mid, back = tmp_path / "f16.safetensors", tmp_path / "f16_back.pth"
    assert convert.main([str(f16), str(mid)]) == 0
    assert convert.main([str(mid), str(back), "--to", "official"]) == 0
    got16 = torch.load(back, weights_only=True)["model"]
    assert set(got16) == set(sd16) and all(torch.equal(got16[k], sd16[k]) for k in sd16)
    # a table that is not the official sin-cos one is refused
    torch.save({"model": {**sd16, "pos_embed": sd16["pos_embed"] + 0.1}}, f16)
    with pytest.raises(BackboneLoadError, match="pos_embed differs"):
        read_backbone(f16)


def test_stage2_values_and_round_trip(tmp_path: Path) -> None:
    """A stage-2 official file: every tensor of our model set from it, the teacher and position_ids kept aside and
    restored, round trip bit-exact."""
    src_model = _randomise(tiny_stage2())
    off_sd = official_names("stage2", src_model.state_dict())
    off_sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(64).expand((1, -1))
    off_sd["clip_teacher.conv1.weight"] = torch.randn(8, 3, 1, 16, 16)
    src = tmp_path / "b16_25m.pth"
    torch.save({"model": off_sd, "optimizer": {}}, src)

    vt = tiny_stage2()
    rep = load_pretrained(vt, str(src))
    assert rep["missing"] == []
    for k, v in vt.state_dict().items():
        assert torch.equal(v, src_model.state_dict()[k]), k
    assert torch.equal(vt.text.layers[2].crossattention.self.key.weight,
                       off_sd["text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"])
    assert torch.equal(vt.temp, off_sd["temp"])

    mid, back = tmp_path / "ours.pt", tmp_path / "back.pth"
    assert convert.main([str(src), str(mid)]) == 0
    state = torch.load(mid, weights_only=False)
    assert state["task"] == "video_text" and state["config"]["text"]["fusion_layer"] == 2
    assert convert.main([str(mid), str(back), "--to", "official"]) == 0
    got = torch.load(back, weights_only=True)["model"]
    assert set(got) == set(off_sd) and all(torch.equal(got[k], off_sd[k]) and got[k].dtype == off_sd[k].dtype
                                           for k in off_sd)
    assert convert.main([str(src), str(tmp_path / "x.safetensors")]) == 1  # needs the text side


def test_unmapped_keys_are_named(tmp_path: Path) -> None:
    sd = {k: torch.zeros(1) for k in ("clip_decoder.0.head.weight", "encoder.blocks.0.gamma_1")}
    sd["encoder.patch_embed.proj.weight"] = torch.zeros(96, 3, 1, 16, 16)
    with pytest.raises(official.OfficialFormatError, match=r"1 keys no rule maps \(encoder.blocks.0.gamma_1\)"):
        official.from_official({"model": sd}, "x.pth")
    torch.save({"model": sd}, tmp_path / "x.pth")
    with pytest.raises(BackboneLoadError, match="encoder.blocks.0.gamma_1"):
        read_backbone(tmp_path / "x.pth")
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "y.pth")
    with pytest.raises(BackboneLoadError, match="foo.weight"):
        read_backbone(tmp_path / "y.pth")


def test_retrieval_loads_official_stage2(tmp_path: Path, tiny_bert: str) -> None:
    """``python -m umt.eval retrieval --checkpoint b16_25m.pth --text-encoder DIR`` builds our model from the
    official file's sizes and loads every tensor strictly."""
    from umt.eval.retrieval import load_vision_text
    from umt.model.text import build_text_encoder

    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=4)
    text, _ = build_text_encoder(tiny_bert, 2, 96)
    src_model = _randomise(UMTVisionText(student, UMAHeads(96, 48, 4), text, 24))
    off_sd = official_names("stage2", src_model.state_dict())
    src = tmp_path / "b16_25m.pth"
    torch.save({"model": off_sd}, src)
    model, cfg, _ = load_vision_text(src, text_encoder=tiny_bert)
    assert (cfg.text.fusion_layer, cfg.text.embed_dim, cfg.data.num_frames) == (2, 24, 4)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src_model.state_dict().items())
