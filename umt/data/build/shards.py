"""Shard builder: video or image files (+ labels/captions) → re-encoded WebDataset tar shards with DALI indices.

One directory holds one modality (``manifest.json["modality"]``): videos re-encoded by :mod:`umt.data.build.encode`, or
images re-encoded as JPEG by :mod:`umt.data.build.images`. Captions may be several per item (``KEY.txt``, one a line).

Output in ``out_dir`` (format documented in ``shards/README.md``)::

    {split}-{index:06d}.tar      WebDataset shard; per sample KEY.mp4 (KEY.jpg), KEY.meta, KEY.json, KEY.cls?, KEY.txt?
    {split}-{index:06d}.idx      DALI index of the tar (the ``wds2idx`` v1.2 format)
    manifest.json                modality, num_samples, shards (name, samples, bytes, sha256), encoding, classes,
                                 captions (counts), skipped,
                                 warnings (samples packed with one, e.g. truncated inputs), build (key, inputs, appends)
    sources.jsonl                per sample: index, source path, sha256 of the source file (``append`` de-duplicates)
    .work/                       while building: per-input encode cache (resume); deleted with the manifest written
    .progress.json, .build.json  while building: shards already complete, and the build's key, for resume
    .parts/                      a partitioned build until committed (:mod:`umt.data.build.parts`)

Pipeline: collect inputs → probe + re-encode each on ``workers`` processes (results cached in ``.work`` under a hash
of the source path and encoding settings, written to a temporary name and renamed) → order the good samples by
:func:`order_key` (a seeded hash of the path) → pack ``samples_per_shard`` per tar, each written to a temporary name,
indexed and renamed → manifest.
Everything after the encode step is a pure function of (inputs, settings, seed), so a re-run after an interruption
reuses the cache, keeps complete shards whose sha256 matches, rewrites the rest and produces byte-identical output.
A re-run after completion is a no-op (the manifest's build key matches). What :func:`build_shards` does with a
directory that already holds something (refuse, ``overwrite``, ``append``) is in its docstring.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from umt.data.build.encode import (
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_GOP,
    EncodeSettings,
    Reject,
    SampleSource,
    encode_video,
)
from umt.data.build.images import IMAGE_EXTS, ImageEncodeSettings, encode_image
from umt.data.decode import probe_keyframes
from umt.data.format import (
    FORMAT_VERSION,
    META_FIELDS,
    clean_caption,
    encode_captions,
    encode_meta,
    index_text,
    read_manifest,
)
from umt.fileio import atomic_path, atomic_write, check_writable, exclusive_lock, fsync_dir, replace, sha256_file

__all__ = [  # encoding names re-exported from umt.data.build.encode
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_GOP",
    "BuildResult",
    "EncodeSettings",
    "ImageEncodeSettings",
    "SampleSource",
    "ShardDirError",
    "build_shards",
    "collect_sources",
    "order_key",
    "part_of",
    "write_index",
]

log = logging.getLogger(__name__)



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
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Samples packed with a warning in this run (``{input, index, warning}``; e.g. truncated inputs)."""
    duplicates: list[dict[str, str]] = field(default_factory=list)
    """``append``: inputs left out because the data set already holds them (``{input, reason}``)."""
    added: int | None = None
    """Samples written by this run (``append``: the new ones; None when nothing was built)."""
    already_built: bool = False
    """The directory already held this exact data set; nothing was done."""
    modality: str = "video"
    """``video`` or ``image``."""


# ---------------------------------------------------------------------------------------------------------------
# inputs and annotations


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _remote_fs(url: str) -> tuple[Any, str] | None:
    """``(fsspec file system, path in it)`` for a URL of a non-local file system; None for local paths and for URLs of
    the local file system (``file://``), which are read as the local path they name (:func:`_localize`).

    Raises:
        ValueError: a URL whose scheme fsspec does not know (or fsspec is missing).
    """
    if not _URL.match(url):
        return None
    try:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot open {url}: {e}") from None
    return None if isinstance(fs, LocalFileSystem) else (fs, path)


def _localize(p: str | Path) -> str | Path:
    """A ``file://`` URL as its local path (so it builds the same set as the plain path); anything else as given."""
    if isinstance(p, str) and _URL.match(p) and _remote_fs(p) is None:
        import fsspec

        return fsspec.core.url_to_fs(p)[1]
    return p


def _origin_path(p: str | Path) -> str:
    """What the manifest records of an input or annotation file given on the command line: a URL as given, a path
    made absolute."""
    return str(p) if _URL.match(str(p)) else os.path.abspath(p)


def _find_media(root: Path, modality: str = "video") -> list[Path]:
    exts = IMAGE_EXTS if modality == "image" else VIDEO_EXTS
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in exts and not p.name.startswith(".") and (p.is_file() or p.is_symlink())
    )


def _parse_label(text: str) -> int | str:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        return t


def _parse_captions(value: Any, where: str) -> list[str] | None:
    """An annotation's ``caption``: None when absent, else a list (a string is one caption; a list several)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    raise ValueError(f"{where}: 'caption' must be a string or a list of strings, got {value!r}")


def _lines(path: str | Path) -> Iterable[str]:
    """The lines of a local file or an fsspec URL, streamed."""
    remote = _remote_fs(str(path))
    if remote is not None:
        fs, p = remote
        with fs.open(p, "rt", encoding="utf-8") as f:
            yield from f
    else:
        with open(path, encoding="utf-8", newline="") as f:
            yield from f


def _parse_qa(obj: dict[str, Any], lineno: int, where: str) -> dict[str, Any] | None:
    """A video-QA row's question and answers (official ``multi_modality/dataset/qa_dataset.py`` rows: ``question``,
    ``answer`` a string or a list of strings, optional ``question_id`` and ``answer_type``/``question_type``), or
    None for a row without ``question``. The question id defaults to the row's number in the file."""
    if "question" not in obj:
        return None
    q, a = obj["question"], obj.get("answer")
    answers = [a] if isinstance(a, str) else a
    if not isinstance(q, str) or not q.strip() or not isinstance(answers, list) or not answers \
            or not all(isinstance(x, str) and x.strip() for x in answers):
        raise ValueError(f"{where}: a QA row needs a non-empty 'question' and 'answer' (a string or a list of "
                         f"strings), got question={q!r}, answer={a!r}")
    qa: dict[str, Any] = {"question": q, "answer": list(answers), "question_id": obj.get("question_id", lineno)}
    kind = obj.get("answer_type", obj.get("question_type"))
    if kind is not None:
        qa["type"] = str(kind)
    return qa


def _read_annotations(path: str | Path) -> tuple[list[tuple[str, int | str | None, list[str] | None, str,
                                                            dict[str, Any] | None]], str]:
    """Rows ``(absolute path, label (int, class name or None), captions or None, origin, QA pair or None)`` and the
    modality.

    Accepts Kinetics-style CSV/TXT (``path,label`` or ``path label``, optional header; modality video), WebVid-style
    JSON (a list) or JSONL (one object a line) with ``video`` (or ``path``), and COCO/CC3M-style JSON/JSONL with
    ``image``; optional ``caption`` (a string or a list of strings) and ``label``; video-QA rows (the official
    MSRVTT-QA / MSVD-QA / ActivityNet-QA files: ``video``, ``question``, ``answer``, optional ``question_id`` and
    ``answer_type``; :func:`_parse_qa`), one row per question. One file holds one modality. The official UMT
    retrieval files (``{"image": "x.mp4", "caption": ...}``) are video rows: an ``image`` naming a video file is a
    video; a list of paths (the official SSv2 test rows, one caption for several videos) is one row per path with
    that caption.
    Relative paths are resolved against the annotation file's directory.

    Raises:
        ValueError: a row that cannot be parsed, or a file mixing image and video rows (a user error).
    """
    remote = _remote_fs(str(path))
    base_url = str(path).rsplit("/", 1)[0] if remote else ""
    path = path if remote else Path(path)
    base = Path(path).parent
    name = str(path).rsplit("/", 1)[-1]
    rows: list[tuple[str, int | str | None, list[str] | None, str, dict[str, Any] | None]] = []

    def add(media: str, label: Any, captions: list[str] | None, origin: str,
            qa: dict[str, Any] | None = None) -> None:
        lab = None if label is None or label == "" else _parse_label(str(label))
        if remote:  # relative to the annotation file's URL; absolute URLs as they are
            where = media if _URL.match(media) else f"{base_url}/{media.lstrip('/')}"
        else:
            where = os.path.abspath(base / media)
        rows.append((where, lab, captions, origin, qa))

    suffix = Path(name).suffix.lower()
    kinds: set[str] = set()
    if suffix in (".json", ".jsonl"):
        items: Iterable[tuple[int, Any]]
        if suffix == ".jsonl":  # streamed: one row in memory at a time besides the rows kept
            items = ((i, json.loads(line)) for i, line in enumerate(_lines(path), start=1) if line.strip())
        else:
            data = json.loads("".join(_lines(path)))
            items = enumerate(data if isinstance(data, list) else data.get("videos", []), start=1)
        for lineno, obj in items:
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected an object, got {obj!r}")
            # the official downstream files (multi_modality/dataset) name videos "image" too, and an SSv2 test row
            # lists every video of its caption ("image": [paths]): a video file is a video row whatever its key
            media = obj["image"] if "image" in obj else obj.get("video", obj.get("path"))
            medias = media if isinstance(media, list) and media else [media]
            if not all(m and isinstance(m, str) for m in medias):
                raise ValueError(f"{path}:{lineno}: entry has no 'video' or 'image' field: {obj}")
            for m in medias:
                kinds.add("image" if "image" in obj and Path(m).suffix.lower() not in VIDEO_EXTS else "video")
            if len(kinds) > 1:
                raise ValueError(f"{path} mixes image rows and video rows (line {lineno}): one shard directory holds "
                                 "one modality, so build two directories from two annotation files")
            where = f"{name}:{lineno}"
            qa = _parse_qa(obj, lineno, f"{path}:{lineno}")
            for m in medias:
                add(m, obj.get("label"), _parse_captions(obj.get("caption"), f"{path}:{lineno}"), where, qa)
    else:
        kinds.add("video")
        for lineno, line in enumerate(_lines(path), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = next(csv.reader([line])) if "," in line else line.rsplit(maxsplit=1)
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'path,label' or 'path label', got {line!r}")
            video, label = parts[0].strip(), parts[1].strip()
            if lineno == 1 and label.lower() in ("label", "class", "category"):
                continue  # header
            add(video, label, None, f"{name}:{lineno}")
    return rows, (kinds.pop() if kinds else "video")


def collect_sources(
    inputs: Sequence[str | Path], annotations: str | Path | None = None, *, modality: str | None = None,
    paragraph: bool = False,
) -> tuple[list[SampleSource], list[str], list[dict[str, str]], str]:
    """Resolve inputs and annotations into sources, the class list, early skips and the modality.

    INPUT directories are searched recursively for video files (image files with modality ``image``). With
    ``annotations``, every annotated file is a source (with its label/captions) and INPUT files that the annotations
    do not mention are added unlabelled. String labels are mapped to ids by their sorted order (the class list);
    integer labels are kept. Rows repeating a path are one item (COCO's annotation files repeat the image once per
    caption): their captions are gathered in file order, the first label is kept.

    Captioned data sets (any annotation row has a ``caption``): empty captions are dropped; an item left with none
    (every caption empty, or none given, including INPUT files the annotations do not mention) is skipped with the
    reason.

    Paragraph retrieval (``paragraph``; DiDeMo, ActivityNet): each item's captions, in file order, are joined with one
    space into a single caption, as the official ``preprocess_para_retrieval_data`` (``multi_modality/dataset/
    caption_dataset.py``: ``" ".join(d.pop("caption"))`` when it reads the annotation file); the loaders'
    :func:`umt.data.captions.pre_text` then treats the paragraph as the official ``pre_text`` does.

    Args:
        modality: ``video`` or ``image``; None: the annotations' (``image`` rows → image), else video.
        paragraph: join each item's captions into one paragraph (above).

    Returns:
        ``(sources sorted by path, class names ([] for integer labels), skipped [{input, reason}], modality)``.

    Raises:
        ValueError: a malformed annotation file, or ``modality`` contradicting the annotations.
    """
    if modality not in (None, "video", "image"):
        raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
    skipped: list[dict[str, str]] = []
    found: dict[str, SampleSource] = {}
    raw_labels: dict[str, int | str | None] = {}
    captioned = False
    origins: dict[str, list[str]] = {}
    if annotations is not None:
        annotations = _localize(annotations)
        rows, ann_modality = _read_annotations(annotations if _remote_fs(str(annotations)) else Path(annotations))
        if modality is not None and rows and modality != ann_modality:
            raise ValueError(f"{annotations} holds {ann_modality} rows but the modality asked for is {modality}: "
                             "one shard directory holds one modality")
        modality = ann_modality if rows else (modality or ann_modality)
        for media, label, captions, origin, qa in rows:
            captioned = captioned or captions is not None
            if media in found:  # a repeated path: one item (COCO repeats the image per caption, QA per question)
                found[media].captions += captions or []
                found[media].qa += [qa] if qa is not None else []
                origins[media].append(origin)
                if (captions is None and qa is None) or (label is not None and label != raw_labels[media]):
                    log.warning("duplicate annotation for %s (%s); keeping the first label", media, origin)
                continue
            found[media] = SampleSource(media, None, None, origin, captions=list(captions or []),
                                        qa=[qa] if qa is not None else [])
            raw_labels[media] = label
            origins[media] = [origin]
    modality = modality or "video"
    for inp in inputs:
        inp = _localize(inp)
        remote = _remote_fs(str(inp))
        if remote is not None:  # an fsspec URL: a file, or a directory searched recursively
            fs, rp = remote
            exts = IMAGE_EXTS if modality == "image" else VIDEO_EXTS
            if fs.isdir(rp):
                urls = [fs.unstrip_protocol(f) for f in sorted(fs.find(rp)) if Path(f).suffix.lower() in exts]
            elif fs.exists(rp):
                urls = [str(inp)]
            else:
                skipped.append({"input": str(inp), "reason": "missing file or directory"})
                continue
            for u in urls:
                found.setdefault(u, SampleSource(u, None, None, "input"))
            continue
        p = Path(inp)
        if p.is_dir():
            files = _find_media(p, modality)
        elif p.exists() or p.is_symlink():
            files = [p]
        else:
            skipped.append({"input": str(inp), "reason": "missing file or directory"})
            continue
        for f in files:
            key = os.path.abspath(f)  # not resolve(): keep the name a dangling symlink was given
            if key not in found:
                found[key] = SampleSource(key, None, None, "input")
    if captioned:
        for key in list(found):
            s = found[key]
            given = len(s.captions)
            s.captions = [c for c in (clean_caption(c) for c in s.captions) if c]
            if paragraph and s.captions:
                s.captions = [" ".join(s.captions)]
            if not s.captions:
                where = ", ".join(origins.get(key, ["not in the annotations"]))
                reason = "empty caption" if given else "missing caption"
                skipped.append({"input": key, "reason": f"{reason} ({where})"})
                del found[key]
                raw_labels.pop(key, None)
            else:
                s.caption = s.captions[0]
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
    return [found[k] for k in sorted(found)], classes, skipped, modality


def _cache_name(src: SampleSource, st: EncodeSettings | ImageEncodeSettings) -> str:
    return hashlib.sha256(f"{src.path}\0{st.digest()}".encode()).hexdigest()[:24]


def _media_ext(st: EncodeSettings | ImageEncodeSettings) -> str:
    """The stored member's extension: ``jpg`` for images, ``mp4`` for videos."""
    return "jpg" if isinstance(st, ImageEncodeSettings) else "mp4"


def _process_one(src: SampleSource, st: EncodeSettings | ImageEncodeSettings, work: Path) -> dict[str, Any]:
    """Encode one input into the cache (or reuse it).

    Returns:
        ``{"ok", "cache", "reason"?, "info"?, "source_sha256"?, "encoded"}``.
    """
    name = _cache_name(src, st)
    ext = _media_ext(st)
    res_path = work / f"{name}.json"
    if res_path.is_file():
        try:
            res = json.loads(res_path.read_text())
            if not res["ok"] or (work / f"{name}.{ext}").is_file():
                if res["ok"] and "source_sha256" not in res and _remote_fs(src.path) is None:
                    try:
                        res["source_sha256"] = sha256_file(Path(src.path))
                    except OSError:
                        res["source_sha256"] = None
                return {**res, "encoded": False}
        except (json.JSONDecodeError, KeyError):
            pass  # a damaged cache entry is redone
    remote = _remote_fs(src.path)
    local = src
    fetched = work / f"{name}.source.tmp"  # a *.tmp: removed by the next run if this one dies holding it
    try:
        if remote is not None:  # encoders read local files: fetch the input once, next to its cache entry
            fs, rp = remote
            try:
                fs.get_file(rp, str(fetched))
            except FileNotFoundError:
                raise Reject("missing file" + (f" (annotation {src.origin})" if src.origin not in ("", "input")
                                               else "")) from None
            local = dataclasses.replace(src, path=str(fetched))
        data, info = encode_image(local, st) if isinstance(st, ImageEncodeSettings) else encode_video(local, st)
        atomic_write(work / f"{name}.{ext}", data)  # media first, then the record that says it is complete
        # content hash of the source: --append recognises an input already in the set under another name
        res = {"ok": True, "cache": name, "info": info, "source_sha256": sha256_file(Path(local.path))}
    except Reject as e:
        res = {"ok": False, "cache": name, "reason": str(e).replace(str(fetched), src.path)}
    except Exception as e:  # noqa: BLE001 - bad input must never stop the run; report it
        res = {"ok": False, "cache": name, "reason": f"unexpected error ({type(e).__name__}: {e})"}
    finally:
        fetched.unlink(missing_ok=True)
    atomic_write(res_path, json.dumps(res).encode())
    return {**res, "encoded": True}


def _encode_all(sources: Sequence[SampleSource], st: EncodeSettings | ImageEncodeSettings, work: Path, *,
                workers: int, progress: bool) -> dict[int, dict[str, Any]]:
    """Encode ``sources`` into the cache ``work`` (or reuse it) on ``workers`` processes: ``{position: result}``."""
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
    return results


def order_key(seed: int, path: str) -> int:
    """An input's place in the global order of a build: the first 8 bytes of ``sha256(seed, path)`` as an integer.

    The manifest order (sample indices) sorts the usable inputs by this key (ties by path), so it is a pure function
    of the inputs and the seed, independent of the order they were listed in, and a partitioned build
    (:func:`part_of`) can give each part one contiguous range of it.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}\0{path}".encode()).digest()[:8], "big")


def part_of(seed: int, path: str, parts: int) -> int:
    """Which of ``parts`` parts builds the input at ``path``: the ``parts`` equal ranges of :func:`order_key`, so
    each part's samples are one contiguous run of the global order."""
    return (order_key(seed, path) * parts) >> 64


def _global_order(good: list[tuple[SampleSource, dict[str, Any]]], seed: int
                  ) -> list[tuple[SampleSource, dict[str, Any]]]:
    return sorted(good, key=lambda g: (order_key(seed, g[0].path), g[0].path))


# ---------------------------------------------------------------------------------------------------------------
# packing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
    return ti  # fixed metadata: byte-identical tars for identical inputs


def write_index(members: Sequence[tuple[str, int, int]], path: Path) -> None:
    """Write the DALI index of a tar durably (:func:`umt.data.format.index_text`, :func:`umt.fileio.atomic_write`)."""
    atomic_write(path, index_text(members))


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
    """Write one tar (+ its .idx) durably. ``samples``: (key, {ext: bytes}). Returns (bytes, sha256)."""
    members: list[tuple[str, int, int]] = []
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, comps in samples:
                for ext, data in comps.items():
                    ti = _tarinfo(f"{key}.{ext}", len(data))
                    data_offset = tf.offset + len(ti.tobuf(tarfile.USTAR_FORMAT, tf.encoding, tf.errors))
                    tf.addfile(ti, io.BytesIO(data))
                    members.append((ti.name, data_offset, ti.size))
        sha = sha256_file(tmp)
        write_index(members, path.with_suffix(".idx"))  # the index first: a tar under its final name is indexed
    return path.stat().st_size, sha


class ShardDirError(ValueError):
    """The output directory holds something :func:`build_shards` must not replace or mix with: another data set
    (built from other inputs or settings), an interrupted build of one, or files it did not write. The message is one
    line that says what is there and which option (``overwrite`` / ``append``) or directory to choose instead."""


#: Names :func:`build_shards` writes in an output directory (anything else there is the user's and is never touched).
_OURS = re.compile(
    r"^(manifest\.json|sources\.jsonl|\.build\.json|\.progress\.json|\.work|\.parts)(\.tmp)?$"
    r"|^[^/]+-\d{6}\.(tar|idx)(\.tmp)?$"  # {split}-{k:06d}.tar, and a part's {split}-p{I:03d}of{N:03d}-{k:06d}.tar
)


def _dir_state(out: Path) -> str:
    """``absent``, ``empty``, ``finished`` (a manifest of ours), ``partial`` (an interrupted build) or ``foreign``.

    Raises:
        ShardDirError: ``out`` exists and is not a directory.
    """
    if not out.exists():
        return "absent"
    if not out.is_dir():
        raise ShardDirError(f"{out} exists and is not a directory")
    names = [p.name for p in out.iterdir()]
    if all(n.endswith(".tmp") and _OURS.match(n) for n in names):
        return "empty"  # nothing, or only a temporary file of ours from a build killed before it recorded its key
    if (out / "manifest.json").is_file():
        try:
            if read_manifest(out).get("format") == "umt-webdataset":
                return "finished"
        except (json.JSONDecodeError, AttributeError):
            pass
        return "foreign"
    marks = (".build.json", ".progress.json", ".work", ".parts")
    if any(n in marks for n in names) and all(_OURS.match(n) for n in names):
        return "partial"
    return "foreign"


def _foreign_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not _OURS.match(p.name))


def _caption_key(s: SampleSource) -> str | list[str] | None:
    """What a sample's captions contribute to build keys: the caption itself when there is at most one (the keys of
    sets built before caption lists existed stay valid), else the list."""
    return list(s.captions) if len(s.captions) > 1 else s.caption


def _build_key(sources: Sequence[SampleSource], classes: Sequence[str], skipped: Sequence[dict[str, str]],
               st: EncodeSettings | ImageEncodeSettings, seed: int, samples_per_shard: int, split: str) -> str:
    """What a build is a pure function of: same key = same data set (a re-run resumes or is a no-op)."""
    spec = [FORMAT_VERSION, st.digest(), seed, samples_per_shard, split, list(classes),
            [(s.path, s.label, _caption_key(s)) for s in sources], sorted(s["input"] for s in skipped)]
    if any(s.qa for s in sources):  # QA sets only, so that the keys of every other set stay as they were
        spec.append([s.qa for s in sources])
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:32]


def _result_from_manifest(out: Path, m: dict[str, Any]) -> BuildResult:
    return BuildResult(out, m["num_samples"], m["shards"], m.get("skipped", []), m.get("classes", []),
                       warnings=m.get("warnings", []), already_built=True, modality=m.get("modality", "video"))


def _read_sources(out: Path, m: dict[str, Any]) -> list[dict[str, Any]]:
    """Per sample ``{"index", "source", "sha256"}`` of a finished set: ``sources.jsonl``, or (sets built before it
    existed) the samples' JSON components read from the tars (headers are skipped over, not read)."""
    path = out / "sources.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for s in m["shards"]:
        with tarfile.open(out / s["name"]) as tf:
            for ti in tf:
                if ti.name.endswith(".json"):
                    info = json.loads(tf.extractfile(ti).read())  # type: ignore[union-attr]
                    rows.append({"index": info["index"], "source": info["source"], "sha256": None})
    return rows


def build_shards(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    annotations: str | Path | None = None,
    settings: EncodeSettings | ImageEncodeSettings | None = None,
    modality: str | None = None,
    samples_per_shard: int = 256,
    workers: int = 1,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
    mode: str = "new",
    keep_cache: bool = False,
    paragraph: bool = False,
    _after_shard: Callable[[int], None] | None = None,
) -> BuildResult:
    """Build WebDataset shards from videos or images (see the module docstring for the layout and resume semantics).

    What happens to ``out_dir``:

    - absent or empty: a new data set is built there.
    - ``mode="new"`` (default): a finished or interrupted build of the *same* inputs and settings is completed
      (resume) or left as is (no-op); any other data set of ours is refused with :class:`ShardDirError`.
    - ``mode="overwrite"``: the new set is built in a sibling directory (``.{name}.overwrite``) and swapped in only
      when complete, so the old set stays readable until then; the old set is then deleted.
    - ``mode="append"``: the new inputs become further shards (numbered after the existing ones, sample indices
      continuing), the manifest covers both; inputs already in the set (same source path, or same file content by
      sha256) are left out and reported in :attr:`BuildResult.duplicates`. Needs the same encoding settings and split.
    - A directory holding files this function did not write is refused in every mode (nothing of the user's is ever
      deleted or moved).

    Once the manifest is written the encode cache ``.work/`` and the resume records are deleted (``keep_cache``
    keeps the cache); neither resume, a no-op re-run nor ``append`` needs them.

    Args:
        inputs: video (or image) files and/or directories (searched recursively).
        out_dir: output directory (created).
        annotations: Kinetics-style CSV/TXT, WebVid-style JSON/JSONL (``video``) or COCO/CC3M-style JSON/JSONL
            (``image``), captions a string or a list (see :func:`collect_sources`).
        settings: re-encoding settings: :class:`EncodeSettings` for videos (``on_truncated`` decides about
            truncated inputs), :class:`ImageEncodeSettings` for images (None: the defaults of the modality).
        modality: ``video`` or ``image`` (None: from the annotations, else video); one per directory.
        samples_per_shard: samples per tar (the last one holds the rest).
        workers: encoding processes (1 = in this process).
        seed: shuffles samples across shards; same inputs + settings + seed give byte-identical shards.
        split: shard name prefix.
        progress: show a tqdm progress bar.
        mode: ``new``, ``overwrite`` or ``append`` (above).
        keep_cache: keep ``.work/`` (the per-input encode cache) after a complete build.
        paragraph: one caption per item, its captions joined (:func:`collect_sources`; paragraph retrieval).
        _after_shard: test hook called with the shard number after each shard is complete.

    Returns:
        :class:`BuildResult`; the manifest is written only when at least one sample was usable.

    Raises:
        umt.fileio.LockedError: another process is building into ``out_dir`` (the message names it).
        ShardDirError: ``out_dir`` holds another data set, an interrupted build of one, or files that are not ours
            (the message says which option or directory to use instead).
        OSError: the output directory cannot be created or written.
        ValueError: bad arguments, settings of the other modality, or a malformed annotation file (including one
            that mixes image and video rows).
    """
    if samples_per_shard < 1 or workers < 1:
        raise ValueError("samples_per_shard and workers must be >= 1")
    if not split or "/" in split or "." in split:
        raise ValueError(f"bad split name {split!r}")
    if mode not in ("new", "overwrite", "append"):
        raise ValueError(f"mode must be 'new', 'overwrite' or 'append', got {mode!r}")
    out = Path(out_dir)
    check_writable(out, "--out")  # before any input is read or encoded
    if modality is None and settings is not None:
        modality = "image" if isinstance(settings, ImageEncodeSettings) else None
    sources, classes, skipped, modality = collect_sources(inputs, annotations, modality=modality, paragraph=paragraph)
    st = settings or (ImageEncodeSettings() if modality == "image" else EncodeSettings())
    if isinstance(st, ImageEncodeSettings) != (modality == "image"):
        raise ValueError(f"{type(st).__name__} given for a {modality} data set (images take ImageEncodeSettings, "
                         "videos EncodeSettings)")
    key = _build_key(sources, classes, skipped, st, seed, samples_per_shard, split)
    opts = dict(st=st, modality=modality, samples_per_shard=samples_per_shard, workers=workers, seed=seed, split=split,
                progress=progress, keep_cache=keep_cache, _after_shard=_after_shard,
                origin={"inputs": [str(i) for i in inputs], "annotations": None if annotations is None
                        else _origin_path(annotations)})
    with exclusive_lock(out.parent / f".{out.name}.lock", f"shard directory {out}"):
        return _dispatch(out, mode, sources, classes, skipped, key, opts)


def _dispatch(out: Path, mode: str, sources: list[SampleSource], classes: list[str], skipped: list[dict[str, str]],
              key: str, opts: dict[str, Any]) -> BuildResult:
    """What :func:`build_shards` does with ``out`` in its current state (the rules in its docstring)."""
    state = _dir_state(out)
    if state == "foreign":
        names = _foreign_names(out)
        raise ShardDirError(f"{out} is not empty and holds no data set of make_shards ({', '.join(names[:3])}"
                            f"{', ...' if len(names) > 3 else ''}); choose a new or empty --out directory")
    if mode == "append" and state == "partial":
        raise ShardDirError(f"{out} holds an interrupted build: finish it by re-running its command, or replace it "
                            "with --overwrite, before appending")
    if mode == "append" and state == "finished":
        return _build(out, sources, classes, skipped, key, existing=read_manifest(out), **opts)
    if mode == "overwrite" and state in ("finished", "partial"):
        return _overwrite(out, sources, classes, skipped, key, **opts)
    if state == "finished":
        m = read_manifest(out)
        if m.get("build", {}).get("key") == key:
            if (out / ".build.json").is_file():  # interrupted after the manifest was written
                _clean_up(out, opts["keep_cache"])
            log.info("%s already holds this data set (same inputs and settings): nothing to do", out)
            return _result_from_manifest(out, m)
        raise ShardDirError(f"{out} already holds a data set built from other inputs or settings "
                            f"({m['num_samples']} samples); pass --overwrite to replace it, --append to add these "
                            "inputs to it, or choose another --out")
    if state == "partial":
        build = out / ".build.json"
        if (out / ".parts").is_dir() and not build.is_file():
            raise ShardDirError(f"{out} holds a partitioned build that is not committed: run its remaining parts "
                                "(--part I/N) and make_shards --out DIR --commit, pass --overwrite to replace it, or "
                                "choose another --out")
        if not build.is_file() or json.loads(build.read_text()).get("key") != key:
            raise ShardDirError(f"{out} holds an interrupted build of other inputs or settings; re-run that command "
                                "to finish it, pass --overwrite to replace it, or choose another --out")
    return _build(out, sources, classes, skipped, key, **opts)


def _overwrite(out: Path, sources: list[SampleSource], classes: list[str], skipped: list[dict[str, str]], key: str,
               **opts: Any) -> BuildResult:
    """Build in ``.{name}.overwrite`` beside ``out`` (resuming an interrupted one of the same key), then swap."""
    foreign = _foreign_names(out)
    if foreign:
        raise ShardDirError(f"{out} also holds files make_shards did not write ({', '.join(foreign[:3])}); move "
                            "them away before --overwrite, or choose another --out")
    stage = out.parent / f".{out.name}.overwrite"
    st_state = _dir_state(stage)
    if st_state == "foreign":
        raise ShardDirError(f"{stage} (the staging directory of --overwrite) holds files that are not ours")
    if st_state in ("finished", "partial"):
        build = stage / ".build.json"
        if not build.is_file() or json.loads(build.read_text()).get("key") != key:
            shutil.rmtree(stage)  # an abandoned staging build of other inputs (ours only, checked above)
    res = _build(stage, sources, classes, skipped, key, **opts)
    if not res.num_samples:
        shutil.rmtree(stage, ignore_errors=True)  # _build already removed it unless it kept its cache
        log.warning("no usable input: %s left as it was", out)
        res.out_dir = out
        return res
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)  # a previous swap interrupted after its rename (ours: it was our out_dir)
    replace(out, old)
    replace(stage, out)
    shutil.rmtree(old)
    fsync_dir(out.parent)
    log.info("replaced the data set in %s", out)
    res.out_dir = out
    return res


def _build(
    out: Path,
    sources: list[SampleSource],
    classes: list[str],
    skipped: list[dict[str, str]],
    key: str,
    *,
    st: EncodeSettings | ImageEncodeSettings,
    modality: str,
    samples_per_shard: int,
    workers: int,
    seed: int,
    split: str,
    progress: bool,
    keep_cache: bool,
    origin: dict[str, Any],
    existing: dict[str, Any] | None = None,
    _after_shard: Callable[[int], None] | None = None,
) -> BuildResult:
    """Encode, pack and write the manifest into ``out`` (new set, resume, or an append to ``existing``)."""
    import time

    t0 = time.perf_counter()
    created = not out.exists()
    work = out / ".work"
    if existing is not None:  # refused before anything is written into the finished set
        if existing.get("modality", "video") != modality:
            raise ShardDirError(f"{out} holds {existing.get('modality', 'video')}s; --append cannot add {modality}s "
                                "to it (one modality per directory): build them into another --out")
        enc = {k: existing["encoding"].get(k) for k in asdict(st)}
        if enc != asdict(st) or existing.get("split", split) != split:
            raise ShardDirError(f"{out}: --append needs the existing set's encoding and split "
                                f"({existing['encoding']}, split {existing.get('split')!r}); got {asdict(st)}, "
                                f"split {split!r}")
        if bool(existing.get("classes")) != bool(classes) and any(s.label is not None for s in sources) \
                and existing["num_samples"]:
            raise ShardDirError(f"{out}: --append cannot mix class-name labels with integer labels")
    # the build's key is recorded before anything else: a directory of ours without it cannot be told apart from
    # another command's interrupted build
    if not (out / ".build.json").is_file() or existing is not None:
        atomic_write(out / ".build.json", json.dumps({"key": key, "append": existing is not None}).encode())
    work.mkdir(exist_ok=True)
    for stale in out.glob("*.tmp"):  # leftovers of an interrupted run
        stale.unlink()
    for stale in work.glob("*.tmp"):
        stale.unlink()

    duplicates: list[dict[str, str]] = []
    old_rows: list[dict[str, Any]] = []
    if existing is not None:
        old_classes = list(existing.get("classes", []))
        if classes:  # map the new class names onto the existing list, new names after the old ones
            merged = old_classes + [c for c in classes if c not in old_classes]
            remap = {i: merged.index(c) for i, c in enumerate(classes)}
            for s in sources:
                s.label = None if s.label is None else remap[s.label]
            classes = merged
        old_rows = _read_sources(out, existing)
        known_paths = {r["source"] for r in old_rows}
        fresh = []
        for s in sources:
            if s.path in known_paths:
                duplicates.append({"input": s.path, "reason": "already in the data set (same path)"})
            else:
                fresh.append(s)
        sources = fresh

    results = _encode_all(sources, st, work, workers=workers, progress=progress)

    good: list[tuple[SampleSource, dict[str, Any]]] = []
    seen_hashes = {r["sha256"] for r in old_rows if r.get("sha256")}
    for i, s in enumerate(sources):
        r = results[i]
        if not r["ok"]:
            skipped.append({"input": s.path, "reason": r["reason"]})
            continue
        if existing is not None:
            h = r.get("source_sha256")
            if h in seen_hashes:
                duplicates.append({"input": s.path, "reason": "already in the data set (same content)"})
                continue
            seen_hashes.add(h)
        good.append((s, r))
    encoded = sum(1 for r in results.values() if r["encoded"])

    ordered = _global_order(good, seed)  # manifest order
    first_shard = len(existing["shards"]) if existing else 0
    first_index = existing["num_samples"] if existing else 0
    prog_path = out / ".progress.json"
    keep = {sh["name"] for sh in existing["shards"]} if existing else set()
    shards, new_rows, new_warnings = _pack(
        out, ordered, first_index=first_index, names=lambda j: f"{split}-{first_shard + j:06d}.tar",
        stale=lambda p: p.with_suffix(".tar").name not in keep and re.fullmatch(rf"{re.escape(split)}-\d{{6}}", p.stem),
        st=st, modality=modality, classes=classes, samples_per_shard=samples_per_shard, work=work,
        prog_path=prog_path, _after_shard=None if _after_shard is None else lambda j: _after_shard(first_shard + j))
    shards = (list(existing["shards"]) if existing else []) + shards
    warnings = (list(existing.get("warnings", [])) if existing else []) + new_warnings

    all_skipped = (list(existing.get("skipped", [])) if existing else []) + skipped
    total = first_index + len(ordered)
    result = BuildResult(out, total, shards, skipped, classes, encoded, time.perf_counter() - t0,
                         warnings=new_warnings, duplicates=duplicates, added=len(ordered), modality=modality)
    if total:
        build = dict(existing["build"]) if existing and "build" in existing else {"key": key, **origin}
        if existing is not None:
            build["appends"] = [*build.get("appends", []), {**origin, "samples": len(ordered),
                                                             "duplicates": len(duplicates)}]
        rows = old_rows + new_rows
        manifest = _manifest(
            st=st, modality=modality, split=split, num_samples=total, shards=shards,
            seed=seed if existing is None else existing.get("seed", seed),
            samples_per_shard=samples_per_shard if existing is None else existing.get("samples_per_shard"),
            codecs={r["info"]["codec"] for _, r in ordered} | set(existing["codecs"] if existing else []),
            classes=classes, rows=rows, skipped=all_skipped, warnings=warnings, build=build)
        atomic_write(out / "sources.jsonl", _sources_text(rows))
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
        _clean_up(out, keep_cache)
    else:  # nothing usable: leave no half-built directory behind that would block the next build
        (out / "manifest.json").unlink(missing_ok=True)  # its shards were removed above; a stale one would lie
        prog_path.unlink(missing_ok=True)
        (out / ".build.json").unlink(missing_ok=True)
        if not keep_cache:
            shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    return result


def _sources_text(rows: Sequence[dict[str, Any]]) -> bytes:
    """``sources.jsonl``: one row per sample, in index order."""
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _manifest(*, st: EncodeSettings | ImageEncodeSettings, modality: str, split: str, num_samples: int,
              shards: list[dict[str, Any]], seed: int, samples_per_shard: int | None, codecs: set[str],
              classes: list[str], rows: Sequence[dict[str, Any]], skipped: list[dict[str, str]],
              warnings: list[dict[str, Any]], build: dict[str, Any]) -> dict[str, Any]:
    """The ``manifest.json`` of a data set (one definition for whole and partitioned builds: same field order)."""
    return {
        "format": "umt-webdataset",
        "version": FORMAT_VERSION,
        "modality": modality,
        "split": split,
        "num_samples": num_samples,
        "shards": shards,
        "encoding": {**asdict(st), "container": "jpeg" if modality == "image" else "mp4"},
        "seed": seed,
        "samples_per_shard": samples_per_shard,
        "meta_fields": list(META_FIELDS),
        "components": [_media_ext(st), "meta", "json", "cls", "txt"],
        "codecs": sorted(codecs),
        "classes": classes,
        "captions": _caption_stats(rows),
        "skipped": skipped,
        "warnings": warnings,
        "build": build,
    }


def _sample_members(s: SampleSource, r: dict[str, Any], idx: int, *, st: EncodeSettings | ImageEncodeSettings,
                    modality: str, classes: Sequence[str], work: Path) -> dict[str, bytes]:
    """The tar members of sample ``idx`` (``{ext: bytes}``): a pure function of the source, its cached encode and
    ``idx``, so every build that gives the source the same index writes the same bytes."""
    info = r["info"]
    media = (work / f"{r['cache']}.{_media_ext(st)}").read_bytes()
    if modality == "video" and "keyframes" not in info:  # cache written before key frames were recorded
        info = {**info, "keyframes": probe_keyframes(media)}
    meta = {
        "source": s.path,
        **info,
        **({"label": s.label} if s.label is not None else {}),
        **({"class_name": classes[s.label]} if s.label is not None and classes else {}),
        **({"caption": s.caption} if s.caption is not None else {}),
        **({"captions": s.captions} if len(s.captions) > 1 else {}),
        **({"qa": s.qa} if s.qa else {}),
        "index": idx,
    }
    if modality == "image":
        meta_bytes = encode_meta(frames=1, width=info["width"], height=info["height"],
                                 label=-1 if s.label is None else s.label, index=idx)
    else:
        meta_bytes = encode_meta(
            frames=info["frames"],
            width=info["width"],
            height=info["height"],
            label=-1 if s.label is None else s.label,
            index=idx,
            fps_milli=round(info["fps"] * 1000),
            duration_ms=round(info["duration"] * 1000),
        )
    comps = {
        _media_ext(st): media,
        "meta": meta_bytes,
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    if s.label is not None:
        comps["cls"] = str(s.label).encode()
    if s.captions:
        comps["txt"] = encode_captions(s.captions)
    elif s.caption is not None:
        comps["txt"] = s.caption.encode()
    return comps


def _pack(out: Path, ordered: Sequence[tuple[SampleSource, dict[str, Any]]], *, first_index: int,
          names: Callable[[int], str], stale: Callable[[Path], Any], st: EncodeSettings | ImageEncodeSettings,
          modality: str, classes: Sequence[str], samples_per_shard: int, work: Path, prog_path: Path,
          _after_shard: Callable[[int], None] | None = None
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Pack ``ordered`` (samples with their cached encodes, in index order from ``first_index``) into tars
    ``names(0)``, ``names(1)``, ... of ``samples_per_shard`` samples, resumably: a shard recorded in ``prog_path``
    with the same plan and an intact sha256 is kept, the others are (re)written. Tars and indices in ``out`` for
    which ``stale(path)`` is true and that this plan does not name are deleted (an interrupted run of another plan).

    Returns:
        ``(shards [{name, samples, bytes, sha256}], sources rows, warnings)`` of the packed samples.
    """
    n_shards = (len(ordered) + samples_per_shard - 1) // samples_per_shard
    done: dict[str, Any] = json.loads(prog_path.read_text()) if prog_path.is_file() else {}
    wanted = {names(j) for j in range(n_shards)}
    for old in sorted(out.glob("*.tar")) + sorted(out.glob("*.idx")):
        if old.with_suffix(".tar").name not in wanted and stale(old):
            old.unlink()
    shards: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for j in range(n_shards):
        name = names(j)
        chunk = ordered[j * samples_per_shard : (j + 1) * samples_per_shard]
        base = first_index + j * samples_per_shard
        for i, (s, r) in enumerate(chunk):
            rows.append({"index": base + i, "source": s.path, "sha256": r.get("source_sha256"),
                         **({"captions": len(s.captions)} if s.captions else {})})
            for w in r["info"].get("warnings", []):
                warnings.append({"input": s.path, "index": base + i, "warning": w})
        plan = hashlib.sha256(
            json.dumps([st.digest(), base, [(r["cache"], s.label, _caption_key(s)) for s, r in chunk]]).encode()
        ).hexdigest()
        path = out / name
        rec = done.get(name)
        if rec and rec.get("plan") == plan and path.is_file() and path.with_suffix(".idx").is_file():
            if sha256_file(path) == rec["sha256"]:
                shards.append({"name": name, "samples": len(chunk), "bytes": rec["bytes"], "sha256": rec["sha256"]})
                continue
        samples = [(f"{base + i:08d}", _sample_members(s, r, base + i, st=st, modality=modality, classes=classes,
                                                       work=work)) for i, (s, r) in enumerate(chunk)]
        nbytes, sha = _write_shard(path, samples)
        done[name] = {"sha256": sha, "bytes": nbytes, "plan": plan}
        atomic_write(prog_path, json.dumps(done, indent=1, sort_keys=True).encode())
        shards.append({"name": name, "samples": len(chunk), "bytes": nbytes, "sha256": sha})
        if _after_shard is not None:
            _after_shard(j)
    return shards, rows, warnings


def _clean_up(out: Path, keep_cache: bool) -> None:
    """After the manifest: the data set is complete, and only it stays (the cache on request); resume and append
    never need the records. ``.build.json`` goes last, so while it is there the clean-up is unfinished (a re-run of
    the same command finishes it)."""
    if not keep_cache:
        shutil.rmtree(out / ".work", ignore_errors=True)
    for stale in out.glob("*.tmp"):
        stale.unlink()
    (out / ".progress.json").unlink(missing_ok=True)
    (out / ".build.json").unlink(missing_ok=True)
    fsync_dir(out)


def _caption_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``captions``: items with captions, captions in all, and items per caption count."""
    counts = collections.Counter(int(r.get("captions", 0)) for r in rows)
    return {"captioned": sum(n for k, n in counts.items() if k), "total": sum(k * n for k, n in counts.items()),
            "per_item": {str(k): n for k, n in sorted(counts.items()) if k}}


def iter_reasons(skipped: Iterable[dict[str, str]]) -> dict[str, int]:
    """Count skip reasons by their first words (for the summary)."""
    counts: dict[str, int] = {}
    for s in skipped:
        head = s["reason"].split("(")[0].split(":")[0].strip()
        counts[head] = counts.get(head, 0) + 1
    return counts
