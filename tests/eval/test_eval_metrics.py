"""Classification metrics (top-1/top-5 and per-class accuracy on a hand-worked example) and the
k-NN / linear probes on hand-made features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from umt.eval.metrics import (classification_summary, confusion_matrix, mean_class_accuracy, per_class_accuracy,
                              topk_accuracy)
from umt.eval.probe import knn_classify, knn_predict, linear_probe

# Six samples, four classes, worked by hand (ties go to the lower class index):
#   sample  scores                label  arg-max  rank of the label (classes ahead of it)
#   0       .1 .5 .3 .1           1      1        0
#   1       .6 .2 .1 .1           2      0        2 (0 and 1 ahead; 3 ties but has a higher index)
#   2       .2 .2 .5 .1           0      2        1 (2 ahead; 1 ties with a higher index)
#   3       .1 .1 .1 .7           3      3        0
#   4       .3 .3 .2 .2           1      0        1 (0 ties with a lower index)
#   5       .0 .1 .2 .7           0      3        3
SCORES = np.array([[.1, .5, .3, .1], [.6, .2, .1, .1], [.2, .2, .5, .1], [.1, .1, .1, .7], [.3, .3, .2, .2],
                   [.0, .1, .2, .7]])
LABELS = np.array([1, 2, 0, 3, 1, 0])
# rows = true class, columns = predicted
CONFUSION = np.array([[0, 0, 1, 1],   # class 0: samples 2 (→2), 5 (→3)
                      [1, 1, 0, 0],   # class 1: samples 0 (→1), 4 (→0)
                      [1, 0, 0, 0],   # class 2: sample 1 (→0)
                      [0, 0, 0, 1]])  # class 3: sample 3 (→3)


def test_topk_hand_worked() -> None:
    acc = topk_accuracy(SCORES, LABELS, ks=(1, 2, 3, 4, 5))
    assert acc == {1: 2 / 6, 2: 4 / 6, 3: 5 / 6, 4: 1.0, 5: 1.0}  # k > C counts every sample


def test_confusion_and_per_class_hand_worked() -> None:
    pred = SCORES.argmax(1)
    cm = confusion_matrix(pred, LABELS, 4)
    np.testing.assert_array_equal(cm, CONFUSION)
    np.testing.assert_allclose(per_class_accuracy(cm), [0 / 2, 1 / 2, 0 / 1, 1 / 1])
    assert mean_class_accuracy(pred, LABELS, 4) == pytest.approx((0 + 0.5 + 0 + 1) / 4)


def test_mean_class_counts_only_classes_present() -> None:
    # a fifth class that no evaluation sample has: no recall for it, the mean stays over the four present
    scores = np.concatenate([SCORES, np.full((6, 1), -1.0)], 1)
    s = classification_summary(scores, LABELS)
    assert s["mean_class_acc"] == pytest.approx(37.5) and math.isnan(s["per_class"][4])
    assert s["top1"] == pytest.approx(100 * 2 / 6) and s["top5"] == pytest.approx(100.0)
    np.testing.assert_array_equal(s["confusion"][:4, :4], CONFUSION)
    assert s["confusion"][4].sum() == 0 and s["confusion"][:, 4].sum() == 0


def test_metrics_equal_scikit_learn() -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    scores = rng.random((5000, 7))  # no ties; more rows than one block of topk_accuracy
    labels = rng.integers(0, 6, 5000)  # class 6 never a label
    pred = scores.argmax(1)
    np.testing.assert_array_equal(confusion_matrix(pred, labels, 7),
                                  skm.confusion_matrix(labels, pred, labels=list(range(7))))
    with pytest.warns(UserWarning):  # sklearn warns about the class predicted but absent from the labels
        bal = skm.balanced_accuracy_score(labels, pred)
    assert mean_class_accuracy(pred, labels, 7) == pytest.approx(bal)
    for k in (1, 3, 5):
        assert topk_accuracy(scores, labels, ks=(k,))[k] == pytest.approx(
            skm.top_k_accuracy_score(labels, scores, k=k, labels=list(range(7))))


def test_metrics_reject_bad_labels() -> None:
    with pytest.raises(ValueError, match="outside"):
        topk_accuracy(SCORES, np.array([1, 2, 0, 3, 1, -1]))  # an unlabelled sample
    with pytest.raises(ValueError, match="scores must be"):
        topk_accuracy(SCORES[:5], LABELS)


# ------------------------------------------------------------------------------------------------------ probes
def _separable(n_per: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around orthogonal directions (cosine within a class ≈ 1, across ≈ 0)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes] * 5
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + 0.1 * rng.standard_normal((y.size, dim)), y


def test_knn_separable_is_100_percent() -> None:
    x_tr, y_tr = _separable(30, 5, 16, 0)
    x_te, y_te = _separable(10, 5, 16, 1)
    res = knn_classify(x_tr, y_tr, x_te, y_te, k=20, temperature=0.07)
    assert res["knn_top1"] == 100.0 and res["knn_mean_class_acc"] == 100.0


def test_knn_votes_hand_computed() -> None:
    # bank on the unit circle at 0°, 60°, 90°, 180°; labels 0, 1, 1, 2; the query at 0°, k = 3, T = 0.5:
    # neighbours cos = 1 (class 0), 0.5 (class 1), 0 (class 1) → votes e^2, e^1 + e^0, 0
    ang = np.deg2rad([0, 60, 90, 180])
    bank = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[1.0], [3.0], [0.5], [2.0]])  # scale is irrelevant
    scores = knn_predict(bank, np.array([0, 1, 1, 2]), np.array([[2.0, 0.0]]), num_classes=3, k=3, temperature=0.5)
    torch.testing.assert_close(scores, torch.tensor([[math.e ** 2, math.e + 1.0, 0.0]]), rtol=1e-5, atol=1e-6)
    # k larger than the bank: every bank sample votes (the 180° one with e^-2)
    all_k = knn_predict(bank, np.array([0, 1, 1, 2]), np.array([[2.0, 0.0]]), num_classes=3, k=50, temperature=0.5)
    torch.testing.assert_close(all_k[0, 2], torch.tensor(math.e ** -2), rtol=1e-5, atol=1e-6)


def test_knn_chunking_does_not_change_scores() -> None:
    rng = np.random.default_rng(3)
    bank, y, q = rng.standard_normal((50, 8)), rng.integers(0, 4, 50), rng.standard_normal((13, 8))
    a = knn_predict(bank, y, q, num_classes=4, k=7, chunk_size=1)
    b = knn_predict(bank, y, q, num_classes=4, k=7, chunk_size=1000)
    torch.testing.assert_close(a, b)


def test_linear_probe_separable_is_100_percent() -> None:
    x_tr, y_tr = _separable(20, 4, 12, 0)
    x_te, y_te = _separable(10, 4, 12, 1)
    res = linear_probe(x_tr, y_tr, x_te, y_te)
    assert res["linear_top1"] == 100.0 and res["linear_train_top1"] == 100.0
