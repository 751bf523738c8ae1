"""Image inputs of the shard builder: probe, orient, cap the short side and re-encode as baseline JPEG (PIL).

Image-text data sets (CC3M/CC12M/COCO/VG/SBU) are stored as JPEG so that DALI decodes them (``fn.decoders.image`` /
``image_slice``: nvJPEG on a GPU, libjpeg-turbo on CPU; the CPU decode is bit-identical to PIL's, which the reference
backend uses). Re-encoding, like the videos', bounds the decode cost: the short side is capped (the
stage-2 crop, ``RandomResizedCrop(224, scale=(0.5, 1))``, needs about 224 / sqrt(0.5) = 317 px of short side to
never upsample, hence the default 320), the EXIF orientation is applied (DALI and PIL then see the same pixels), every
input becomes 3-channel RGB (grey, palette, CMYK, alpha dropped as the official ``Image.open(p).convert("RGB")``
does), and the JPEG is baseline, 4:2:0, at a fixed quality, with no metadata: identical inputs give identical bytes.

Every way an input can be unusable raises :class:`umt.data.build.encode.Reject` with a reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from umt.data.build.encode import Reject, SampleSource

__all__ = ["IMAGE_EXTS", "ImageEncodeSettings", "encode_image", "psnr"]

#: File suffixes the builder takes as images when searching INPUT directories (``--modality image``).
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

#: Default short-side cap (px) and JPEG quality (``python -m benchmarks.bench_data_s2 --parts encode --images DIR``,
#: docs/stage2_data.md): on the 16 sample photos in their original form (scikit-image/scikit-learn PNG and JPEG,
#: 300-1411 px) 320 px / q 90 stores 32 KiB per image at 37.2 dB PSNR (squared error pooled over the images)
#: against the source resized to the same size (worst image 33.9 dB); q 85 saves 20 % of the bytes for 1.4 dB,
#: q 95 costs 42 % more for 2.2 dB.
DEFAULT_IMAGE_SHORT_SIDE = 320
DEFAULT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class ImageEncodeSettings:
    """How each input image is re-encoded (recorded in the manifest's ``encoding`` and in the cache key)."""

    short_side: int = DEFAULT_IMAGE_SHORT_SIDE
    """Scale down (bicubic, antialiased) so that the short side is at most this many pixels; never up."""
    quality: int = DEFAULT_JPEG_QUALITY
    """JPEG quality (1-95, libjpeg scale), baseline with 4:2:0 chroma subsampling."""

    def __post_init__(self) -> None:
        if self.short_side < 16:
            raise ValueError(f"image short_side must be >= 16, got {self.short_side}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"JPEG quality must be in [1, 95], got {self.quality}")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps({"image": asdict(self)}, sort_keys=True).encode()).hexdigest()[:16]


def _target_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    s = min(w, h)
    if s <= short_side:
        return w, h
    scale = short_side / s
    return (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)


def encode_image(src: SampleSource, st: ImageEncodeSettings) -> tuple[bytes, dict[str, Any]]:
    """Decode ``src`` with PIL and re-encode it as JPEG. Returns (JPEG bytes, info).

    ``info``: ``width``, ``height`` (of the stored, upright JPEG), ``source_width``, ``source_height`` (the input's
    pixel size as stored in its file, before the EXIF orientation), ``source_format`` (PIL's format name, e.g.
    ``PNG``), ``codec`` ("jpeg").

    Raises:
        Reject: a missing, empty, unreadable, corrupt or truncated file, or one that is not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(src.path)
    if not path.exists():
        raise Reject("missing file" + (f" (annotation {src.origin})" if src.origin not in ("", "input") else ""))
    if not os.access(path, os.R_OK):
        raise Reject("unreadable: permission denied")
    if path.stat().st_size == 0:
        raise Reject("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            fmt = im.format or "unknown"
            im.load()  # decodes everything: a truncated or corrupt file fails here
            sw, sh = im.size  # as stored in the file
            im = ImageOps.exif_transpose(im)  # stored pixels are upright: no reader needs the EXIF tag
            w0, h0 = im.size
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise Reject("not a readable image (unknown format)") from None
    except Image.DecompressionBombError as e:
        raise Reject(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports damaged data as OSError/SyntaxError
        raise Reject(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    if w0 < 1 or h0 < 1:
        raise Reject("empty image (0 pixels)")
    w, h = _target_size(w0, h0, st.short_side)
    if (w, h) != (w0, h0):
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=st.quality, subsampling="4:2:0", optimize=False, progressive=False)
    info = {"width": w, "height": h, "source_width": sw, "source_height": sh, "source_format": fmt, "codec": "jpeg"}
    return buf.getvalue(), info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of the same shape (peak 255; inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))
