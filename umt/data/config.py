"""Configuration of the video data pipeline (shared by the DALI and reference backends)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "UMT_CROP_SCALES"]

#: ImageNet normalisation, as the official UMT code feeds both student and CLIP teacher.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: UMT's multi-scale crop: fractions of the short side (official ``GroupMultiScaleCrop``).
UMT_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled and augmented."""

    shards: str = ""
    """Shard directory holding ``manifest.json`` (as written by ``tools/make_shards.py``)."""
    backend: str = "auto"
    """``"dali"``, ``"reference"`` (webdataset + PyAV) or ``"auto"`` (DALI where importable and able to decode)."""
    batch_size: int = 64
    """Videos per rank per step (before ``num_sample`` repetition)."""
    num_frames: int = 8
    """T: TSN segments, one frame each."""
    input_size: int = 224
    """Output side H = W in pixels."""
    num_workers: int = 4
    """DALI CPU threads, or DataLoader workers for the reference backend."""
    num_sample: int = 1
    """Repeated augmentation: clips emitted per decoded video (batch holds ``batch_size * num_sample``)."""
    seed: int = 0
    """Base seed; per-epoch, per-rank seeds derive from it."""
    train: bool = True
    """True: random frame per segment, multi-scale crop, flip. False: segment centre, centre crop, no flip."""
    scales: tuple[float, ...] = UMT_CROP_SCALES
    """Multi-scale crop fractions of the short side."""
    flip: bool = True
    """Random horizontal flip (training only)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "dali", "reference"):
            raise ValueError(f"data.backend must be 'auto', 'dali' or 'reference', got {self.backend!r}")
        for name in ("batch_size", "num_frames", "input_size", "num_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
