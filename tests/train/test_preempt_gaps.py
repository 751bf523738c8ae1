"""A preemption signal that lands during the final step: the run ends normally (final checkpoint, no preemption
marker, ``fit`` returns) instead of as "preempted" (exit 75 and a requeue for nothing)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from umt.config import apply_overrides
from umt.train.checkpoint import load_checkpoint
from umt.train.preempt import MARKER
from umt.train.recipes import get_recipe


def test_signal_on_the_final_step_finishes_normally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.train.distill.step import StageOneStep
    from umt.train.trainer import Trainer

    cfg = apply_overrides(get_recipe("demo"), [
        "synthetic_data=true", "synthetic_samples=4", "data.batch_size=2", "data.num_frames=2", "data.input_size=32",
        "model.teacher_image_size=32", "optim.max_steps=2", "log.every_steps=1", "log.progress=false",
        "log.tensorboard=false", "checkpoint.every_steps=100"])
    inner, calls = StageOneStep.optimizer_step, [0]

    def optimizer_step(self):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 2:  # inside the last step (max_steps = 2), before its update
            os.kill(os.getpid(), signal.SIGUSR1)
        return inner(self)

    monkeypatch.setattr(StageOneStep, "optimizer_step", optimizer_step)
    tr = Trainer(cfg, tmp_path / "run")
    try:
        out = tr.fit()  # no Preempted raised: the CLI would exit 0
    finally:
        tr.close()
    assert out["steps"] == 2 and calls[0] == 2
    ck = tmp_path / "run" / "checkpoints"
    assert [p.name for p in sorted(ck.glob("*.pt"))] == ["step_00000002.pt"]
    assert load_checkpoint(ck / "step_00000002.pt")["step"] == 2
    assert not (tmp_path / "run" / MARKER).exists()
