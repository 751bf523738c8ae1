"""Stage 1 (video distillation from a frozen CLIP teacher, UMT ICCV 2023) as a task of the one trainer:
:class:`DistillationTask` (``task = "distill"``), and :class:`TeacherTask`, what it shares with stage 2 (the frozen
teacher beside the student: building both, the teacher's provenance and its check on resume, the preview image, the
teacher/student grid check).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from umt import ops
from umt.config import ConfigError, TrainConfig
from umt.flops import train_flops_per_clip
from umt.train.distill.step import StageOneStep, build_models, umt_spec
from umt.train.preview import render_clip
from umt.train.runtime import Runtime
from umt.train.step import TrainStep
from umt.train.task import Task, refuse_changed_input, register_task

__all__ = ["TeacherTask", "DistillationTask"]

log = logging.getLogger(__name__)


class TeacherTask(Task):
    """A task that trains the stage-1 student (+ UMA heads) beside the frozen CLIP teacher: stage 1 and stage 2.

    ``__init__`` builds both (:func:`umt.train.distill.step.build_models`): :attr:`model` is the student + UMA heads
    (a subclass may wrap them into its own model), :attr:`teacher` the frozen teacher, :attr:`vision_spec` their FLOP
    model.

    Raises (from ``__init__``):
        ConfigError: the teacher's patch grid does not match the student's.
    """

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        self.model, self.teacher = build_models(cfg, rt.device)
        self.vision_spec = umt_spec(cfg, self.model, self.teacher)

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """The teacher must see the student's patch grid.

        Raises:
            ConfigError: ``model.teacher_image_size`` is not a multiple of the student's grid side
                (``data.input_size / 16``).
        """
        grid = cfg.data.input_size // 16
        if cfg.model.teacher_image_size % grid:
            raise ConfigError(f"model.teacher_image_size {cfg.model.teacher_image_size} must give the student's "
                              f"{grid}×{grid} grid (input_size {cfg.data.input_size} / 16)")

    def teacher_record(self) -> dict[str, Any]:
        """The teacher's provenance (weights file and sha256, or random init), for ``config.json`` and checkpoints."""
        info = self.teacher.load_info
        return {"teacher_random_init": self.teacher.random_init,
                "teacher": info.to_dict() if info is not None else {"random_init": True}}

    def record(self) -> dict[str, Any]:
        return self.teacher_record()

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse to resume with other teacher weights than the checkpoint's (``model.allow_teacher_change``).

        Raises:
            ConfigError: the teacher file's sha256 (or random init) differs from the checkpoint's record.
        """
        saved = state.get("teacher")
        if saved is None:  # checkpoints from before the record
            return
        now = self.teacher_record()["teacher"]
        if saved.get("sha256") == now.get("sha256"):
            return
        what = (f"{saved.get('path', 'random init')} (sha256 {str(saved.get('sha256'))[:12]}) → "
                f"{now.get('path', 'random init')} (sha256 {str(now.get('sha256'))[:12]})")
        refuse_changed_input(path, "other teacher weights", what, self.cfg.model.allow_teacher_change,
                             "model.allow_teacher_change", "resuming would change the targets mid-run")

    def log_image(self, step_fn: TrainStep, tb: Any, step: int) -> None:
        """The preview panel (:func:`umt.train.preview.render_clip`) of the step's first clip (kept by
        :meth:`umt.train.distill.step.TeacherStep.keep_preview`)."""
        video, q_cls, k, kept = step_fn.first_clip  # type: ignore[misc]
        t = video.shape[1]
        grid = int(round((k.shape[2] - 1) ** 0.5))
        attention = ops.cls_attention(q_cls.float(), k.float())  # [T, N]
        img = render_clip(video, self.cfg.data.mean, self.cfg.data.std, grid, attention.view(t, -1),
                          {self.cfg.mask.kind: kept})
        tb.add_image("preview/first_clip", img, step, dataformats="HWC")


@register_task
class DistillationTask(TeacherTask):
    """Stage 1: the student ViT + UMA heads regress the frozen CLIP teacher's aligned layers on the tokens the
    semantic mask keeps (UMT, ICCV 2023; :class:`umt.train.distill.step.StageOneStep`)."""

    name = "distill"
    #: the periodic k-NN probe's top-1 (percent) picks ``best.pt``
    eval_key = "knn_top1"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        self.spec = self.vision_spec

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
        return {**self.teacher_record(), "flops_per_clip": train_flops_per_clip(self.spec)}

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """The k-NN probe of the student backbone when ``eval.shards`` and ``eval.train_shards``
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
