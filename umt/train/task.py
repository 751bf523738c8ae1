"""Tasks: what one kind of training builds, for the one trainer (DESIGN.md, "One trainer runs every kind of
training").

:class:`~umt.train.trainer.Trainer` owns everything every kind of training shares, once: the loop, distributed
setup, precision, gradient accumulation, checkpoints and exact resume, logging and TensorBoard, the non-finite
guard, preemption. A :class:`Task` owns what differs: its models, its loader, the optimizer's parameter groups and
peak LR, the micro-step (forward + losses + backward, see :class:`~umt.train.step.TrainStep`), the metrics it
names, its FLOP model and what it records about its inputs. A recipe names its task (``TrainConfig.task``);
:data:`TASKS` maps names to classes.

Stage 1 (video distillation from a frozen CLIP teacher) is :class:`DistillationTask`; stage 2 (video-text) and
fine-tuning register themselves here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from umt import ops
from umt.flops import train_flops_per_clip
from umt.config import ConfigError, TrainConfig
from umt.train.step import StageOneStep, TrainStep, build_models, param_groups, peak_lr, umt_spec

if TYPE_CHECKING:
    from umt.train.trainer import Runtime

__all__ = ["Task", "refuse_changed_input", "DistillationTask", "TASKS", "register_task", "build_task"]

log = logging.getLogger(__name__)


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


class DistillationTask(Task):
    """Stage 1: the student ViT + UMA heads regress the frozen CLIP teacher's aligned layers on the tokens the
    semantic mask keeps (UMT, ICCV 2023; :class:`umt.train.step.StageOneStep`)."""

    name = "distill"
    #: the periodic k-NN probe's top-1 (percent) picks ``best.pt``
    eval_key = "knn_top1"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        self.model, self.teacher = build_models(cfg, rt.device)
        self.spec = umt_spec(cfg, self.model, self.teacher)

    def build_loader(self) -> Any:
        """The shard loader (:func:`umt.data.build_loader`) or, with ``synthetic_data``, the synthetic one."""
        cfg, rt = self.cfg, self.rt
        if cfg.synthetic_data:
            from umt.data.synthetic import SyntheticVideoLoader

            return SyntheticVideoLoader(cfg.data, rank=rt.rank, world_size=rt.world_size, device=rt.device,
                                        num_samples=cfg.synthetic_samples)
        from umt.data import build_loader

        return build_loader(cfg.data, rank=rt.rank, world_size=rt.world_size, device=rt.device)

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> StageOneStep:
        return StageOneStep(net, self.teacher, optimizer, scheduler, self.cfg, self.rt.device, self.rt.amp_dtype)

    def flops(self, batch: dict[str, Any]) -> float:
        return self.samples(batch) * train_flops_per_clip(self.spec)

    def record(self) -> dict[str, Any]:
        info = self.teacher.load_info
        return {"teacher_random_init": self.teacher.random_init,
                "teacher": info.to_dict() if info is not None else {"random_init": True},
                "flops_per_clip": train_flops_per_clip(self.spec)}

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse to resume with other teacher weights than the checkpoint's (``model.allow_teacher_change``).

        Raises:
            ConfigError: the teacher file's sha256 (or random init) differs from the checkpoint's record.
        """
        saved = state.get("teacher")
        if saved is None:  # checkpoints from before the record
            return
        now = self.record()["teacher"]
        if saved.get("sha256") == now.get("sha256"):
            return
        what = (f"{saved.get('path', 'random init')} (sha256 {str(saved.get('sha256'))[:12]}) → "
                f"{now.get('path', 'random init')} (sha256 {str(now.get('sha256'))[:12]})")
        refuse_changed_input(path, "other teacher weights", what, self.cfg.model.allow_teacher_change,
                             "model.allow_teacher_change", "resuming would change the targets mid-run")

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """The k-NN probe of the student backbone (issue 12, item 5) when ``eval.shards`` and ``eval.train_shards``
        are set: pooled features of both sets (evaluation loader, 1 view, every sample, split over the ranks;
        :func:`umt.eval.probe.knn_probe`), cosine k-NN (``eval.knn_k``, ``eval.knn_temperature``) from the
        ``train_shards`` bank to ``shards``. The same probe at the end (``final``).

        Returns:
            ``{"knn_top1", "knn_top5"}`` in percent (the same on every rank), or None without both shard sets.
        """
        ev = self.cfg.eval
        if not (ev.shards and ev.train_shards):
            return None
        from umt.eval.probe import knn_probe

        res = knn_probe(self.model.student, ev.train_shards, ev.shards, batch_size=ev.batch_size,
                        device=self.rt.device, k=ev.knn_k, temperature=ev.knn_temperature,
                        amp_dtype=self.rt.amp_dtype, base=self.cfg.data)
        return {"knn_top1": res["knn_top1"], "knn_top5": res["knn_top5"]}

    def log_image(self, step_fn: TrainStep, tb: Any, step: int) -> None:
        """The preview panel (:func:`umt.train.preview.render_clip`) of the step's first clip."""
        from umt.train.preview import render_clip

        video, q_cls, k, kept = step_fn.first_clip  # type: ignore[misc]
        t = video.shape[1]
        grid = int(round((k.shape[2] - 1) ** 0.5))
        attention = ops.cls_attention(q_cls.float(), k.float())  # [T, N]
        img = render_clip(video, self.cfg.data.mean, self.cfg.data.std, grid, attention.view(t, -1),
                          {self.cfg.mask.kind: kept})
        tb.add_image("preview/first_clip", img, step, dataformats="HWC")


#: ``TrainConfig.task`` → task class.
TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Add ``cls`` to :data:`TASKS` under ``cls.name`` (usable as a class decorator)."""
    TASKS[cls.name] = cls
    return cls


register_task(DistillationTask)

#: modules whose import registers more tasks (imported on first use, so stage 1 never imports transformers)
_TASK_MODULES: dict[str, str] = {"video_text": "umt.train.video_text", "finetune": "umt.train.finetune"}


def build_task(cfg: TrainConfig, rt: Runtime) -> Task:
    """The task ``cfg.task`` names, built for ``rt``.

    Raises:
        ConfigError: unknown task name (the message lists the known ones).
    """
    if cfg.task not in TASKS and cfg.task in _TASK_MODULES:
        import importlib

        importlib.import_module(_TASK_MODULES[cfg.task])
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; known: {sorted(set(TASKS) | set(_TASK_MODULES))}")
    factory: Callable[[TrainConfig, Runtime], Task] = TASKS[cfg.task]
    return factory(cfg, rt)
