"""Preemption pieces in one process, fast enough for the default CPU suite: the handler, the metrics trim,
the restart rules, and a single-rank run stopped by a signal inside a step (the two-rank fault tests are in
``tests/train/test_preempt.py``)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.train_utils import read_metrics, tiny_cfg
from umt.train.checkpoint import drop_metrics_after, load_checkpoint
from umt.config import ConfigError, apply_overrides
from umt.train.preempt import (EXIT_PREEMPTED, MARKER, Preempted, PreemptionHandler, preempted_before_restart,
                               read_marker, write_marker)
from umt.train.recipes import get_recipe


def test_exit_status_is_tempfail() -> None:
    assert EXIT_PREEMPTED == 75  # sysexits.h EX_TEMPFAIL; examples/slurm/umt.sbatch hard-codes the same number
    assert "EXIT_PREEMPTED=75" in (Path(__file__).resolve().parents[2] / "examples/slurm/umt.sbatch").read_text()


def test_handler_records_first_signal_and_restores() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    h = PreemptionHandler(["USR1", "SIGTERM"])
    try:
        assert h.should_stop() == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process under the default action
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert h.should_stop() == signal.SIGUSR1
    finally:
        h.close()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_signal_names_are_checked() -> None:
    assert apply_overrides(get_recipe("demo"), ["checkpoint.signals="]).checkpoint.signals == ()
    for bad in ("SIGKILL", "NOPE", "STOP"):
        with pytest.raises(ConfigError, match="checkpoint.signals"):
            apply_overrides(get_recipe("demo"), [f"checkpoint.signals={bad}"])


def test_drop_metrics_after(tmp_path: Path) -> None:
    m = tmp_path / "metrics.jsonl"
    assert drop_metrics_after(m, 3) == 0 and not m.exists()
    m.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (2, 4, 6, 8)) + '{"step": 1')
    assert drop_metrics_after(m, 4) == 3  # steps 6, 8 and the torn last line
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4]
    assert drop_metrics_after(m, 4) == 0


def test_restart_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    write_marker(tmp_path, 7, tmp_path / "step_00000007.pt", signal.SIGTERM)
    assert read_marker(tmp_path)["step"] == 7 and read_marker(tmp_path)["signal"] == "SIGTERM"
    assert not preempted_before_restart(tmp_path)  # a first attempt trains
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert preempted_before_restart(tmp_path)  # restarted after this launch's preemption
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job2")
    assert not preempted_before_restart(tmp_path)  # a marker from another launch does not count
    (tmp_path / MARKER).unlink()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    assert not preempted_before_restart(tmp_path)  # restarted after a crash: resume and train


def test_signal_inside_a_step_finishes_it_then_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.train.distill.step import StageOneStep
    from umt.train.trainer import Trainer

    cfg = tiny_cfg("optim.max_steps=6", "checkpoint.every_steps=2")
    inner, calls = StageOneStep.optimizer_step, [0]

    def optimizer_step(self):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:  # the signal lands inside step 3, before its update
            os.kill(os.getpid(), signal.SIGUSR1)
        return inner(self)

    monkeypatch.setattr(StageOneStep, "optimizer_step", optimizer_step)
    before = signal.getsignal(signal.SIGUSR1)
    tr = Trainer(cfg, tmp_path / "run")
    try:
        with pytest.raises(Preempted) as e:
            tr.fit()
    finally:
        tr.close()
    assert e.value.step == 3 and e.value.signame == "SIGUSR1"
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt", "step_00000002.sha256", "step_00000003.pt",
                                                    "step_00000003.sha256"]
    s2, s3 = load_checkpoint(ck / "step_00000002.pt"), load_checkpoint(ck / "step_00000003.pt")
    assert s3["step"] == 3 and s3["batch_in_epoch"] == 3 and calls[0] == 3  # no step after the signalled one
    assert any(not (s2["model"][k] == v).all() for k, v in s3["model"].items())  # step 3's update is in it
    assert read_marker(tmp_path / "run")["checkpoint"].endswith("step_00000003.pt")
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert signal.getsignal(signal.SIGUSR1) is before  # handlers put back by close()
