"""Retrieval metrics from a score matrix with multi-caption ground truth (MSRVTT/MSVD/DiDeMo protocol), or
multi-video ground truth (SSv2-label/-template: one text, several matching videos).

Pure numpy. Ranks are 1-based; ties are broken against the ground truth (a model that scores everything alike
ranks every ground truth last among its ties, never first), and in video→text the item's other captions do not
count against it (the rank is that of its best-scored caption among the non-matching captions), as the official
``itm_eval`` (ALBEF → Singularity → UMT ``retrieval_utils.py``) takes the best of the ground-truth captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["retrieval_ranks", "retrieval_metrics", "RECALL_AT"]

#: the recalls reported (R@1, R@5, R@10)
RECALL_AT = (1, 5, 10)


def retrieval_ranks(scores_v2t: np.ndarray, txt2vid: Sequence[int] | np.ndarray,
                    scores_t2v: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the ground truth, per text query (text→video) and per video query (video→text).

    Args:
        scores_v2t: float [Nv, Nt] video→text scores (higher is better).
        txt2vid: int [Nt] the video each text describes (every video needs at least one text), or per text a
            sequence of the videos it describes (official ``has_multi_vision_gt``, SSv2: a text's rank is that of its
            best-ranked ground-truth video, the other ground-truth videos do not count against it).
        scores_t2v: float [Nt, Nv] text→video scores when they differ from ``scores_v2t.T`` (VTM re-ranking fills
            each direction's own top-k); default the transpose.

    Returns:
        ``(t2v_ranks int64 [Nt], v2t_ranks int64 [Nv])``.

    Raises:
        ValueError: shapes disagree, or a video has no text.
    """
    s = np.asarray(scores_v2t, np.float64)
    nv, nt = s.shape
    t2v = np.asarray(s.T if scores_t2v is None else scores_t2v, np.float64)
    own = _ground_truth(txt2vid, nv)  # [Nv, Nt]: video v is a ground truth of text j
    if own.shape[1] != nt or t2v.shape != (nt, nv):
        raise ValueError(f"scores {s.shape} / {t2v.shape} do not match {own.shape[1]} texts")
    counts = own.sum(1)
    if (counts == 0).any():
        raise ValueError(f"videos without a caption: {np.flatnonzero(counts == 0)[:5].tolist()}")
    # text → video: the best ground-truth video, ranked among the videos that are not (ties against it)
    best_v = np.where(own.T, t2v, -np.inf).max(1)  # [Nt]
    t2v_ranks = 1 + ((t2v >= best_v[:, None]) & ~own.T).sum(1)  # [Nt], >= 1
    # video → text: the best ground-truth caption, ranked among the other videos' captions (ties against it)
    best = np.where(own, s, -np.inf).max(1)  # [Nv]
    v2t_ranks = 1 + ((s >= best[:, None]) & ~own).sum(1)  # [Nv]
    return t2v_ranks.astype(np.int64), v2t_ranks.astype(np.int64)


def _ground_truth(txt2vid: Sequence[int] | Sequence[Sequence[int]] | np.ndarray, nv: int) -> np.ndarray:
    """bool ``[Nv, Nt]``: ``txt2vid`` (one video per text, or a sequence of videos per text) as a matrix.

    Raises:
        ValueError: an index outside the ``nv`` videos, or a text without a video.
    """
    multi = len(txt2vid) > 0 and not np.isscalar(txt2vid[0]) and np.ndim(txt2vid[0]) > 0
    rows = [np.asarray(v, np.int64).reshape(-1) for v in txt2vid] if multi else \
        [np.asarray([v], np.int64) for v in np.asarray(txt2vid, np.int64).reshape(-1)]
    own = np.zeros((nv, len(rows)), bool)
    for j, vids in enumerate(rows):
        if vids.size == 0 or vids.min() < 0 or vids.max() >= nv:
            raise ValueError(f"txt2vid must index the {nv} videos (text {j}: {vids.tolist()})")
        own[vids, j] = True
    return own


def retrieval_metrics(scores_v2t: np.ndarray, txt2vid: Sequence[int] | np.ndarray,
                      scores_t2v: np.ndarray | None = None) -> dict[str, float]:
    """R@1/5/10 (percent), median and mean rank in both directions, and ``r_mean`` (the mean of the six recalls, the
    official model-selection key).

    Returns:
        ``{"t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr", "v2t_r1", ..., "v2t_meanr", "r_mean"}``.

    Raises:
        ValueError: see :func:`retrieval_ranks`.
    """
    t2v, v2t = retrieval_ranks(scores_v2t, txt2vid, scores_t2v)
    out: dict[str, float] = {}
    for name, ranks in (("t2v", t2v), ("v2t", v2t)):
        for k in RECALL_AT:
            out[f"{name}_r{k}"] = float(100.0 * (ranks <= k).mean())
        out[f"{name}_medr"] = float(np.median(ranks))
        out[f"{name}_meanr"] = float(ranks.mean())
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in RECALL_AT]))
    return out
