"""Configuration of the video data pipeline (shared by the DALI and reference backends)."""

from __future__ import annotations

from dataclasses import dataclass

from umt.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "UMT_CROP_SCALES", "CROPS", "EVAL_CROPS", "INTERPS",
           "SAMPLINGS", "CAPTION_SAMPLINGS"]

#: UMT's multi-scale crop: fractions of the short side (official ``GroupMultiScaleCrop``).
UMT_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)
#: Training crops: ``multiscale`` (stage 1, official ``GroupMultiScaleCrop``), ``rrc`` (``RandomResizedCrop``: stage 2
#: and fine-tuning).
CROPS = ("multiscale", "rrc")
#: Resize filters (antialiased when shrinking in both backends).
INTERPS = ("bilinear", "bicubic")
#: Frame sampling (:func:`umt.data.sampling.frame_indices`): ``tsn`` (stage 1, official ``kinetics_sparse``) or
#: ``rand_middle`` (stage 2, official ``multi_modality`` ``get_frame_indices(sample="rand" / "middle")``) or ``ssv2``
#: (SSv2 fine-tuning, official ``single_modality/datasets/ssv2.py``: ``N // T`` segments, starts/centres at test).
SAMPLINGS = ("tsn", "rand_middle", "ssv2")
#: Evaluation view: ``center`` (the centred square of the short side) or ``resize`` (the whole frame resized to
#: input_size², aspect not kept: the official stage-2 test transform ``Resize((224, 224), BICUBIC)``).
EVAL_CROPS = ("center", "resize")
#: Stage-2 data sets of a mix: ``modality`` (the directories of one modality concatenated, official) or ``directory``.
MIXES = ("modality", "directory")
#: Stage-2 caption epochs: ``draw`` (one row per item, a drawn caption) or ``each`` (one row per caption).
CAPTION_SAMPLINGS = ("draw", "each")


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled and augmented."""

    shards: str = ""
    """Shard directory holding ``manifest.json`` (as written by ``tools/make_shards.py``); stage 2 may name several,
    comma-separated (video-text and image-text directories, interleaved by :class:`umt.data.meta_loader.MetaLoader`)."""
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
    crop: str = "multiscale"
    """Training crop (:data:`CROPS`): ``multiscale`` (stage 1: ``scales`` of the short side, 13 fixed offsets) or
    ``rrc`` (torchvision's ``RandomResizedCrop``: area fraction in ``rrc_scale``, aspect in ``rrc_ratio``; stage 2
    uses scale (0.5, 1), fine-tuning (0.08, 1))."""
    scales: tuple[float, ...] = UMT_CROP_SCALES
    """Multi-scale crop fractions of the short side."""
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    """``rrc``: range of the crop's area as a fraction of the frame's."""
    rrc_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    """``rrc``: range of the crop's aspect ratio (width / height), drawn log-uniformly."""
    interp: str = "bilinear"
    """Resize filter (:data:`INTERPS`): ``bilinear`` (stage 1, official PIL bilinear; fine-tuning, official
    ``F.interpolate(mode="bilinear")`` in ``random_resized_crop``) or ``bicubic`` (stage 2, official torchvision
    ``InterpolationMode.BICUBIC``); bicubic output is clamped to the pixel range."""
    flip: bool = True
    """Random horizontal flip (training only)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    sampling: str = "tsn"
    """Frame sampling (:data:`SAMPLINGS`): ``tsn`` (stage 1: ``floor((t + u) N / T)``, the segment centre in
    evaluation) or ``rand_middle`` (stage 2: the official ``get_frame_indices``, a random frame of each of T
    ``linspace`` segments excluding its last frame in training, the segment's middle in evaluation) or ``ssv2``
    (SSv2 fine-tuning: a random frame of each ``N // T``-frame segment in training, the centres ``int(tick/2 +
    tick·i)`` in evaluation, the starts and the centres as the two test clips; :func:`umt.data.sampling.ssv2_indices`)."""
    eval_crop: str = "center"
    """Evaluation view (:data:`EVAL_CROPS`): ``center`` (centred square of the short side, then resized) or
    ``resize`` (the whole frame resized to input_size², the official stage-2 test transform)."""
    caption_sampling: str = "draw"
    """Stage 2, training (:data:`CAPTION_SAMPLINGS`): ``draw`` (an epoch reads every item once with one of its
    captions, drawn per (seed, epoch, item)) or ``each`` (an epoch reads every (item, caption) pair once, as the
    official pre-training annotation files hold one row per caption: an image with 5 captions is read 5 times)."""
    mix: str = "modality"
    """Stage 2, training (:data:`MIXES`): ``modality`` (the official ``multi_modality/dataset/__init__.py``: every
    directory of one modality joins one data set, ``ConcatDataset``, so an image batch mixes CC3M, CC12M, COCO, VG
    and SBU in proportion to their sizes) or ``directory`` (one data set per directory: each batch from one corpus)."""
    image_batch_size: int = 0
    """Stage 2: images per rank per step for image-text shard directories in ``shards`` (0: ``batch_size``; the
    official configs use 128 for both, ``batch_size = dict(image=128, video=128)``)."""
    rand_augment: str = ""
    """Training: timm RandAugment string, e.g. ``rand-m7-n4-mstd0.5-inc1`` (official fine-tuning), applied to the full
    frames before the crop with the same ops and magnitudes on every frame of a clip (:mod:`umt.data.augment.randaugment`);
    empty: off."""
    erase_prob: float = 0.0
    """Training: probability of random erasing (one box per clip, per-pixel N(0, 1) after normalisation; official
    fine-tuning 0.25, :mod:`umt.data.augment.erasing`)."""
    temporal_views: int = 1
    """Evaluation: clips per video at segment offsets ``(c + 1) / (n + 1)`` (official ``test_num_segment``);
    more than one view in all selects the official test sampling (:mod:`umt.data.views`)."""
    spatial_views: int = 1
    """Evaluation: crops per clip along the long side after resizing the short side to ``input_size`` (official
    ``test_num_crop``: 1 = centre, 3 = both ends and centre)."""
    drop_last: bool = True
    """True: every rank reads ``len`` whole batches (the remainder is dropped). False (evaluation): ranks split the
    samples contiguously (the first ``N mod world`` ranks take one more), every sample of a rank's share is read
    exactly once and the last batch is padded with rows whose ``index`` is -1."""

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "dali", "reference"):
            raise ValueError(f"data.backend must be 'auto', 'dali' or 'reference', got {self.backend!r}")
        for name in ("batch_size", "num_frames", "input_size", "num_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.crop not in CROPS:
            raise ValueError(f"data.crop must be one of {CROPS}, got {self.crop!r}")
        if self.interp not in INTERPS:
            raise ValueError(f"data.interp must be one of {INTERPS}, got {self.interp!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"data.eval_crop must be one of {EVAL_CROPS}, got {self.eval_crop!r}")
        if self.mix not in MIXES:
            raise ValueError(f"data.mix must be one of {MIXES}, got {self.mix!r}")
        if self.caption_sampling not in CAPTION_SAMPLINGS:
            raise ValueError(f"data.caption_sampling must be one of {CAPTION_SAMPLINGS}, got {self.caption_sampling!r}")
        if self.image_batch_size < 0:
            raise ValueError(f"data.image_batch_size must be >= 0, got {self.image_batch_size}")
        lo, hi = self.rrc_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.rrc_scale must satisfy 0 < low <= high <= 1, got {self.rrc_scale}")
        if not 0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ValueError(f"data.rrc_ratio must satisfy 0 < low <= high, got {self.rrc_ratio}")
        if self.rand_augment:
            from umt.data.augment.randaugment import parse_rand_augment

            parse_rand_augment(self.rand_augment)  # raises ValueError naming the bad section
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"data.erase_prob must be in [0, 1], got {self.erase_prob}")
        for name in ("temporal_views", "spatial_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
