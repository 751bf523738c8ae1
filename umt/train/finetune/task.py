"""Action-classification fine-tuning (task ``finetune``; docs/design.md, "Fine-tuning").

The model is the student ViT as a classifier (:class:`umt.model.student.UMTStudent` with ``num_classes``: mean
pooling over all tokens, ``fc_norm``, a head initialised × 0.001), its backbone loaded from ``model.init_from``
(a stage-1/stage-2 checkpoint, a safetensors export or a fine-tuned classifier, :func:`umt.model.load.load_backbone`)
with the position table interpolated from the pre-training size. The step (:mod:`umt.train.finetune.step`) mixes
each batch (timm ``Mixup``/CutMix on the folded clip, seeded per step: :class:`umt.train.finetune.mixup.VideoMixup`)
and minimises the soft-target cross-entropy.
The optimizer's groups carry layer-wise lr decay (:func:`layer_decay_groups`). Evaluation is multi-view
classification on ``eval.shards`` (:func:`classify`).

Official references: ``single_modality/run_class_finetuning.py`` (loading, head re-mapping, lr scaling, mixup,
criterion), ``optim_factory.py`` (``get_parameter_groups``, ``get_num_layer_for_vit``, ``LayerDecayValueAssigner``),
``engines/engine_for_finetuning.py`` (the step, per-step lr × ``lr_scale``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn as nn

import umt.model  # noqa: F401 - registers the umt_vit_* names in timm
from umt.config import ConfigError, TrainConfig
from umt.flops import ClassifierSpec, ViTSpec, classifier_train_flops_per_clip
from umt.model.label_map import LabelMapError, remap_head
from umt.model.load import BackboneLoadError, BackboneState, LoadReport, load_backbone, read_backbone
from umt.model.student import STUDENT_ARCHS, UMTStudent
from umt.train.finetune.step import FinetuneStep
from umt.train.runtime import Runtime
from umt.train.task import Task, register_task

__all__ = ["FinetuneTask", "layer_id_for_vit", "layer_decay_groups", "build_classifier",
           "classify", "eval_data_config"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- layer-wise lr decay
def layer_id_for_vit(name: str, depth: int) -> int:
    """Layer of parameter ``name`` for layer-wise lr decay (official ``get_num_layer_for_vit``): 0 for the patch
    embedding (and a position table, were it a parameter), ``i + 1`` for ``blocks.i.*``, ``depth + 1`` for everything
    after the blocks (``fc_norm``, ``head``, a final ``norm``)."""
    if name.startswith(("patch_embed", "pos_embed", "cls_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                       skip: set[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (official ``get_parameter_groups`` with
    ``LayerDecayValueAssigner``; BEiT, Bao et al. 2022).

    A parameter of layer i (:func:`layer_id_for_vit`; ``num_layers = depth``) goes to group
    ``layer_{i}_{decay|no_decay}`` with ``lr_scale = layer_decay^(num_layers + 1 − i)``: the head trains at the full
    lr, the patch embedding at ``layer_decay^(depth + 1)``. No weight decay on 1-D parameters, on ``*.bias`` and on
    the names in ``skip``.

    Args:
        model: the classifier (``model.blocks``: the depth).
        weight_decay: decay of the ``decay`` groups.
        layer_decay: the per-layer factor (1: every scale is 1).
        skip: parameter names without weight decay (``model.no_weight_decay()``).

    Returns:
        Groups ``{"name", "params", "weight_decay", "lr_scale"}``, the highest layer first (so a logged
        ``param_groups[0]["lr"]`` is the head's, the schedule's peak); :func:`umt.train.step.build_optimizer` sets
        each group's lr to ``peak × lr_scale``.
    """
    depth = len(model.blocks)  # type: ignore[arg-type]
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(".bias") or name in skip
        lid = layer_id_for_vit(name, depth)
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"name": key, "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - lid), "layer": lid}
        groups[key]["params"].append(p)
    ordered = sorted(groups.values(), key=lambda g: (-g["layer"], g["weight_decay"] == 0.0))
    for g in ordered:
        del g["layer"]
    return ordered


# ------------------------------------------------------------------------------------------------------- the model
def _resolve_num_classes(cfg: TrainConfig) -> int:
    """``finetune.num_classes``, or the training shards' class count when it is 0.

    Raises:
        ConfigError: 0 with synthetic data or shards without a class list.
    """
    if cfg.finetune.num_classes:
        return cfg.finetune.num_classes
    if cfg.synthetic_data:
        raise ConfigError("finetune.num_classes=0 reads the class count from the shards: set it with synthetic data")
    from umt.data.format import read_manifest

    classes = read_manifest(Path(cfg.data.shards)).get("classes") or []
    if not classes:
        raise ConfigError(f"{cfg.data.shards}/manifest.json lists no class names: set finetune.num_classes")
    return len(classes)


def build_classifier(cfg: TrainConfig, num_classes: int,
                     init: BackboneState | None = None) -> tuple[UMTStudent, LoadReport | None]:
    """The classifier of ``cfg`` (``model.student`` with ``num_classes``) and its backbone from ``init``.

    The position table is built at the pre-training size (``finetune.pretrain_num_frames``/``pretrain_img_size``,
    else what ``init`` records: a fine-tuned file's own pre-training size, a pre-trained file's size; else the run's
    own) and interpolated to ``data.num_frames × data.input_size``.
    ``init``'s classifier is loaded when ``finetune.init_head`` (re-mapped with ``finetune.label_map`` when the class
    counts differ), else a fresh head (× ``finetune.head_init_scale``) is kept.

    Returns:
        ``(model on CPU, the load report or None)``.

    Raises:
        ConfigError: an unknown student, another architecture in ``init`` (the message names the mismatched keys),
            a head whose class count differs without ``finetune.label_map``, or a bad label map.
    """
    m, d, f = cfg.model, cfg.data, cfg.finetune
    if m.student not in STUDENT_ARCHS:
        raise ConfigError(f"model.student {m.student!r} is not one of {sorted(STUDENT_ARCHS)}")
    # a fine-tuned init file carries the size its own table was interpolated from; a pre-trained one its own size
    pre_frames = (f.pretrain_num_frames or (init.pretrain_num_frames or init.num_frames if init is not None else None)
                  or d.num_frames)
    pre_size = (f.pretrain_img_size or (init.pretrain_img_size or init.img_size if init is not None else None)
                or d.input_size)
    model = timm.create_model(m.student, num_classes=num_classes, num_frames=d.num_frames, img_size=d.input_size,
                              drop_path_rate=m.drop_path, pretrain_num_frames=pre_frames,
                              pretrain_img_size=pre_size, head_init_scale=f.head_init_scale)
    if init is None:
        return model, None
    sd = dict(init.state_dict)
    head = False
    if "head.weight" in sd and f.init_head:
        rows = sd["head.weight"].shape[0]
        if f.label_map:
            try:
                sd["head.weight"], sd["head.bias"] = remap_head(sd["head.weight"], sd["head.bias"], num_classes,
                                                                f.label_map)
            except LabelMapError as e:
                raise ConfigError(f"finetune.label_map: {e}") from e
        elif rows != num_classes:
            raise ConfigError(f"model.init_from {init.path} has a {rows}-class head, this run {num_classes} classes: "
                              "set finetune.label_map (first, or a label-map file) or finetune.init_head=false")
        head = True
    elif f.label_map and "head.weight" not in sd:
        log.warning("finetune.label_map is set but %s has no classifier head: a fresh head is used", init.path)
    try:
        report = load_backbone(model, dataclasses.replace(init, state_dict=sd), head=head)
    except BackboneLoadError as e:
        raise ConfigError(f"model.init_from: {e}") from e
    return model, report


# ------------------------------------------------------------------------------------------------------ evaluation
def eval_data_config(cfg: TrainConfig, temporal_views: int = 1, spatial_views: int = 1) -> Any:
    """The evaluation loader's ``DataConfig`` (:func:`umt.eval.common.eval_data_config`): ``eval.shards``,
    ``train=False`` (segment centres or the official test offsets, centre or 3 spatial crops, no augmentation),
    ``eval.batch_size``, ``temporal_views × spatial_views`` test views, every sample once (``drop_last`` false);
    normalisation and backend from the run's own ``data``."""
    from umt.eval.common import eval_data_config as _eval_data_config

    return _eval_data_config(cfg.eval.shards, batch_size=cfg.eval.batch_size, num_frames=cfg.data.num_frames,
                             input_size=cfg.data.input_size, views=(temporal_views, spatial_views), base=cfg.data)


def classify(model: nn.Module, loader: Any, *, num_classes: int, device: torch.device,
             amp_dtype: torch.dtype | None, out_dir: Path | None = None, class_names: list[str] | None = None,
             meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-1/top-5/mean per-class accuracy (percent) of ``model`` over ``loader``, every rank its share:
    :func:`umt.eval.classify.evaluate_classification` (multi-view softmax averaged per sample, every sample counted
    once over the ranks; with ``out_dir`` rank 0 writes its JSON/markdown/confusion-matrix report there)."""
    from umt.eval.classify import evaluate_classification

    return evaluate_classification(model, loader, num_classes=num_classes, device=device, amp_dtype=amp_dtype,
                                   out_dir=out_dir, class_names=class_names, meta=meta)


# -------------------------------------------------------------------------------------------------------- the task
@register_task
class FinetuneTask(Task):
    """Fine-tune the student ViT as an action classifier (module docstring).

    Raises (at construction):
        ConfigError: see :func:`build_classifier`; an unreadable ``model.init_from``; train and eval shards with
            different class lists.
    """

    name = "finetune"
    metrics = ("loss", "top1")
    eval_key = "top1"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        self.init: BackboneState | None = None
        if cfg.model.init_from:
            try:
                self.init = read_backbone(cfg.model.init_from)
            except BackboneLoadError as e:
                raise ConfigError(f"model.init_from: {e}") from e
        else:
            log.warning("model.init_from is empty: fine-tuning a randomly initialised backbone")
        self.num_classes = _resolve_num_classes(cfg)
        self._check_eval_classes()
        model, self.load_report = build_classifier(cfg, self.num_classes, self.init)
        # the resolved pre-training size goes into the config (config.json, checkpoints, best.pt): evaluation and a
        # later fine-tuning rebuild this exact table from the file (umt.model.load.BackboneState.pretrain_*)
        t0, h0, _ = model.pretrain_grid
        cfg.finetune.pretrain_num_frames = t0 * model.tubelet_size
        cfg.finetune.pretrain_img_size = h0 * model.patch_size
        if self.load_report is not None:
            log.info("fine-tuning from %s: %s", cfg.model.init_from, self.load_report.summary())
        self.model = model.to(rt.device)
        depth = len(model.blocks)
        self.spec = ClassifierSpec(ViTSpec(model.embed_dim, depth, model.patch_size), self.num_classes,
                                   cfg.data.num_frames, cfg.data.input_size, model.tubelet_size)

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """Mixup/CutMix pair each clip with its mirror in the batch: the batch must be even when they are on.

        Raises:
            ConfigError: ``data.batch_size × data.num_sample`` is odd with mixup or CutMix active.
        """
        if cfg.finetune.mixup_active and (cfg.data.batch_size * cfg.data.num_sample) % 2:
            raise ConfigError(f"mixup/cutmix pair each clip with its mirror in the batch: data.batch_size × "
                              f"data.num_sample must be even, got {cfg.data.batch_size} × {cfg.data.num_sample}")

    def _check_eval_classes(self) -> None:
        cfg = self.cfg
        if cfg.synthetic_data or not cfg.eval.shards:
            return
        from umt.data.format import read_manifest

        try:
            train = read_manifest(Path(cfg.data.shards)).get("classes") or []
            test = read_manifest(Path(cfg.eval.shards)).get("classes") or []
        except (FileNotFoundError, ValueError):
            return  # the loaders report a missing data set with their own message
        if train and test and train != test:
            raise ConfigError(f"eval.shards {cfg.eval.shards} has other classes than data.shards {cfg.data.shards} "
                              f"({len(test)} vs {len(train)}; label ids would not match)")

    def build_loader(self) -> Any:
        """The shard loader (the fine-tuning augmentation of ``cfg.data``) or the synthetic one."""
        cfg, rt = self.cfg, self.rt
        if cfg.synthetic_data:
            from umt.data.synthetic import SyntheticVideoLoader

            return SyntheticVideoLoader(cfg.data, rank=rt.rank, world_size=rt.world_size, device=rt.device,
                                        num_samples=cfg.synthetic_samples, num_classes=self.num_classes)
        from umt.data import build_loader

        return build_loader(cfg.data, rank=rt.rank, world_size=rt.world_size, device=rt.device)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """:func:`layer_decay_groups` with ``finetune.layer_decay`` and the model's ``no_weight_decay`` names."""
        return layer_decay_groups(self.model, weight_decay, self.cfg.finetune.layer_decay,
                                  skip=set(self.model.no_weight_decay()))

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> FinetuneStep:
        return FinetuneStep(net, optimizer, scheduler, self.cfg, self.rt.device, self.rt.amp_dtype, self.num_classes)

    def export_metadata(self) -> dict[str, str]:
        """As :meth:`Task.export_metadata`, plus the size the position table was interpolated from
        (``finetune.pretrain_num_frames``/``pretrain_img_size``, resolved in ``__init__``)."""
        f = self.cfg.finetune
        return {**super().export_metadata(), "pretrain_num_frames": str(f.pretrain_num_frames),
                "pretrain_img_size": str(f.pretrain_img_size)}

    def flops(self, batch: dict[str, Any]) -> float:
        """``clips × 3 × forward`` (:func:`umt.flops.classifier_train_flops_per_clip`), every repeated view a clip."""
        return self.samples(batch) * classifier_train_flops_per_clip(self.spec)

    def record(self) -> dict[str, Any]:
        init = self.init
        return {"finetune_init": {"path": init.path if init else None, "kind": init.kind if init else None,
                                  "arch": init.arch if init else None,
                                  "load": self.load_report.summary() if self.load_report else None},
                "num_classes": self.num_classes, "pretrain_grid": list(self.model.pretrain_grid),
                "flops_per_clip": classifier_train_flops_per_clip(self.spec)}

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another class count or position table (its pre-training grid).

        Raises:
            ConfigError: ``num_classes`` or the pre-training grid differs from the checkpoint's record.
        """
        for key, now in (("num_classes", self.num_classes), ("pretrain_grid", list(self.model.pretrain_grid))):
            saved = state.get(key)
            if saved is None:  # not recorded
                continue
            if (list(saved) if isinstance(saved, (list, tuple)) else saved) != now:
                raise ConfigError(f"{path} was trained with {key} {saved}, this run has {now}")

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """Classification on ``eval.shards``: 1 × 1 views periodically, ``eval.views`` for the final evaluation.

        Returns:
            ``{"top1", "top5", "mean_class_acc", ..., "num_views"}`` (accuracies in percent; numbers only;
            ``num_views`` the test views per video actually used), or None without ``eval.shards``; with ``final``
            the classification report goes to ``out_dir/eval_final``.
        """
        cfg, rt = self.cfg, self.rt
        if not cfg.eval.shards:
            return None
        views = (cfg.eval.temporal_views, cfg.eval.spatial_views) if final else (1, 1)
        dc = eval_data_config(cfg, *views)
        from umt.data import build_loader

        loader = build_loader(dc, rank=rt.rank, world_size=rt.world_size, device=rt.device)
        classes = list(getattr(loader, "manifest", {}).get("classes") or []) or None
        meta = {"task": self.name, "shards": cfg.eval.shards, "views": f"{views[0]}x{views[1]}",
                "init_from": cfg.model.init_from}
        try:
            res = classify(self.model, loader, num_classes=self.num_classes, device=rt.device,
                           amp_dtype=rt.amp_dtype, out_dir=out_dir / "eval_final" if final else None,
                           class_names=classes, meta=meta)
        finally:
            loader.close()
        out = {k: float(v) for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["num_views"] = float(views[0] * views[1])
        return out
