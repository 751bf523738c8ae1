"""A fixed train / held-out split of the embedded sample clips, built as two shard sets (the fine-tuning demo,
``demo_ft``).

The split is per class and deterministic: within each label the clips are sorted by file name and every fourth one
from the first on (positions 0, 4, 8, ...) is held out, so each of the 4 labels has clips on both sides (20 clips →
14 train, 6 held out). Both sets list the same class names, so label ids agree between them. Shards are built
with :func:`umt.data.build.shards.build_shards` from the clips themselves (as
:func:`umt.data.build.samples.ensure_sample_shards` does), only into their own default location, and rebuilt only when
stale.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from umt.data.build.samples import SAMPLES_DIR, sample_encode_settings
from umt.data.build.shards import DEFAULT_CODEC, EncodeSettings, ShardDirError, build_shards
from umt.data.format import read_manifest
from umt.fileio import atomic_write

__all__ = ["DEFAULT_SPLIT_SHARDS", "HELD_OUT_EVERY", "split_rows", "ensure_sample_splits"]

log = logging.getLogger(__name__)

#: Where the demo builds the split (``train/``, ``heldout/`` and their annotation files), relative to the working
#: directory; the only place it writes.
DEFAULT_SPLIT_SHARDS = "shards/built/sample_ft"
#: within a label, clips at sorted positions 0, k, 2k, ... are held out
HELD_OUT_EVERY = 4


def split_rows(rows: list[dict[str, Any]], every: int = HELD_OUT_EVERY) -> tuple[list[dict[str, Any]],
                                                                                   list[dict[str, Any]]]:
    """Split annotation rows (``{"video", "label", ...}``) per label: sorted by ``video``, positions ``0, every,
    2·every, ...`` are held out.

    Returns:
        ``(train rows, held-out rows)``, each sorted by ``video``; every label with at least 2 clips is on both
        sides.

    Raises:
        ValueError: a row without a label, or a label with a single clip (it cannot be on both sides).
    """
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("label") in (None, ""):
            raise ValueError(f"annotation row without a label: {r}")
        by_label[str(r["label"])].append(r)
    train, held = [], []
    for label, items in sorted(by_label.items()):
        if len(items) < 2:
            raise ValueError(f"label {label!r} has {len(items)} clip: it cannot be in both the train and held-out "
                             "splits")
        items = sorted(items, key=lambda r: r["video"])
        for i, r in enumerate(items):
            (held if i % every == 0 else train).append(r)
    return sorted(train, key=lambda r: r["video"]), sorted(held, key=lambda r: r["video"])


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    atomic_write(path, text)


def _ensure_one(out: Path, ann: Path, settings: EncodeSettings, samples_per_shard: int, n_clips: int) -> None:
    mode = "new"
    try:
        m = read_manifest(out)
        if (m.get("build") or {}).get("annotations") != os.path.abspath(ann):
            raise ShardDirError(f"{out} holds another data set, not the sample split: the split is built only into "
                                f"its own directory (default {DEFAULT_SPLIT_SHARDS})")
        same = {k: m["encoding"].get(k) for k in asdict(settings)} == asdict(settings)
        if same and m.get("samples_per_shard") == samples_per_shard and m["num_samples"] + len(m["skipped"]) == n_clips:
            return
        mode = "overwrite"  # a stale build of ours
    except (FileNotFoundError, KeyError):
        pass
    log.info("building sample split shards into %s", out)
    res = build_shards([], out, annotations=ann, settings=settings, samples_per_shard=samples_per_shard,
                       workers=max(1, min(4, os.cpu_count() or 1)), seed=0, mode=mode)
    if res.skipped:
        log.warning("%s: %d clips skipped: %s", out, len(res.skipped), res.skipped)


def ensure_sample_splits(out_root: str | Path = DEFAULT_SPLIT_SHARDS, *, codec: str = DEFAULT_CODEC,
                         samples_per_shard: int = 4) -> tuple[Path, Path]:
    """Build the train and held-out shard sets of the sample clips under ``out_root`` unless up to date.

    Writes ``out_root/{train,heldout}.jsonl`` (absolute clip paths, the sample's labels and captions) and builds
    ``out_root/train`` and ``out_root/heldout`` from them.

    Returns:
        ``(train shard dir, held-out shard dir)``.

    Raises:
        FileNotFoundError: the sample clips are missing (not a source checkout).
        umt.data.build.shards.ShardDirError: a target directory holds another data set.
    """
    src = SAMPLES_DIR / "annotations.jsonl"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: the sample clips ship with the source tree")
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for r in rows:
        r["video"] = os.path.abspath(SAMPLES_DIR / r["video"])
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    settings = sample_encode_settings(codec)
    outs = []
    for name, part in zip(("train", "heldout"), split_rows(rows)):
        ann = root / f"{name}.jsonl"
        _write_if_changed(ann, "".join(json.dumps(r) + "\n" for r in part))
        _ensure_one(root / name, ann, settings, samples_per_shard, len(part))
        outs.append(root / name)
    return outs[0], outs[1]
