"""Multiple choice (``python -m umt.eval mc``): the official 0.7 · match probability + 0.3 · similarity softmax,
checked by hand on two questions where the match head and the similarity disagree (ranking by either alone gets one
of the two wrong), and the command end to end on the tiny stage-2 checkpoint with a set built from captions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.eval.test_score import ckpt, clips  # noqa: F401 - shared fixtures

LN9 = math.log(9.0)
#: option code → mean frame-caption similarity (temperature 1) and → match logit (the "no" logit is 0)
SIM = [0.0, LN9, 0.0, math.log(7 / 3)]
MATCH = [math.log(1.5), 0.0, LN9, -LN9]


class _Known(torch.nn.Module):
    """One-dimensional embeddings: every frame is 1, option c's caption embedding is SIM[c]; the match head reads
    the option code from the caption's second token."""

    temperature = torch.tensor(1.0)

    def encode_vision_frames(self, video: torch.Tensor):  # noqa: ANN201
        b, t = video.shape[0], video.shape[2]
        return torch.zeros(b, 3, 1), torch.ones(b, t, 1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        return ids.float()[..., None], torch.tensor(SIM)[ids[:, 1]][:, None]

    def match_logits(self, vt: torch.Tensor, tt: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
        yes = torch.tensor(MATCH)[tt[:, 1, 0].long()]
        return torch.stack([torch.zeros_like(yes), yes], 1)


def test_official_weighting_by_hand() -> None:
    from umt.eval.mc import mc_scores

    ids = torch.tensor([[101, 0], [101, 1], [101, 2], [101, 3]])  # question 0: options 0, 1; question 1: 2, 3
    out = mc_scores(_Known(), torch.zeros(2, 3, 2, 4, 4), ids, torch.ones_like(ids), 2, device=torch.device("cpu"))
    # question 0: match (0.6, 0.5), sim softmax(0, ln 9) = (0.1, 0.9) → 0.42 + 0.03, 0.35 + 0.27
    # question 1: match (0.9, 0.1), sim softmax(0, ln 7/3) = (0.3, 0.7) → 0.63 + 0.09, 0.07 + 0.21
    torch.testing.assert_close(out["match"], torch.tensor([[0.6, 0.5], [0.9, 0.1]]))
    torch.testing.assert_close(out["sim"], torch.tensor([[0.1, 0.9], [0.3, 0.7]]))
    torch.testing.assert_close(out["score"], torch.tensor([[0.45, 0.62], [0.72, 0.28]]))
    assert out["score"].argmax(1).tolist() == [1, 0]  # the right answers
    assert out["match"].argmax(1).tolist() == [0, 0] and out["sim"].argmax(1).tolist() == [1, 1]  # one wrong each


def test_questions_from_annotations_and_validation(tmp_path: Path) -> None:
    from umt.eval.mc import read_questions

    rows = [{"video": f"v{i}.mp4", "caption": [f"cap {i}", "other"]} for i in range(6)]
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    qs = read_questions(tmp_path / "ann.jsonl", num_options=5, seed=3)
    assert len(qs) == 6 and qs == read_questions(tmp_path / "ann.jsonl", num_options=5, seed=3)
    for i, q in enumerate(qs):
        assert len(q["caption"]) == 5 and q["caption"][q["answer"]] == f"cap {i}"
        assert len(set(q["caption"])) == 5
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "a", "caption": ["x", "y"], "answer": 2}]))
    with pytest.raises(ValueError, match="row 1: needs video"):
        read_questions(tmp_path / "bad.json")


def test_cli_end_to_end(ckpt: Path, clips: Path, tiny_bert: str, tmp_path: Path,  # noqa: F811
                        capsys: pytest.CaptureFixture) -> None:
    from umt.eval.__main__ import main

    q = tmp_path / "q.json"
    q.write_text(json.dumps([{"video": "a.mp4", "caption": ["x", "y", "z"], "answer": 2},
                             {"video": "b.mp4", "caption": ["p", "q", "r"], "answer": 0}]))
    args = ["mc", "--checkpoint", str(ckpt), "--videos", str(clips), "--questions", str(q), "--text-encoder",
            tiny_bert, "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(args) == 0
    rep = json.loads((tmp_path / "o" / "mc.json").read_text())
    # the checkpoint's match head is constant and the similarity term decides; each prediction is its argmax
    assert rep["metrics"]["questions"] == 2 and rep["options"] == 3
    for p in rep["predictions"]:
        assert p["pred"] == max(range(3), key=lambda j: p["scores"][j])
    assert "MC accuracy" in capsys.readouterr().out and "| similarity only |" in (tmp_path / "o" / "mc.md").read_text()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
