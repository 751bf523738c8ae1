"""What every demo shares: the hooks a demo recipe adds around the trainer (:class:`Demo`) and their helpers.

A demo runs from a fresh clone on 2 CPU cores (``python -m umt.train --recipe NAME``): it prepares its data before
the trainer runs and prints what it measured around it. Each stage's package defines its own
(``umt.train.distill.demo``: ``demo``, stage 1 on the embedded sample clips; ``umt.train.finetune.demo``:
``demo_ft``, fine-tuning of the stage-1 demo checkpoint with held-out top-1 before and after;
``umt.train.video_text.demo``: ``demo_stage2``, stage 2 from the stage-1 demo checkpoint with zero-shot retrieval
before and after); :data:`umt.train.recipes.DEMOS` maps recipe names to them.

Rules every demo keeps: the sample shards are built only into their own default directories (a directory the user
names is read as it is, or refused in one line when it holds no shards); ``model.init_from`` may name a run
directory, whose newest checkpoint is used; the recipes' default, ``runs/demo`` (the stage-1 demo's default run
directory), is trained there first when it does not exist; a directory holding a run without checkpoints is never
written to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from umt.train.checkpoint import run_dir_in_use
from umt.config import TrainConfig

__all__ = ["DemoError", "DEMO_STAGE1_RUN", "Demo", "BeforeAfterDemo", "newest_checkpoint", "same_path",
           "build_named_samples", "require_shards", "resolve_init", "held_out_eval", "final_eval"]

#: the stage-1 demo's default run directory (``python -m umt.train --recipe demo``)
DEMO_STAGE1_RUN = "runs/demo"


class DemoError(RuntimeError):
    """The demo cannot go on; the one-line message says why and what to do."""


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-step ``checkpoints/step_*.pt`` of ``run_dir`` (None when there is none)."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def same_path(a: str | Path, b: str | Path) -> bool:
    """``a`` and ``b`` name the same place (after resolving links and relative parts)."""
    return Path(a).resolve() == Path(b).resolve()


def require_shards(**dirs: str) -> None:
    """Each named shard directory (``name=dir``; several comma-separated) holds ``manifest.json``.

    Raises:
        DemoError: one does not (the message says how to build one or to keep the demo's default).
    """
    for name, value in dirs.items():
        for d in filter(None, (x.strip() for x in value.split(","))):
            if not (Path(d) / "manifest.json").is_file():
                raise DemoError(f"{name}={d} holds no shards (no manifest.json); build them with tools/make_shards.py, "
                                "or leave it at the demo's default, where the demo builds its sample itself")


def build_named_samples(cfg: TrainConfig, samples: dict[str, Callable[[str], Any]]) -> None:
    """Build each embedded sample set that ``cfg`` names (in ``data.shards``, comma-separated, or ``eval.shards``)
    in its default place (``samples``: default directory → its builder), then check every named directory.

    Raises:
        DemoError: as :func:`require_shards`.
    """
    named = [d.strip() for d in cfg.data.shards.split(",")] + ([cfg.eval.shards] if cfg.eval.shards else [])
    for default, build in samples.items():
        if any(same_path(d, default) for d in named if d):
            build(default)
    require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})


def resolve_init(cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
    """Resolve ``model.init_from`` to a checkpoint file: a file stays; a run directory gives its newest checkpoint;
    the default :data:`DEMO_STAGE1_RUN`, when absent, is trained first with ``train_stage1(run_dir)`` (an exit code).

    Raises:
        DemoError: a directory without checkpoints that is not the default, a default that holds a run without
            checkpoints, or a failed stage-1 demo run.
    """
    init = Path(cfg.model.init_from) if cfg.model.init_from else None
    if init is None or init.is_file():
        return cfg
    ckpt = newest_checkpoint(init) if init.is_dir() else None
    if ckpt is None:
        if not same_path(init, DEMO_STAGE1_RUN):
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


def held_out_eval(trainer: Any) -> dict[str, float] | None:
    """The task's periodic evaluation of the trainer's model now, without logging it or touching ``best.pt`` (eval
    mode, no gradients; the model is put back in train mode)."""
    trainer.model.eval()
    try:
        with torch.no_grad():
            return trainer.task.evaluate(False, trainer.run_dir)
    finally:
        trainer.model.train()


def final_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """The final evaluation row of ``run_dir/eval.jsonl`` (None when there is none)."""
    path = Path(run_dir, "eval.jsonl")
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finals = [r for r in rows if r.get("final")]
    return finals[-1] if finals else None


class Demo:
    """What a demo recipe adds around the trainer (the default: nothing).

    Attributes:
        single_process: refuse torchrun (a demo that may train the stage-1 demo first runs in one process).
    """

    single_process = False

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        """Build the sample shards the recipe names (default locations only) and resolve ``model.init_from``.

        Raises:
            DemoError: the demo cannot run (one line).
        """
        return cfg

    def before(self, trainer: Any) -> Any:
        """Measured before training (rank 0)."""
        return None

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        """Lines printed after training (rank 0)."""
        return []


class BeforeAfterDemo(Demo):
    """A demo from the stage-1 demo checkpoint that evaluates the task before training (and reports the final
    evaluation after it); one process, as it may train the stage-1 demo first."""

    single_process = True

    def before(self, trainer: Any) -> Any:
        return held_out_eval(trainer)
