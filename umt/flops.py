"""FLOP model of a UMT stage-1 training step, and MFU.

Counting rules (``shared/DESIGN.md``, "How to count performance"): 2 FLOPs per multiply-add; a transformer block
of width d over N tokens costs ``24·N·d²`` in its linear layers (qkv 3, proj 1, MLP 8 → 12 d² multiply-adds per
token) and ``4·N²·d`` in attention (q·kᵀ and attn·v); a training step costs 3× the student's forward (forward +
backward); the frozen teacher runs forward only, per frame, over 1 + N tokens. Patch embeddings and the output
projections/heads are counted as the matmuls they are; norms, softmax and elementwise ops are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """One UMT stage-1 configuration (DESIGN.md, stage 1)."""

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


def mfu(clips_per_s: float, flops_per_clip: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s ÷ peak FLOP/s (both per device). Returns a fraction in [0, ∞)."""
    if peak_tflops <= 0:
        raise ValueError("peak_tflops must be positive")
    return clips_per_s * flops_per_clip / (peak_tflops * 1e12)


# ------------------------------------------------------------------------------ fine-tuning (issue 12)
__all__ += ["ClassifierSpec", "classifier_forward_flops", "classifier_train_flops_per_clip"]


@dataclass(frozen=True)
class ClassifierSpec:
    """One fine-tuning configuration (DESIGN.md, "Fine-tuning"): the student ViT over all tokens + a linear head."""

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
