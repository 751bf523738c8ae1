"""The on-disk contract of a shard directory (``shards/README.md``), read and written by everything else.

One directory holds one modality (``manifest.json["modality"]``). Per sample, WebDataset members ``KEY.mp4`` (or
``KEY.jpg``), ``KEY.meta`` (:data:`META_FIELDS`, fixed-size little-endian int32 so DALI can carry it), ``KEY.json``,
``KEY.cls`` (optional) and ``KEY.txt`` (captions, one a line); per tar a DALI index ``.idx`` (``wds2idx`` v1.2); per
directory ``manifest.json`` and ``sources.jsonl``. This module defines those encodings and random access to samples
(:class:`ShardIndex`); the builder (:mod:`umt.data.build`) writes them and the loaders read them.

Imports nothing of :mod:`umt`: it is the bottom of the data package (``docs/design.md``, "Layers").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "META_BYTES",
    "META_FIELDS",
    "MODALITIES",
    "ShardIndex",
    "caption_counts",
    "clean_caption",
    "decode_captions",
    "decode_meta",
    "encode_captions",
    "encode_meta",
    "index_text",
    "read_manifest",
    "require_captions",
]


# -------------------------------------------------------------------------------------------------------------
# sample meta, DALI index, manifest

FORMAT_VERSION = 1

#: Fields of ``KEY.meta``: little-endian int32, fixed size so DALI can carry it through ``DALIGenericIterator``.
#: ``fps_milli`` is frames per second × 1000; ``label`` is -1 when unlabelled; ``index`` is the manifest order.
META_FIELDS = ("frames", "width", "height", "label", "index", "fps_milli", "duration_ms", "version")

META_BYTES = 4 * len(META_FIELDS)

#: A shard directory holds one modality (``manifest.json["modality"]``).
MODALITIES = ("video", "image")

def encode_meta(**values: int) -> bytes:
    """Pack :data:`META_FIELDS` (missing ones 0, ``label`` default -1) into little-endian int32 bytes."""
    vals = {"label": -1, "version": FORMAT_VERSION, **values}
    return np.array([int(vals.get(k, 0)) for k in META_FIELDS], dtype="<i4").tobytes()

def decode_meta(data: bytes | np.ndarray) -> dict[str, int]:
    """Inverse of :func:`encode_meta`."""
    arr = np.frombuffer(bytes(data), dtype="<i4")
    if arr.shape != (len(META_FIELDS),):
        raise ValueError(f"meta must be {META_BYTES} bytes, got {arr.nbytes}")
    return {k: int(v) for k, v in zip(META_FIELDS, arr)}

def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Load ``shard_dir/manifest.json``.

    Raises:
        FileNotFoundError: no manifest (the directory was never built, or a build is incomplete).
    """
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build shards with tools/make_shards.py first")
    return json.loads(path.read_text())


def index_text(members: Sequence[tuple[str, int, int]]) -> str:
    """The text of a DALI webdataset index (``wds2idx`` format v1.2) for tar members ``(name, data offset, size)``.

    Format (DALI ``wds2idx.IndexCreator``): a line ``v1.2 <samples>``, then per sample one line of
    ``<ext> <offset> <size> <name>`` groups, consecutive members with the same key forming one sample.
    """
    samples: list[list[str]] = []
    last = None
    for name, offset, size in members:
        base = os.path.basename(name)
        dot = base.find(".")
        key, ext = name[: len(name) - len(base) + dot], base[dot + 1 :]
        if key != last:
            samples.append([])
            last = key
        samples[-1].append(f"{ext} {offset} {size} {name}")
    text = f"v1.2 {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)
    return text


# -------------------------------------------------------------------------------------------------------------
# captions (KEY.txt)


def clean_caption(text: str) -> str:
    """A caption as stored: surrounding whitespace stripped, each line break (``\\r\\n``, ``\\n``, ``\\r``) a space."""
    return re.sub(r"\r\n|\r|\n", " ", text).strip()


def encode_captions(captions: list[str]) -> bytes:
    """``KEY.txt`` bytes of an item's captions (already :func:`clean_caption`-ed, none empty)."""
    if not captions or any(not c or "\n" in c or "\r" in c for c in captions):
        raise ValueError(f"captions must be non-empty single lines, got {captions!r}")
    return "\n".join(captions).encode("utf-8")


def decode_captions(data: bytes) -> list[str]:
    """Inverse of :func:`encode_captions`."""
    return data.decode("utf-8").split("\n")


def require_captions(index: Any, shard_dir: str | Path) -> None:
    """Raise ``ValueError`` (one line naming ``shard_dir``) unless every item of ``index`` has a ``txt`` member."""
    missing = sum(1 for _, comps in index.entries if "txt" not in comps)
    if missing == len(index.entries):
        raise ValueError(f"{shard_dir} holds no captions: stage-2 (video-text) loaders need shards built from "
                         "annotations with a 'caption' per item (tools/make_shards.py --annotations)")
    if missing:
        raise ValueError(f"{shard_dir}: {missing} of {len(index.entries)} items have no caption; stage-2 loaders "
                         "need every item captioned (rebuild from annotations with a 'caption' per item)")


def caption_counts(shard_dir: str | Path, index: Any) -> np.ndarray:
    """Captions per item (int64 [N], manifest order): from ``sources.jsonl`` (written with the counts by the
    builder), else by reading every item's ``txt`` member."""
    n = len(index.entries)
    path = Path(shard_dir) / "sources.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) == n and all("captions" in r for r in rows):
            out = np.zeros(n, np.int64)
            for r in rows:
                out[int(r["index"])] = int(r["captions"])
            return out
    return np.array([len(decode_captions(index.read(i, "txt"))) for i in range(n)], np.int64)


# -------------------------------------------------------------------------------------------------------------
# random access


def _member_key(name: str) -> str:
    """The WebDataset key of member ``name`` (``dir/00000005.mp4`` → ``dir/00000005``), as :func:`index_text`."""
    base = os.path.basename(name)
    dot = base.find(".")
    return name if dot < 0 else name[: len(name) - len(base) + dot]


class ShardIndex:
    """Random access to samples (in manifest order) through the shards' DALI index files.

    Attributes:
        entries: per sample, ``(tar path, {ext: (offset, size)})``.
        keys: per sample, its WebDataset key (the member names without extension, e.g. ``00000005``).
    """

    def __init__(self, shard_dir: str | Path, shards: Sequence[dict[str, Any]]) -> None:
        self.entries: list[tuple[str, dict[str, tuple[int, int]]]] = []
        self.keys: list[str] = []
        for sh in shards:
            tar = Path(shard_dir) / sh["name"]
            lines = tar.with_suffix(".idx").read_text().splitlines()
            version, count = lines[0].split()
            if version != "v1.2":
                raise ValueError(f"{tar}.idx: unsupported index version {version}")
            for line in lines[1 : 1 + int(count)]:
                parts = line.split()
                comps = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
                self.entries.append((str(tar), comps))
                self.keys.append(_member_key(parts[3]) if len(parts) >= 4 else str(len(self.keys)))
        self._files: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, i: int) -> str:
        """Sample ``i`` as a log names it: ``TAR key KEY``."""
        return f"{self.entries[i][0]} key {self.keys[i]}"

    def read(self, i: int, ext: str) -> bytes:
        """Bytes of component ``ext`` of sample ``i``.

        Raises:
            KeyError: the sample has no such component.
            EOFError: the tar ends before the component does (truncated after the build).
        """
        tar, comps = self.entries[i]
        off, size = comps[ext]
        f = self._files.get(tar)
        if f is None:  # one handle per tar per process (workers open their own after fork/spawn)
            f = self._files[tar] = open(tar, "rb")
        f.seek(off)
        data = f.read(size)
        if len(data) != size:  # a short read would otherwise reach a decoder as a silently shorter member
            raise EOFError(f"{ext} member: read {len(data)} of {size} bytes (the tar is truncated)")
        return data

    def close(self) -> None:
        """Close the open tar files (reopened on the next read)."""
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries, "keys": self.keys, "_files": {}}
