"""Stage-2 losses (umt.losses): the cases the mutation run found untested: the random words of MLM span the whole
vocabulary (independent of the keep/random choice), selection is strictly ``u < prob``, a single labelled token is
its own cross-entropy, and the losses run without warnings (no implicit softmax dimension). Expected values are
written out in the tests."""

from __future__ import annotations

import math
import warnings

import torch

from umt.losses import IGNORE_INDEX, mlm_loss, mlm_mask, vtc_loss, vtm_loss
from umt.ops import uniform_noise


def test_mlm_random_words_span_the_vocabulary() -> None:
    # every token selected (prob 1), original id 5 and [MASK] 99, both outside V = 4: an input in [0, 4) is a random
    # word. BERT's rule: 80 % [MASK], 10 % random (half of the remaining 20 %), 10 % kept; the random word uniform
    # over all of [0, V), drawn independently of the random/keep choice
    n = 4000
    ids = torch.full((1, n), 5)
    inputs, labels = mlm_mask(ids, torch.ones(1, n), 11, prob=1.0, mask_id=99, vocab_size=4, special_ids=())
    assert (labels == 5).all()
    masked = (inputs == 99).float().mean().item()
    kept = (inputs == 5).float().mean().item()
    rand = inputs[(inputs != 99) & (inputs != 5)]
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(rand.numel() / n - 0.1) < 0.02
    assert ((rand >= 0) & (rand < 4)).all()
    counts = torch.bincount(rand, minlength=4)
    assert (counts > 0.15 * rand.numel()).all(), counts  # ≈ 25 % each, the top id V − 1 included


def test_mlm_selection_is_strictly_below_prob() -> None:
    # selected where u_select < prob (u = the first of the 4 noise rows); with prob equal to one token's own draw,
    # that token is not selected, and exactly the tokens with a smaller draw are
    b, n, seed = 2, 16, 3
    u = uniform_noise(seed, b, 4 * n).view(b, 4, n)[:, 0]  # [B, L]
    prob = float(u[0, 5])
    ids = torch.arange(b * n).view(b, n) + 10
    _, labels = mlm_mask(ids, torch.ones(b, n), seed, prob=prob, mask_id=1, vocab_size=100, special_ids=())
    assert labels[0, 5] == IGNORE_INDEX
    torch.testing.assert_close(labels != IGNORE_INDEX, u < prob)


def test_mlm_loss_of_a_single_labelled_token() -> None:
    # logits of the labelled token (position 1): (1, 2, 0.5), label 1 → −log softmax = log(e + e² + e^0.5) − 2
    logits = torch.zeros(1, 3, 3)
    logits[0, 1] = torch.tensor([1.0, 2.0, 0.5])
    logits[0, 0] = torch.tensor([9.0, -9.0, 0.0])  # unlabelled: must not count
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    want = math.log(math.e + math.e**2 + math.e**0.5) - 2.0
    assert abs(mlm_loss(logits, labels).item() - want) < 1e-6


def test_stage2_losses_raise_no_warnings() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vtc_loss(v, t, torch.tensor([7, 3, 7]), 0.5)
        vtm_loss(torch.zeros(6, 2), torch.tensor([True, False]), torch.tensor([True, True]))
