"""The three demos that run from a fresh clone on 2 CPU cores (``python -m umt.train --recipe NAME``): what each
prepares before the trainer runs and what it prints around it.

=============  ===========================================================================================
``demo``       stage 1 on the embedded sample clips (the shards are built on first use)
``demo_ft``    fine-tuning of the stage-1 demo checkpoint on the sample's labels (a fixed per-class split of the
               clips): held-out top-1 before and after, and the k-NN probe of a random backbone beside the stage-1
               checkpoint (issue 12, item 7)
``demo_stage2`` stage 2 from the stage-1 demo checkpoint on the sample clips and images with their captions and the
               real MiniLM: zero-shot retrieval R@1 on the clips' captions before and after (issue 11, item 7)
=============  ===========================================================================================

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

__all__ = ["DemoError", "DEMO_STAGE1_RUN", "DEMOS", "Demo", "newest_checkpoint", "resolve_init", "held_out_eval",
           "final_eval", "knn_side_by_side"]

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


def _require_shards(**dirs: str) -> None:
    """Each named shard directory (``name=dir``; several comma-separated) holds ``manifest.json``.

    Raises:
        DemoError: one does not (the message says how to build one or to keep the demo's default).
    """
    for name, value in dirs.items():
        for d in filter(None, (x.strip() for x in value.split(","))):
            if not (Path(d) / "manifest.json").is_file():
                raise DemoError(f"{name}={d} holds no shards (no manifest.json); build them with tools/make_shards.py, "
                                "or leave it at the demo's default, where the demo builds its sample itself")


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


def knn_side_by_side(cfg: TrainConfig) -> str:
    """The k-NN probe (issue 12 items 5 and 7) on the held-out split, the training split as the bank, for a randomly
    initialised backbone and for the stage-1 checkpoint ``model.init_from``, side by side
    (:func:`umt.eval.probe.knn_probe_checkpoints`; ``eval.knn_k``, ``eval.knn_temperature``).

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


class Stage1Demo(Demo):
    """``demo``: the sample clip shards (:func:`umt.data.build.samples.ensure_sample_shards`)."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import DEFAULT_SAMPLE_SHARDS, ensure_sample_shards

        if _same(cfg.data.shards, DEFAULT_SAMPLE_SHARDS):
            ensure_sample_shards(DEFAULT_SAMPLE_SHARDS)
        _require_shards(**{"data.shards": cfg.data.shards})
        return cfg


class _BeforeAfterDemo(Demo):
    """A demo from the stage-1 demo checkpoint that evaluates the task before training (and reports the final
    evaluation after it); one process, as it may train the stage-1 demo first."""

    single_process = True

    def before(self, trainer: Any) -> Any:
        return held_out_eval(trainer)


class FinetuneDemo(_BeforeAfterDemo):
    """``demo_ft``: the sample's train / held-out split (:mod:`umt.data.build.sample_splits`), the stage-1 demo checkpoint,
    held-out top-1 before and after, the k-NN side by side."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.sample_splits import DEFAULT_SPLIT_SHARDS, ensure_sample_splits

        train, held = Path(DEFAULT_SPLIT_SHARDS, "train"), Path(DEFAULT_SPLIT_SHARDS, "heldout")
        if _same(cfg.data.shards, train) or (cfg.eval.shards and _same(cfg.eval.shards, held)):
            ensure_sample_splits(DEFAULT_SPLIT_SHARDS)
        _require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        fmt = lambda r: f"{r['top1']:.1f} %" if r and "top1" in r else "n/a"  # noqa: E731
        views = int(after.get("num_views", 1)) if after else 1
        return [f"held-out top-1 ({cfg.eval.shards}): {fmt(before)} before fine-tuning (stage-1 backbone, fresh "
                f"head), {fmt(after)} after ({views} view{'s' if views > 1 else ''} per clip, best.pt)",
                knn_side_by_side(cfg)]


class VideoTextDemo(_BeforeAfterDemo):
    """``demo_stage2``: the sample clip and image shards with their captions, the stage-1 demo checkpoint, zero-shot
    retrieval on the clips' captions before and after training."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import (DEFAULT_SAMPLE_IMAGE_SHARDS, DEFAULT_SAMPLE_SHARDS, ensure_sample_image_shards,
                                      ensure_sample_shards)

        named = [d.strip() for d in cfg.data.shards.split(",")] + ([cfg.eval.shards] if cfg.eval.shards else [])
        if any(_same(d, DEFAULT_SAMPLE_SHARDS) for d in named):
            ensure_sample_shards(DEFAULT_SAMPLE_SHARDS)
        if any(_same(d, DEFAULT_SAMPLE_IMAGE_SHARDS) for d in named):
            ensure_sample_image_shards(DEFAULT_SAMPLE_IMAGE_SHARDS)
        _require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        if not before or not after:
            return []
        from umt.data.captions import read_captions

        n_videos = len({i for i, _ in read_captions(cfg.eval.shards)})
        chance = 100.0 / n_videos
        line = lambda r, p: (f"text→video R@1 {r[p + 't2v_r1']:.1f} %, video→text R@1 {r[p + 'v2t_r1']:.1f} %")  # noqa: E731
        return [f"zero-shot retrieval on {cfg.eval.shards} ({n_videos} clips, their captions; text→video chance "
                f"{chance:.1f} %):",
                f"  dual encoder:  before {line(before, 'emb_')}; after {line(after, 'emb_')}",
                f"  VTM re-ranked (top {cfg.eval.rerank_k}): before {line(before, '')}; after {line(after, '')}"]


#: recipe name → its demo hooks (only used when the recipe trains on shards, not ``synthetic_data``)
DEMOS: dict[str, Demo] = {"demo": Stage1Demo(), "demo_ft": FinetuneDemo(), "demo_stage2": VideoTextDemo()}
