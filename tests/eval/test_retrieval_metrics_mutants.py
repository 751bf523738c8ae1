"""Retrieval metrics (umt.eval.retrieval_metrics): the cases the mutation run found untested (range checks at their
exact bounds, a single video, an empty caption list, the rank dtype, ``scores_t2v`` through ``retrieval_metrics``).
Expected values are worked by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from umt.eval.retrieval_metrics import retrieval_metrics, retrieval_ranks

# 3 videos, 4 captions: video 0 has captions 0 and 1, video 1 caption 2, video 2 caption 3 (as test_retrieval_metrics)
S = np.array([[0.9, 0.1, 0.5, 0.2],
              [0.3, 0.2, 0.4, 0.8],
              [0.1, 0.7, 0.6, 0.95]])
GT = [0, 0, 1, 2]


@pytest.mark.parametrize("bad", [[0, 0, 1, 3], [0, 0, 1, 7], [0, -1, 1, 2]])
def test_out_of_range_video_index_is_a_value_error(bad: list[int]) -> None:
    # 3 is exactly Nv (one past the last video), 7 far past it, -1 negative: each alone must be refused by the range
    # check (not an IndexError from the gather, nor numpy's bincount message)
    with pytest.raises(ValueError, match="must index the 3 videos"):
        retrieval_ranks(S, bad)


def test_a_single_video_with_all_the_captions() -> None:
    # one video, two captions: both captions' only candidate is video 0 → rank 1; the video's best own caption has
    # no other caption to lose to → rank 1
    t2v, v2t = retrieval_ranks(np.array([[0.2, 0.7]]), [0, 0])
    assert t2v.tolist() == [1, 1] and v2t.tolist() == [1]
    assert retrieval_metrics(np.array([[0.2, 0.7]]), [0, 0])["r_mean"] == 100.0


def test_no_captions_at_all_is_the_missing_caption_error() -> None:
    # 1 video, 0 captions: the range check passes on the empty index (min/max with their initial 0) and the video is
    # reported as uncaptioned
    with pytest.raises(ValueError, match="without a caption"):
        retrieval_ranks(np.zeros((1, 0)), [])


def test_ranks_are_int64() -> None:
    t2v, v2t = retrieval_ranks(S.astype(np.float32), np.asarray(GT, np.int32))
    assert t2v.dtype == np.int64 and v2t.dtype == np.int64
    assert t2v.tolist() == [1, 3, 3, 1] and v2t.tolist() == [1, 2, 1]


def test_retrieval_metrics_uses_the_text_to_video_scores_it_is_given() -> None:
    # with the re-ranked t2v matrix every caption finds its video first → t2v R@1 = 100 (with S.T it is 50, see
    # test_retrieval_metrics); video→text still from S: ranks [1, 2, 1] → R@1 = 200/3
    m = retrieval_metrics(S, GT, np.eye(3)[GT])
    assert m["t2v_r1"] == 100.0 and m["t2v_meanr"] == 1.0 and m["t2v_medr"] == 1.0
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_meanr"] == pytest.approx(4 / 3)
    assert m["r_mean"] == pytest.approx((100 + 100 + 100 + 200 / 3 + 100 + 100) / 6)
