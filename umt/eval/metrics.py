"""Classification metrics on host arrays (numpy; torch tensors are converted): top-k accuracy, mean per-class
accuracy, confusion matrix. Pure functions, no I/O.

Conventions (as the official UMT/VideoMAE evaluation, ``engines/engine_for_finetuning.py``: ``merge`` /
``compute_video``): a sample is top-k correct when its label is among the k highest scores; accuracies are fractions
in [0, 1] here (the reports print percent). Mean per-class accuracy averages the per-class recall over the classes
**present in the labels** (a class with no evaluation sample has no recall; equal to scikit-learn's
``balanced_accuracy_score``). The confusion matrix has true classes as rows and predicted classes as columns
(scikit-learn's ``confusion_matrix``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_numpy", "check_labels", "topk_accuracy", "per_class_accuracy", "mean_class_accuracy",
           "confusion_matrix", "classification_summary"]


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device, or a sequence)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def check_labels(labels: Any, num_classes: int) -> np.ndarray:
    """``labels`` as int64 ``[N]``, checked to lie in ``[0, num_classes)``.

    Raises:
        ValueError: not 1-D, or a label outside ``[0, num_classes)`` (e.g. -1, an unlabelled sample).
    """
    y = as_numpy(labels).astype(np.int64, copy=False)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {y.shape}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {y.size} labels outside [0, {num_classes}) (first: "
                         f"{int(y[bad][0])}; -1 is an unlabelled sample)")
    return y


def _scores(scores: Any, n: int) -> np.ndarray:
    s = as_numpy(scores)
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"scores must be [N={n}, num_classes], got shape {s.shape}")
    return s


def topk_accuracy(scores: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the ``k`` highest scores, for each ``k`` in ``ks``.

    Args:
        scores: ``[N, C]`` class scores (logits, probabilities or votes; any monotone score).
        labels: int ``[N]`` in ``[0, C)``.
        ks: the k values; a k above C counts every sample correct (the label is always among all C classes).

    Returns:
        ``{k: fraction in [0, 1]}``. Ties are broken towards the lower class index (a stable descending sort).

    Raises:
        ValueError: bad shapes, ``k < 1``, labels outside ``[0, C)`` or N = 0.
    """
    y = as_numpy(labels).astype(np.int64, copy=False)
    s = _scores(scores, y.shape[0])
    check_labels(y, s.shape[1])
    if y.size == 0:
        raise ValueError("no samples to score")
    # rank of the label's score: how many classes beat it (strictly higher, or equal with a lower index);
    # in row blocks so the [rows, C] comparison stays small for large evaluation sets
    cls = np.arange(s.shape[1])[None, :]  # [1, C]
    rank = np.empty(y.size, np.int64)
    for a in range(0, y.size, 4096):
        sb, yb = s[a:a + 4096], y[a:a + 4096]
        own = sb[np.arange(yb.size), yb][:, None]  # [b, 1]
        rank[a:a + 4096] = ((sb > own) | ((sb == own) & (cls < yb[:, None]))).sum(1)  # [b]
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        out[int(k)] = float((rank < k).mean())
    return out


def confusion_matrix(pred: Any, labels: Any, num_classes: int) -> np.ndarray:
    """int64 ``[C, C]``: entry ``(i, j)`` counts samples of true class i predicted as class j.

    Raises:
        ValueError: shapes differ, or a label or prediction outside ``[0, num_classes)``.
    """
    y = check_labels(labels, num_classes)
    p = as_numpy(pred).astype(np.int64, copy=False)
    if p.shape != y.shape:
        raise ValueError(f"pred {p.shape} and labels {y.shape} differ in shape")
    if ((p < 0) | (p >= num_classes)).any():
        raise ValueError(f"predictions outside [0, {num_classes})")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """float64 ``[C]``: recall of each class (diagonal / row sum); NaN for classes with no sample."""
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def mean_class_accuracy(pred: Any, labels: Any, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of the per-class recall (scikit-learn's
    ``balanced_accuracy_score``); in [0, 1].

    Raises:
        ValueError: as :func:`confusion_matrix`, or no samples.
    """
    acc = per_class_accuracy(confusion_matrix(pred, labels, num_classes))
    if np.isnan(acc).all():
        raise ValueError("no samples to score")
    return float(np.nanmean(acc))


def classification_summary(scores: Any, labels: Any, *, ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Everything a report needs from ``scores [N, C]`` and ``labels [N]``.

    Returns:
        ``{"top1": %, "top5": %, "mean_class_acc": %, "num_samples": N, "pred": int64 [N], "confusion":
        int64 [C, C], "per_class": float64 [C] (fractions, NaN where a class has no sample)}``; accuracies in
        percent (0-100), as the paper reports them. The prediction is the arg-max (lowest index on ties).

    Raises:
        ValueError: as :func:`topk_accuracy`.
    """
    y = as_numpy(labels).astype(np.int64, copy=False)
    s = _scores(scores, y.shape[0])
    c = s.shape[1]
    top = topk_accuracy(s, y, ks)
    pred = s.argmax(1).astype(np.int64)  # [N]; argmax returns the first maximum, as the tie rule above
    cm = confusion_matrix(pred, y, c)
    per = per_class_accuracy(cm)
    out: dict[str, Any] = {f"top{k}": 100.0 * v for k, v in top.items()}
    out.update(mean_class_acc=100.0 * float(np.nanmean(per)), num_samples=int(y.size), pred=pred, confusion=cm,
               per_class=per)
    return out
