"""Atomic checkpoints with rotation: ``<run_dir>/checkpoints/step_XXXXXXXX.pt``.

A checkpoint is written to ``*.pt.tmp`` then renamed, so a file named ``step_*.pt`` is always complete; resume
``auto`` picks the newest such file.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

_NAME = re.compile(r"^step_(\d{8})\.pt$")


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
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    done = sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))
    for old in done[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))
    return done[-1] if done else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (trusted file: it holds RNG states)."""
    return torch.load(path, map_location="cpu", weights_only=False)
