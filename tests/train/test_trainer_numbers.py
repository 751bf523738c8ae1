"""The trainer's numbers against values written down by hand: the LR as the trainer wires
``build_scheduler``, and the non-finite skip on every optimizer path (UMA heads: ``test_heads.py``)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from tests.train_utils import TRAIN_RUN, read_metrics, tiny_cfg
from umt.train.trainer import Trainer

# 8 synthetic videos, 2 per batch, 2 clips per video (num_sample=2): 4 steps per epoch, 4 epochs, 1 warm-up epoch.
_tiny = functools.partial(tiny_cfg, *TRAIN_RUN, "data.num_sample=2", "model.drop_path=0.0")


# Demo recipe: lr 3e-2, min_lr 3e-3 per 256 clips; global batch = 2 videos × 2 clips × 1 rank = 4 clips.
PEAK = 3e-2 * 4 / 256  # 4.6875e-4
FLOOR = 3e-3 * 4 / 256  # 4.6875e-5
#: LR / PEAK by optimizer step, by hand: warm-up over 4 *steps* (1 epoch × 4 steps) from 0, then a cosine over the
#: remaining 12 steps from 1 down to FLOOR / PEAK = 0.1: 0.1 + 0.45 · (1 + cos(π · (s − 4) / 12)).
LR_TABLE = {
    0: 0.0,
    1: 0.25,
    2: 0.5,
    3: 0.75,
    4: 1.0,
    5: 0.98466662,  # cos(15°) = 0.96592583
    6: 0.93971143,  # cos(30°) = 0.86602540
    7: 0.86819805,  # cos(45°) = 0.70710678
    10: 0.55,  # cos(90°) = 0
    13: 0.23180195,  # cos(135°)
    16: 0.1,
}


def test_lr_through_the_trainer_matches_a_table(tmp_path: Path) -> None:
    tr = Trainer(_tiny("optim.max_steps=7"), tmp_path / "lr")
    try:
        assert tr.steps_per_epoch == 4 and tr.lr == pytest.approx(PEAK) and tr.min_lr == pytest.approx(FLOOR)
        assert [g["lr"] for g in tr.optimizer.param_groups] == [0.0, 0.0]  # step 0: warm-up starts from 0
        tr.fit()
        rows = read_metrics(tmp_path / "lr")
        # A row logged after step s shows the LR the next step (index s) will use.
        for r in rows:
            assert r["lr"] == pytest.approx(PEAK * LR_TABLE[r["step"]], rel=1e-6), r
        assert [r["step"] for r in rows] == list(range(1, 8))
        # The rest of the schedule, stepping the trainer's own scheduler on.
        for s in range(8, 17):
            tr.optimizer.step()  # no gradients: nothing moves, only keeps torch's step-order check quiet
            tr.scheduler.step()
            if s in LR_TABLE:
                for g in tr.optimizer.param_groups:
                    assert g["lr"] == pytest.approx(PEAK * LR_TABLE[s], rel=1e-6), s
    finally:
        tr.close()


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_nonfinite_step_is_skipped_and_weights_stay_unchanged(tmp_path: Path, impl: str) -> None:
    """After a few good steps (non-zero moments, non-zero LR), a NaN gradient changes no weight on either path."""
    tr = Trainer(_tiny(f"optim.impl={impl}", "optim.warmup_epochs=0", "optim.max_steps=8"), tmp_path / impl)
    try:
        sf = tr.step_fn
        it = tr.loader.epoch_iter(0)
        for s in range(2):
            _, ok = sf(next(it)["video"], seed=s)
            assert bool(ok)
        video = next(it)["video"]
        tout = sf.teacher_forward(video)
        sf.forward_backward(video, sf.make_mask(tout, video, 5), tout)
        tr.model.heads.proj[0].weight.grad[0, 0] = float("nan")  # one bad element anywhere poisons the global norm
        before = [p.detach().clone() for p in sf.params]
        ok = sf.optimizer_step()
        assert not bool(ok) and int(sf.skipped) == 1 and int(sf.consecutive) == 1
        for p, q in zip(sf.params, before):
            assert torch.isfinite(p).all()
            assert torch.equal(p, q)
        # The next good step updates again and resets the run of consecutive skips.
        _, ok = sf(next(it)["video"], seed=7)
        assert bool(ok) and int(sf.consecutive) == 0 and int(sf.skipped) == 1
        assert any(not torch.equal(p, q) for p, q in zip(sf.params, before))
        assert all(torch.isfinite(p).all() for p in sf.params)  # no NaN was left behind in the moments either
    finally:
        tr.close()
