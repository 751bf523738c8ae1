"""UMA loss against a hand computation.

Stage-2 losses (umt.losses): VTC against a hand computation, VTM negatives (never a positive, ∝ exp(sim), seeded),
MLM masking (~50 % of the maskable tokens, never special or padding, 80/10/10, seeded).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from umt.losses import (IGNORE_INDEX, mlm_loss, mlm_mask, positive_mask, sample_vtm_negatives, uma_loss, vtc_loss,
                        vtm_loss)


def test_hand_computation() -> None:
    # L=1, B=1, K=2, C=2: cosines 1 (same vector) and cos(60°) = 0.5 → losses 0 and 1 → mean 0.5.
    s = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.5, math.sqrt(3) / 2]]]])
    assert uma_loss(s, t).item() == pytest.approx(0.5)
    # Opposite unit vectors: 2 − 2·(−1) = 4.
    assert uma_loss(s, -s).item() == pytest.approx(4.0)


def test_equals_squared_distance_mean_over_layers_batch_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(3, 2, 5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 2, 5, 8, generator=g), dim=-1)
    ref = ((s - t) ** 2).sum(-1).mean()
    torch.testing.assert_close(uma_loss(s, t), ref)
    with pytest.raises(ValueError):
        uma_loss(s, t[:, :, :4])


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_vtc_equals_a_hand_computed_infonce_with_a_duplicate_id() -> None:
    # 3 pairs; pairs 0 and 2 are the same item (id 7): each is a positive of the other, in both directions.
    v = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    t = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
    ids = [7, 3, 7]
    temp = 0.5
    sim = [[(vi[0] * tj[0] + vi[1] * tj[1]) / temp for tj in t] for vi in v]  # rows videos, columns captions
    y = [[1.0 / sum(a == b for b in ids) if a == b else 0.0 for b in ids] for a in ids]
    v2t = sum(-sum(y[i][j] * (sim[i][j] - _logsumexp(sim[i])) for j in range(3)) for i in range(3)) / 3
    col = [[sim[i][j] for i in range(3)] for j in range(3)]
    t2v = sum(-sum(y[j][i] * (sim[i][j] - _logsumexp(col[j])) for i in range(3)) for j in range(3)) / 3
    want = (v2t + t2v) / 2
    got = vtc_loss(torch.tensor(v), torch.tensor(t), torch.tensor(ids), torch.tensor(temp))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # unnormalised inputs are normalised first; without a process group gather is a no-op
    got2 = vtc_loss(3 * torch.tensor(v), 0.5 * torch.tensor(t), torch.tensor(ids), temp, gather=False)
    assert got2.item() == pytest.approx(want, rel=1e-6)
    # the temperature gets a gradient
    tp = torch.tensor(temp, requires_grad=True)
    vtc_loss(torch.tensor(v), torch.tensor(t), torch.tensor(ids), tp).backward()
    assert tp.grad is not None and tp.grad.abs() > 0


def test_vtm_negatives_are_never_positives_even_with_duplicate_ids() -> None:
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 0, 1, 1, 2, 0, 3, 1])
    pos = positive_mask(index, index)
    for seed in range(50):
        sim = torch.randn(8, 8, generator=g) * 5
        for hard in (True, False):
            neg, valid = sample_vtm_negatives(sim, pos, seed, hard)
            assert valid.all()
            assert not pos[torch.arange(8), neg].any()
    # a row whose candidates are all positives has no negative: flagged invalid (and carries no loss)
    same = torch.zeros(4, dtype=torch.long)
    _, valid = sample_vtm_negatives(torch.randn(4, 4), positive_mask(same, same), 0)
    assert not valid.any()


def test_vtm_negatives_follow_softmax_of_similarity_and_the_seed() -> None:
    sim = torch.tensor([3.0, 0.0, 1.0, 2.0]).repeat(20000, 1)  # 20000 draws of one row (noise differs per row)
    pos = torch.zeros(20000, 4, dtype=torch.bool)
    pos[:, 0] = True  # column 0 is the positive: never drawn, however similar
    neg, _ = sample_vtm_negatives(sim, pos, seed=123)
    freq = torch.bincount(neg, minlength=4).float() / 20000
    want = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)  # official: softmax(sim) with the positive's weight 0
    assert freq[0] == 0
    torch.testing.assert_close(freq[1:], want, rtol=0, atol=0.015)
    assert freq[1] < freq[2] < freq[3]  # higher similarity, drawn more often
    uniform, _ = sample_vtm_negatives(sim, pos, seed=123, hard=False)
    torch.testing.assert_close(torch.bincount(uniform, minlength=4).float()[1:] / 20000,
                               torch.full((3,), 1 / 3), rtol=0, atol=0.015)
    again, _ = sample_vtm_negatives(sim, pos, seed=123)
    other, _ = sample_vtm_negatives(sim, pos, seed=124)
    assert torch.equal(again, neg) and not torch.equal(other, neg)


def test_vtm_loss_labels_and_ignored_pairs() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5]])  # B = 1: positive, video-negative, text-negative
    ce = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-2.0)), math.log(2.0)]  # labels 1, 0, 0
    yes, no = torch.tensor([True]), torch.tensor([False])
    assert vtm_loss(logits, yes, yes).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    assert vtm_loss(logits, yes, no).item() == pytest.approx((ce[0] + ce[1]) / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[3B, 2\]"):
        vtm_loss(logits[:2], yes, yes)


def _captions(b: int = 256, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, n + 1, (b,), generator=g)
    ids = torch.randint(1000, 30000, (b, n), generator=g)
    pos = torch.arange(n).expand(b, n)
    ids[:, 0] = 101
    ids = torch.where(pos == (lengths - 1)[:, None], torch.full_like(ids, 102), ids)
    mask = (pos < lengths[:, None]).long()
    return torch.where(mask.bool(), ids, torch.zeros_like(ids)), mask


def test_mlm_masking_rates_specials_padding_and_seed() -> None:
    ids, mask = _captions()
    kw = dict(prob=0.5, mask_id=103, vocab_size=30522, special_ids=(101, 102, 0))
    inputs, labels = mlm_mask(ids, mask, 5, **kw)
    maskable = mask.bool() & (ids != 101) & (ids != 102)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~maskable).any()  # never [CLS], [SEP] or padding
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected tokens are untouched
    assert torch.equal(labels[selected], ids[selected])  # labels are the original ids
    frac = selected.sum().item() / maskable.sum().item()
    assert frac == pytest.approx(0.5, abs=0.03)  # ~4,000 maskable tokens: 3 % is > 3 standard deviations
    n = selected.sum().item()
    to_mask = (inputs[selected] == 103).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    rand = 1 - to_mask - kept
    assert to_mask == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1, abs=0.02)
    assert rand == pytest.approx(0.1, abs=0.02)
    assert inputs.min() >= 0 and inputs.max() < 30522
    again = mlm_mask(ids, mask, 5, **kw)
    other = mlm_mask(ids, mask, 6, **kw)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels) and not torch.equal(other[1], labels)


def test_mlm_loss_is_cross_entropy_over_labelled_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3], labels[1, 4] = 4, 0, 10
    want = F.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    torch.testing.assert_close(mlm_loss(logits, labels), want)
    assert mlm_loss(logits, torch.full((2, 5), IGNORE_INDEX)).item() == 0.0  # nothing selected: 0, not NaN
