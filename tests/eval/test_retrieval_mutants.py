"""``umt.eval.retrieval`` at the function level on toy encoders whose answers are worked by hand: the text and video
encoders (batching, padding rows, per-frame means, autocast, host/device placement), ``gather_by_index``, the
re-ranking candidates of each side (k = 1, 2 and k above both sides), which rank owns a video, the dual-encoder and
re-ranked metrics of ``evaluate_retrieval``, the report's JSON and markdown, ``group_captions``, and the plumbing of
``tokenize_captions`` / ``build_vision_text`` / ``load_vision_text`` / ``retrieval_on_shards`` / ``main`` with the
heavy pieces (BERT, shards, timm) replaced by fakes that record what they are given."""

from __future__ import annotations

import argparse
import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import umt.eval.retrieval as R
from umt.eval.common import CountError
from umt.eval.retrieval import (NOT_CANDIDATE, encode_texts, encode_videos, evaluate_retrieval, gather_by_index,
                                group_captions, rerank_scores, write_report)

CPU = torch.device("cpu")
NV, NT = 3, 4
GT = [0, 0, 1, 2]  # caption c describes video GT[c]
# caption c's text embedding; video v's embedding is e_v, so sim[v, c] = TEXT_EMB[c][v] (all 12 values distinct):
#   v0: [0.90, 0.30, 0.10, 0.20]
#   v1: [0.20, 0.80, 0.70, 0.30]
#   v2: [0.05, 0.15, 0.40, 0.60]
TEXT_EMB = [[0.90, 0.20, 0.05], [0.30, 0.80, 0.15], [0.10, 0.70, 0.40], [0.20, 0.30, 0.60]]
SIM = torch.tensor(TEXT_EMB).t().contiguous()  # [NV, NT]


def match(v: int, c: int) -> float:
    """The toy match head's logit: 10 on a true pair, plus 0.1·c + 0.01·v (unique per pair)."""
    return 10.0 * (GT[c] == v) + 0.1 * c + 0.01 * v


class _Toy(torch.nn.Module):
    """Video v: pixel (0,0,0,0) holds v; tokens ``[B, 2, 1]`` hold v, embedding e_v. Caption: ids ``[c, 7, 7]``,
    tokens ``[b, L, 1]`` hold c, embedding ``TEXT_EMB[c]``; its mask row is ``[1, c % 2, 1]`` and the match head checks
    that the mask it gets belongs to the caption. Records every call."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.calls: list[tuple] = []

    def _rec(self, what: str, n: int, extra=None) -> None:  # noqa: ANN001
        self.calls.append((what, n, self.training, torch.is_autocast_enabled("cpu"), extra))

    def encode_vision(self, video: torch.Tensor, idx):  # noqa: ANN001, ANN201
        self._rec("vision", video.shape[0], idx)
        v = video[:, 0, 0, 0, 0].round().long()
        tok = v.float()[:, None, None].expand(-1, 2, 1).to(self.dtype)
        emb = torch.nn.functional.one_hot(v.clamp(min=0), NV).float()
        emb[v < 0] = 7.0  # padding rows: would show if kept
        return tok, emb.to(self.dtype)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        self._rec("text", ids.shape[0])
        c = ids[:, 0]
        assert torch.equal(mask[:, 1], c % 2)
        tok = c.float()[:, None, None].expand(-1, ids.shape[1], 1).to(self.dtype)
        return tok, torch.tensor([TEXT_EMB[i] for i in c.tolist()]).to(self.dtype)

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        self._rec("match", vt.shape[0])
        v = vt[:, 0, 0].float().round().long().tolist()
        c = tt[:, 0, 0].float().round().long().tolist()
        assert tm[:, 1].tolist() == [i % 2 for i in c]
        s = torch.tensor([match(a, b) for a, b in zip(v, c)])
        return torch.stack([-s, s], 1).to(self.dtype)


def _texts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[c, 7, 7] for c in range(NT)])
    mask = torch.tensor([[1, c % 2, 1] for c in range(NT)])
    return ids, mask


def _batches(order=((2, 0), (1,)), size: int = 2) -> list[dict]:  # noqa: ANN001
    out = []
    for vids in order:
        idx = list(vids) + [-1] * (size - len(vids))
        video = torch.zeros(size, 3, 1, 2, 2)
        video[:, 0, 0, 0, 0] = torch.tensor(idx, dtype=torch.float32)
        out.append({"video": video, "index": torch.tensor(idx)})
    return out


def _metrics(t2v: list[int], v2t: list[int], prefix: str = "") -> dict[str, float]:
    """The metrics of 1-based ranks, written out."""
    out = {}
    for d, r in (("t2v", t2v), ("v2t", v2t)):
        for k in (1, 5, 10):
            out[f"{prefix}{d}_r{k}"] = 100.0 * sum(x <= k for x in r) / len(r)
        out[f"{prefix}{d}_medr"] = float(np.median(r))
        out[f"{prefix}{d}_meanr"] = sum(r) / len(r)
    out[f"{prefix}r_mean"] = sum(out[f"{prefix}{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)) / 6
    return out


# dual encoder, by hand from SIM: text→video ranks [1, 2, 1, 1] (caption 1 prefers video 1 at 0.8 over its video 0
# at 0.3); video→text ranks [1, 2, 1] (video 1's caption 2 at 0.7 is beaten by caption 1 at 0.8)
EMB = _metrics([1, 2, 1, 1], [1, 2, 1], "emb_")


# ------------------------------------------------------------------------------------------------ evaluate
def test_dual_encoder_metrics_only_with_k0() -> None:
    ids, mask = _texts()
    m = _Toy()
    m.train()
    got = evaluate_retrieval(m, _batches(), NV, GT, ids, mask, device=CPU, rerank_k=0)
    assert got == pytest.approx(EMB) and set(got) == set(EMB)
    assert not m.training and all(not c[2] for c in m.calls)  # eval mode
    assert not any(c[0] == "match" for c in m.calls)
    assert all(c[4] is None for c in m.calls if c[0] == "vision")  # encode_vision(video, None)


def test_rerank_k1_scores_each_sides_own_top1() -> None:
    # video→text: v0 → c0 (10.0), v1 → c1 (0.11, wrong), v2 → c3 (10.32); everything else -100:
    # ranks [1, 4, 1] (v1's caption 2 is at -100 and ties the three others). text→video: c0 → v0, c1 → v1 (wrong),
    # c2 → v1, c3 → v2: ranks [1, 3, 1, 1] (c1's video 0 at -100 ties v2).
    ids, mask = _texts()
    got = evaluate_retrieval(_Toy(), _batches(), NV, GT, ids, mask, device=CPU, rerank_k=1)
    assert got == pytest.approx({**EMB, **_metrics([1, 3, 1, 1], [1, 4, 1])})


@pytest.mark.parametrize("k", [2, 3, 10, 128])
def test_rerank_k2_and_above_recovers_every_pair(k: int) -> None:
    # k = 2: v1's top 2 holds caption 2 (10.21 > 0.11), c1's top 2 holds video 0: every rank is 1
    ids, mask = _texts()
    got = evaluate_retrieval(_Toy(), _batches(), NV, GT, ids, mask, device=CPU, rerank_k=k)
    assert got == pytest.approx({**EMB, **_metrics([1] * NT, [1] * NV)})


def test_rerank_scores_k1_by_hand() -> None:
    vtok = torch.tensor([0.0, 1.0, 2.0])[:, None, None].expand(-1, 2, 1)
    ids, mask = _texts()
    ttok = ids[:, :1].float()[:, None, :].expand(-1, 3, 1)
    v2t, t2v = rerank_scores(_Toy(), SIM, torch.tensor([0, 1, 2]), vtok, ttok, mask, k=1, device=CPU)
    want_v2t = torch.full((NV, NT), NOT_CANDIDATE)
    for v, c in ((0, 0), (1, 1), (2, 3)):
        want_v2t[v, c] = match(v, c)
    want_t2v = torch.full((NT, NV), NOT_CANDIDATE)
    for c, v in ((0, 0), (1, 1), (2, 1), (3, 2)):
        want_t2v[c, v] = match(v, c)
    torch.testing.assert_close(v2t, want_v2t, rtol=0, atol=0)
    torch.testing.assert_close(t2v, want_t2v, rtol=0, atol=0)
    assert NOT_CANDIDATE == -100.0 and v2t.dtype == t2v.dtype == torch.float32


def test_rerank_scores_only_the_local_videos_in_their_row_order() -> None:
    # this "rank" owns videos 2 and 0 (tokens in that order); video 1's pairs stay non-candidates
    vtok = torch.tensor([2.0, 0.0])[:, None, None].expand(-1, 2, 1)
    ids, mask = _texts()
    ttok = ids[:, :1].float()[:, None, :].expand(-1, 3, 1)
    model = _Toy()
    v2t, t2v = rerank_scores(model, SIM, torch.tensor([2, 0]), vtok, ttok, mask, k=NT, device=CPU, batch_size=3)
    for v in range(NV):
        for c in range(NT):
            want = NOT_CANDIDATE if v == 1 else match(v, c)
            assert v2t[v, c] == pytest.approx(want) and t2v[c, v] == pytest.approx(want)
    # 4 captions per local video in batches of 3: 3 + 1, twice
    assert [c[1] for c in model.calls if c[0] == "match"] == [3, 1, 3, 1]


def test_rerank_default_batch_of_128() -> None:
    nt = 130
    sim = torch.linspace(0, 1, nt)[None, :]  # one video, 130 captions
    ttok = torch.arange(nt, dtype=torch.float32)[:, None, None]
    mask = torch.tensor([[1, c % 2] for c in range(nt)])

    class _M(_Toy):
        def match_logits(self, vt, tt, tm):  # noqa: ANN001, ANN201
            self._rec("match", vt.shape[0])
            s = tt[:, 0, 0]
            return torch.stack([-s, s], 1)

    model = _M()
    v2t, t2v = rerank_scores(model, sim, torch.tensor([0]), torch.zeros(1, 2, 1), ttok, mask, k=200, device=CPU)
    assert [c[1] for c in model.calls] == [128, 2]
    torch.testing.assert_close(v2t[0], torch.arange(nt, dtype=torch.float32), rtol=0, atol=0)
    torch.testing.assert_close(t2v[:, 0], torch.arange(nt, dtype=torch.float32), rtol=0, atol=0)


def test_batch_sizes_and_autocast_reach_the_model() -> None:
    ids, mask = _texts()
    m = _Toy()
    evaluate_retrieval(m, _batches(), NV, GT, ids, mask, device=CPU, rerank_k=NT, text_batch_size=3,
                       rerank_batch_size=2)
    assert [c[1] for c in m.calls if c[0] == "text"] == [3, 1]
    assert [c[1] for c in m.calls if c[0] == "match"] == [2, 2] * NV
    assert not any(c[3] for c in m.calls)
    m = _Toy(torch.bfloat16)
    got = evaluate_retrieval(m, _batches(), NV, GT, ids, mask, device=CPU, rerank_k=1, amp_dtype=torch.bfloat16)
    assert {c[0] for c in m.calls} == {"vision", "text", "match"} and all(c[3] for c in m.calls)
    # bf16 embeddings: SIM's entries round (0.3 → 0.30078, ...) but keep their order; the logits round too
    # (10.32 → 10.3125) but the ranks do not move
    assert got == pytest.approx({**_metrics([1, 2, 1, 1], [1, 2, 1], "emb_"), **_metrics([1, 3, 1, 1], [1, 4, 1])})


def test_default_text_batch_of_256() -> None:
    nt = 300
    ids = torch.tensor([[c % NT, 7, 7] for c in range(nt)])
    mask = torch.tensor([[1, (c % NT) % 2, 1] for c in range(nt)])
    m = _Toy()
    tok, emb = encode_texts(m, ids, mask, device=CPU)
    assert [c[1] for c in m.calls] == [256, 44]
    assert tok.shape == (nt, 3, 1) and emb.shape == (nt, 3)
    torch.testing.assert_close(emb[255], torch.tensor(TEXT_EMB[255 % NT]))
    torch.testing.assert_close(emb[256], torch.tensor(TEXT_EMB[256 % NT]))


def test_multi_video_ground_truth_reaches_the_metrics() -> None:
    # caption 1 describes videos 0 and 1: its best is video 1 at 0.8 → rank 1; video 1's best caption is now
    # caption 1 (0.8): rank 1
    ids, mask = _texts()
    got = evaluate_retrieval(_Toy(), _batches(), NV, [[0], [0, 1], [1], [2]], ids, mask, device=CPU, rerank_k=0)
    assert got == pytest.approx(_metrics([1] * NT, [1] * NV, "emb_"))


# ------------------------------------------------------------------------------------------------- encoders
def test_encode_texts_batches_in_order_bf16_embeddings_as_float32() -> None:
    ids, mask = _texts()
    m = _Toy(torch.bfloat16)
    tok, emb = encode_texts(m, ids, mask, device=CPU, amp_dtype=torch.bfloat16, batch_size=3)
    assert [c[1] for c in m.calls] == [3, 1] and all(c[3] for c in m.calls)
    assert emb.dtype == torch.float32 and tok.dtype == torch.bfloat16 and tok.device.type == "cpu"
    assert tok[:, 0, 0].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(emb, torch.tensor(TEXT_EMB).bfloat16().float(), rtol=0, atol=0)


def test_encode_videos_drops_padding_and_keeps_index_order_of_arrival() -> None:
    m = _Toy(torch.bfloat16)
    idx, tok, emb = encode_videos(m, _batches(), device=CPU, amp_dtype=torch.bfloat16)
    assert idx.tolist() == [2, 0, 1] and idx.dtype == torch.int64
    assert tok[:, 0, 0].tolist() == [2, 0, 1] and tok.dtype == torch.bfloat16
    assert emb.dtype == torch.float32 and emb.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert all(c[3] for c in m.calls)
    with pytest.raises(ValueError, match="no videos"):
        encode_videos(m, [], device=CPU)


class _Frames(torch.nn.Module):
    """Per-frame unit embeddings straight from the clip: ``video [B, 3, T, 1, 1]``, frame t's vector in column t;
    tokens ``[B, T, 3]``; output in ``dtype``."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype, self.autocast = dtype, []

    def encode_vision_frames(self, video: torch.Tensor):  # noqa: ANN201
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        f = video[:, :, :, 0, 0].permute(0, 2, 1)
        return f.to(self.dtype), f.to(self.dtype)


def _two_frame_clips() -> torch.Tensor:
    # clip 0: frames (1, 0, 0) and (0, 1, 0): mean (0.5, 0.5, 0), norm √½; clip 1 (padding): frames (0, 0, 1) twice;
    # clip 2: frames (0.6, 0.8, 0) and (0.6, -0.8, 0): mean (0.6, 0, 0)
    f = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]] * 2, [[0.6, 0.8, 0.0], [0.6, -0.8, 0.0]]])
    return f.permute(0, 2, 1)[..., None, None]  # [3, 3, T=2, 1, 1]


def test_encode_videos_frame_mean_and_pooled() -> None:
    b = [{"video": _two_frame_clips(), "index": torch.tensor([5, -1, 4])}]
    idx, tok, emb = encode_videos(_Frames(), b, device=CPU)
    assert idx.tolist() == [5, 4] and tok.shape == (2, 2, 3)
    torch.testing.assert_close(emb, torch.tensor([[0.5, 0.5, 0.0], [0.6, 0.0, 0.0]]))
    _, _, emb = encode_videos(_Frames(), b, device=CPU, frame_scoring="pooled")
    h = math.sqrt(0.5)
    torch.testing.assert_close(emb, torch.tensor([[h, h, 0.0], [1.0, 0.0, 0.0]]))
    m = _Frames(torch.bfloat16)
    _, _, emb = encode_videos(m, b, device=CPU, amp_dtype=torch.bfloat16)
    assert emb.dtype == torch.float32 and m.autocast == [True]
    torch.testing.assert_close(emb, torch.tensor([[0.5, 0.5, 0.0], [0.6, 0.0, 0.0]]), rtol=0, atol=4e-3)
    with pytest.raises(ValueError, match="frame_scoring"):
        encode_videos(_Frames(), b, device=CPU, frame_scoring="mean")


def test_gather_by_index_orders_rows_and_counts_videos() -> None:
    x = torch.tensor([[2.0, 20.0], [0.0, 0.5], [1.0, 10.0]])
    got = gather_by_index(x, torch.tensor([2, 0, 1]), 3)
    assert got.tolist() == [[0.0, 0.5], [1.0, 10.0], [2.0, 20.0]]
    with pytest.raises(CountError, match="1 of 3 videos not counted"):
        gather_by_index(x[:2], torch.tensor([2, 0]), 3)
    with pytest.raises(CountError, match="videos not counted"):
        gather_by_index(torch.cat([x, x[:1]]), torch.tensor([2, 0, 1, 2]), 3)


def test_topk_rows_in_chunks() -> None:
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3], [0.3, 0.4, 0.7], [0.6, 0.5, 0.1], [0.2, 0.1, 0.95]])
    want = [[1, 2], [0, 2], [2, 1], [0, 1], [2, 0]]
    assert R._topk_rows(sim, 2, chunk=2).tolist() == want
    assert R._topk_rows(sim, 2).tolist() == want


# -------------------------------------------------------------------------------------------------- report
def test_write_report_json_and_markdown(tmp_path: Path) -> None:
    metrics = {**_metrics([1, 3, 1, 1], [1, 4, 1]), **EMB}
    info = {"shards": "sh/msrvtt", "videos": 3, "rerank_k": 1, "nested": {"a": 1}, "listed": [1]}
    js, md = write_report(tmp_path / "new", metrics, info)
    assert (js, md) == (tmp_path / "new" / "retrieval.json", tmp_path / "new" / "retrieval.md")
    assert json.loads(js.read_text()) == {"metrics": metrics, **info}
    assert md.read_text() == "\n".join([
        "# Zero-shot retrieval: sh/msrvtt", "",
        "- shards: sh/msrvtt", "- videos: 3", "- rerank_k: 1", "",
        "| scores | direction | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---|---|---|---|---|---|",
        "| VTM re-ranked | text→video | 75.0 | 100.0 | 100.0 | 1.0 | 1.5 |",
        "| VTM re-ranked | video→text | 66.7 | 100.0 | 100.0 | 1.0 | 2.0 |",
        "| dual encoder | text→video | 75.0 | 100.0 | 100.0 | 1.0 | 1.2 |",
        "| dual encoder | video→text | 66.7 | 100.0 | 100.0 | 1.0 | 1.3 |",
        "",
        "r_mean (mean of the six recalls): 90.28",
        ""])
    with pytest.raises(FileExistsError):
        write_report(tmp_path / "new", metrics, info)
    write_report(tmp_path / "new", EMB, info, overwrite=True)
    assert json.loads(js.read_text())["metrics"] == EMB


def test_write_report_dual_encoder_only_and_name(tmp_path: Path) -> None:
    emb = _metrics([1, 2, 2, 1], [1, 1, 3], "emb_")  # r_mean (75 + 100·2 + 66.7 + 100·2) / 6
    js, md = write_report(tmp_path, emb, {}, name="val")
    assert js.name == "val.json" and md.name == "val.md"
    lines = md.read_text().split("\n")
    assert lines[0] == "# Zero-shot retrieval: "
    assert [ln for ln in lines if ln.startswith("| dual")] == [
        "| dual encoder | text→video | 50.0 | 100.0 | 100.0 | 1.5 | 1.5 |",
        "| dual encoder | video→text | 66.7 | 100.0 | 100.0 | 1.0 | 1.7 |"]
    assert not any(ln.startswith("| VTM") for ln in lines)
    assert lines[-2] == f"r_mean (mean of the six recalls): {(50 + 200 + 200 / 3 + 200) / 6:.2f}"
    _, md = write_report(tmp_path, {"x": 1.0}, {}, name="none")
    assert md.read_text().split("\n")[-2] == "r_mean (mean of the six recalls): nan"


def test_group_captions() -> None:
    texts, gt = group_captions([(0, "a dog"), (1, "a cat"), (2, "a dog"), (0, "a dog"), (3, "a cat"), (1, "x")])
    assert texts == ["a dog", "a cat", "x"] and gt == [[0, 2], [1, 3], [1]]
    assert group_captions([]) == ([], [])


# ------------------------------------------------------------------------------------------------ plumbing
def test_tokenize_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data.captions as caps

    made = []

    class _Tok:
        def __init__(self, d, max_len):  # noqa: ANN001
            made.append((d, max_len))
            self.max_len = max_len

        def encode(self, text: str):  # noqa: ANN201
            ids = [101] + [len(w) for w in text.split()] + [102]
            out = np.zeros(self.max_len, np.int32)
            out[:len(ids)] = ids
            return out, len(ids)

    monkeypatch.setattr(caps, "CaptionTokenizer", _Tok)
    ids, mask = R.tokenize_captions(["ab c", "abcd"], "tokdir", 6)
    assert made == [("tokdir", 6)]
    assert ids.dtype == torch.int64 and ids.tolist() == [[101, 2, 1, 102], [101, 4, 102, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def _cfg(**text) -> types.SimpleNamespace:  # noqa: ANN003
    return types.SimpleNamespace(
        data=types.SimpleNamespace(num_frames=8, input_size=224),
        model=types.SimpleNamespace(student="stud", align_layers=6),
        text=types.SimpleNamespace(**{"encoder": "bert_dir", "fusion_layer": 9, "embed_dim": 512, "temp": 0.05,
                                      "mlm_prob": 0.4, "vtm_hard_negatives": False, "vtc_local_grad": True, **text}))


def test_build_vision_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    import umt.model.heads
    import umt.model.text
    import umt.model.vision_text

    rec: dict = {}
    student = types.SimpleNamespace(embed_dim=96, align_layers=4)

    def create(name, **kw):  # noqa: ANN001, ANN003, ANN202
        rec["student"] = (name, kw)
        return student

    monkeypatch.setattr(timm, "create_model", create)
    monkeypatch.setattr(umt.model.heads, "UMAHeads", lambda *a: rec.setdefault("heads", a) and "heads")
    monkeypatch.setattr(umt.model.text, "build_text_encoder",
                        lambda *a: (rec.setdefault("text", a) and "text", None))
    monkeypatch.setattr(umt.model.vision_text, "UMTVisionText", lambda *a: ("VT", a))
    got = R.build_vision_text(_cfg(), 768)
    assert rec["student"] == ("stud", {"num_frames": 8, "img_size": 224, "drop_path_rate": 0.0, "align_layers": 6})
    assert rec["heads"] == (96, 768, 4) and rec["text"] == ("bert_dir", 9, 96)
    assert got == ("VT", (student, "heads", "text", 512, 0.05, 0.4, False, True))
    rec.clear()
    R.build_vision_text(_cfg(), 768, text_encoder="other", num_frames=4)
    assert rec["student"][1]["num_frames"] == 4 and rec["text"] == ("other", 9, 96)


class _Loaded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loaded = None

    def load_state_dict(self, sd, strict=True):  # noqa: ANN001, ANN201
        self.loaded = (sd, strict)


def test_load_vision_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from umt.config import TrainConfig

    rec = {}

    def build(cfg, teacher_dim, *, text_encoder=None, num_frames=None):  # noqa: ANN001, ANN202
        rec["build"] = (cfg, teacher_dim, text_encoder, num_frames)
        return _Loaded()

    monkeypatch.setattr(R, "build_vision_text", build)
    sd = {"heads.proj.0.weight": torch.zeros(7, 3)}
    path = tmp_path / "s2.pt"
    # a trainer file may hold plain Python objects beside the tensors (read with weights_only=False)
    torch.save({"task": "video_text", "config": {"data": {"num_frames": 6}}, "model": sd, "step": 5,
                "args": argparse.Namespace(seed=1)}, path)
    model, cfg, state = R.load_vision_text(path, text_encoder="bert", num_frames=3)
    assert isinstance(cfg, TrainConfig) and cfg.data.num_frames == 6 and state["step"] == 5
    assert rec["build"][1:] == (7, "bert", 3) and rec["build"][0] is cfg
    assert model.loaded[1] is True and set(model.loaded[0]) == set(sd)
    R.load_vision_text(str(path))
    assert rec["build"][2:] == (None, None)
    with pytest.raises(ValueError, match="no such checkpoint"):
        R.load_vision_text(tmp_path / "missing.pt")
    for bad, task in (({"task": "finetune", "config": {}, "model": sd}, "'finetune'"),
                      ({"task": "video_text", "model": sd}, "'video_text'"), ([1, 2], "None")):
        torch.save(bad, path)
        with pytest.raises(ValueError, match=f"not a stage-2 .* checkpoint \\(task {task}\\)"):
            R.load_vision_text(path)


class _ShardLoader:
    num_samples = 3

    def __init__(self) -> None:
        self.closed = False
        self.epochs = []

    def epoch_iter(self, epoch: int):  # noqa: ANN201
        self.epochs.append(epoch)
        return iter(["batches"])

    def close(self) -> None:
        self.closed = True


def _on_shards(monkeypatch: pytest.MonkeyPatch, caps: list, fail: bool = False) -> dict:
    import dataclasses

    import umt.data.captions
    import umt.data.meta_loader
    from umt.config import config_from_dict

    rec: dict = {"cfg": config_from_dict({"data": {"num_frames": 6, "input_size": 96, "batch_size": 64,
                                                   "num_sample": 2},
                                          "text": {"max_len": 12}})}
    assert dataclasses.is_dataclass(rec["cfg"].data)

    def loader(data, shard_dir, *, tokenizer_dir, max_len, rank, world_size, device):  # noqa: ANN001, ANN202
        rec["loader"] = (data, shard_dir, tokenizer_dir, max_len, rank, world_size, device)
        rec["ld"] = _ShardLoader()
        return rec["ld"]

    def tok(texts, d, max_len):  # noqa: ANN001, ANN202
        rec["tok"] = (list(texts), d, max_len)
        return "ids", "mask"

    def ev(model, batches, nv, gt, ids, mask, **kw):  # noqa: ANN001, ANN003, ANN202
        rec["eval"] = (model, list(batches), nv, gt, ids, mask, kw)
        if fail:
            raise ValueError("boom")
        return {"t2v_r1": 1.0}

    monkeypatch.setattr(umt.data.meta_loader, "build_video_text_eval_loader", loader)
    monkeypatch.setattr(umt.data.captions, "read_captions", lambda d: rec.setdefault("caps_dir", d) and caps)
    monkeypatch.setattr(R, "tokenize_captions", tok)
    monkeypatch.setattr(R, "evaluate_retrieval", ev)
    return rec


CAPS = [(0, "a dog"), (1, "a cat"), (2, "a dog")]


def test_retrieval_on_shards_one_query_per_caption(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _on_shards(monkeypatch, CAPS)
    assert rec["cfg"].data.num_sample == 2
    metrics, info = R.retrieval_on_shards("M", rec["cfg"], "sh", tokenizer_dir="tok", device=CPU)
    data, shard_dir, tdir, max_len, rank, world, dev = rec["loader"]
    assert data.batch_size == 16 and data.num_sample == 1 and data.num_frames == 6 and rec["cfg"].data.batch_size == 64
    assert (shard_dir, tdir, max_len, rank, world, dev) == ("sh", "tok", 12, 0, 1, CPU)
    assert rec["caps_dir"] == "sh" and rec["tok"] == (["a dog", "a cat", "a dog"], "tok", 12)
    assert rec["eval"] == ("M", ["batches"], 3, [0, 1, 2], "ids", "mask",
                           {"device": CPU, "amp_dtype": None, "rerank_k": 128, "frame_scoring": "frame_mean"})
    assert rec["ld"].epochs == [0] and rec["ld"].closed
    assert metrics == {"t2v_r1": 1.0}
    assert info == {"shards": "sh", "videos": 3, "captions": 3, "rerank_k": 128, "frames": 6, "input_size": 96,
                    "eval_crop": "center", "frame_scoring": "frame_mean", "multi_video_gt": False}


def test_retrieval_on_shards_options_and_multi_video_gt(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _on_shards(monkeypatch, CAPS)
    metrics, info = R.retrieval_on_shards("M", rec["cfg"], "sh", tokenizer_dir="tok", device=CPU,
                                          amp_dtype=torch.bfloat16, rerank_k=4, batch_size=2,
                                          frame_scoring="pooled", multi_video_gt=True)
    assert rec["loader"][0].batch_size == 2
    assert rec["tok"][0] == ["a dog", "a cat"] and rec["eval"][3] == [[0, 2], [1]]
    assert rec["eval"][6] == {"device": CPU, "amp_dtype": torch.bfloat16, "rerank_k": 4, "frame_scoring": "pooled"}
    assert info["captions"] == 2 and info["rerank_k"] == 4 and info["frame_scoring"] == "pooled"
    assert info["multi_video_gt"] is True


def test_retrieval_on_shards_closes_its_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _on_shards(monkeypatch, CAPS, fail=True)
    with pytest.raises(ValueError, match="boom"):
        R.retrieval_on_shards("M", rec["cfg"], "sh", tokenizer_dir="tok", device=CPU)
    assert rec["ld"].closed


# ------------------------------------------------------------------------------------------------------ main
@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> dict:
    import umt.model.text
    from umt.config import config_from_dict

    rec: dict = {"metrics": {**_metrics([1, 3, 1, 1], [1, 4, 1]), **EMB}}

    def load(checkpoint, *, text_encoder=None, num_frames=None):  # noqa: ANN001, ANN202
        rec["load"] = (checkpoint, text_encoder, num_frames)
        if "load_error" in rec:
            raise rec["load_error"]
        rec["cfg"] = config_from_dict({"data": {"num_frames": 6}, "text": {"encoder": "run_bert"},
                                       "eval": {"multi_video_gt": rec.get("cfg_multi", False)}})
        return _Loaded(), rec["cfg"], {"step": 7}

    def shards(model, cfg, shard_dir, **kw):  # noqa: ANN001, ANN003, ANN202
        rec["shards"] = (model, cfg, shard_dir, kw)
        return dict(rec["metrics"]), {"shards": shard_dir, "videos": 3, "captions": 4}

    monkeypatch.setattr(R, "load_vision_text", load)
    monkeypatch.setattr(R, "retrieval_on_shards", shards)
    monkeypatch.setattr(umt.model.text, "resolve_text_dir", lambda name: f"resolved/{name}")
    return rec


def test_main_defaults_and_report(cli: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--out", str(out)]) == 0
    assert cli["load"] == ("ck.pt", None, None) and cli["cfg"].data.num_frames == 6
    model, cfg, shard_dir, kw = cli["shards"]
    assert isinstance(model, _Loaded) and cfg is cli["cfg"] and shard_dir == "sh"
    assert kw == {"tokenizer_dir": "resolved/run_bert", "device": CPU, "amp_dtype": None, "rerank_k": 128,
                  "batch_size": 16, "frame_scoring": "frame_mean", "multi_video_gt": False}
    doc = json.loads((out / "retrieval.json").read_text())
    assert doc == {"metrics": cli["metrics"], "shards": "sh", "videos": 3, "captions": 4, "checkpoint": "ck.pt",
                   "step": 7}
    assert (out / "retrieval.md").read_text().startswith("# Zero-shot retrieval: sh\n")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("text→video R@1 75.0 R@5 100.0 R@10 100.0 MdR 1; video→text R@1 66.7 R@5 100.0 "
                          "R@10 100.0 MdR 1 (dual encoder t2v R@1 75.0); 3 videos, 4 captions")
    assert printed[1:] == [f"wrote {out / 'retrieval.json'}", f"wrote {out / 'retrieval.md'}"]
    # a second run refuses the existing report before loading anything; --overwrite replaces it
    del cli["load"]
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--out", str(out)]) == 2
    assert "load" not in cli and capsys.readouterr().err.startswith("umt.eval retrieval: ")
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--out", str(out),
                   "--overwrite"]) == 0


def test_main_options(cli: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--text-encoder", "tdir", "--rerank-k", "0",
                   "--batch-size", "3", "--frame-scoring", "pooled", "--num-frames", "4", "--multi-video-gt"]) == 0
    assert cli["load"] == ("ck.pt", "tdir", 4) and cli["cfg"].data.num_frames == 4
    assert cli["shards"][3] == {"tokenizer_dir": "resolved/tdir", "device": CPU, "amp_dtype": None, "rerank_k": 0,
                                "batch_size": 3, "frame_scoring": "pooled", "multi_video_gt": True}
    assert list(tmp_path.iterdir()) == []


def test_main_dual_encoder_only_line_and_the_runs_multi_video_gt(cli: dict, capsys: pytest.CaptureFixture) -> None:
    cli["metrics"] = dict(EMB)
    cli["cfg_multi"] = True
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--rerank-k", "0"]) == 0
    assert cli["shards"][3]["multi_video_gt"] is True
    assert capsys.readouterr().out.splitlines() == ["dual encoder: text→video R@1 75.0, video→text R@1 66.7"]


def test_main_bad_checkpoint_exits_2_with_one_line(cli: dict, capsys: pytest.CaptureFixture) -> None:
    cli["load_error"] = ValueError("x.pt is not a stage-2 checkpoint\nsecond line")
    assert R.main(["--checkpoint", "x.pt", "--shards", "sh", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "umt.eval retrieval: x.pt is not a stage-2 checkpoint\n"


def test_load_vision_text_official_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from umt.model import official

    rec = {}
    sd = {"heads.proj.0.weight": torch.zeros(5, 3)}

    def build(cfg, teacher_dim, *, text_encoder=None, num_frames=None):  # noqa: ANN001, ANN202
        rec["build"] = (cfg, teacher_dim, text_encoder, num_frames)
        return _Loaded()

    def from_official(state, name):  # noqa: ANN001, ANN202
        rec["from"] = (state, name)
        return types.SimpleNamespace(model=sd, kind="fake_kind", frames=5)

    monkeypatch.setattr(R, "build_vision_text", build)
    monkeypatch.setattr(official, "is_official", lambda s: isinstance(s, dict) and "official" in s)
    monkeypatch.setattr(official, "from_official", from_official)
    monkeypatch.setitem(official.TASK_OF_KIND, "fake_kind", "video_text")
    monkeypatch.setattr(official, "config_overrides", lambda off: {"data": {"num_frames": off.frames}})
    path = tmp_path / "b16.pth"
    torch.save({"official": 1}, path)
    model, cfg, state = R.load_vision_text(path)
    assert rec["from"] == ({"official": 1}, str(path))
    assert state == {"model": sd, "task": "video_text", "config": {"data": {"num_frames": 5}}, "step": None}
    assert cfg.data.num_frames == 5 and rec["build"][1] == 5 and model.loaded == (sd, True)
    monkeypatch.setitem(official.TASK_OF_KIND, "fake_kind", "finetune")
    with pytest.raises(ValueError, match="not a stage-2"):
        R.load_vision_text(path)


def test_usage_names_the_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        R.main(["--shards", "s"])
    assert capsys.readouterr().err.startswith("usage: python -m umt.eval retrieval ")


@pytest.mark.parametrize("existing", ["retrieval.json", "retrieval.md"])
def test_main_refuses_either_report_file(cli: dict, tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("x")
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "load" not in cli and (tmp_path / existing).read_text() == "x"


def test_main_bf16_on_a_gpu(cli: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a (faked) CUDA device the evaluation runs under bf16 autocast; on the CPU in fp32 (above)."""
    import umt.eval.common
    from umt.eval.common import DistContext

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(umt.eval.common, "init_distributed", lambda device: DistContext(0, 1, gpu))
    monkeypatch.setattr(_Loaded, "to", lambda self, *a, **k: self)
    assert R.main(["--checkpoint", "ck.pt", "--shards", "sh"]) == 0
    assert cli["shards"][3]["amp_dtype"] == torch.bfloat16 and cli["shards"][3]["device"] == gpu


class _Long(torch.nn.Module):
    """2 videos (one-hot embeddings), 300 captions: caption j's embedding (1 − j/1000, j/1000); caption 128
    describes video 0, every other caption video 1. The match head: +5 on a true pair, −5 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[str, list[int]] = {"text": [], "match": []}

    def encode_vision(self, video: torch.Tensor, idx):  # noqa: ANN001, ANN201
        v = video[:, 0, 0, 0, 0].round().long()
        return v.float()[:, None, None], torch.nn.functional.one_hot(v, 2).float()

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        self.sizes["text"].append(ids.shape[0])
        j = ids[:, 0].float()
        return j[:, None, None], torch.stack([1 - j / 1000, j / 1000], 1)

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        self.sizes["match"].append(vt.shape[0])
        true = (tt[:, 0, 0] == 128) == (vt[:, 0, 0] == 0)
        s = true.float() * 10 - 5
        return torch.stack([-s, s], 1)


def test_evaluate_defaults_k128_and_batch_sizes() -> None:
    nt = 300
    gt = [0 if j == 128 else 1 for j in range(nt)]
    ids = torch.arange(nt)[:, None]
    batches = [{"video": torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1).expand(2, 3, 1, 1, 1).clone(),
                "index": torch.tensor([0, 1])}]
    m = _Long()
    got = evaluate_retrieval(m, batches, 2, gt, ids, torch.ones_like(ids), device=CPU)
    assert m.sizes["text"] == [256, 44]  # text_batch_size 256
    assert m.sizes["match"] == [128, 128, 44] * 2  # every caption ranks both videos: 300 pairs a video, 128 a batch
    # dual encoder: caption 128 ranks video 0 first (0.872 > 0.128); every other caption j < 500 prefers video 0
    # (1 − j/1000 > j/1000): rank 2. Video 0's caption 128 is 129th on its row (captions 0-127 score higher);
    # video 1's best caption (299, 0.299) beats caption 128 (0.128).
    want = _metrics([2] * 128 + [1] + [2] * 171, [129, 1], "emb_")
    # re-ranked, k = 128: caption 128 is outside video 0's own top 128 (captions 0-127), so its video→text score is
    # -100, tied by the 171 captions outside the top 128 and beaten by none: rank 1 + 299. With k = 129 it would be 1.
    want.update(_metrics([1] * nt, [300, 1]))
    assert got == pytest.approx(want)


def test_main_refuses_an_unknown_frame_scoring_at_parse_time(cli: dict) -> None:
    with pytest.raises(SystemExit):
        R.main(["--checkpoint", "ck.pt", "--shards", "sh", "--device", "cpu", "--frame-scoring", "max"])
    assert "load" not in cli


def test_device_choices_of_the_command_line() -> None:
    from umt.eval.retrieval import _parser

    base = ["--checkpoint", "c.pt", "--shards", "s"]
    for dev in ("auto", "cpu", "cuda"):
        assert _parser().parse_args([*base, "--device", dev]).device == dev
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--device", "tpu"])
