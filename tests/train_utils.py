"""Test helpers for trainer runs: the tiny synthetic config, ``--set`` arguments, ``metrics.jsonl``, and launching
two gloo ranks under torchrun.

Trainer tests start from :data:`TINY` (a tiny synthetic stage-1 run of the demo recipe: 8 synthetic videos, 2 per
batch, 2 frames of 32 px, logging every step with no tensorboard and no progress bar) and add what they are about;
a later override of the same key wins (``apply_overrides`` applies them in order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The repository root (the ``cwd`` and ``PYTHONPATH`` of the processes the tests start).
ROOT = Path(__file__).resolve().parents[1]

#: Tiny shapes: 2 videos per batch, 2 frames of 32 px, the teacher at 32 px.
TINY_SHAPES = ["data.batch_size=2", "data.num_frames=2", "data.input_size=32", "model.teacher_image_size=32"]
#: Log every step, no tensorboard, no progress bar.
QUIET_LOG = ["log.every_steps=1", "log.tensorboard=false", "log.progress=false"]
#: The tiny synthetic run: :data:`TINY_SHAPES` on 8 synthetic videos, :data:`QUIET_LOG`.
TINY = ["synthetic_data=true", "synthetic_samples=8", *TINY_SHAPES, *QUIET_LOG]
#: The trainer tests' schedule on top of :data:`TINY`: 4 epochs (4 steps each), 1 warm-up epoch, drop-path 0.1.
TRAIN_RUN = ["optim.epochs=4", "optim.warmup_epochs=1", "model.drop_path=0.1"]


def tiny_cfg(*extra: str, recipe: str = "demo", base: Sequence[str] = TINY) -> Any:
    """``recipe`` with ``base`` then ``extra`` applied (a ``TrainConfig``)."""
    from umt.config import apply_overrides
    from umt.train.recipes import get_recipe

    return apply_overrides(get_recipe(recipe), [*base, *extra])


def cli_sets(overrides: Iterable[str]) -> list[str]:
    """``["--set", o, ...]``: overrides as ``python -m umt.train`` arguments."""
    return [a for o in overrides for a in ("--set", o)]


def read_metrics(run_dir: Path | str, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (or another JSON-lines file of the run directory), in order."""
    return [json.loads(x) for x in (Path(run_dir) / name).read_text().splitlines()]


def logged_losses(run_dir: Path | str) -> dict[int, float]:
    """step → logged loss, from the run's ``metrics.jsonl``."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def dist_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the processes a test starts: this tree first on ``PYTHONPATH``, one thread each."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(extra or {})}


def torchrun(args: Sequence[str], *, nproc: int = 2, flags: Sequence[str] = (), timeout: float = 300,
             env: Mapping[str, str] | None = None, cwd: Path | str = ROOT) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N [flags] args`` (output captured as text);
    ``env`` defaults to :func:`dist_env`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *flags, *args]
    return subprocess.run(cmd, cwd=cwd, env=dict(env) if env is not None else dist_env(), capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a rendezvous port for a test's process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
