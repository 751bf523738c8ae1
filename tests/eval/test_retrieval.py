"""Zero-shot retrieval pipeline (umt.eval.retrieval) with a model whose right answers are known: the dual encoder is
misled by design, the match head knows the truth, so re-ranking inside the top k recovers exactly the pairs the
protocol says it can; two gloo ranks holding disjoint, uneven shares of the videos give the single process's result.

Run as a script by torchrun for the worker side (``tests/eval/test_retrieval.py OUT``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.train_utils import torchrun
from umt.eval.common import CountError

NV = 5
# caption c describes video TRUE[c]; its text embedding points at DECOY[c] (the dual encoder's guess)
TRUE = [0, 0, 1, 2, 3, 4, 4]
DECOY = [0, 1, 1, 0, 3, 2, 4]


class _Known(torch.nn.Module):
    """Video v: tokens [1, NV] one-hot of v; caption: ids [CLS, decoy, true]; the dual embedding is the decoy's
    one-hot, and the match logit is +5 exactly for the true pair."""

    def encode_vision(self, video: torch.Tensor, idx: torch.Tensor | None):  # noqa: ANN201
        v = video[:, 0, 0, 0, 0].round().long()  # [B] the clip encodes its video id in its pixels
        tok = F.one_hot(v, NV).float()[:, None, :]  # [B, 1, NV]
        return tok, F.normalize(tok[:, 0] + 0.01, dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        emb = F.one_hot(ids[:, 1], NV).float()
        return F.one_hot(ids.clamp(max=NV - 1), NV).float(), F.normalize(emb + 0.01, dim=-1)  # [Nt, L, NV]

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        same = (vt[:, 0].argmax(-1) == tt[:, 2].argmax(-1)).float() * 10 - 5  # [b]
        return torch.stack([-same, same], 1)


def _inputs(videos: list[int]):  # noqa: ANN202
    batches = []
    for s in range(0, len(videos), 2):  # batches of 2, the last padded with index -1
        ids = videos[s:s + 2]
        pad = [-1] * (2 - len(ids))
        v = torch.tensor([float(max(i, 0)) for i in ids + pad]).view(-1, 1, 1, 1, 1).expand(-1, 3, 1, 2, 2)
        batches.append({"video": v.clone(), "index": torch.tensor(ids + pad)})
    ids = torch.tensor([[101, d, t] for d, t in zip(DECOY, TRUE)])
    return batches, ids, torch.ones_like(ids)


def _run(videos: list[int], k: int) -> dict[str, float]:
    from umt.eval.retrieval import evaluate_retrieval

    batches, ids, mask = _inputs(videos)
    return evaluate_retrieval(_Known(), batches, NV, TRUE, ids, mask, device=torch.device("cpu"), rerank_k=k)


def test_dual_encoder_misled_and_reranking_recovers() -> None:
    m = _run(list(range(NV)), k=len(TRUE))  # k = Nt: every pair is a candidate both ways, so no top-k tie decides
    # dual encoder: captions 1, 3 and 5 point at the wrong video → 4 of 7 right
    assert m["emb_t2v_r1"] == pytest.approx(400 / 7)
    assert m["t2v_r1"] == 100.0 and m["v2t_r1"] == 100.0 and m["r_mean"] == 100.0
    # k=1: only the dual encoder's top-1 is re-scored; a wrong top-1 stays wrong (its match logit is −5, but
    # every other video is a non-candidate at −100)
    m1 = _run(list(range(NV)), k=1)
    assert m1["t2v_r1"] == pytest.approx(400 / 7)


def test_a_missing_or_repeated_video_is_an_error() -> None:
    with pytest.raises(CountError, match="not counted exactly once"):
        _run([0, 1, 2, 3], k=2)
    with pytest.raises(CountError, match="not counted exactly once"):
        _run([0, 1, 2, 3, 4, 4], k=2)


@pytest.mark.dist
def test_two_ranks_equal_one(tmp_path: Path) -> None:
    res = torchrun([str(Path(__file__).resolve()), str(tmp_path)], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    single = _run(list(range(NV)), k=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(single), rank


def _worker(out: Path) -> None:
    import torch.distributed as dist

    from umt.train.runtime import close_process_group

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    share = [[4, 0, 2], [1, 3]][rank]  # disjoint, uneven, out of order
    m = _run(share, k=2)
    (out / f"rank{rank}.json").write_text(json.dumps(m))
    close_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
