"""umt.model.vision_text, piece by piece on a tiny model (a 2-frame 32×48 pico student: grid 2 × 2 × 3, 6 tokens a
frame, 3 aligned layers so that the last one is not also the second; a 3-layer, 32-wide BERT built from its config,
fusion from layer 2): the official sizes and defaults, the pooling and projections written out by hand, what
``forward`` hands each loss, the noise streams, and what ``load_pretrained`` loads, leaves and drops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import umt  # noqa: F401 - the torchvision shim before timm
import umt.model  # noqa: F401 - registers the umt_vit_* names
import umt.model.vision_text as vt
from umt.masking import step_seed
from umt.model.heads import UMAHeads
from umt.model.load import BackboneLoadError
from umt.model.text import BertTextEncoder
from umt.model.vision_text import UMTVisionText, load_pretrained

SPECIAL = {"cls": 1, "sep": 2, "pad": 0, "mask": 3}
B, T, HW, CV, CT, D = 2, 2, 6, 96, 32, 24


def _text(vision_width: int = CV) -> BertTextEncoder:
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=50, hidden_size=CT, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    return BertTextEncoder(cfg, 2, vision_width, SPECIAL)


def _student(align_layers: int = 3):  # noqa: ANN202
    import timm

    return timm.create_model("umt_vit_pico_patch16_224", num_frames=T, img_size=(32, 48), align_layers=align_layers)


def _model(**kw) -> UMTVisionText:  # noqa: ANN003
    torch.manual_seed(0)
    s = _student()
    m = UMTVisionText(s, UMAHeads(CV, 16, 3), _text(), D, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorm affine and projections
        for p in (m.pool_norm.weight, m.pool_norm.bias):
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def model() -> UMTVisionText:
    return _model()


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------ construction
def test_sizes_and_official_defaults(model: UMTVisionText) -> None:
    assert isinstance(model.pool_norm, torch.nn.LayerNorm) and model.pool_norm.eps == 1e-6  # official pool_norm
    assert tuple(model.pool_norm.normalized_shape) == (CV,)
    assert (model.vision_proj.in_features, model.vision_proj.out_features) == (CV, D)
    assert (model.text_proj.in_features, model.text_proj.out_features) == (CT, D)
    assert (model.itm_head.in_features, model.itm_head.out_features) == (CT, 2)
    assert model.itm_head.bias is not None and model.vision_proj.bias is not None and model.text_proj.bias is not None
    assert model.temp.shape == () and model.temp.item() == pytest.approx(0.07) and model.temp.requires_grad
    assert model.temp.dtype == torch.float32
    assert model.embed_dim == D and model.mlm_prob == 0.5
    assert model.vtm_hard_negatives is True and model.vtc_local_grad is False
    assert model.tokens_per_frame == 6  # 2 × 3 patches of a 32 × 48 frame
    assert model.mlm_head is model.text.mlm_head
    assert model.extra_repr() == f"embed_dim={D}, mlm_prob=0.5, vtm_hard_negatives=True"


def test_arguments_are_kept() -> None:
    m = _model(temp=0.2, mlm_prob=0.25, vtm_hard_negatives=False, vtc_local_grad=True)
    assert m.temp.item() == pytest.approx(0.2) and m.mlm_prob == 0.25
    assert m.vtm_hard_negatives is False and m.vtc_local_grad is True
    assert m.extra_repr() == f"embed_dim={D}, mlm_prob=0.25, vtm_hard_negatives=False"


def test_width_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="width 64"):
        UMTVisionText(_student(), UMAHeads(CV, 16, 3), _text(64), D)


@pytest.mark.parametrize("raw,want", [(1e-4, 0.001), (0.001, 0.001), (0.2, 0.2), (0.5, 0.5), (0.9, 0.5)])
def test_temperature_property_clamps(raw: float, want: float) -> None:
    m = _model(temp=raw)
    assert m.temperature.item() == pytest.approx(want)
    assert m.temp.item() == pytest.approx(raw)  # the property does not write


# ------------------------------------------------------------------------------------------ pooling
def _tokens(b: int = B, k: int = T * HW) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    # frame-dependent offsets so that per-frame means differ from the clip mean and from each other
    return torch.randn(b, k, CV, generator=g) + torch.arange(k).view(1, k, 1) * 0.3


def test_pool_is_layernorm_of_the_token_mean(model: UMTVisionText) -> None:
    x = _tokens()
    want = _ln(x.sum(1) / x.shape[1], model.pool_norm.weight, model.pool_norm.bias, 1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model.pool(x), want, rtol=1e-5, atol=1e-5)


def test_frame_embeds_pool_each_frame_of_six_tokens(model: UMTVisionText) -> None:
    x = _tokens()
    w, bias = model.vision_proj.weight, model.vision_proj.bias
    rows = []
    for b in range(B):
        per = []
        for t in range(T):
            frame = x[b, t * HW:(t + 1) * HW]  # frame t's 6 tokens
            pooled = _ln(frame.sum(0) / HW, model.pool_norm.weight, model.pool_norm.bias, 1e-6)
            per.append(_unit(pooled @ w.T + bias))
        rows.append(torch.stack(per))
    with torch.no_grad():
        got = model.frame_embeds(x)
    assert got.shape == (B, T, D)
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-5, atol=1e-5)


def test_encode_vision_with_and_without_a_mask(model: UMTVisionText) -> None:
    g = torch.Generator().manual_seed(4)
    video = torch.randn(B, 3, T, 32, 48, generator=g)
    idx = torch.tensor([[0, 4, 7, 11], [1, 2, 6, 9]])
    w, bias = model.vision_proj.weight, model.vision_proj.bias
    with torch.no_grad():
        feats = model.student.forward_align(video, idx)  # [3, B, 4, C]
        tokens, emb = model.encode_vision(video, idx)
        assert torch.equal(tokens, feats[-1])
        pooled = _ln(tokens.mean(1), model.pool_norm.weight, model.pool_norm.bias, 1e-6)
        torch.testing.assert_close(emb, _unit(pooled @ w.T + bias), rtol=1e-5, atol=1e-5)
        # without a mask: every token, pooled per frame, unit mean of the unit frame embeddings
        tokens, emb = model.encode_vision(video)
        assert torch.equal(tokens, model.student.forward_align(video, None)[-1]) and tokens.shape == (B, 12, CV)
        frames = []
        for t in range(T):
            p = _ln(tokens[:, t * HW:(t + 1) * HW].mean(1), model.pool_norm.weight, model.pool_norm.bias, 1e-6)
            frames.append(_unit(p @ w.T + bias))
        torch.testing.assert_close(emb, _unit((frames[0] + frames[1]) / 2), rtol=1e-5, atol=1e-5)
        t2, per = model.encode_vision_frames(video)
        assert torch.equal(t2, tokens)
        torch.testing.assert_close(per, torch.stack(frames, 1), rtol=1e-5, atol=1e-5)


def test_vision_features_are_the_students_aligned_layers(model: UMTVisionText) -> None:
    video = torch.randn(1, 3, T, 32, 48, generator=torch.Generator().manual_seed(5))
    idx = torch.tensor([[2, 3, 10]])
    with torch.no_grad():
        assert torch.equal(model.vision_features(video, idx), model.student.forward_align(video, idx))


# ------------------------------------------------------------------------------------------ text
_IDS = torch.tensor([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0]])
_MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])


def test_encode_text_projects_the_cls_token(model: UMTVisionText) -> None:
    with torch.no_grad():
        h = model.text.forward_text(_IDS, _MASK)
        tokens, emb = model.encode_text(_IDS, _MASK)
        assert torch.equal(tokens, h)
        want = _unit(h[:, 0] @ model.text_proj.weight.T + model.text_proj.bias)
    torch.testing.assert_close(emb, want, rtol=1e-5, atol=1e-5)


def test_match_logits_read_the_fused_cls(model: UMTVisionText) -> None:
    vis = _tokens(2, 4)
    with torch.no_grad():
        h = model.text.forward_text(_IDS, _MASK)
        fused = model.text.forward_fusion(h, _MASK, vis)
        want = fused[:, 0] @ model.itm_head.weight.T + model.itm_head.bias
        got = model.match_logits(vis, h, _MASK)
    assert got.shape == (2, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ forward
def _batch(idx: bool = True, uta: bool = True) -> dict:
    g = torch.Generator().manual_seed(6)
    ix = torch.tensor([[0, 4, 7], [1, 6, 11]]) if idx else None
    k = 3 if idx else T * HW
    return dict(video=torch.randn(B, 3, T, 32, 48, generator=g), idx=ix, text_ids=_IDS, text_mask=_MASK,
                index=torch.tensor([0, 1]),
                uta_target=F.normalize(torch.randn(3, B, k, 16, generator=g), dim=-1) if uta else None, seed=7)


class _Spy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, result=None) -> None:  # noqa: ANN001
        self.calls: list = []
        real = getattr(vt, name)

        def f(*a, **k):  # noqa: ANN002, ANN003, ANN202
            self.calls.append((a, k))
            return real(*a, **k) if result is None else result

        monkeypatch.setattr(vt, name, f)


@pytest.mark.parametrize("raw,want", [(0.9, 0.5), (1e-4, 0.001)])
def test_forward_clamps_the_temperature_in_place(raw: float, want: float) -> None:
    m = _model(temp=raw)
    with torch.no_grad():
        m(**_batch(uta=False), mlm=False)
    assert m.temp.item() == pytest.approx(want)
    assert m.temp.requires_grad


def test_forward_with_a_mask_hands_each_loss_its_inputs(model: UMTVisionText, monkeypatch: pytest.MonkeyPatch) -> None:
    vtc = _Spy(monkeypatch, "vtc_loss")
    uma = _Spy(monkeypatch, "uma_loss")
    b = _batch()
    heads_in: list = []
    monkeypatch.setattr(model.heads, "forward", lambda f, p: heads_in.append((f, p)) or UMAHeads.forward(
        model.heads, f, p))
    with torch.no_grad():
        out = model(**b)
        feats = model.student.forward_align(b["video"], b["idx"])
        _, v = model.encode_vision(b["video"], b["idx"])
        _, t = model.encode_text(_IDS, _MASK)
    assert list(out) == ["vtc", "vtm", "mlm", "uta"]
    assert all(o.shape == () and o.dtype == torch.float32 for o in out.values())
    (a, k), = vtc.calls
    torch.testing.assert_close(a[0], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], t, rtol=1e-5, atol=1e-6)
    assert torch.equal(a[2], b["index"]) and a[3] is model.temp and k == {"local_grad": False}
    # UTA: the heads see the aligned layers and the position rows of the kept tokens
    (f, p), = heads_in
    torch.testing.assert_close(f, feats)
    pos = model.student.pos_embed
    want_pos = torch.stack([pos[[0, 4, 7]], pos[[1, 6, 11]]])
    assert torch.equal(p, want_pos)
    (ua, _), = uma.calls
    assert torch.equal(ua[1], b["uta_target"])
    # the loss value: mean over layers, batch, tokens of 2 − 2 cos
    pred = ua[0]
    want = (2 - 2 * (pred * b["uta_target"]).sum(-1)).mean()
    assert out["uta"].item() == pytest.approx(want.item(), abs=1e-5) and out["uta"].item() > 0


def test_forward_without_a_mask_pools_per_frame(model: UMTVisionText, monkeypatch: pytest.MonkeyPatch) -> None:
    vtc = _Spy(monkeypatch, "vtc_loss")
    vtm_in: list = []
    real_vtm = UMTVisionText._vtm
    monkeypatch.setattr(model, "_vtm", lambda *a: vtm_in.append(a) or real_vtm(model, *a))
    heads_in: list = []
    monkeypatch.setattr(model.heads, "forward", lambda f, p: heads_in.append((f, p)) or UMAHeads.forward(
        model.heads, f, p))
    b = _batch(idx=False)
    with torch.no_grad():
        model(**b)
        _, per = model.encode_vision_frames(b["video"])  # [B, T, D]
    (a, _), = vtc.calls
    torch.testing.assert_close(a[0], per, rtol=1e-5, atol=1e-6)  # the per-frame unit rows go to VTC
    (args,) = vtm_in
    v_emb = args[3]
    # the VTM similarity reads the plain mean of the frame rows (not re-normalised): its norm is below 1
    torch.testing.assert_close(v_emb, (per[:, 0] + per[:, 1]) / 2, rtol=1e-5, atol=1e-6)
    assert args[6] == 7
    (_, p), = heads_in
    pos = model.student.pos_embed
    assert p.shape == (B, T * HW, CV) and torch.equal(p[0], pos) and torch.equal(p[1], pos)


def test_forward_without_uta_or_mlm_gives_zeros(model: UMTVisionText, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list = []
    monkeypatch.setattr(model.heads, "forward", lambda *a: called.append("heads"))
    monkeypatch.setattr(model, "_mlm", lambda *a: called.append("mlm"))
    with torch.no_grad():
        out = model(**_batch(uta=False), mlm=False)
    assert called == []
    for name in ("mlm", "uta"):
        assert out[name].shape == () and out[name].item() == 0.0 and out[name].dtype == torch.float32


def test_forward_runs_mlm_by_default(model: UMTVisionText, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    monkeypatch.setattr(model, "_mlm", lambda *a: seen.append(a) or torch.tensor(1.5))
    b = _batch()
    with torch.no_grad():
        out = model(**b)
        vis = model.student.forward_align(b["video"], b["idx"])[-1]
    (a,) = seen
    torch.testing.assert_close(a[0], vis)
    assert torch.equal(a[1], _IDS) and torch.equal(a[2], _MASK) and a[3] == 7
    assert out["mlm"].item() == 1.5


def test_forward_passes_local_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(vtc_local_grad=True)
    vtc = _Spy(monkeypatch, "vtc_loss")
    with torch.no_grad():
        m(**_batch(uta=False), mlm=False)
    assert vtc.calls[0][1] == {"local_grad": True}


def test_vtm_streams_and_uniform_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(vtm_hard_negatives=False)
    neg = _Spy(monkeypatch, "sample_vtm_negatives")
    loss = _Spy(monkeypatch, "vtm_loss")
    vis, txt = _tokens(2, 3), torch.randn(2, 5, CT)
    v = F.normalize(torch.randn(2, D), dim=-1)
    t = F.normalize(torch.randn(2, D), dim=-1)
    with torch.no_grad():
        m._vtm(vis, txt, _MASK, v, t, torch.tensor([0, 1]), 9)
    (a1, _), (a2, _) = neg.calls
    # streams 11 (a video per caption) and 12 (a caption per video) of the micro-batch seed, step 0, rank 0
    assert a1[2] == step_seed(9, 0, 0, 11) and a2[2] == step_seed(9, 0, 0, 12)
    assert a1[3] is False and a2[3] is False
    (la, _), = loss.calls
    assert la[0].shape == (6, 2)
    # with B = 2 and distinct items, each row's only negative is the other one: both always valid
    assert la[1].tolist() == [True, True] and la[2].tolist() == [True, True]


def test_mlm_masks_with_stream_13_and_scores_the_fused_caption(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(mlm_prob=0.75)
    mask_calls = _Spy(monkeypatch, "mlm_mask")
    vis = _tokens(2, 3)
    with torch.no_grad():
        got = m._mlm(vis, _IDS, _MASK, 4)
    (a, k), = mask_calls.calls
    assert torch.equal(a[0], _IDS) and torch.equal(a[1], _MASK) and a[2] == step_seed(4, 0, 0, 13)
    assert k == {"prob": 0.75, "mask_id": 3, "vocab_size": 50, "special_ids": (1, 2, 0)}
    from umt.losses import mlm_mask

    inputs, labels = mlm_mask(_IDS, _MASK, step_seed(4, 0, 0, 13), prob=0.75, mask_id=3, vocab_size=50,
                              special_ids=(1, 2, 0))
    assert (labels != -100).any()
    t = m.text
    with torch.no_grad():
        logits = t.mlm_logits(t.forward_fusion(t.forward_text(inputs, _MASK), _MASK, vis))
    lab = labels.reshape(-1)
    sel = lab != -100
    lp = torch.log_softmax(logits.reshape(-1, 50)[sel], -1)
    want = -lp[torch.arange(int(sel.sum())), lab[sel]].mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ load_pretrained
def _save(path: Path, model_sd: dict) -> str:
    torch.save({"model": model_sd, "task": "distill", "student": "umt_vit_pico_patch16_224",
                "config": {"data": {"num_frames": T, "input_size": 32}}}, path)
    return str(path)


def _stage1_sd(heads: UMAHeads) -> dict:
    g = torch.Generator().manual_seed(8)
    s = _student()
    sd = {f"student.{k}": torch.randn(v.shape, generator=g) for k, v in s.state_dict().items()}
    sd.update({f"heads.{k}": torch.randn(v.shape, generator=g) for k, v in heads.state_dict().items()})
    return sd


def test_load_pretrained_from_a_stage1_file(tmp_path: Path) -> None:
    sd = _stage1_sd(UMAHeads(CV, 16, 3))
    sd["vision_proj.weight"] = torch.full((D, CV), 0.25)  # same shape: loaded
    sd["text_proj.weight"] = torch.zeros(D + 1, CT)  # another shape: left at init, reported dropped
    sd["extra.thing"] = torch.zeros(3)  # not in the model: dropped
    m = _model()
    own_before = {k: v.clone() for k, v in m.state_dict().items()}
    rep = load_pretrained(m, _save(tmp_path / "s1.pt", sd))
    now = m.state_dict()
    student_keys = sorted(k for k in now if k.startswith("student.") and k in sd)
    heads_keys = sorted(k for k in now if k.startswith("heads."))
    assert len(heads_keys) == 12 and student_keys
    assert rep["loaded"] == student_keys + sorted(heads_keys + ["vision_proj.weight"])
    for k in rep["loaded"]:
        assert torch.equal(now[k], sd[k]), k
    assert rep["dropped"] == ["extra.thing", "text_proj.weight"]
    want_missing = sorted(k for k in now if k not in sd or k == "text_proj.weight")
    assert rep["missing"] == want_missing
    assert "text_proj.weight" in rep["missing"] and "temp" in rep["missing"]
    assert not any(k.startswith("student.") for k in rep["missing"])
    for k in rep["missing"]:
        assert torch.equal(now[k], own_before[k]), k


def test_load_pretrained_refuses_heads_of_another_width(tmp_path: Path) -> None:
    sd = _stage1_sd(UMAHeads(CV, 8, 3))  # the first mismatched head tensor, in file order, is named
    with pytest.raises(BackboneLoadError, match=r"heads\.proj\.0\.weight: file \(8, 96\) vs model \(16, 96\)"):
        load_pretrained(_model(), _save(tmp_path / "w.pt", sd))


@pytest.mark.parametrize("layers", [2, 4])
def test_load_pretrained_refuses_another_number_of_heads(tmp_path: Path, layers: int) -> None:
    sd = _stage1_sd(UMAHeads(CV, 16, layers))
    with pytest.raises(BackboneLoadError, match=f"file has {4 * layers} head tensors, the model 12"):
        load_pretrained(_model(), _save(tmp_path / "n.pt", sd))


def test_load_pretrained_without_heads_leaves_them(tmp_path: Path) -> None:
    sd = {k: v for k, v in _stage1_sd(UMAHeads(CV, 16, 3)).items() if not k.startswith("heads.")}
    m = _model()
    rep = load_pretrained(m, _save(tmp_path / "b.pt", sd))
    assert [k for k in rep["missing"] if k.startswith("heads.")] == sorted(
        k for k in m.state_dict() if k.startswith("heads."))
    assert rep["dropped"] == []
    assert math.isclose(m.temp.item(), 0.07, rel_tol=1e-6)


def test_load_pretrained_reports_a_non_student_key_that_ends_like_a_backbone_key(tmp_path: Path) -> None:
    # "adapter_" is 8 characters: "adapter_norm.weight" minus them is "norm.weight", a backbone key loaded into the
    # student; only student.* keys are excused from "missing" by that test
    m = _model()
    m.adapter_norm = torch.nn.LayerNorm(CV)
    sd = {k: v for k, v in _stage1_sd(UMAHeads(CV, 16, 3)).items()}
    assert "student.norm.weight" in sd
    rep = load_pretrained(m, _save(tmp_path / "a.pt", sd))
    assert "student.norm.weight" in rep["loaded"]
    assert {"adapter_norm.weight", "adapter_norm.bias"} <= set(rep["missing"])
