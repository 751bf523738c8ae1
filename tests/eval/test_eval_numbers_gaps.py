"""Evaluation numbers on hand-worked cases: multi-view aggregation is the mean of the softmax (views where the mean
of the logits picks another class), ``--views TxS`` is temporal × spatial, the k-NN probe weighs votes with its own
temperature, and the linear probe keeps class columns aligned when a class is absent from the bank."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from umt.eval.classify import evaluate_classification
from umt.eval.common import eval_data_config, parse_views
from umt.eval.probe import knn_classify, knn_predict, linear_probe

try:  # imported at collection, not inside the first test that needs it
    import sklearn.linear_model  # noqa: F401
except ImportError:  # pragma: no cover
    pass

# sample 0 (label 1): 3 views at logits [0, 1] and one at [6, 0]. mean of logits [1.5, 0.75] → class 0, mean of
# softmax (3·σ(1) + σ(−6)) / 4 = (3·0.7311 + 0.0025) / 4 = 0.549 for class 1 → class 1 (right).
# sample 1 (label 0): every view at [2, 0]: both rules pick class 0.
_LOGITS = {0: [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [6.0, 0.0]], 1: [[2.0, 0.0]] * 4}


class _Loader:
    num_samples, num_views = 2, 4

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for s in (0, 1):
            yield {"video": torch.full((4, 3, 1, 2, 2), float(s)), "label": torch.tensor([1 - s] * 4),
                   "index": torch.tensor([s] * 4), "view": torch.arange(4)}


class _Table(torch.nn.Module):
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        rows = [torch.tensor(_LOGITS[int(v)][i]) for i, v in enumerate(video[:, 0, 0, 0, 0].round().long().tolist())]
        return torch.stack(rows)  # a batch is one sample's 4 views, in view order


def test_multiview_is_the_mean_of_softmax_not_of_logits() -> None:
    res = evaluate_classification(_Table(), _Loader(), num_classes=2, device="cpu")
    assert res["top1"] == 100.0  # a mean of logits would get sample 0 wrong: 50 %
    assert res["mean_class_acc"] == 100.0 and res["num_views"] == 4


def test_views_are_temporal_by_spatial() -> None:
    assert parse_views("4x3") == (4, 3) and parse_views("2X1") == (2, 1)
    assert parse_views("3x4") == (3, 4)
    cfg = eval_data_config("shards", batch_size=2, num_frames=8, input_size=224, views=parse_views("4x3"))
    assert (cfg.temporal_views, cfg.spatial_views) == (4, 3)
    for bad in ("4", "4x0", "x3", "4x3x1", "ax3"):
        with pytest.raises(ValueError, match="TEMPORALxSPATIAL"):
            parse_views(bad)


def test_knn_votes_use_the_given_temperature() -> None:
    # query e0; bank: one class-0 row at cosine 0.9, two class-1 rows at cosine 0.5 (all unit vectors)
    s9, s5 = math.sqrt(1 - 0.81), math.sqrt(1 - 0.25)
    bank = torch.tensor([[0.9, s9, 0.0], [0.5, 0.0, s5], [0.5, -s5, 0.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0, 0.0]])
    for temp in (0.07, 1.0):
        got = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=temp)[0]
        want = torch.tensor([math.exp(0.9 / temp), 2 * math.exp(0.5 / temp)])
        # fp32 cosines (3 terms, ~1e-7 relative) scaled by 1/T ≤ 13 inside exp: relative error ≲ 13 · 3e-7
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    # T = 0.07: e^{12.9} beats 2·e^{7.1} → class 0; T = 1: e^{0.9} = 2.46 < 2·e^{0.5} = 3.30 → class 1
    assert knn_classify(bank, labels, query, torch.tensor([0]), k=3, temperature=0.07)["knn_top1"] == 100.0
    assert knn_classify(bank, labels, query, torch.tensor([1]), k=3, temperature=1.0)["knn_top1"] == 100.0


def test_linear_probe_columns_stay_aligned_when_a_class_is_absent_from_the_bank() -> None:
    pytest.importorskip("sklearn")
    g = np.random.default_rng(0)
    # classes 0 and 2 in the bank (class 1 absent), 1-D features around −3 and +3
    x_tr = np.concatenate([g.normal(-3, 0.3, (20, 1)), g.normal(3, 0.3, (20, 1))])
    y_tr = np.array([0] * 20 + [2] * 20)
    x_te = np.array([[3.0], [-3.0]])
    y_te = np.array([2, 0])
    res = linear_probe(x_tr, y_tr, x_te, y_te, num_classes=3)
    assert res["linear_top1"] == 100.0 and res["linear_train_top1"] == 100.0
