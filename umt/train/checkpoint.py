"""Durable checkpoints with rotation: ``<run_dir>/checkpoints/step_XXXXXXXX.pt`` (+ ``.sha256``).

A checkpoint is written to ``*.pt.tmp``, fsynced and renamed (:mod:`umt.fileio`), so a file named ``step_*.pt`` is
complete when written. Its sha256 is recorded beside it (``step_XXXXXXXX.sha256``, written before the rename) and
checked on load: bytes that changed after the write (a power loss that kept the rename but not all data, a bad copy,
a disk error) make the checkpoint unreadable instead of half-loaded. Resume
``auto`` picks the newest one that loads (:func:`load_latest_checkpoint`). A file damaged later (a full disk, a copy
cut short) is skipped with a warning naming it and renamed to ``*.pt.unreadable``, so that rotation never counts it
as one of the newest and deletes a good checkpoint in its place; it is never deleted.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umt.fileio import atomic_path, atomic_write, replace, sha256_file

__all__ = ["CheckpointError", "run_dir_in_use", "save_checkpoint", "latest_checkpoint", "load_checkpoint",
           "load_latest_checkpoint", "rng_state", "set_rng_state", "drop_metrics_after"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing or cannot be read (truncated, corrupt, not a trainer checkpoint); the
    message names the file."""


def run_dir_in_use(run_dir: str | Path) -> bool:
    """The directory holds (part of) a run: a checkpoint, metrics or a config. A fresh run must not mix into it."""
    run_dir = Path(run_dir)
    return (any((run_dir / "checkpoints").glob("*.pt")) or (run_dir / "metrics.jsonl").exists()
            or (run_dir / "config.json").exists())


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: str | Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``payload`` atomically as ``step_{step:08d}.pt``, then delete all but the newest ``keep_last``.

    Returns:
        The checkpoint path.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    with atomic_path(path) as tmp:  # step_XXXXXXXX.pt.tmp: rotation and resume never see a partial file
        torch.save(payload, tmp)
        atomic_write(_checksum_path(path), sha256_file(tmp) + "\n")  # before the rename: a .pt always has one
    done = sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))
    for old in done[:-keep_last]:
        old.unlink(missing_ok=True)
    for sha in ckpt_dir.glob("step_*.sha256"):  # of rotated checkpoints, and of ones set aside as unreadable
        if not sha.with_suffix(".pt").exists():
            sha.unlink()
    return path


def _checksum_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))
    return done[-1] if done else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (trusted file: it holds RNG states).

    Raises:
        CheckpointError: the file is missing, differs from the sha256 recorded at save, is unreadable (e.g.
            truncated: torch's "failed reading zip archive") or is not a trainer checkpoint; the one-line message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    recorded = _checksum_path(path)
    if recorded.is_file() and sha256_file(path) != recorded.read_text().strip():
        raise CheckpointError(f"checkpoint {path} is unreadable (its sha256 differs from the one recorded at save: "
                              "the file changed or was not fully written)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises RuntimeError, EOFError, UnpicklingError, ... alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {first})") from e
    missing = [k for k in ("model", "optimizer", "scheduler", "rng", "step") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a trainer checkpoint (missing {missing})")
    return state


def load_latest_checkpoint(ckpt_dir: str | Path, rename: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``ckpt_dir`` that loads, and its state; None when there is none.

    Unreadable ones newer than it are skipped with a warning naming each and, with ``rename`` (rank 0 only), renamed
    to ``*.pt.unreadable`` (kept, out of rotation's way).
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    for path in sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name)), reverse=True):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            aside = path.with_name(path.name + ".unreadable")
            log.warning("resume=auto: skipping %s%s; trying the next newest", e,
                        f"; renamed to {aside.name}" if rename else "")
            if rename:
                replace(path, aside)
    return None


def drop_metrics_after(metrics: str | Path, step: int) -> int:
    """Remove the rows of ``metrics.jsonl`` logged after ``step`` (atomic rewrite), so that a run resumed from the
    checkpoint of ``step`` logs every later step exactly once (a worker that died after logging steps past its last
    checkpoint would otherwise leave them twice). A torn last line (the process died mid-write) is dropped too.

    Returns:
        How many rows were removed (0 when the file is absent).
    """
    metrics = Path(metrics)
    if not metrics.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if row_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write(metrics, "".join(x + "\n" for x in kept))
    return dropped
