"""The fine-tuning demo (``python -m umt.train --recipe demo_ft``; issue 12 item 7): what it prepares before the
trainer runs and what it prints around it.

1. The sample clips' fixed train / held-out split is built as two shard sets (:mod:`umt.data.sample_splits`), in its
   default location only; shard directories the user names are read as they are.
2. ``model.init_from`` may name a run directory: its newest checkpoint is used. The recipe's default, ``runs/demo``,
   is the stage-1 demo's default run directory; when it does not exist the stage-1 demo is trained there first. A
   directory that holds a run without checkpoints is never written to (a one-line error says what to do).
3. Held-out top-1 is printed before fine-tuning (the stage-1 backbone with a fresh head) and after (the final
   evaluation, on ``best.pt``), then the k-NN probe of a random backbone beside the stage-1 checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from umt.train.checkpoint import run_dir_in_use
from umt.train.config import TrainConfig

__all__ = ["DemoError", "DEMO_STAGE1_RUN", "newest_checkpoint", "prepare", "held_out_top1", "final_top1",
           "knn_side_by_side"]

#: the stage-1 demo's default run directory (``python -m umt.train --recipe demo``)
DEMO_STAGE1_RUN = "runs/demo"


class DemoError(RuntimeError):
    """The demo cannot go on; the one-line message says why and what to do."""


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-step ``checkpoints/step_*.pt`` of ``run_dir`` (None when there is none)."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def prepare(cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
    """Make ``cfg`` (the ``demo_ft`` recipe after overrides) runnable: build the split shards where the recipe puts
    them, resolve ``model.init_from`` to a checkpoint file (training the stage-1 demo with ``train_stage1(run_dir)``
    when its default run directory is absent).

    Returns:
        ``cfg`` with ``model.init_from`` naming a file.

    Raises:
        DemoError: a named shard directory without ``manifest.json``, an ``init_from`` directory without checkpoints
            (or that is not the default and absent), or a failed stage-1 demo run.
    """
    from umt.data.sample_splits import DEFAULT_SPLIT_SHARDS, ensure_sample_splits

    default_train, default_held = Path(DEFAULT_SPLIT_SHARDS, "train"), Path(DEFAULT_SPLIT_SHARDS, "heldout")
    if _same(cfg.data.shards, default_train) or (cfg.eval.shards and _same(cfg.eval.shards, default_held)):
        ensure_sample_splits(DEFAULT_SPLIT_SHARDS)
    for name, d in (("data.shards", cfg.data.shards), ("eval.shards", cfg.eval.shards)):
        if d and not (Path(d) / "manifest.json").is_file():
            raise DemoError(f"{name}={d} holds no shards (no manifest.json); build them with tools/make_shards.py, or "
                            f"leave it at the demo's default under {DEFAULT_SPLIT_SHARDS}")
    init = Path(cfg.model.init_from) if cfg.model.init_from else None
    if init is None or init.is_file():
        return cfg
    ckpt = newest_checkpoint(init) if init.is_dir() else None
    if ckpt is None:
        if not _same(init, DEMO_STAGE1_RUN):
            raise DemoError(f"model.init_from={init} is neither a checkpoint file nor a run directory with "
                            "checkpoints/step_*.pt")
        if run_dir_in_use(init):
            raise DemoError(f"{init} holds a stage-1 run without checkpoints: finish it with `python -m umt.train "
                            f"--recipe demo --run-dir {init} --resume auto`, or pass --set model.init_from=FILE")
        rc = train_stage1(init)
        ckpt = newest_checkpoint(init)
        if rc != 0 or ckpt is None:
            raise DemoError(f"the stage-1 demo run into {init} failed (exit {rc}); see its messages above")
    cfg.model.init_from = str(ckpt)
    return cfg


def held_out_top1(trainer: Any) -> dict[str, float] | None:
    """The task's periodic evaluation (1 × 1 views) of the trainer's model now, without logging it or touching
    ``best.pt`` (eval mode, no gradients; the model is put back in train mode)."""
    trainer.model.eval()
    try:
        with torch.no_grad():
            return trainer.task.evaluate(False, trainer.run_dir)
    finally:
        trainer.model.train()


def final_top1(run_dir: str | Path) -> dict[str, Any] | None:
    """The final evaluation row of ``run_dir/eval.jsonl`` (None when there is none)."""
    path = Path(run_dir, "eval.jsonl")
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finals = [r for r in rows if r.get("final")]
    return finals[-1] if finals else None


def knn_side_by_side(cfg: TrainConfig) -> str:
    """The k-NN probe (issue 12 items 5 and 7) on the held-out split, the training split as the bank, for a randomly
    initialised backbone and for the stage-1 checkpoint ``model.init_from``, side by side (evalcls's
    ``umt.eval.probe.knn_probe_checkpoints`` and ``format_knn_table``; ``eval.knn_k``, ``eval.knn_temperature``).

    Returns:
        One line to print (``k-NN top-1: random backbone X %, stage-1 checkpoint Y %``).
    """
    from umt.eval.probe import format_knn_table, knn_probe_checkpoints

    ev = cfg.eval
    res = knn_probe_checkpoints({"random backbone": None, "stage-1 checkpoint": cfg.model.init_from},
                                cfg.data.shards, ev.shards, arch=cfg.model.student, num_frames=cfg.data.num_frames,
                                input_size=cfg.data.input_size, batch_size=ev.batch_size, k=ev.knn_k,
                                temperature=ev.knn_temperature, device="cpu", seed=cfg.seed,
                                num_workers=cfg.data.num_workers)
    return format_knn_table(res)
