"""Tasks: what one kind of training builds, for the one trainer, and the registry of tasks by name.

:class:`~umt.train.trainer.Trainer` owns everything every kind of training shares, once: the loop, distributed
setup, precision, gradient accumulation, checkpoints and exact resume, logging and TensorBoard, the non-finite
guard, preemption. A :class:`Task` owns what differs: its models, its loader, the optimizer's parameter groups and
peak LR, the micro-step (forward + losses + backward, see :class:`~umt.train.step.TrainStep`), the metrics it
names, its FLOP model, what it records about its inputs, the checks its config must pass and what an export of its
backbone carries. A recipe names its task (``TrainConfig.task``); :func:`task_class` maps names to classes.

Each stage's package defines its task and registers it (:func:`register_task`) when imported: stage 1
(``umt.train.distill.task``), stage 2 (``umt.train.video_text.task``), fine-tuning (``umt.train.finetune.task``).
:data:`TASK_MODULES` names the module of each, imported on first use: a run loads only its own stage, and this module,
which every stage imports for :class:`Task`, imports none of them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from umt.config import ConfigError, TrainConfig
from umt.train.runtime import Runtime
from umt.train.step import TrainStep, param_groups, peak_lr

__all__ = ["Task", "refuse_changed_input", "load_init_from", "TASKS", "TASK_MODULES", "register_task", "task_class", "build_task",
           "check_config"]

log = logging.getLogger(__name__)


def load_init_from(model: nn.Module, path: str, load: Callable[[nn.Module, str], dict[str, list[str]]]
                   ) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``model.init_from``: ``load(model, path)`` (a loader returning the ``loaded``/``missing``/``dropped`` key
    lists), and the counts a run records in its config (``{"path", "loaded", "missing", "dropped"}``).

    Raises:
        ConfigError: the file could not be read or does not fit (the loader's
            :class:`~umt.model.load.BackboneLoadError`, as one line).
    """
    from umt.model.load import BackboneLoadError

    try:
        rep = load(model, path)
    except BackboneLoadError as e:
        raise ConfigError(f"model.init_from: {e}") from None
    return rep, {"path": path, **{k: len(rep[k]) for k in ("loaded", "missing", "dropped")}}


def refuse_changed_input(path: Path, kind: str, what: str, allowed: bool, flag: str, why: str = "") -> None:
    """A resumed run's input (teacher, text encoder) differs from the checkpoint's record: refuse unless the config
    ``flag`` allows it, then warn. ``kind`` completes "was trained with ..." (``"other teacher weights"``).

    Raises:
        ConfigError: not ``allowed`` (the one-line message names the change and the flag).
    """
    if not allowed:
        raise ConfigError(f"{path} was trained with {kind}: {what}; {why + '. ' if why else ''}"
                          f"Pass --set {flag}=true to resume anyway")
    log.warning("resuming %s, trained with %s: %s (allowed by %s)", path, kind, what, flag)


class Task:
    """One kind of training, as the trainer sees it. Subclasses set :attr:`model` in ``__init__`` (built on
    ``rt.device`` after the trainer seeded torch's RNG with ``cfg.seed``, so every rank builds the same weights).

    Attributes:
        name: the registry name (``TrainConfig.task``).
        model: the trainable module: its ``state_dict`` is checkpointed, DDP wraps it.
        metrics: the names of the losses :meth:`TrainStep.train_batch` returns, ``"loss"`` (the total, what the
            optimizer minimises) first; each is averaged over a logging interval and logged.
    """

    name = ""
    metrics: tuple[str, ...] = ("loss",)
    #: the :meth:`evaluate` result that picks ``best.pt`` (higher is better)
    eval_key = ""

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.model: nn.Module

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """The checks this task adds to :meth:`umt.config.TrainConfig.check` (fields only this task reads, or that
        only it constrains); run by :func:`check_config` before anything is built.

        Raises:
            ConfigError: inconsistent fields (task-specific; none by default).
        """

    # -------------------------------------------------------------------------------------------- building
    def build_loader(self) -> Any:
        """The training loader: ``__len__`` (batches per epoch per rank), ``epoch_iter(epoch, start_batch)``,
        ``batch_size`` and ``close()`` (the interface of :class:`umt.data.loader.VideoLoader`)."""
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups (default :func:`umt.train.step.param_groups`: no decay on 1-D parameters)."""
        return param_groups(self.model, weight_decay)

    def peak_lr(self, world_size: int) -> tuple[float, float]:
        """``(peak, floor)`` LR of this run (default :func:`umt.train.step.peak_lr`, scaled by global batch/256)."""
        return peak_lr(self.cfg, world_size)

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainStep:
        """The step object the trainer drives (``net``: :attr:`model`, maybe DDP-wrapped or compiled)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- accounting
    def samples(self, batch: dict[str, Any]) -> int:
        """Samples (clips, images) the step trains on in ``batch``, for throughput and MFU: every augmented view
        counts (``num_sample`` views of a video are ``num_sample`` clips of compute). Host-side shapes, no sync."""
        return int(batch["index"].shape[0])

    def flops(self, batch: dict[str, Any]) -> float | None:
        """Training FLOPs of one micro-batch (forward + backward, :mod:`umt.flops`), or None when unmodelled."""
        return None

    def record(self) -> dict[str, Any]:
        """What this run was built from, for ``config.json`` and every checkpoint (e.g. the teacher's provenance)."""
        return {}

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse to resume from ``state`` (loaded from ``path``) when this run's inputs changed.

        Raises:
            ConfigError: an input the checkpoint depends on changed (task-specific).
        """

    def backbone(self) -> nn.Module:
        """The module ``--export`` writes (:func:`umt.train.export.export_student`): the student of a model that
        wraps one (``model.student``), else :attr:`model` itself."""
        return getattr(self.model, "student", self.model)

    def export_metadata(self) -> dict[str, str]:
        """The safetensors metadata of an export of :meth:`backbone`: its timm architecture and sizes (the trainer's
        caller adds the step)."""
        c = self.cfg
        return {"arch": c.model.student, "num_frames": str(c.data.num_frames), "img_size": str(c.data.input_size)}

    def log_image(self, step_fn: TrainStep, tb: Any, step: int) -> None:
        """Write the preview image ``step_fn`` kept on an image-logging step (``log.image_every_steps``)."""

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """Evaluate :attr:`model` (in eval mode; the trainer restores train mode) on the task's eval set; called on
        every rank (the task splits the set over ranks and reduces). ``final``: the full protocol after training
        (e.g. multi-view), else the cheaper periodic one. Rank 0 may write reports under ``out_dir``.

        Returns:
            Scalar results (the same on every rank), or None when no eval set is configured.
        """
        return None


#: ``TrainConfig.task`` → task class, filled by :func:`register_task` as each stage's task module is imported.
TASKS: dict[str, type[Task]] = {}

#: ``TrainConfig.task`` → the module whose import registers that task (:func:`task_class` imports it on first use).
TASK_MODULES: dict[str, str] = {"distill": "umt.train.distill.task", "video_text": "umt.train.video_text.task",
                                "finetune": "umt.train.finetune.task"}
TASK_MODULES["video_qa"] = "umt.train.video_qa.task"  # video question answering


def register_task(cls: type[Task]) -> type[Task]:
    """Add ``cls`` to :data:`TASKS` under ``cls.name`` (usable as a class decorator)."""
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name``, importing its stage's module (:data:`TASK_MODULES`) on first use.

    Raises:
        ConfigError: unknown task name (the message lists the known ones).
    """
    if name not in TASKS and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {sorted(set(TASKS) | set(TASK_MODULES))}")
    return TASKS[name]


def check_config(cfg: TrainConfig, require_data: bool = True) -> None:
    """Every check of ``cfg`` before a run: :meth:`umt.config.TrainConfig.check` and its task's own
    (:meth:`Task.check_config`).

    Raises:
        ConfigError: a failed check, or an unknown ``cfg.task``.
    """
    cfg.check(require_data=require_data)
    task_class(cfg.task).check_config(cfg)


def build_task(cfg: TrainConfig, rt: Runtime) -> Task:
    """The task ``cfg.task`` names, built for ``rt``.

    Raises:
        ConfigError: unknown task name (the message lists the known ones), or the task refused its config.
    """
    factory: Callable[[TrainConfig, Runtime], Task] = task_class(cfg.task)
    return factory(cfg, rt)
