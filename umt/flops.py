"""FLOP models of UMT's training steps (stage 1 and stage 2), and MFU.

Counting rules (``docs/design.md``, "FLOPs and MFU"): 2 FLOPs per multiply-add; a transformer block
of width d over N tokens costs ``24·N·d²`` in its linear layers (qkv 3, proj 1, MLP 8 → 12 d² multiply-adds per
token) and ``4·N²·d`` in attention (q·kᵀ and attn·v); a training step costs 3× the student's forward (forward +
backward); the frozen teacher runs forward only, per frame, over 1 + N tokens. Patch embeddings and the output
projections/heads are counted as the matmuls they are; norms, softmax and elementwise ops are not counted.

Stage 2 (:func:`stage2_flops_per_sample`, one video-text or image-text pair) counts what the official forward
(``multi_modality/models/umt.py``, ``criterions.py``) actually runs, derived pass by pass:

- **vision** (trained, ×3): the stage-1 student over the visible tokens only — a video has 4 frames at mask 0.8,
  ``4 × 40 = 160`` visible tokens, an image 1 frame at mask 0.5, ``98`` — with the patch embedding over every token,
  the ``align_layers`` UMA heads (``clip_return_layer = 6`` in both official pre-training configs:
  ``exp/pretraining/{b16,l16}_25m.py``), and ``vision_proj`` (``C_v·D``) of the pooled token.
- **teacher** (frozen, forward only): CLIP over the T frames (197 tokens each) and the ``proj`` of its 6 aligned
  layers (the UTA targets).
- **text_vtc** (×3): the text-only BERT layers (``depth − fusion`` of them) over the caption's L tokens, and
  ``text_proj`` of ``[CLS]``. A BERT layer of width d and FFN width f costs ``2·L·(4d² + 2·d·f) + 4·L²·d``.
- **vtm** (×3): the fusion layers over **3 pairs** per sample (the positive, the caption with a hard-negative video,
  the video with a hard-negative caption; gradients flow through all three), each layer = a BERT layer plus a
  cross-attention sub-layer: q and output projections over the L text tokens (``2·2·L·d²``), key and value
  projections of the ``N_v`` visual tokens from the vision width (``2·2·N_v·C_v·d``), q·kᵀ and attn·v
  (``4·L·N_v·d``); then the 2-way ``itm_head``.
- **mlm** (×3): the masked caption through the text-only layers **again** (official ``MLMLoss.mlm_loss`` runs
  ``mode="text"`` on the masked ids), the fusion layers once with the visual tokens, and the MLM head over every
  text token: the ``d×d`` transform and the ``d×V`` decoder (V = 30,522).

L is the caption length the step pads to (the official code pads every caption to ``max_txt_l = 32``; this project
pads to the batch's longest, so the trainer passes the batch's L). The VTC similarity matrix (``N²·D`` over the
global batch), softmaxes and the VTM negative sampling are not counted (< 0.1 %).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "PEAK_BF16_TFLOPS",
    "peak_bf16_tflops",
    "ViTSpec",
    "UMTSpec",
    "UMT_SPECS",
    "block_flops",
    "student_forward_flops",
    "teacher_forward_flops",
    "train_flops_per_clip",
    "TextSpec",
    "VideoTextSpec",
    "TEXT_SPECS",
    "STAGE2_SPECS",
    "text_layer_flops",
    "cross_attention_flops",
    "stage2_flops_per_sample",
    "mfu",
]

#: Dense bf16 tensor-core peaks in TFLOP/s, matched as substrings of the upper-cased device name, most specific
#: first (NVIDIA data sheets: H100 PCIe 756, H100 NVL 835, H100 SXM 989, H200 989, A100 312 for SXM and PCIe).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIE": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
}


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """Dense bf16 peak (TFLOP/s) of a GPU named like ``torch.cuda.get_device_name()``; None when unknown.

    Example: ``"NVIDIA H100 80GB HBM3"`` → 989.0, ``"NVIDIA A100-SXM4-80GB"`` → 312.0, ``"NVIDIA H100 PCIe"`` → 756.0.
    """
    if not device_name:
        return None
    upper = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in upper:
            return peak
    return None


@dataclass(frozen=True)
class ViTSpec:
    """Width, depth and patch size of a ViT."""

    width: int
    depth: int
    patch: int


@dataclass(frozen=True)
class UMTSpec:
    """One UMT stage-1 configuration (docs/design.md, "Stage 1")."""

    student: ViTSpec
    teacher: ViTSpec
    teacher_dim: int  # output width of the teacher's ``proj`` (512 for CLIP-B/16, 768 for CLIP-L/14)
    teacher_size: int  # teacher input side in pixels (224 for B, 196 for L)
    num_frames: int = 8
    input_size: int = 224
    mask_ratio: float = 0.8
    align_layers: int = 6

    @property
    def grid(self) -> int:
        """Patches per side of a student frame (14 at 224 px, patch 16)."""
        return self.input_size // self.student.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def keep_per_frame(self) -> int:
        """Visible tokens per frame: ``N - int(ratio·N)`` (40 of 196 at 0.8)."""
        n = self.tokens_per_frame
        return n - int(self.mask_ratio * n)


UMT_SPECS: dict[str, UMTSpec] = {
    "umt_b16": UMTSpec(ViTSpec(768, 12, 16), ViTSpec(768, 12, 16), teacher_dim=512, teacher_size=224),
    "umt_l16": UMTSpec(ViTSpec(1024, 24, 16), ViTSpec(1024, 24, 14), teacher_dim=768, teacher_size=196),
}


def block_flops(tokens: int, width: int) -> float:
    """Forward FLOPs of one pre-norm transformer block (MLP ratio 4): ``24·N·d² + 4·N²·d``."""
    return 24.0 * tokens * width**2 + 4.0 * tokens**2 * width


def student_forward_flops(spec: UMTSpec) -> float:
    """Student forward FLOPs per clip: patch embedding of every token, blocks over visible tokens, 6 heads."""
    s = spec.student
    total_tokens = spec.num_frames * spec.tokens_per_frame
    visible = spec.num_frames * spec.keep_per_frame
    patch_embed = 2.0 * total_tokens * (3 * s.patch**2) * s.width
    blocks = s.depth * block_flops(visible, s.width)
    heads = spec.align_layers * 2.0 * visible * s.width * spec.teacher_dim
    return patch_embed + blocks + heads


def teacher_forward_flops(spec: UMTSpec) -> float:
    """Teacher forward FLOPs per clip: per frame, patch embedding, blocks over 1 + N tokens, ``proj`` of the
    patch tokens of the aligned layers."""
    t = spec.teacher
    patches = (spec.teacher_size // t.patch) ** 2
    per_frame = (
        2.0 * patches * (3 * t.patch**2) * t.width
        + t.depth * block_flops(patches + 1, t.width)
        + spec.align_layers * 2.0 * patches * t.width * spec.teacher_dim
    )
    return spec.num_frames * per_frame


def train_flops_per_clip(spec: UMTSpec) -> float:
    """FLOPs of one stage-1 training step per clip: ``3 × student forward + teacher forward``."""
    return 3.0 * student_forward_flops(spec) + teacher_forward_flops(spec)


@dataclass(frozen=True)
class TextSpec:
    """The stage-2 text encoder (BERT) and its fusion part."""

    width: int
    depth: int
    fusion_layers: int  # the last ``fusion_layers`` layers carry cross-attention to the visual tokens
    vocab: int = 30522  # bert-base-uncased / bert-large-uncased vocabulary
    ffn: int = 0  # FFN width; 0: 4 × width (BERT-base 3072, BERT-large 4096, MiniLM 1536)

    @property
    def ffn_width(self) -> int:
        return self.ffn or 4 * self.width


@dataclass(frozen=True)
class VideoTextSpec:
    """One UMT stage-2 configuration: the vision side (a :class:`UMTSpec` at the video frame count and mask ratio),
    the text encoder, the contrastive width."""

    vision: UMTSpec
    text: TextSpec
    embed_dim: int
    image_mask_ratio: float = 0.5
    text_tokens: int = 32  # official max_txt_l (every caption padded to it)


#: BERT-base (12 × 768, fusion 9–11) for UMT-B; BERT-large (24 × 1024, fusion 19–23) for UMT-L (official configs).
TEXT_SPECS: dict[str, TextSpec] = {
    "umt_b16": TextSpec(width=768, depth=12, fusion_layers=3),
    "umt_l16": TextSpec(width=1024, depth=24, fusion_layers=5),
}

#: Official stage-2 configurations (``exp/pretraining/{b16,l16}_25m.py``): 4 frames, mask 0.8 (video) / 0.5
#: (image), 6 aligned layers, embed 512 (B) / 768 (L).
STAGE2_SPECS: dict[str, VideoTextSpec] = {
    "umt_b16": VideoTextSpec(replace(UMT_SPECS["umt_b16"], num_frames=4), TEXT_SPECS["umt_b16"], embed_dim=512),
    "umt_l16": VideoTextSpec(replace(UMT_SPECS["umt_l16"], num_frames=4), TEXT_SPECS["umt_l16"], embed_dim=768),
}


def text_layer_flops(tokens: int, width: int, ffn: int) -> float:
    """Forward FLOPs of one BERT layer (post-norm, FFN width f): ``2·L·(4d² + 2·d·f) + 4·L²·d``."""
    return 2.0 * tokens * (4 * width**2 + 2 * width * ffn) + 4.0 * tokens**2 * width


def cross_attention_flops(text_tokens: int, vision_tokens: int, width: int, vision_width: int) -> float:
    """Forward FLOPs of one cross-attention sub-layer: q and output projections over the text tokens
    (``2·2·L·d²``), key and value projections of the visual tokens (``2·2·N_v·C_v·d``), q·kᵀ and attn·v
    (``4·L·N_v·d``)."""
    return (4.0 * text_tokens * width**2 + 4.0 * vision_tokens * vision_width * width
            + 4.0 * text_tokens * vision_tokens * width)


def stage2_flops_per_sample(spec: VideoTextSpec, modality: str = "video",
                            text_tokens: int | None = None) -> dict[str, float]:
    """Training FLOPs of one stage-2 pair, split by pass (see the module docstring for the derivation).

    Args:
        spec: the configuration (:data:`STAGE2_SPECS` or a run's own, e.g. the CPU demo's).
        modality: ``"video"`` (``spec.vision.num_frames`` frames at ``spec.vision.mask_ratio``) or ``"image"``
            (1 frame at ``spec.image_mask_ratio``).
        text_tokens: caption length L (default ``spec.text_tokens``).

    Returns:
        ``{"vision", "teacher", "text_vtc", "vtm", "mlm", "total"}`` in FLOPs.

    Raises:
        ValueError: unknown modality.
    """
    if modality not in ("video", "image"):
        raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
    frames = spec.vision.num_frames if modality == "video" else 1
    ratio = spec.vision.mask_ratio if modality == "video" else spec.image_mask_ratio
    vs = replace(spec.vision, num_frames=frames, mask_ratio=ratio)
    tx = spec.text
    d, dv, f, n = tx.width, vs.student.width, tx.ffn_width, spec.text_tokens if text_tokens is None else text_tokens
    nv = frames * vs.keep_per_frame  # visible visual tokens: the fusion layers' keys and values
    text_fwd = (tx.depth - tx.fusion_layers) * text_layer_flops(n, d, f)  # one caption, text-only layers
    fusion_fwd = tx.fusion_layers * (text_layer_flops(n, d, f) + cross_attention_flops(n, nv, d, dv))  # one pair
    mlm_head = 2.0 * n * d * d + 2.0 * n * d * tx.vocab
    parts = {
        "vision": 3.0 * (student_forward_flops(vs) + 2.0 * dv * spec.embed_dim),
        "teacher": teacher_forward_flops(vs),
        "text_vtc": 3.0 * (text_fwd + 2.0 * d * spec.embed_dim),
        "vtm": 3.0 * 3 * (fusion_fwd + 2.0 * d * 2),  # positive + hard-negative video + hard-negative caption
        "mlm": 3.0 * (text_fwd + fusion_fwd + mlm_head),
    }
    parts["total"] = sum(parts.values())
    return parts


def mfu(clips_per_s: float, flops_per_clip: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s ÷ peak FLOP/s (both per device). Returns a fraction in [0, ∞)."""
    if peak_tflops <= 0:
        raise ValueError("peak_tflops must be positive")
    return clips_per_s * flops_per_clip / (peak_tflops * 1e12)


# ------------------------------------------------------------------------------------------ fine-tuning
__all__ += ["ClassifierSpec", "classifier_forward_flops", "classifier_train_flops_per_clip"]


@dataclass(frozen=True)
class ClassifierSpec:
    """One fine-tuning configuration (docs/design.md, "Fine-tuning"): student ViT over all tokens + a linear head."""

    student: ViTSpec
    num_classes: int
    num_frames: int = 8
    input_size: int = 224
    tubelet: int = 1

    @property
    def tokens(self) -> int:
        """Tokens per clip: ``(T / tubelet) · (S / patch)²`` (1568 at 8 × 224², patch 16)."""
        return (self.num_frames // self.tubelet) * (self.input_size // self.student.patch) ** 2


def classifier_forward_flops(spec: ClassifierSpec) -> float:
    """Forward FLOPs per clip of the fine-tuning classifier: nothing is masked, every block sees all N tokens.

    Derivation (2 FLOPs per multiply-add, the counting rules above):

    - patch embedding: a ``(3·tubelet·p²) → d`` matmul per token: ``2·N·3·tubelet·p²·d``;
    - ``depth`` blocks over N tokens: ``depth · (24·N·d² + 4·N²·d)``;
    - head: one ``d → K`` matmul per clip on the pooled token: ``2·d·K``.

    Mean pooling, ``fc_norm`` and the loss are not counted (elementwise). UMT-B at 8 × 224², K = 400: N = 1568,
    about 359 GFLOP (the official ``fvcore`` count for ``vit_base_patch16_224`` with 8 frames, ~180 GMAC, agrees).
    """
    s = spec.student
    n = spec.tokens
    patch_embed = 2.0 * n * (3 * spec.tubelet * s.patch**2) * s.width
    return patch_embed + s.depth * block_flops(n, s.width) + 2.0 * s.width * spec.num_classes


def classifier_train_flops_per_clip(spec: ClassifierSpec) -> float:
    """FLOPs of one fine-tuning training step per clip: ``3 ×`` :func:`classifier_forward_flops` (the backward
    costs twice the forward: gradients of activations and of weights). A clip is one augmented view: with repeated
    augmentation (``num_sample`` 2) a video counts twice. UMT-B 8 × 224²: ~1.08 TFLOP; UMT-L: ~3.57 TFLOP."""
    return 3.0 * classifier_forward_flops(spec)


__all__ += ["qa_train_flops"]


def qa_train_flops(vit: ViTSpec, num_frames: int, input_size: int, text: TextSpec, questions: int,
                   question_tokens: int, answers: int, answer_tokens: int) -> dict[str, float]:
    """Training FLOPs of one video-QA micro-batch (task ``video_qa``; official ``UMT_QA.forward``), ×3 for forward +
    backward:

    - **vision**: the ViT over every token of each clip (no mask): the patch embedding and ``depth`` blocks over
      ``N = T·(S/p)²`` tokens;
    - **question**: the text-only BERT layers over the ``L_q`` question tokens, then the fusion layers with
      cross-attention to the ``N`` visual tokens (:func:`cross_attention_flops`);
    - **decoder**: per answer, ``fusion_layers`` decoder layers over its ``L_a`` tokens with cross-attention to the
      ``L_q`` question states (text width both sides), and the LM head over every answer token (the ``d×d``
      transform and the ``d×V`` decoder).

    Returns:
        ``{"vision", "question", "decoder", "total"}`` for ``questions`` clips and ``answers`` answers.
    """
    n = num_frames * (input_size // vit.patch) ** 2
    dv, d, f, lq, la = vit.width, text.width, text.ffn_width, question_tokens, answer_tokens
    vision = 2.0 * n * 3 * vit.patch**2 * dv + vit.depth * block_flops(n, dv)
    fusion = text.fusion_layers
    question = ((text.depth - fusion) * text_layer_flops(lq, d, f)
                + fusion * (text_layer_flops(lq, d, f) + cross_attention_flops(lq, n, d, dv)))
    decoder = (fusion * (text_layer_flops(la, d, f) + cross_attention_flops(la, lq, d, d))
               + 2.0 * la * d * d + 2.0 * la * d * text.vocab)
    parts = {"vision": 3.0 * questions * vision, "question": 3.0 * questions * question,
             "decoder": 3.0 * answers * decoder}
    parts["total"] = sum(parts.values())
    return parts
