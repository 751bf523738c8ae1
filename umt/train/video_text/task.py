"""Stage 2: video-text pre-training (UMT Sec. 3.2; official ``multi_modality/``), a task of the one trainer.

:class:`VideoTextTask` (``task = "video_text"``) builds the stage-1 student + UMA heads (initialised from a stage-1
checkpoint or export, ``model.init_from``), the frozen CLIP teacher of stage 1, the BERT text encoder
(:mod:`umt.model.text`) and :class:`~umt.model.vision_text.UMTVisionText`; its loader interleaves whole video-text and
image-text batches (the stage-2 MetaLoader, or :class:`~umt.data.synthetic.SyntheticPairLoader` with
``synthetic_data``). Its step is :class:`~umt.train.video_text.step.VideoTextStep`. Optimiser (official
``exp/pretraining/*.py``, ``utils/optimizer.py``): AdamW, lr 1e-4 *not* scaled by the batch, betas (0.9, 0.999),
weight decay 0.02 on ≥ 2-D weights only (none on biases, norms, the temperature), no per-module lr, cosine over 10
epochs after 1 warm-up epoch to a floor of 0.01 × lr.

Fine-tuned retrieval (``umt.train.video_text.retrieval_ft``, official ``exp/finetuning/ret_*``) is the same task
without a teacher: when :func:`needs_teacher` is false (UTA weight 0, no semantic mask) no CLIP teacher is built or
loaded, the UMA heads keep the stage-2 layout but are frozen, and the step trains on every token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

import umt.model  # noqa: F401 - registers the umt_vit_* names
from umt.config import ConfigError, TrainConfig
from umt.flops import TextSpec, VideoTextSpec, stage2_flops_per_sample
from umt.model.heads import UMTPretrain
from umt.model.teacher import teacher_output_dim
from umt.model.text import TextEncoderError, build_text_encoder, resolve_text_dir
from umt.model.vision_text import UMTVisionText, load_pretrained
from umt.train.distill.task import TeacherTask
from umt.train.runtime import Runtime
from umt.train.task import Task, load_init_from, refuse_changed_input, register_task
from umt.train.video_text.step import VideoTextStep

__all__ = ["VideoTextTask", "needs_teacher", "build_student", "freeze_unused"]

log = logging.getLogger(__name__)


def needs_teacher(cfg: TrainConfig) -> bool:
    """Whether a ``video_text`` run needs the frozen CLIP teacher: for UTA (``text.uta_weight`` > 0) or for the
    semantic mask (``mask.kind="semantic"`` with ``mask.ratio`` or ``mask.image_ratio`` > 0). Fine-tuned retrieval
    (official ``ret_*``: ``uta=0``, ``video_mask_ratio=0``) needs none, as the official ``encode_teacher`` returns
    nothing when the UTA weight is 0."""
    m = cfg.mask
    return cfg.text.uta_weight > 0 or (m.kind == "semantic" and (m.ratio > 0 or m.image_ratio > 0))


def build_student(cfg: TrainConfig, device: torch.device, teacher_dim: int) -> UMTPretrain:
    """The student + UMA heads of width ``teacher_dim`` without a teacher (the heads keep a stage-2 checkpoint's
    layout; teacher-free runs freeze them, :func:`freeze_unused`)."""
    d, m = cfg.data, cfg.model
    student = timm.create_model(m.student, num_frames=d.num_frames, img_size=d.input_size,
                                drop_path_rate=m.drop_path, align_layers=m.align_layers)
    return UMTPretrain(student, teacher_dim).to(device)


def freeze_unused(model: UMTVisionText, t: Any) -> None:
    """Freeze what a loss of weight 0 alone would train, so that every trainable parameter gets a gradient (DDP
    without ``find_unused_parameters``, as the official fine-tuning): the UMA heads when ``uta_weight`` is 0, the MLM
    head's own transform when ``mlm_weight`` is 0 (its decoder weight is the word embeddings, which VTC trains)."""
    if t.uta_weight == 0:
        model.heads.requires_grad_(False)
    if t.mlm_weight == 0:
        tied = model.text.embeddings.word_embeddings.weight
        for p in model.mlm_head.parameters():
            if p is not tied:
                p.requires_grad_(False)


@register_task
class VideoTextTask(TeacherTask):
    """Stage 2 (UMT Sec. 3.2): VTC + VTM + MLM + UTA on interleaved video-text and image-text batches.

    Raises (from ``__init__``):
        ConfigError: a text encoder directory that is missing or not a BERT, a fusion layer out of range, a
            ``model.init_from`` file without a backbone or with another size, a teacher grid that does not match.
    """

    name = "video_text"
    #: ``vtc_negatives``: VTC candidates per query besides its pair (``B × world − 1``), so a run on fewer GPUs
    #: than the recipe's shows the smaller contrastive batch that accumulation does not restore
    metrics = ("loss", "loss_vtc", "loss_vtm", "loss_mlm", "loss_uta", "vtc_negatives")
    #: zero-shot retrieval's mean of the six recalls picks ``best.pt`` (the official ``stop_key`` ``r_mean``)
    eval_key = "r_mean"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        #: no teacher is built or loaded (:func:`needs_teacher`): fine-tuned retrieval
        self.teacher_free = not needs_teacher(cfg)
        if self.teacher_free:
            Task.__init__(self, cfg, rt)
            self.model, self.teacher = build_student(cfg, rt.device, teacher_output_dim(cfg.model.teacher)), None
            log.info("teacher-free video_text: UTA weight 0 and no semantic mask, so no teacher is built or loaded")
        else:
            super().__init__(cfg, rt)
        pre = self.model  # the stage-1 student + UMA heads (beside the frozen teacher unless teacher-free)
        t = cfg.text
        try:
            text, self.text_info = build_text_encoder(t.encoder, t.fusion_layer, pre.student.embed_dim,
                                                      grad_checkpointing=t.grad_checkpointing)
        except TextEncoderError as e:
            raise ConfigError(str(e)) from None
        model = UMTVisionText(pre.student, pre.heads, text, t.embed_dim, t.temp, t.mlm_prob, t.vtm_hard_negatives,
                              t.vtc_local_grad)
        self.init_report: dict[str, Any] | None = None
        if cfg.model.init_from:
            rep, self.init_report = load_init_from(model, cfg.model.init_from, load_pretrained)
            prefixes = sorted({k.split(".")[0] for k in rep["missing"]})
            log.info("init from %s: %d tensors loaded (student, %d UMA head tensors), %d not in the file and kept as "
                     "built (%s: the text encoder keeps its own pretrained weights), %d file keys unused",
                     cfg.model.init_from, len(rep["loaded"]),
                     sum(k.startswith("heads.") for k in rep["loaded"]), len(rep["missing"]), ", ".join(prefixes),
                     len(rep["dropped"]))
        else:
            log.warning("model.init_from is empty: stage 2 starts from a RANDOM student; UMT initialises it from the "
                        "stage-1 checkpoint (set model.init_from)")
        freeze_unused(model, t)
        self.model = model.to(rt.device)
        self.spec = None if self.teacher_free else VideoTextSpec(
            self.vision_spec, TextSpec(text.width, text.depth, text.depth - text.fusion_layer, text.vocab_size,
                                       text.config.intermediate_size), t.embed_dim, cfg.mask.image_ratio, t.max_len)

    # -------------------------------------------------------------------------------------------- building
    def build_loader(self) -> Any:
        """The stage-2 MetaLoader over ``data.shards`` (``umt.data.meta_loader.build_video_text_loader``) or, with
        ``synthetic_data``, :class:`~umt.data.synthetic.SyntheticPairLoader` (``synthetic_samples`` videos and as many
        images).

        Raises:
            ConfigError: the shard loader is not available, or it refused the shards (e.g. no captions): one line.
        """
        cfg, rt, text = self.cfg, self.rt, self.model.text
        if cfg.synthetic_data:
            from umt.data.synthetic import SyntheticPairLoader

            return SyntheticPairLoader(cfg.data, max_len=cfg.text.max_len, cls_id=text.cls_id, sep_id=text.sep_id,
                                       pad_id=text.pad_id, vocab_size=text.vocab_size, rank=rt.rank,
                                       world_size=rt.world_size, device=rt.device, num_videos=cfg.synthetic_samples,
                                       num_images=cfg.synthetic_samples)
        try:
            from umt.data.meta_loader import build_video_text_loader  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("stage-2 shard loading needs umt.data.meta_loader, which this build lacks; set "
                              "synthetic_data=true to train on synthetic pairs") from None
        try:
            return build_video_text_loader(cfg.data, tokenizer=str(resolve_text_dir(cfg.text.encoder)),
                                           max_len=cfg.text.max_len, rank=rt.rank, world_size=rt.world_size,
                                           device=rt.device)
        except (ValueError, FileNotFoundError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"data.shards {cfg.data.shards!r}: {first}") from None

    def peak_lr(self, world_size: int) -> tuple[float, float]:
        """``(optim.lr, optim.min_lr)`` as given: stage 2's lr is not scaled by the batch (official 1e-4, floor
        0.01 × lr)."""
        return self.cfg.optim.lr, self.cfg.optim.min_lr

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> VideoTextStep:
        return VideoTextStep(net, self.teacher, optimizer, scheduler, self.cfg, self.rt.device, self.rt.amp_dtype)

    # ------------------------------------------------------------------------------------------ accounting
    def flops(self, batch: dict[str, Any]) -> float | None:
        """Training FLOPs of ``batch``: B × :func:`umt.flops.stage2_flops_per_sample` at its modality and caption
        length (host-side shapes, no sync); None teacher-free (the stage-2 FLOP model counts teacher, mask and MLM)."""
        if self.spec is None:
            return None
        n = int(batch["index"].shape[0])
        return n * stage2_flops_per_sample(self.spec, batch["modality"], int(batch["text_ids"].shape[1]))["total"]

    def record(self) -> dict[str, Any]:
        """The teacher's provenance (as stage 1), the text encoder's (directory, weights file, sha256, fusion
        split), what ``model.init_from`` loaded, and the FLOPs per video and per image pair (teacher-free: no
        teacher, no FLOPs)."""
        if self.spec is None:
            return {"teacher_free": True, "text": self.text_info.to_dict(), "init_from": self.init_report}
        return {**self.teacher_record(), "text": self.text_info.to_dict(), "init_from": self.init_report,
                "flops_per_video": stage2_flops_per_sample(self.spec, "video")["total"],
                "flops_per_image": stage2_flops_per_sample(self.spec, "image")["total"]}

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse to resume with other teacher weights (``model.allow_teacher_change``, as stage 1) or another text
        encoder (``text.allow_change``) than the checkpoint's.

        Raises:
            ConfigError: the teacher's or the text encoder's weights (sha256) differ from the checkpoint's record.
        """
        if not self.teacher_free:
            super().check_resume(state, path)
        saved = state.get("text")
        if not saved:
            return
        now = self.text_info.to_dict()
        if saved.get("sha256") == now["sha256"] and saved.get("fusion_layer") == now["fusion_layer"]:
            return
        what = (f"{saved.get('path')} (sha256 {str(saved.get('sha256'))[:12]}, fusion {saved.get('fusion_layer')}) "
                f"→ {now['path']} (sha256 {now['sha256'][:12]}, fusion {now['fusion_layer']})")
        refuse_changed_input(path, "another text encoder", what, self.cfg.text.allow_change, "text.allow_change")

    def log_image(self, step_fn: Any, tb: Any, step: int) -> None:
        """The preview panel (the teacher's attention and the mask); nothing teacher-free."""
        if not self.teacher_free:
            super().log_image(step_fn, tb, step)

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """Zero-shot retrieval (:func:`umt.eval.retrieval.retrieval_on_shards`) on ``eval.shards`` with VTM
        re-ranking of ``eval.rerank_k`` candidates, every rank scoring its share of the videos; the final evaluation
        also writes ``<run_dir>/retrieval.{json,md}``. None without ``eval.shards``."""
        cfg = self.cfg
        if not cfg.eval.shards:
            return None
        from umt.eval.retrieval import retrieval_on_shards, write_report

        metrics, info = retrieval_on_shards(self.model, cfg, cfg.eval.shards,
                                            tokenizer_dir=resolve_text_dir(cfg.text.encoder), device=self.rt.device,
                                            amp_dtype=self.rt.amp_dtype, rerank_k=cfg.eval.rerank_k,
                                            batch_size=cfg.eval.batch_size, multi_video_gt=cfg.eval.multi_video_gt)
        if final and self.rt.is_main:
            write_report(out_dir, metrics, info, overwrite=True)  # the run's own report: a resumed run rewrites it
        return metrics
