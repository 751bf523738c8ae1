"""Preemption: finish the step, checkpoint, exit with :data:`EXIT_PREEMPTED`.

A scheduler announces the end of a job with a signal: Slurm sends ``SIGUSR1`` ahead of time with
``#SBATCH --signal=USR1@120`` and ``SIGTERM`` when it preempts or the time limit arrives; torchrun forwards ``SIGTERM``
to its workers when it is itself stopped. The handler installed here only records the signal, so the step under way
is never cut short and a second signal during the checkpoint write changes nothing. At every optimizer-step boundary
all ranks agree whether to stop through one tiny all-reduce (MAX of the signal number each rank has seen, 0 for none):
a signal that reaches the ranks at different times still stops them all after the same step, and no rank waits on a
collective that another rank skips. Then rank 0 writes the checkpoint (atomic, :func:`umt.train.checkpoint.
save_checkpoint`) and the marker :data:`MARKER`, and every rank exits with :data:`EXIT_PREEMPTED`.

torchrun reports any failed worker as exit status 1, so a launcher that must tell preemption from a crash through
torchrun reads the marker (``examples/slurm/umt.sbatch`` does): it exists in the run directory after a launch exactly
when that launch ended preempted, provided the launcher removes it before starting (the trainer never does). torchrun
restarts a group whose workers exited 75 when it has restarts left; the restarted workers find the marker and exit 0
at once (:func:`preempted_before_restart`), so torchrun ends after one restart.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from umt.fileio import atomic_write

__all__ = ["EXIT_PREEMPTED", "MARKER", "Preempted", "PreemptionHandler", "write_marker", "read_marker",
           "restart_count", "preempted_before_restart"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
"""Exit status of a preempted run (``EX_TEMPFAIL`` of sysexits.h, "try again later"): the checkpoint is written and
``--resume auto`` continues it. ``examples/slurm/umt.sbatch`` requeues the job on it."""

MARKER = "preempted.json"
"""Written by rank 0 into the run directory after the preemption checkpoint: ``{"step", "checkpoint", "signal",
"time", "run_id", "restart"}`` (time: Unix seconds; run_id and restart: torchrun's ``TORCHELASTIC_RUN_ID`` and
``TORCHELASTIC_RESTART_COUNT``)."""


class Preempted(Exception):
    """Raised by :meth:`umt.train.trainer.Trainer.fit` after the preemption checkpoint; the CLI exits with
    :data:`EXIT_PREEMPTED`."""

    def __init__(self, step: int, checkpoint: Path | None, signame: str) -> None:
        super().__init__(f"preempted by {signame} after step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint, self.signame = step, checkpoint, signame


def _signum(name: str) -> signal.Signals:
    name = name.upper()
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


class PreemptionHandler:
    """Record ``signals`` and let the training loop ask, once per optimizer step, whether every rank must stop.

    Args:
        signals: signal names (``"SIGTERM"``, ``"SIGUSR1"``, ``"USR1"``, ...).
        distributed: several ranks share the decision (the default process group is initialised).
        device: the device of the default group's collectives (``cuda`` with NCCL); the decision itself goes
            through a gloo group on the CPU, so it never waits on the GPU stream.

    Raises:
        KeyError: an unknown signal name.
    """

    def __init__(self, signals: Sequence[str], *, distributed: bool = False,
                 device: torch.device = torch.device("cpu")) -> None:
        self.signals = [_signum(s) for s in signals]
        self.received = 0  # the first signal number seen by this rank, 0 for none
        self.distributed = distributed
        self.group = None
        if distributed and device.type != "cpu":
            self.group = dist.new_group(backend="gloo")  # collective call: every rank builds it, in the same order
        self._flag = torch.zeros(1, dtype=torch.int64)
        self._previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption signals not handled: the trainer is not running in the main thread")
            return
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only records: the step under way and a checkpoint write in progress are never interrupted.
        if not self.received:
            self.received = signum
            log.warning("%s received: finishing the current step, then checkpoint and exit %d",
                        signal.Signals(signum).name, EXIT_PREEMPTED)

    def should_stop(self) -> int:
        """Whether all ranks stop after this step: the largest signal number any rank has seen, 0 for none.

        One all-reduce of one int64 on the CPU per call (every rank must call it at the same step boundaries).
        """
        if not self.distributed:
            return self.received
        self._flag.fill_(self.received)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(self._flag.item())

    def close(self) -> None:
        """Put the previous handlers back."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def write_marker(run_dir: str | Path, step: int, checkpoint: Path | None, signum: int) -> Path:
    """Write :data:`MARKER` atomically into ``run_dir`` (rank 0, after the checkpoint). Returns its path."""
    return atomic_write(Path(run_dir) / MARKER,
                        json.dumps({"step": step, "checkpoint": str(checkpoint) if checkpoint else None,
                                    "signal": signal.Signals(signum).name, "time": time.time(),
                                    "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
                                    "restart": restart_count()}) + "\n")


def read_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The content of :data:`MARKER` in ``run_dir``, or None when absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (``TORCHELASTIC_RESTART_COUNT``; 0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def preempted_before_restart(run_dir: str | Path) -> bool:
    """A worker that torchrun restarted (:func:`restart_count` > 0) after an earlier attempt of the same launch (same
    ``TORCHELASTIC_RUN_ID``) was preempted: it must not train on (the scheduler is about to end the job) but exit at
    once, with status 0 so that torchrun stops restarting (a 75 would cost every remaining restart, each a rendezvous
    and a Python start-up, within the scheduler's warning time); the marker stays and tells the launcher. A marker
    left by another launch does not count."""
    marker = read_marker(run_dir) if restart_count() > 0 else None
    return bool(marker) and marker.get("run_id") == os.environ.get("TORCHELASTIC_RUN_ID") \
        and int(marker.get("restart", 0)) < restart_count()
