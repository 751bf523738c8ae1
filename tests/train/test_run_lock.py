"""Two trainers pointed at one run directory must not interleave: the second refuses at once, naming the first."""

from __future__ import annotations

import os
import signal
import time

from umt.fileio import exclusive_lock
from umt.train.__main__ import main

TINY = ["synthetic_data=true", "synthetic_samples=8", "data.batch_size=2", "data.num_frames=2", "data.input_size=32",
        "model.teacher_image_size=32", "log.tensorboard=false", "log.progress=false", "optim.max_steps=1"]


def _args(run):
    return ["--recipe", "demo", "--run-dir", str(run), *sum((["--set", o] for o in TINY), [])]


def test_second_trainer_on_the_same_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    ready = tmp_path / "ready"
    pid = os.fork()
    if pid == 0:  # the first trainer, as far as the lock is concerned: holds it as Trainer does
        try:
            with exclusive_lock(tmp_path / ".run.lock", f"run directory {run}"):
                ready.write_text("x")
                time.sleep(60)
        finally:
            os._exit(0)
    try:
        for _ in range(500):
            if ready.exists():
                break
            time.sleep(0.01)
        assert main(_args(run)) == 2
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    err = capsys.readouterr().err
    assert f"run directory {run} is in use by pid {pid}" in err
    assert not run.exists()  # the second one wrote nothing
    # the first one died (SIGKILL): its lock is gone with it, and a run goes ahead; a clean exit removes the lock file
    assert main(_args(run)) == 0
    assert (run / "metrics.jsonl").is_file() and not (tmp_path / ".run.lock").exists()
