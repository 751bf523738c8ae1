"""VTM re-ranking (umt.eval.retrieval) where Nv < k < Nt: each direction's candidate count is clamped to its own
other side (text→video to the number of videos, video→text to the number of captions), and a pair that only one
direction ranks is scored in that direction only. Similarities are tie-free, so no outcome depends on how topk
breaks ties."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from umt.eval.retrieval import NOT_CANDIDATE, evaluate_retrieval, rerank_scores

# dual-encoder similarity of 3 videos (rows) to 7 captions (columns), all 21 values distinct
SIM = torch.tensor([[0.90, 0.10, 0.80, 0.20, 0.70, 0.30, 0.60],
                    [0.05, 0.95, 0.15, 0.85, 0.25, 0.75, 0.35],
                    [0.50, 0.45, 0.40, 0.55, 0.12, 0.65, 0.02]])


class _Scorer(torch.nn.Module):
    """Video v's tokens hold v, caption c's tokens hold c; the match logit of (v, c) is 10·v + c + 1 (> 0, unique)."""

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        s = 10 * vt[:, 0, 0] + tt[:, 0, 0] + 1
        return torch.stack([-s, s], 1)


def _rerank(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    nv, nt = SIM.shape
    vtok = torch.arange(nv, dtype=torch.float32).view(nv, 1, 1).expand(nv, 2, 3).clone()
    ttok = torch.arange(nt, dtype=torch.float32).view(nt, 1, 1).expand(nt, 4, 3).clone()
    return rerank_scores(_Scorer(), SIM, torch.arange(nv), vtok, ttok, torch.ones(nt, 4, dtype=torch.long), k=k,
                         device=torch.device("cpu"), batch_size=2)


def _expect(sets: dict[int, set[int]], rows: int, cols: int, score) -> torch.Tensor:  # noqa: ANN001
    want = torch.full((rows, cols), NOT_CANDIDATE)
    for r, cs in sets.items():
        for c in cs:
            want[r, c] = score(r, c)
    return want


def test_k_between_videos_and_captions_clamps_each_direction_to_its_own_side() -> None:
    v2t, t2v = _rerank(k=5)  # Nv = 3 < k = 5 < Nt = 7
    # each video's top 5 captions, read off SIM by hand (its two smallest are left out)
    top5 = {0: {0, 2, 4, 6, 5}, 1: {1, 3, 5, 6, 4}, 2: {5, 3, 0, 1, 2}}
    torch.testing.assert_close(v2t, _expect(top5, 3, 7, lambda v, c: 10 * v + c + 1), rtol=0, atol=0)
    # each caption ranks all 3 videos (k clamped to Nv, not to Nt, and not an error)
    all3 = {c: {0, 1, 2} for c in range(7)}
    torch.testing.assert_close(t2v, _expect(all3, 7, 3, lambda c, v: 10 * v + c + 1), rtol=0, atol=0)


def test_pairs_only_one_side_ranks_score_in_that_direction_only() -> None:
    v2t, t2v = _rerank(k=2)
    # by hand: each video's top 2 captions; each caption's top 2 videos (column of SIM)
    v_top = {0: {0, 2}, 1: {1, 3}, 2: {5, 3}}
    c_top = {0: {0, 2}, 1: {1, 2}, 2: {0, 2}, 3: {1, 2}, 4: {0, 1}, 5: {1, 2}, 6: {0, 1}}
    torch.testing.assert_close(v2t, _expect(v_top, 3, 7, lambda v, c: 10 * v + c + 1), rtol=0, atol=0)
    torch.testing.assert_close(t2v, _expect(c_top, 7, 3, lambda c, v: 10 * v + c + 1), rtol=0, atol=0)
    # e.g. (video 0, caption 4): caption 4 ranks video 0, video 0 does not rank caption 4
    assert t2v[4, 0] == 1 + 4 and v2t[0, 4] == NOT_CANDIDATE


class _Misled(torch.nn.Module):
    """3 videos; caption c describes video c % 3 and its dual embedding points at video (c + 1) % 3; the match head
    knows the truth (+5 for the true pair, −5 otherwise)."""

    def encode_vision(self, video: torch.Tensor, idx: torch.Tensor | None):  # noqa: ANN201
        v = video[:, 0, 0, 0, 0].round().long()
        tok = F.one_hot(v, 3).float()[:, None, :]  # [B, 1, 3]
        return tok, F.normalize(tok[:, 0] + 0.01, dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        true = ids[:, 1]
        emb = F.normalize(F.one_hot((true + 1) % 3, 3).float() + 0.01, dim=-1)
        return F.one_hot(true, 3).float()[:, None, :].expand(-1, ids.shape[1], -1), emb

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        same = (vt[:, 0].argmax(-1) == tt[:, 0].argmax(-1)).float() * 10 - 5
        return torch.stack([-same, same], 1)


def test_official_k128_on_3_videos_and_130_captions() -> None:
    nt = 130
    true = [c % 3 for c in range(nt)]
    batches = [{"video": torch.full((3, 3, 1, 2, 2), float(v)), "index": torch.tensor([v, -1, -1])}
               for v in range(3)]
    for b in batches:
        b["video"][1:] = 0.0
    ids = torch.tensor([[101, t] for t in true])
    m = evaluate_retrieval(_Misled(), batches, 3, true, ids, torch.ones_like(ids), device=torch.device("cpu"),
                           rerank_k=128)
    assert m["emb_t2v_r1"] == 0.0  # the dual encoder always picks the wrong video
    assert m["t2v_r1"] == 100.0  # every caption re-ranks all 3 videos (k clamped to Nv)
    assert m["v2t_r1"] == 100.0  # each video re-ranks 128 of 130 captions: ≥ 41 of its 43+ true ones among them
