"""The trainer survives ``SIGKILL`` at the renames it makes (config, checkpoint and its checksum, rotation, the
metrics rewrite on resume): ``--resume auto`` continues from a checkpoint that loads and logs the same losses as an
uninterrupted run, and no temporary file is left where a reader looks.

The run: the tiny synthetic stage-1 demo through ``python -m umt.train``, 6 optimizer steps, a checkpoint every 2
keeping the newest 2, so saving, rotation and resume all happen. Each killed run is a fresh process (a forked child
cannot safely reuse torch's thread pool). By default two kill points run (right before and right after the rename of
the middle checkpoint); ``UMT_FAULT_CAMPAIGN=1`` runs every rename, before and after, plus random instants
(``python -m benchmarks.fault_campaign``).
"""

from __future__ import annotations

import os
import random

import pytest

from tests.crash import count_replaces, run_module_killed
from tests.train_utils import cli_sets, logged_losses

pytestmark = pytest.mark.slow

FULL = os.environ.get("UMT_FAULT_CAMPAIGN") == "1"
RUN = ["synthetic_data=true", "synthetic_samples=8", "data.batch_size=2", "data.num_frames=2", "data.input_size=32",
       "model.teacher_image_size=32", "log.every_steps=1", "log.tensorboard=false", "log.progress=false",
       "optim.max_steps=6", "optim.epochs=2", "optim.warmup_epochs=1", "checkpoint.every_steps=2",
       "checkpoint.keep_last=2", "model.drop_path=0.0"]


def _args(run, resume: bool = False) -> list[str]:
    return ["--recipe", "demo", "--run-dir", str(run), *(["--resume", "auto"] if resume else []), *cli_sets(RUN)]


def _train(run, resume: bool = False) -> None:
    from umt.train.__main__ import main

    assert main(_args(run, resume)) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    renames = count_replaces(lambda: _train(run))
    return logged_losses(run), renames


def _kill_and_resume(run, ref_losses, **kill) -> bool:
    killed = run_module_killed("umt.train", _args(run), **kill)
    ck = run / "checkpoints"
    if ck.is_dir():  # what a reader sees right after the crash: every step_*.pt is whole (it loads)
        from umt.train.checkpoint import load_checkpoint

        for p in ck.glob("step_*.pt"):
            load_checkpoint(p)
    _train(run, resume=(run / "config.json").exists())
    assert logged_losses(run) == ref_losses  # every step once, with the uninterrupted run's loss
    assert not list(run.rglob("*.tmp")), "temporary files left behind"
    assert sorted(p.name for p in ck.glob("step_*.pt")) == ["step_00000004.pt", "step_00000006.pt"]
    return killed


def test_reference_run_renames(reference):
    _, renames = reference
    assert renames >= 7  # config.json, then 3 saves of a checksum and a checkpoint


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_renames_then_resume_gives_the_same_losses(reference, tmp_path, when):
    ref_losses, renames = reference
    points = range(1, renames + 1) if FULL else [renames // 2 + 1]
    for at in points:
        assert _kill_and_resume(tmp_path / f"{when}{at}", ref_losses, at=at, when=when)


@pytest.mark.skipif(not FULL, reason="part of the full fault campaign (UMT_FAULT_CAMPAIGN=1)")
def test_kill_at_random_instants_then_resume_gives_the_same_losses(reference, tmp_path):
    ref_losses, _ = reference
    rng = random.Random(1)
    for k in range(4):
        _kill_and_resume(tmp_path / f"t{k}", ref_losses, after_s=rng.uniform(3.0, 12.0))
