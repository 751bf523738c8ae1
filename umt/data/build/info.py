"""``python -m umt.data.build.info DIR``: what a shard directory holds, and (``--verify``) whether it is intact.

Reads only the manifest, the ``.idx`` files and each sample's small ``meta``/``txt`` members (never a video or
image), so it is fast on large sets: sample and shard counts, bytes, the encoding settings (codec, GOP, short side;
JPEG quality for images), duration and frame-count histograms (videos) or stored short sides (images), per-class
counts with names, captions per item and caption lengths, and the inputs the builder skipped with their reasons.
``--verify`` re-hashes every shard against the manifest's sha256 and checks each ``.idx`` against the tar's own
member table; any mismatch is named and the exit status is 1. ``--json`` prints one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from umt.data.build.shards import iter_reasons, write_index
from umt.data.format import decode_meta, read_manifest
from umt.fileio import sha256_file

__all__ = ["histogram", "summarize", "verify", "main"]


def histogram(values: list[float], bins: int = 8) -> list[dict[str, float]]:
    """Equal-width bins over ``values``: ``[{"lo", "hi", "count"}, ...]`` (empty for no values)."""
    if not values:
        return []
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]


def summarize(shard_dir: str | Path) -> dict[str, Any]:
    """Everything ``info`` reports about ``shard_dir`` (a dict, JSON-serialisable).

    Raises:
        FileNotFoundError: no ``manifest.json`` (see :func:`umt.data.format.read_manifest`).
    """
    from umt.data.format import ShardIndex

    d = Path(shard_dir)
    m = read_manifest(d)
    index = ShardIndex(d, m["shards"])
    frames, durations, caption_words, short_sides = [], [], [], []
    per_item: collections.Counter[int] = collections.Counter()
    labels: collections.Counter[int] = collections.Counter()
    try:
        for i in range(len(index)):
            meta = decode_meta(index.read(i, "meta"))
            frames.append(meta["frames"])
            durations.append(meta["duration_ms"] / 1000)
            short_sides.append(min(meta["width"], meta["height"]))
            labels[meta["label"]] += 1
            if "txt" in index.entries[i][1]:
                caps = index.read(i, "txt").decode("utf-8", "replace").split("\n")  # one caption a line
                per_item[len(caps)] += 1
                caption_words += [len(c.split()) for c in caps]
    finally:
        index.close()
    names = m.get("classes") or []
    classes = {(names[k] if 0 <= k < len(names) else str(k)): n for k, n in sorted(labels.items()) if k >= 0}
    return {
        "dir": str(d), "split": m.get("split"), "modality": m.get("modality", "video"),
        "samples": int(m["num_samples"]), "shards": len(m["shards"]),
        "bytes": int(sum(s["bytes"] for s in m["shards"])), "encoding": m.get("encoding", {}),
        "codecs": m.get("codecs", []),
        "frames": {"min": min(frames, default=0), "max": max(frames, default=0), "histogram": histogram(frames)},
        "duration_s": {"min": min(durations, default=0), "max": max(durations, default=0),
                       "total": float(sum(durations)), "histogram": histogram(durations)},
        "classes": classes,
        "short_side": {"min": min(short_sides, default=0), "max": max(short_sides, default=0),
                       "histogram": histogram(short_sides)},
        "captions": {"items": sum(per_item.values()), "total": sum(k * n for k, n in per_item.items()),
                     "per_item": {str(k): n for k, n in sorted(per_item.items())}},
        "caption_words": {"captioned": sum(per_item.values()), "histogram": histogram(caption_words)},
        "skipped": {"count": len(m.get("skipped", [])), "reasons": iter_reasons(m.get("skipped", [])),
                    "inputs": m.get("skipped", [])},
        "warnings": m.get("warnings", []),
    }


def verify(shard_dir: str | Path) -> list[str]:
    """Problems found in ``shard_dir``: one line per shard whose bytes (sha256), size or ``.idx`` disagree with the
    manifest and the tar's own member table (empty list: intact)."""
    d = Path(shard_dir)
    m = read_manifest(d)
    problems = []
    for sh in m["shards"]:
        tar = d / sh["name"]
        idx = tar.with_suffix(".idx")
        if not tar.is_file():
            problems.append(f"{sh['name']}: missing")
            continue
        if tar.stat().st_size != sh["bytes"]:
            problems.append(f"{sh['name']}: {tar.stat().st_size} bytes, the manifest says {sh['bytes']}")
        if sha256_file(tar) != sh["sha256"]:
            problems.append(f"{sh['name']}: sha256 differs from the manifest (the shard changed or is corrupt)")
        if not idx.is_file():
            problems.append(f"{idx.name}: missing (rebuild the index or the shards)")
            continue
        try:
            with tarfile.open(tar) as tf:
                members = [(t.name, t.offset_data, t.size) for t in tf.getmembers() if t.isfile()]
        except tarfile.TarError as e:
            problems.append(f"{sh['name']}: not a readable tar ({e})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            want = Path(tmp) / "want.idx"
            write_index(members, want)
            text = want.read_text()
            if text.encode() != idx.read_bytes():
                problems.append(f"{idx.name}: does not match {sh['name']}'s members")
        n = int(text.split()[1])  # samples, grouped by key exactly as the builder's index does
        if n != sh["samples"]:
            problems.append(f"{sh['name']}: {n} samples, the manifest says {sh['samples']}")
    return problems


def _print_histogram(title: str, hist: list[dict[str, float]], unit: str = "") -> None:
    if not hist:
        return
    print(f"{title}:")
    top = max(h["count"] for h in hist) or 1
    for h in hist:
        bar = "#" * round(30 * h["count"] / top)
        print(f"  {h['lo']:9.2f} – {h['hi']:9.2f}{unit}  {h['count']:6d}  {bar}")


def _print(s: dict[str, Any]) -> None:
    enc = s["encoding"]
    kind = "images" if s["modality"] == "image" else "videos"
    print(f"{s['dir']}: {s['samples']} {kind} (split {s['split']}) in {s['shards']} shards, "
          f"{s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / max(1, s['samples']) / 1024:.1f} KiB each)")
    if s["modality"] == "image":
        print(f"encoding: JPEG quality {enc.get('quality')}, short side at most {enc.get('short_side')} px; "
              f"stored short side {s['short_side']['min']}–{s['short_side']['max']} px")
        _print_histogram("short side (px)", s["short_side"]["histogram"])
    else:
        cap = enc.get("max_bytes_ratio")
        print(f"encoding: codec {enc.get('codec')}, GOP {enc.get('gop')}, short side {enc.get('short_side')}, "
              + (f"at most {cap:g}x the source bytes, " if cap else "")
              + f"container {enc.get('container')}; codecs seen {s['codecs']}")
        print(f"duration: {s['duration_s']['total'] / 3600:.2f} h in all, {s['duration_s']['min']:.2f}–"
              f"{s['duration_s']['max']:.2f} s per sample; frames {s['frames']['min']}–{s['frames']['max']}")
        _print_histogram("duration (s)", s["duration_s"]["histogram"])
        _print_histogram("frames", s["frames"]["histogram"])
    if s["classes"]:
        print("classes:")
        for name, n in s["classes"].items():
            print(f"  {n:6d}  {name}")
    if s["captions"]["items"]:
        caps = s["captions"]
        print(f"captions: {caps['total']} on {caps['items']} of {s['samples']} {kind} "
              f"({', '.join(f'{n} with {k}' for k, n in caps['per_item'].items())})")
        _print_histogram("caption length (words)", s["caption_words"]["histogram"])
    sk = s["skipped"]
    print(f"skipped inputs: {sk['count']}" + (f" ({', '.join(f'{r}: {n}' for r, n in sk['reasons'].items())})"
                                               if sk["count"] else ""))
    for item in sk["inputs"]:
        print(f"  {item.get('input', '?')}: {item.get('reason', '?')}")
    for w in s["warnings"]:
        print(f"warning: {w}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 ``--verify`` found problems, 2 no such shard directory)."""
    ap = argparse.ArgumentParser(prog="python -m umt.data.build.info", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a shard directory written by tools/make_shards.py (holds manifest.json)")
    ap.add_argument("--verify", action="store_true",
                    help="re-hash every shard against the manifest and check every .idx against its tar")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    if not (Path(args.dir) / "manifest.json").is_file():
        print(f"error: {args.dir} holds no manifest.json (not a shard directory written by tools/make_shards.py)",
              file=sys.stderr)
        return 2
    problems = verify(args.dir) if args.verify else None
    try:
        summary = summarize(args.dir)
    except (OSError, ValueError, EOFError) as e:  # a missing or broken .idx, a truncated tar: --verify names it
        if problems:
            print("verify: FAILED\n" + "\n".join(f"  {p}" for p in problems))
        print(f"error: cannot read the samples: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**summary, "verify": problems}, indent=2))
    else:
        _print(summary)
        if problems is not None:
            print("verify: OK, every shard and index matches the manifest" if not problems
                  else "verify: FAILED\n" + "\n".join(f"  {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
