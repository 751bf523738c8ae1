"""Constants shared by the data pipeline and the models (imports nothing of :mod:`umt`)."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

#: ImageNet normalisation (RGB, of pixels in [0, 1]), as the official UMT code feeds both the student and the CLIP
#: teacher (``single_modality/datasets/*``: ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
