"""Preemption (umt.train.preempt): the cases the mutation run found untested: the exception's message, the handler
outside a process group on a non-CPU device and inside one on the CPU, the marker's fields, an empty restart count,
and the restart rule at its bounds and for a marker without a ``restart`` field. Expected values are written out."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from umt.train.preempt import (MARKER, Preempted, PreemptionHandler, preempted_before_restart, read_marker,
                               restart_count, write_marker)


def test_preempted_message_and_fields() -> None:
    e = Preempted(7, Path("run/checkpoints/step_00000007.pt"), "SIGTERM")
    assert str(e) == "preempted by SIGTERM after step 7; checkpoint run/checkpoints/step_00000007.pt"
    assert (e.step, e.checkpoint, e.signame) == (7, Path("run/checkpoints/step_00000007.pt"), "SIGTERM")


def test_handler_builds_no_group_unless_distributed_off_the_cpu() -> None:
    # not distributed, GPU-like device: no gloo group (there is no process group to build it from)
    h = PreemptionHandler(["USR1"], device=torch.device("meta"))
    try:
        assert h.group is None and h.distributed is False and h.should_stop() == 0
    finally:
        h.close()
    # distributed on the CPU: the default (gloo) group is used as it is, no second group
    h = PreemptionHandler(["USR1"], distributed=True, device=torch.device("cpu"))
    try:
        assert h.group is None and h.distributed is True
    finally:
        h.close()


def test_marker_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job9")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    before = time.time()
    path = write_marker(tmp_path, 3, None, signal.SIGUSR1)
    assert path == tmp_path / MARKER
    m = json.loads(path.read_text())
    assert m["checkpoint"] is None and m["step"] == 3 and m["signal"] == "SIGUSR1"
    assert m["run_id"] == "job9" and m["restart"] == 2 and before <= m["time"] <= time.time()
    assert read_marker(tmp_path) == m


def test_empty_restart_count_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "")
    assert restart_count() == 0
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert restart_count() == 0


def _marker(run: Path, **fields: object) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / MARKER).write_text(json.dumps({"step": 1, "checkpoint": None, "signal": "SIGTERM", "time": 0.0,
                                          "run_id": "job1", **fields}) + "\n")


@pytest.mark.parametrize("marker_restart, count, stop", [(0, 1, True), (1, 1, False), (2, 2, False), (1, 3, True),
                                                         (None, 1, True), (None, 0, False)])
def test_restart_rule_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker_restart: int | None,
                             count: int, stop: bool) -> None:
    # stop at once when the marker was written by an earlier attempt of this launch: marker restart < current count
    # (a marker without the field counts as attempt 0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(count))
    _marker(tmp_path, **({} if marker_restart is None else {"restart": marker_restart}))
    assert preempted_before_restart(tmp_path) is stop
