"""Partitioned shard builds: part ``I`` of ``N`` on any machine, then one commit that makes the data set visible.

A data set of N parts is built into one ``--out`` directory on a shared file system::

    make_shards INPUT... --out DIR --part I/N      # any order, any machines, re-run or resumed alone
    make_shards --out DIR --commit                 # once every part has finished: writes manifest.json

Every part reads the whole input list and annotation file (so the class list, the build key and the global order
are the same in every part), keeps the inputs of its range of the global order (:func:`umt.data.build.shards.part_of`:
a hash of seed and path, independent of listing order), encodes them into its own cache and packs them into tars
named ``{split}-p{I:03d}of{N:03d}-{k:06d}.tar`` that no other part can write.

Sample indices are global: index = rank of the sample in the global order among the usable inputs of *all* parts,
so part I's first index is the number of usable samples of parts 0 … I-1. A part therefore packs once the parts
before it have encoded (part 0 at once); a part that finds an earlier part unfinished records its encodes and exits
(status 0, saying so), and a later run of the same command, or the commit, packs it. Everything written is a pure
function of (inputs, settings, seed): the committed set holds, sample for sample, the bytes of a single-machine
build; only which tar holds a sample differs (the manifest's ``shards`` and ``build.parts``).

Per-part state lives under ``DIR/.parts/`` (deleted by the commit)::

    .parts/pIIIofNNN/spec.json     the build's key, part count, settings, classes, early skips (what commit needs;
                                   one copy per part, so that concurrent parts never write one file)
    .parts/pIIIofNNN/work/         the part's encode cache
    .parts/pIIIofNNN/encoded.json  the part's inputs in global order with their encode results (usable count)
    .parts/pIIIofNNN/progress.json the part's complete shards (resume)
    .parts/pIIIofNNN/done.json     the part is packed: its shards (name, samples, bytes, sha256), rows, warnings
    .parts/pIIIofNNN.lock          held while the part runs (and by the commit)

Every file goes through :mod:`umt.fileio` (written to ``NAME.tmp``, renamed), so a part or commit killed at any
instant is finished by re-running the same command, ending byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from umt.data.build.encode import EncodeSettings, SampleSource
from umt.data.build.images import ImageEncodeSettings
from umt.data.build.shards import (
    BuildResult,
    ShardDirError,
    _build_key,
    _dir_state,
    _encode_all,
    _foreign_names,
    _global_order,
    _manifest,
    _origin_path,
    _pack,
    _result_from_manifest,
    _sources_text,
    collect_sources,
    part_of,
)
from umt.data.format import read_manifest
from umt.fileio import LockedError, atomic_write, exclusive_lock, fsync_dir, sha256_file

__all__ = ["PARTS_DIR", "PartResult", "build_part", "commit_parts", "parse_part", "part_tag", "slurm_part"]

log = logging.getLogger(__name__)

#: The directory (inside ``--out``) that holds the state of a partitioned build until it is committed.
PARTS_DIR = ".parts"


@dataclass
class PartResult:
    """What :func:`build_part` did for one part."""

    out_dir: Path
    part: int
    parts: int
    inputs: int
    """Inputs of this part (its range of the global order)."""
    usable: int = 0
    """Of those, encoded successfully (the part's samples)."""
    encoded: int = 0
    """Inputs encoded in this run (the rest came from the part's cache)."""
    packed: bool = False
    """The part's tars are written (its first index was known)."""
    first_index: int | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    waiting_for: list[int] = field(default_factory=list)
    """Earlier parts not yet encoded (the part packs once they are: re-run it, or commit)."""
    committed: bool = False
    """The directory already holds this data set, committed; nothing was done."""
    seconds: float = 0.0


def part_tag(part: int, parts: int) -> str:
    """The part's name in file names: ``p{part:03d}of{parts:03d}``."""
    return f"p{part:03d}of{parts:03d}"


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)``.

    Raises:
        ValueError: not ``I/N`` with ``0 <= I < N``.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"--part must be I/N with 0 <= I < N (e.g. 3/16), got {text!r}")
    return int(m[1]), int(m[2])


def slurm_part(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """The part of a Slurm job-array task: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)``,
    or None outside an array task.

    Raises:
        ValueError: the variables are set but do not describe a task of a contiguous array (``--array=0-15`` or
            ``1-16``; a stepped or listed array has IDs that are not ``MIN + 0 … COUNT-1``).
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        tid, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT/_MIN are missing or bad ({e}); "
                         "pass --part I/N") from None
    if not 0 <= tid - lo < count:
        raise ValueError(f"Slurm array task {tid} is not in MIN {lo} + 0..COUNT-1 ({count}): use a contiguous "
                         "--array=0-(N-1), or pass --part I/N")
    return tid - lo, count


def _settings_from(d: dict[str, Any], modality: str) -> EncodeSettings | ImageEncodeSettings:
    if modality == "image":
        return ImageEncodeSettings(**d)
    # recorded before the byte cap existed: built without one
    return EncodeSettings(**{"max_bytes_ratio": None, **d})


def _src_row(s: SampleSource, r: dict[str, Any]) -> dict[str, Any]:
    return {"source": asdict(s), "result": {k: v for k, v in r.items() if k != "encoded"}}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _part_dir(out: Path, part: int, parts: int) -> Path:
    return out / PARTS_DIR / part_tag(part, parts)


def _shard_names(split: str, part: int, parts: int) -> Callable[[int], str]:
    tag = part_tag(part, parts)
    return lambda k: f"{split}-{tag}-{k:06d}.tar"


def _first_index(out: Path, spec: dict[str, Any], part: int) -> tuple[int | None, list[int]]:
    """Part ``part``'s first sample index (usable samples of the parts before it) and the earlier parts that have
    not encoded yet (then the index is None)."""
    total, missing = 0, []
    for j in range(part):
        enc = _read_json(_part_dir(out, j, spec["parts"]) / "encoded.json")
        if enc is None or enc.get("key") != spec["key"]:
            missing.append(j)
        else:
            total += len(enc["good"])
    return (None if missing else total), missing


def _part_dirs(out: Path) -> list[tuple[int, int, Path]]:
    """``(part, parts, directory)`` of every part directory in ``out/.parts``, in order."""
    found = []
    for d in sorted((out / PARTS_DIR).glob("p*of*")):
        m = re.fullmatch(r"p(\d+)of(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m[1]), int(m[2]), d))
    return found


def _check_other_parts(out: Path, key: str, parts: int) -> None:
    """Refuse to mix parts of different builds or part counts in one directory.

    Raises:
        ShardDirError: ``out/.parts`` holds a part of another part count or build key.
    """
    for i, n, d in _part_dirs(out):
        sp = _read_json(d / "spec.json")
        if n != parts or (sp is not None and sp["key"] != key):
            raise ShardDirError(
                f"{out} holds part {i}/{n} of a partitioned build of other inputs, settings or part count; give "
                f"every part the same inputs, settings and N, or delete {out / PARTS_DIR} / choose another --out")
        if sp is not None:
            return  # one part's key is the directory's; earlier runs refused any other


def _pack_part(out: Path, spec: dict[str, Any], part: int, enc: dict[str, Any], first_index: int) -> dict[str, Any]:
    """Write part ``part``'s tars (resumably) and its ``done.json``; returns the done record."""
    n = spec["parts"]
    pdir = _part_dir(out, part, n)
    st = _settings_from(spec["settings"], spec["modality"])
    ordered = [(SampleSource(**g["source"]), g["result"]) for g in enc["good"]]
    tag = part_tag(part, n)
    shards, rows, warnings = _pack(
        out, ordered, first_index=first_index, names=_shard_names(spec["split"], part, n),
        stale=lambda p: p.name.startswith(f"{spec['split']}-{tag}-"), st=st, modality=spec["modality"],
        classes=spec["classes"], samples_per_shard=spec["samples_per_shard"], work=pdir / "work",
        prog_path=pdir / "progress.json")
    done = {"key": spec["key"], "part": part, "first_index": first_index, "samples": len(ordered), "shards": shards,
            "rows": rows, "warnings": warnings, "codecs": sorted({r["info"]["codec"] for _, r in ordered})}
    if _read_json(pdir / "done.json") != done:
        atomic_write(pdir / "done.json", json.dumps(done).encode())
    return done


def _committed(out: Path, key: str) -> dict[str, Any] | None:
    """The manifest of ``out`` when it holds the committed data set of ``key`` (None when nothing is committed).

    Raises:
        ShardDirError: ``out`` holds another data set, or files that are not ours.
    """
    state = _dir_state(out)
    if state == "foreign":
        names = _foreign_names(out)
        raise ShardDirError(f"{out} is not empty and holds no data set of make_shards ({', '.join(names[:3])}); "
                            "choose a new or empty --out directory")
    if state != "finished":
        return None
    m = read_manifest(out)
    if m.get("build", {}).get("key") != key:
        raise ShardDirError(f"{out} already holds a data set built from other inputs or settings "
                            f"({m['num_samples']} samples); choose another --out for a partitioned build")
    return m


def build_part(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    part: int,
    parts: int,
    *,
    annotations: str | Path | None = None,
    settings: EncodeSettings | ImageEncodeSettings | None = None,
    modality: str | None = None,
    samples_per_shard: int = 256,
    workers: int = 1,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
    paragraph: bool = False,
    _exit_after_encode: str | None = None,
) -> PartResult:
    """Build part ``part`` of ``parts`` of a data set into ``out_dir`` (the module docstring says how).

    Re-running it resumes (nothing finished is redone) or does nothing; parts run concurrently on any machines that
    share ``out_dir``. The data set appears only when :func:`commit_parts` runs after every part.

    Args:
        inputs, annotations, settings, modality, samples_per_shard, workers, seed, split, progress, paragraph: as for
            :func:`umt.data.build.shards.build_shards`; every part of one build must be given the same.
        part, parts: which part, of how many (``0 <= part < parts``).
        _exit_after_encode: test hook: when this file does not exist, create it and ``os._exit(1)`` once the part
            has encoded (a worker lost mid-part).

    Returns:
        :class:`PartResult` (``packed`` False with ``waiting_for`` when an earlier part has not encoded yet).

    Raises:
        ShardDirError: ``out_dir`` holds another data set, a single-machine build, a partitioned build of other
            inputs, settings or part count, or files that are not ours.
        umt.fileio.LockedError: the same part (or the commit) is running (the message names it).
        ValueError: bad arguments or a malformed annotation file.
        OSError: the directory cannot be written.
    """
    t0 = time.perf_counter()
    if not 0 <= part < parts:
        raise ValueError(f"part must be in 0..{parts - 1}, got {part}")
    if samples_per_shard < 1 or workers < 1:
        raise ValueError("samples_per_shard and workers must be >= 1")
    if not split or "/" in split or "." in split:
        raise ValueError(f"bad split name {split!r}")
    out = Path(out_dir)
    if modality is None and settings is not None:
        modality = "image" if isinstance(settings, ImageEncodeSettings) else None
    sources, classes, skipped, modality = collect_sources(inputs, annotations, modality=modality, paragraph=paragraph)
    st = settings or (ImageEncodeSettings() if modality == "image" else EncodeSettings())
    if isinstance(st, ImageEncodeSettings) != (modality == "image"):
        raise ValueError(f"{type(st).__name__} given for a {modality} data set")
    key = _build_key(sources, classes, skipped, st, seed, samples_per_shard, split)
    mine = [s for s in sources if part_of(seed, s.path, parts) == part]
    res = PartResult(out, part, parts, len(mine))
    if _committed(out, key) is not None:
        res.committed = True
        return res
    if (out / ".build.json").is_file():
        raise ShardDirError(f"{out} holds an interrupted single-machine build; finish it by re-running its command, "
                            "or choose another --out for a partitioned build")
    spec = {"key": key, "parts": parts, "split": split, "seed": seed, "samples_per_shard": samples_per_shard,
            "modality": modality, "settings": asdict(st), "classes": classes, "skipped": skipped,
            "build": {"key": key, "inputs": [str(i) for i in inputs],
                      "annotations": None if annotations is None else _origin_path(annotations), "parts": parts}}
    pdir = _part_dir(out, part, parts)
    with exclusive_lock(out / PARTS_DIR / f"{part_tag(part, parts)}.lock",
                        f"part {part}/{parts} of shard directory {out}"):
        if _committed(out, key) is not None:  # committed while we waited for nothing: the lock is not blocking
            res.committed = True
            return res
        _check_other_parts(out, key, parts)
        if _read_json(pdir / "spec.json") != spec:  # each part its own copy: concurrent parts share no file
            atomic_write(pdir / "spec.json", json.dumps(spec, sort_keys=True).encode())
        work = pdir / "work"
        work.mkdir(parents=True, exist_ok=True)
        for stale in [*pdir.glob("*.tmp"), *work.glob("*.tmp"), *out.glob(f"{split}-{part_tag(part, parts)}-*.tmp")]:
            stale.unlink()  # leftovers of this part's interrupted run (other parts' temporaries are theirs)

        results = _encode_all(mine, st, work, workers=workers, progress=progress)
        res.encoded = sum(1 for r in results.values() if r["encoded"])
        good = [(s, results[i]) for i, s in enumerate(mine) if results[i]["ok"]]
        enc = {"key": key, "part": part, "parts": parts,
               "good": [_src_row(s, r) for s, r in _global_order(good, seed)],
               "skipped": [{"input": s.path, "reason": results[i]["reason"]}
                           for i, s in enumerate(mine) if not results[i]["ok"]]}
        if _read_json(pdir / "encoded.json") != enc:
            atomic_write(pdir / "encoded.json", json.dumps(enc).encode())
        res.usable = len(enc["good"])
        if _exit_after_encode is not None and not Path(_exit_after_encode).exists():
            Path(_exit_after_encode).touch()
            os._exit(1)
        first, missing = _first_index(out, spec, part)
        res.first_index, res.waiting_for = first, missing
        if first is not None:
            done = _pack_part(out, spec, part, enc, first)
            res.packed, res.shards = True, done["shards"]
    res.seconds = time.perf_counter() - t0
    return res


def commit_parts(out_dir: str | Path, *, keep_cache: bool = False) -> BuildResult:
    """Commit a partitioned build: check every part, pack the parts that could not pack themselves, verify every
    part's tars (size and sha256), and write ``sources.jsonl`` and ``manifest.json`` (the data set is visible to the
    loaders from then on); then delete ``.parts/`` (``keep_cache`` keeps nothing extra: the caches are per part).

    Re-running it after an interruption finishes it; on a committed set it does nothing.

    Returns:
        :class:`BuildResult` of the whole data set (``already_built`` when it was committed before).

    Raises:
        ShardDirError: no partitioned build in ``out_dir``; a part has not run, has not finished, or was built from
            other inputs (the message names each such part and the command that finishes it); a part's tar is
            missing or differs from its record (named; re-run that part).
        umt.fileio.LockedError: a part (or another commit) is running in ``out_dir``.
        OSError: the directory cannot be written.
    """
    del keep_cache  # part caches live in .parts/, which the commit removes with everything else there
    t0 = time.perf_counter()
    out = Path(out_dir)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"shard directory {out}"), contextlib.ExitStack() as locks:
        state = _dir_state(out)
        if state == "finished":
            m = read_manifest(out)
            if (out / PARTS_DIR).exists():  # killed after the manifest: only the clean-up was left
                shutil.rmtree(out / PARTS_DIR)
                fsync_dir(out)
            return _result_from_manifest(out, m)
        specs = [sp for _, _, d in _part_dirs(out) if (sp := _read_json(d / "spec.json")) is not None]
        if state == "foreign" or not specs:
            raise ShardDirError(f"{out} holds no partitioned build to commit: run make_shards --part I/N for every "
                                "part first")
        spec = specs[0]
        n = spec["parts"]
        for i in range(n):
            try:
                locks.enter_context(exclusive_lock(out / PARTS_DIR / f"{part_tag(i, n)}.lock",
                                                   f"part {i}/{n} of shard directory {out}"))
            except LockedError as e:
                raise LockedError(f"cannot commit while a part runs: {e}") from None
        encs: list[dict[str, Any]] = []
        missing = []
        for i in range(n):
            enc = _read_json(_part_dir(out, i, n) / "encoded.json")
            if enc is None or enc.get("key") != spec["key"]:
                missing.append(i)
            encs.append(enc or {})
        if missing:
            names = ", ".join(f"{i}/{n}" for i in missing)
            raise ShardDirError(f"cannot commit {out}: part{'s' if len(missing) > 1 else ''} {names} "
                                f"{'have' if len(missing) > 1 else 'has'} not finished (never run, killed or "
                                f"failed): run make_shards with the same inputs and --part I/N for "
                                f"{'each' if len(missing) > 1 else 'it'}, then --commit again")
        first = 0
        dones: list[dict[str, Any]] = []
        for i in range(n):
            done = _read_json(_part_dir(out, i, n) / "done.json")
            if done is None or done.get("key") != spec["key"] or done.get("first_index") != first:
                log.info("packing part %d/%d (it finished encoding before the parts ahead of it)", i, n)
                done = _pack_part(out, spec, i, encs[i], first)
            dones.append(done)
            first += done["samples"]
        bad = []
        for i, done in enumerate(dones):
            for sh in done["shards"]:
                p = out / sh["name"]
                if (not p.is_file() or not p.with_suffix(".idx").is_file() or p.stat().st_size != sh["bytes"]
                        or sha256_file(p) != sh["sha256"]):
                    bad.append(f"{sh['name']} (part {i}/{n})")
        if bad:
            raise ShardDirError(f"cannot commit {out}: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} "
                                "missing or not the bytes the part recorded: re-run that part, then --commit")
        listed = {sh["name"] for d in dones for sh in d["shards"]}
        for p in sorted(out.glob("*.tar")) + sorted(out.glob("*.idx")):  # an abandoned plan's tars: ours, unlisted
            if p.with_suffix(".tar").name not in listed and re.fullmatch(r".+-p\d{3,}of\d{3,}-\d{6}", p.stem):
                p.unlink()
        st = _settings_from(spec["settings"], spec["modality"])
        shards = [sh for d in dones for sh in d["shards"]]
        rows = [r for d in dones for r in d["rows"]]
        warnings = [w for d in dones for w in d["warnings"]]
        # the order of a single-machine build: early skips, then encode failures in path order
        skipped = list(spec["skipped"]) + sorted((s for e in encs for s in e["skipped"]), key=lambda s: s["input"])
        total = len(rows)
        res = BuildResult(out, total, shards, skipped, spec["classes"], 0, 0.0, warnings=warnings, added=total,
                          modality=spec["modality"])
        if not total:
            raise ShardDirError(f"cannot commit {out}: no part holds a usable {spec['modality']} "
                                f"({len(skipped)} inputs skipped)")
        manifest = _manifest(st=st, modality=spec["modality"], split=spec["split"], num_samples=total, shards=shards,
                             seed=spec["seed"], samples_per_shard=spec["samples_per_shard"],
                             codecs={c for d in dones for c in d["codecs"]}, classes=spec["classes"], rows=rows,
                             skipped=skipped, warnings=warnings, build=spec["build"])
        atomic_write(out / "sources.jsonl", _sources_text(rows))
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
        shutil.rmtree(out / PARTS_DIR)
        fsync_dir(out)
    res.seconds = time.perf_counter() - t0
    return res
