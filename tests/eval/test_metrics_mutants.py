"""Classification metrics (umt.eval.metrics): the cases the mutation run found untested: torch inputs that numpy
cannot take as they are (bf16, requires_grad), labels and predictions exactly at the class bound or negative, one
sample, more than two row blocks of the top-k loop, the warning-free NaN of an absent class, and the ``ks`` and
``pred`` of the summary. Expected values are worked by hand in the comments."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from umt.eval.metrics import (as_numpy, check_labels, classification_summary, confusion_matrix, per_class_accuracy,
                              topk_accuracy)


def test_as_numpy_takes_bf16_and_grad_tensors_and_keeps_integer_dtypes() -> None:
    # numpy has no bfloat16 and refuses tensors that require grad: both come back as float32 values
    x = torch.tensor([[0.5, -1.25], [2.0, 3.0]], dtype=torch.bfloat16, requires_grad=True)
    a = as_numpy(x)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, [[0.5, -1.25], [2.0, 3.0]])
    g = as_numpy(torch.tensor([1.5, 2.5], requires_grad=True))
    assert g.dtype == np.float32 and g.tolist() == [1.5, 2.5]
    # an integer tensor stays integer (no float round trip)
    i = as_numpy(torch.tensor([3, 1, 2**40 + 1]))
    assert i.dtype == np.int64 and i.tolist() == [3, 1, 2**40 + 1]


def test_labels_equal_to_the_class_count_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        check_labels([0, 3], 3)  # 3 classes: 3 is one past the last
    assert check_labels([0, 2], 3).tolist() == [0, 2]


@pytest.mark.parametrize("pred, labels", [([0, 3], [0, 0]), ([0, -1], [0, 1])])
def test_predictions_outside_the_classes_are_refused(pred: list[int], labels: list[int]) -> None:
    # 3 classes: y·C + p would land silently in another cell (true 0, pred 3 → 3 = cell (1, 0); true 1, pred -1 →
    # 2 = cell (0, 2)): refused instead
    with pytest.raises(ValueError, match="predictions outside"):
        confusion_matrix(pred, labels, 3)


def test_topk_on_a_single_sample_and_on_none() -> None:
    # one sample, scores .2 .7 .1, label 0: one class (1) ahead → top-1 0, top-2 1
    assert topk_accuracy(np.array([[0.2, 0.7, 0.1]]), [0], ks=(1, 2)) == {1: 0.0, 2: 1.0}
    with pytest.raises(ValueError, match="no samples"):
        topk_accuracy(np.zeros((0, 3)), np.zeros(0, np.int64))


def test_topk_over_three_row_blocks() -> None:
    # 8200 samples (blocks of 4096: 4096 + 4096 + 8), 3 classes with scores (0, 1, 2) on every row: the label's rank
    # is 2 - label (classes with a higher score ahead of it); labels cycle 0, 1, 2 except the last 8 rows, all 2
    n = 8200
    scores = np.tile(np.array([0.0, 1.0, 2.0]), (n, 1))
    labels = np.arange(n) % 3
    labels[-8:] = 2
    n2 = int((labels == 2).sum())
    n1 = int((labels == 1).sum())
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3))
    assert acc == {1: n2 / n, 2: (n1 + n2) / n, 3: 1.0}


def test_absent_class_is_nan_without_a_warning() -> None:
    cm = np.array([[2, 1, 0], [0, 0, 0], [1, 0, 3]])  # class 1 has no sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc = per_class_accuracy(cm)
    assert acc[0] == pytest.approx(2 / 3) and np.isnan(acc[1]) and acc[2] == pytest.approx(3 / 4)


def test_summary_passes_its_ks_and_returns_the_argmax() -> None:
    # 3 samples, 3 classes; argmax (first maximum) 1, 0, 2; labels 1, 2, 2
    scores = np.array([[0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    s = classification_summary(scores, [1, 2, 2], ks=(1, 2))
    assert set(k for k in s if k.startswith("top")) == {"top1", "top2"}
    assert s["top1"] == pytest.approx(200 / 3)  # samples 0 and 2
    assert s["top2"] == pytest.approx(200 / 3)  # sample 1's label 2 scores 0.1, behind 0.5 and 0.4
    assert s["pred"].tolist() == [1, 0, 2] and s["pred"].dtype == np.int64
