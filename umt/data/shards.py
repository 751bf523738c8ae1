"""Shard builder: video files (+ labels/captions) → re-encoded WebDataset tar shards with DALI indices.

Output in ``out_dir`` (format documented in ``shards/README.md``)::

    {split}-{index:06d}.tar      WebDataset shard; per sample KEY.mp4, KEY.meta, KEY.json, KEY.cls?, KEY.txt?
    {split}-{index:06d}.idx      DALI index of the tar (the ``wds2idx`` v1.2 format)
    manifest.json                num_samples, shards (name, samples, bytes, sha256), encoding, classes, skipped
    .work/                       per-input encode cache (resume), deletable once the manifest exists
    .progress.json               shards already complete (name → sha256 and plan hash), for resume

Pipeline: collect inputs → probe + re-encode each on ``workers`` processes (results cached in ``.work`` under a hash
of the source path and encoding settings, written to a temporary name and renamed) → shuffle the good samples with
``seed`` → pack ``samples_per_shard`` per tar, each written to a temporary name, indexed and renamed → manifest.
Everything after the encode step is a pure function of (inputs, settings, seed), so a re-run after an interruption
reuses the cache, keeps complete shards whose sha256 matches, rewrites the rest and produces byte-identical output.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from umt.data.encode import (
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_GOP,
    EncodeSettings,
    Reject,
    SampleSource,
    encode_video,
)
from umt.data.video import probe_keyframes

__all__ = [  # encoding names re-exported from umt.data.encode
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_GOP",
    "META_FIELDS",
    "BuildResult",
    "EncodeSettings",
    "SampleSource",
    "build_shards",
    "collect_sources",
    "decode_meta",
    "encode_meta",
    "read_manifest",
    "write_index",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Fields of ``KEY.meta``: little-endian int32, fixed size so DALI can carry it through ``DALIGenericIterator``.
#: ``fps_milli`` is frames per second × 1000; ``label`` is -1 when unlabelled; ``index`` is the manifest order.
META_FIELDS = ("frames", "width", "height", "label", "index", "fps_milli", "duration_ms", "version")
META_BYTES = 4 * len(META_FIELDS)

VIDEO_EXTS = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".3gp"}
@dataclass
class BuildResult:
    """What :func:`build_shards` wrote."""

    out_dir: Path
    num_samples: int
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    classes: list[str] = field(default_factory=list)
    encoded: int = 0
    """Inputs encoded in this run (the rest came from the resume cache)."""
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# meta component and DALI index


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


def write_index(members: Sequence[tuple[str, int, int]], path: Path) -> None:
    """Write a DALI webdataset index (``wds2idx`` format v1.2) for tar members ``(name, data offset, size)``.

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
    _atomic_write(path, text.encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Load ``shard_dir/manifest.json``.

    Raises:
        FileNotFoundError: no manifest (the directory was never built, or a build is incomplete).
    """
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build shards with tools/make_shards.py first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# inputs and annotations


def _find_videos(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".") and (p.is_file() or p.is_symlink())
    )


def _parse_label(text: str) -> int | str:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        return t


def _read_annotations(path: Path) -> list[tuple[str, int | str | None, str | None, str]]:
    """Rows ``(absolute path, label (int, class name or None), caption or None, origin)``.

    Accepts Kinetics-style CSV/TXT (``path,label`` or ``path label``, optional header) and WebVid-style JSON (a list)
    or JSONL (one object a line) with ``video`` (or ``path``), optional ``caption`` and ``label``. Relative paths are
    resolved against the annotation file's directory.

    Raises:
        ValueError: a row that cannot be parsed (the file itself is malformed, which is a user error).
    """
    base = path.parent
    rows: list[tuple[str, int | str | None, str | None, str]] = []

    def add(video: str, label: Any, caption: Any, origin: str) -> None:
        lab = None if label is None or label == "" else _parse_label(str(label))
        rows.append((os.path.abspath(base / video), lab, None if caption is None else str(caption), origin))

    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        text = path.read_text()
        if suffix == ".jsonl":
            items = [(i + 1, json.loads(line)) for i, line in enumerate(text.splitlines()) if line.strip()]
        else:
            data = json.loads(text)
            items = list(enumerate(data if isinstance(data, list) else data.get("videos", []), start=1))
        for lineno, obj in items:
            video = obj.get("video", obj.get("path"))
            if not video:
                raise ValueError(f"{path}:{lineno}: entry has no 'video' field: {obj}")
            add(video, obj.get("label"), obj.get("caption"), f"{path.name}:{lineno}")
    else:
        with open(path, newline="") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = next(csv.reader([line])) if "," in line else line.rsplit(maxsplit=1)
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: expected 'path,label' or 'path label', got {line!r}")
                video, label = parts[0].strip(), parts[1].strip()
                if lineno == 1 and label.lower() in ("label", "class", "category"):
                    continue  # header
                add(video, label, None, f"{path.name}:{lineno}")
    return rows


def collect_sources(
    inputs: Sequence[str | Path], annotations: str | Path | None = None
) -> tuple[list[SampleSource], list[str], list[dict[str, str]]]:
    """Resolve inputs and annotations into sources, the class list and early skips.

    INPUT directories are searched recursively for video files. With ``annotations``, every annotated file is a
    source (with its label/caption) and INPUT files that the annotations do not mention are added unlabelled.
    String labels are mapped to ids by their sorted order (the class list); integer labels are kept.

    Returns:
        ``(sources sorted by path, class names ([] for integer labels), skipped [{input, reason}])``.
    """
    skipped: list[dict[str, str]] = []
    found: dict[str, SampleSource] = {}
    raw_labels: dict[str, int | str | None] = {}
    if annotations is not None:
        for video, label, caption, origin in _read_annotations(Path(annotations)):
            if video in found:
                log.warning("duplicate annotation for %s (%s); keeping the first", video, origin)
                continue
            found[video] = SampleSource(video, None, caption, origin)
            raw_labels[video] = label
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = _find_videos(p)
        elif p.exists() or p.is_symlink():
            files = [p]
        else:
            skipped.append({"input": str(inp), "reason": "missing file or directory"})
            continue
        for f in files:
            key = os.path.abspath(f)  # not resolve(): keep the name a dangling symlink was given
            if key not in found:
                found[key] = SampleSource(key, None, None, "input")
    names = sorted({str(v) for v in raw_labels.values() if isinstance(v, str)})
    classes: list[str] = []
    if names:  # any class name: every label is a class name (ints too, as strings)
        classes = sorted({str(v) for v in raw_labels.values() if v is not None})
        ids = {c: i for i, c in enumerate(classes)}
        for k, v in raw_labels.items():
            found[k].label = None if v is None else ids[str(v)]
    else:
        for k, v in raw_labels.items():
            found[k].label = v  # type: ignore[assignment]
    return [found[k] for k in sorted(found)], classes, skipped



def _cache_name(src: SampleSource, st: EncodeSettings) -> str:
    return hashlib.sha256(f"{src.path}\0{st.digest()}".encode()).hexdigest()[:24]


def _process_one(src: SampleSource, st: EncodeSettings, work: Path) -> dict[str, Any]:
    """Encode one input into the cache (or reuse it). Returns ``{"ok", "cache", "reason"?, "info"?, "encoded"}``."""
    name = _cache_name(src, st)
    res_path = work / f"{name}.json"
    if res_path.is_file():
        try:
            res = json.loads(res_path.read_text())
            if not res["ok"] or (work / f"{name}.mp4").is_file():
                return {**res, "encoded": False}
        except (json.JSONDecodeError, KeyError):
            pass  # a damaged cache entry is redone
    try:
        data, info = encode_video(src, st)
        _atomic_write(work / f"{name}.mp4", data)  # video first, then the record that says it is complete
        res = {"ok": True, "cache": name, "info": info}
    except Reject as e:
        res = {"ok": False, "cache": name, "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - bad input must never stop the run; report it
        res = {"ok": False, "cache": name, "reason": f"unexpected error ({type(e).__name__}: {e})"}
    _atomic_write(res_path, json.dumps(res).encode())
    return {**res, "encoded": True}


# ---------------------------------------------------------------------------------------------------------------
# packing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
    return ti  # fixed metadata: byte-identical tars for identical inputs


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
    """Write one tar (+ its .idx) atomically. ``samples``: (key, {ext: bytes}). Returns (bytes, sha256)."""
    tmp = path.with_name(path.name + ".tmp")
    members: list[tuple[str, int, int]] = []
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, comps in samples:
            for ext, data in comps.items():
                ti = _tarinfo(f"{key}.{ext}", len(data))
                data_offset = tf.offset + len(ti.tobuf(tarfile.USTAR_FORMAT, tf.encoding, tf.errors))
                tf.addfile(ti, io.BytesIO(data))
                members.append((ti.name, data_offset, ti.size))
    sha = _sha256(tmp)
    write_index(members, path.with_suffix(".idx"))
    os.replace(tmp, path)
    return path.stat().st_size, sha


def build_shards(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    annotations: str | Path | None = None,
    settings: EncodeSettings | None = None,
    samples_per_shard: int = 256,
    workers: int = 1,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
    _after_shard: Callable[[int], None] | None = None,
) -> BuildResult:
    """Build WebDataset shards from videos (see the module docstring for the layout and resume semantics).

    Args:
        inputs: video files and/or directories (searched recursively).
        out_dir: output directory (created).
        annotations: Kinetics-style CSV/TXT or WebVid-style JSON/JSONL (see :func:`collect_sources`).
        settings: re-encoding settings.
        samples_per_shard: samples per tar (the last one holds the rest).
        workers: encoding processes (1 = in this process).
        seed: shuffles samples across shards; same inputs + settings + seed give byte-identical shards.
        split: shard name prefix.
        progress: show a tqdm progress bar.
        _after_shard: test hook called with the shard number after each shard is complete.

    Returns:
        :class:`BuildResult`; the manifest is written only when at least one sample was usable.

    Raises:
        OSError: the output directory cannot be created or written.
        ValueError: bad arguments or a malformed annotation file.
    """
    import time

    t0 = time.perf_counter()
    st = settings or EncodeSettings()
    if samples_per_shard < 1 or workers < 1:
        raise ValueError("samples_per_shard and workers must be >= 1")
    if not split or "/" in split or "." in split:
        raise ValueError(f"bad split name {split!r}")
    out = Path(out_dir)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    sources, classes, skipped = collect_sources(inputs, annotations)
    for stale in out.glob("*.tmp"):  # leftovers of an interrupted run
        stale.unlink()
    for stale in work.glob("*.tmp"):
        stale.unlink()

    results: dict[int, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), unit="video", desc="encode")
    if workers == 1 or len(sources) <= 1:
        for i, s in enumerate(sources):
            results[i] = _process_one(s, st, work)
            if bar:
                bar.update()
    else:
        import multiprocessing as mp

        # spawn: workers must not inherit threads (torch, DALI) from the parent
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_process_one, s, st, work): i for i, s in enumerate(sources)}
            for fut in as_completed(futs):
                results[futs[fut]] = fut.result()
                if bar:
                    bar.update()
    if bar:
        bar.close()

    good: list[tuple[SampleSource, dict[str, Any]]] = []
    for i, s in enumerate(sources):
        r = results[i]
        if r["ok"]:
            good.append((s, r))
        else:
            skipped.append({"input": s.path, "reason": r["reason"]})
    encoded = sum(1 for r in results.values() if r["encoded"])

    order = np.random.default_rng(seed).permutation(len(good))  # [num_samples] manifest order
    ordered = [good[j] for j in order]
    n_shards = (len(ordered) + samples_per_shard - 1) // samples_per_shard
    prog_path = out / ".progress.json"
    done: dict[str, Any] = json.loads(prog_path.read_text()) if prog_path.is_file() else {}
    wanted = {f"{split}-{k:06d}.tar" for k in range(n_shards)}
    for old in list(out.glob(f"{split}-*.tar")) + list(out.glob(f"{split}-*.idx")):
        if old.with_suffix(".tar").name not in wanted:
            old.unlink()
    shards: list[dict[str, Any]] = []
    for k in range(n_shards):
        name = f"{split}-{k:06d}.tar"
        chunk = ordered[k * samples_per_shard : (k + 1) * samples_per_shard]
        base = k * samples_per_shard
        plan = hashlib.sha256(
            json.dumps([st.digest(), base, [(r["cache"], s.label, s.caption) for s, r in chunk]]).encode()
        ).hexdigest()
        path = out / name
        rec = done.get(name)
        if rec and rec.get("plan") == plan and path.is_file() and path.with_suffix(".idx").is_file():
            if _sha256(path) == rec["sha256"]:
                shards.append({"name": name, "samples": len(chunk), "bytes": rec["bytes"], "sha256": rec["sha256"]})
                continue
        samples = []
        for j, (s, r) in enumerate(chunk):
            idx = base + j
            info = r["info"]
            video = (work / f"{r['cache']}.mp4").read_bytes()
            if "keyframes" not in info:  # cache written before key frames were recorded
                info = {**info, "keyframes": probe_keyframes(video)}
            meta = {
                "source": s.path,
                **info,
                **({"label": s.label} if s.label is not None else {}),
                **({"class_name": classes[s.label]} if s.label is not None and classes else {}),
                **({"caption": s.caption} if s.caption is not None else {}),
                "index": idx,
            }
            comps = {
                "mp4": video,
                "meta": encode_meta(
                    frames=info["frames"],
                    width=info["width"],
                    height=info["height"],
                    label=-1 if s.label is None else s.label,
                    index=idx,
                    fps_milli=round(info["fps"] * 1000),
                    duration_ms=round(info["duration"] * 1000),
                ),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            if s.label is not None:
                comps["cls"] = str(s.label).encode()
            if s.caption is not None:
                comps["txt"] = s.caption.encode()
            samples.append((f"{idx:08d}", comps))
        nbytes, sha = _write_shard(path, samples)
        done[name] = {"sha256": sha, "bytes": nbytes, "plan": plan}
        _atomic_write(prog_path, json.dumps(done, indent=1, sort_keys=True).encode())
        shards.append({"name": name, "samples": len(chunk), "bytes": nbytes, "sha256": sha})
        if _after_shard is not None:
            _after_shard(k)

    result = BuildResult(out, len(ordered), shards, skipped, classes, encoded, time.perf_counter() - t0)
    if ordered:
        manifest = {
            "format": "umt-webdataset",
            "version": FORMAT_VERSION,
            "split": split,
            "num_samples": len(ordered),
            "shards": shards,
            "encoding": {**asdict(st), "container": "mp4"},
            "seed": seed,
            "samples_per_shard": samples_per_shard,
            "meta_fields": list(META_FIELDS),
            "components": ["mp4", "meta", "json", "cls", "txt"],
            "codecs": sorted({r["info"]["codec"] for _, r in ordered}),
            "classes": classes,
            "skipped": skipped,
        }
        _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    elif (out / "manifest.json").is_file():
        (out / "manifest.json").unlink()  # its shards were removed above; a stale manifest would lie
    return result


def iter_reasons(skipped: Iterable[dict[str, str]]) -> dict[str, int]:
    """Count skip reasons by their first words (for the summary)."""
    counts: dict[str, int] = {}
    for s in skipped:
        head = s["reason"].split("(")[0].split(":")[0].strip()
        counts[head] = counts.get(head, 0) + 1
    return counts
