"""Video data: the shard builder, the DALI pipeline and the webdataset + PyAV reference backend.

``data`` yields batches and knows nothing of masks or models. Heavy modules (DALI, PyAV) are imported lazily.
"""

from __future__ import annotations

from typing import Any

from umt.data.config import IMAGENET_MEAN, IMAGENET_STD, UMT_CROP_SCALES, DataConfig

__all__ = [
    "DataConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UMT_CROP_SCALES",
    "build_loader",
    "build_video_text_loader",
    "ensure_sample_image_shards",
    "ensure_sample_shards",
]


def build_loader(cfg: DataConfig, *, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> Any:
    """Build the video loader for ``cfg`` (see :mod:`umt.data.loader`)."""
    from umt.data.loader import build_loader as _build

    return _build(cfg, rank=rank, world_size=world_size, device=device)


def build_video_text_loader(cfg: DataConfig, *, tokenizer_dir: Any, max_len: int, rank: int = 0, world_size: int = 1,
                            device: Any = "cpu") -> Any:
    """Build the stage-2 loader over every directory in ``cfg.shards`` (see :mod:`umt.data.meta_loader`)."""
    from umt.data.meta_loader import build_video_text_loader as _build

    return _build(cfg, tokenizer_dir=tokenizer_dir, max_len=max_len, rank=rank, world_size=world_size, device=device)


def ensure_sample_shards(out_dir: Any = "shards/built/sample", **kwargs: Any) -> Any:
    """Build shards from the embedded sample clips unless present; returns the directory.

    See :func:`umt.data.build.samples.ensure_sample_shards`.
    """
    from umt.data.build.samples import ensure_sample_shards as _ensure

    return _ensure(out_dir, **kwargs)


def ensure_sample_image_shards(out_dir: Any = "shards/built/sample_images", **kwargs: Any) -> Any:
    """Build shards from the embedded sample images unless present; returns the directory.

    See :func:`umt.data.build.samples.ensure_sample_image_shards`.
    """
    from umt.data.build.samples import ensure_sample_image_shards as _ensure

    return _ensure(out_dir, **kwargs)
