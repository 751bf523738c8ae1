"""Retrieval metrics (umt.eval.retrieval_metrics) against a hand-worked example with multi-caption ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from umt.eval.retrieval_metrics import retrieval_metrics, retrieval_ranks

# 3 videos, 4 captions: video 0 has captions 0 and 1 (MSVD-style), video 1 caption 2, video 2 caption 3
S = np.array([[0.9, 0.1, 0.5, 0.2],
              [0.3, 0.2, 0.4, 0.8],
              [0.1, 0.7, 0.6, 0.95]])
GT = [0, 0, 1, 2]


def test_hand_worked_ranks_and_metrics() -> None:
    # text→video: caption 0 → v0 first; caption 1 scores v2 0.7, v1 0.2 over v0 0.1 → 3rd; caption 2: v2 0.6 and
    # v0 0.5 beat v1 0.4 → 3rd; caption 3 → v2 first.  video→text: v0's best own caption (0.9) beats all others
    # → 1st; v1's 0.4 is beaten by caption 3 (0.8) → 2nd; v2's 0.95 → 1st.
    t2v, v2t = retrieval_ranks(S, GT)
    assert t2v.tolist() == [1, 3, 3, 1] and v2t.tolist() == [1, 2, 1]
    m = retrieval_metrics(S, GT)
    assert m["t2v_r1"] == 50.0 and m["t2v_r5"] == 100.0 and m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 2.0
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_medr"] == 1.0 and m["v2t_meanr"] == pytest.approx(4 / 3)
    assert m["r_mean"] == pytest.approx((50 + 100 + 100 + 200 / 3 + 100 + 100) / 6)


def test_ties_count_against_the_ground_truth() -> None:
    flat = np.zeros((3, 4))
    t2v, v2t = retrieval_ranks(flat, GT)
    assert t2v.tolist() == [3, 3, 3, 3]  # last among 3 equal videos
    assert v2t.tolist() == [3, 4, 4]  # behind every other video's caption, not behind its own second caption
    assert retrieval_metrics(flat, GT)["t2v_r1"] == 0.0


def test_separate_directions_and_errors() -> None:
    t2v_scores = np.eye(3)[GT]  # [4, 3]: every caption retrieves its own video first
    t2v, v2t = retrieval_ranks(S, GT, t2v_scores)
    assert t2v.tolist() == [1, 1, 1, 1] and v2t.tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="without a caption"):
        retrieval_ranks(S, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="do not match"):
        retrieval_ranks(S, [0, 1, 2])
