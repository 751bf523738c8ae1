"""Retrieval metrics from a score matrix with multi-caption ground truth (MSRVTT/MSVD/DiDeMo protocol).

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
        txt2vid: int [Nt] the video each text describes (every video needs at least one text).
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
    gt = np.asarray(txt2vid, np.int64)
    if gt.shape != (nt,) or t2v.shape != (nt, nv):
        raise ValueError(f"scores {s.shape} / {t2v.shape} do not match {gt.shape[0]} texts")
    if gt.min(initial=0) < 0 or gt.max(initial=0) >= nv:
        raise ValueError(f"txt2vid must index the {nv} videos")
    counts = np.bincount(gt, minlength=nv)
    if (counts == 0).any():
        raise ValueError(f"videos without a caption: {np.flatnonzero(counts == 0)[:5].tolist()}")
    # text → video: how many videos score at least as high as the ground truth (itself included)
    g = t2v[np.arange(nt), gt]  # [Nt]
    t2v_ranks = (t2v >= g[:, None]).sum(1)  # [Nt], >= 1
    # video → text: the best ground-truth caption, ranked among the other videos' captions (ties against it)
    own = gt[None, :] == np.arange(nv)[:, None]  # [Nv, Nt]
    best = np.where(own, s, -np.inf).max(1)  # [Nv]
    v2t_ranks = 1 + ((s >= best[:, None]) & ~own).sum(1)  # [Nv]
    return t2v_ranks.astype(np.int64), v2t_ranks.astype(np.int64)


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
