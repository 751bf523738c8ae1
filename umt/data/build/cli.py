"""``umt-make-shards`` / ``python tools/make_shards.py``: build WebDataset video or image shards (see
:mod:`umt.data.build.shards`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from umt.data.build.images import DEFAULT_JPEG_QUALITY, ImageEncodeSettings
from umt.data.build.parts import PartResult, build_part, commit_parts, parse_part, slurm_part
from umt.data.build.encode import DEFAULT_MAX_BYTES_RATIO
from umt.data.build.shards import (CODECS, DEFAULT_CODEC, DEFAULT_GOP, BuildResult, EncodeSettings, ShardDirError,
                                   _localize, _read_annotations, build_shards, iter_reasons)
from umt.fileio import LockedError

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_shards",
        description="Re-encode videos (or images) and pack them into WebDataset tar shards with DALI index files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="video (or, with --modality image, image) files and/or directories (searched recursively)")
    p.add_argument("--out", required=True,
                   help="output directory: new or empty; re-running the same command into it resumes (or does "
                        "nothing when complete); a directory holding another data set is refused unless --overwrite "
                        "or --append is given, one holding files make_shards did not write always")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the data set in --out: the new one is built beside it and swapped in when complete")
    mode.add_argument("--append", action="store_true",
                      help="add INPUTs to the data set in --out as further shards (same encoding settings); inputs "
                           "already in it (same path or same file content) are left out and reported")
    p.add_argument("--keep-cache", action="store_true",
                   help="keep --out/.work (the per-input encode cache) after a complete build; deleted by default")
    p.add_argument("--annotations",
                   help="Kinetics CSV (path,label | path label), WebVid JSON/JSONL (video, caption) or COCO/CC3M "
                        "JSON/JSONL (image, caption); caption a string or a list, repeated rows of one path gathered")
    p.add_argument("--paragraph", action="store_true",
                   help="join each item's captions (file order, one space) into one paragraph: paragraph retrieval "
                        "(DiDeMo, ActivityNet), as the official is_paragraph_retrieval")
    p.add_argument("--modality", choices=["video", "image"], default=None,
                   help="what the directory holds (one modality per directory; default: the annotations' kind "
                        "(rows with 'image' are images), else video)")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                   help="images: JPEG quality of the re-encoded files (baseline, 4:2:0)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=[*CODECS, "copy"], help="output codec (copy: keep stream)")
    p.add_argument("--short-side", type=int, default=320,
                   help="scale so the short side is at most this (px; videos and images)")
    p.add_argument("--gop", type=int, default=DEFAULT_GOP, help="key frame interval in frames (1 = all-intra)")
    p.add_argument("--fps-cap", type=float, default=None, help="drop frames above this rate (frames/s)")
    p.add_argument("--crf", type=int, default=None,
                   help="constant rate factor for vp9 (0-63) or h264 (0-51); lower = better quality, more bytes "
                        "(default: the codec's, h264 23 and vp9 32)")
    p.add_argument("--max-bytes-ratio", type=float, default=None, metavar="R",
                   help=f"h264: store each video in at most about R times its source file's bytes: a video whose CRF "
                        f"encode would take more is encoded again with its bit rate capped (x264 VBV) at that share of "
                        f"the source's rate, at lower quality; one within it is left as encoded. 0: no cap, the CRF "
                        f"alone decides (default: {DEFAULT_MAX_BYTES_RATIO:g} with h264; other codecs have no cap)")
    p.add_argument("--min-frames", type=int, default=8, help="skip videos with fewer frames")
    p.add_argument("--on-truncated", choices=["pack", "skip"], default="pack",
                   help="inputs with fewer decodable frames than their header announces: pack what decodes (with "
                        "--min-frames, the true frame count and a warning in the manifest) or skip them")
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--workers", type=int, default=1, help="encoding processes")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (same inputs + seed = same shards)")
    p.add_argument("--split", default="train", help="shard name prefix: {split}-000000.tar")
    p.add_argument("--quiet", action="store_true", help="no progress bar, summary only")
    dist = p.add_argument_group("partitioned builds (many machines sharing --out; shards/README.md)")
    dist.add_argument("--part", metavar="I/N",
                      help="build part I of N (0-based; inside a Slurm job array the default is SLURM_ARRAY_TASK_ID - "
                           "SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; 'all' builds the whole set in one go)")
    dist.add_argument("--commit", action="store_true",
                      help="after every part: verify them and write the manifest (the data set becomes visible)")
    dist.add_argument("--distributor", choices=["local", "ray"], default="local",
                      help="ray: run --parts parts as Ray tasks (retried on a lost worker) and commit")
    dist.add_argument("--parts", type=int, default=None,
                      help="--distributor ray: how many parts (default: 4 per CPU of the cluster)")
    dist.add_argument("--ray-address", default=None,
                      help="--distributor ray: the cluster (default: RAY_ADDRESS, else a local cluster)")
    dist.add_argument("--ray-retries", type=int, default=3, help="--distributor ray: retries of a part's task")
    return p


def res_modality(res: object) -> str:
    """``video`` or ``image``: what the build read (for messages)."""
    return str(getattr(res, "modality", "video"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the builder; returns the exit status (0 when at least one sample was written)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if not args.inputs and not args.annotations and not args.commit:
        print("make_shards: error: give INPUT files/directories and/or --annotations", file=sys.stderr)
        return 2
    try:
        part = _part_arg(args)
        if args.commit:
            if args.inputs or args.annotations or part is not None or args.overwrite or args.append:
                print("make_shards: error: --commit takes only --out (the parts recorded the rest)", file=sys.stderr)
                return 2
            res = commit_parts(args.out)
            return _summary(args, res)
        settings, modality = _settings(args)
        common = dict(annotations=args.annotations, settings=settings, modality=modality,
                      samples_per_shard=args.samples_per_shard, workers=args.workers, seed=args.seed,
                      split=args.split, paragraph=args.paragraph)
        if args.distributor == "ray":
            if part is not None or args.overwrite or args.append:
                print("make_shards: error: --distributor ray builds every part itself (no --part, --overwrite, "
                      "--append)", file=sys.stderr)
                return 2
            from umt.data.build.distribute import build_with_ray

            res = build_with_ray(args.inputs, args.out, parts=args.parts, address=args.ray_address,
                                 retries=args.ray_retries, progress=not args.quiet, **common)
            return _summary(args, res)
        if part is not None:
            if args.overwrite or args.append:
                print("make_shards: error: --part builds a new data set (no --overwrite/--append)", file=sys.stderr)
                return 2
            pres = build_part(args.inputs, args.out, part[0], part[1], progress=not args.quiet, **common)
            return _part_summary(pres)
        res = build_shards(
            args.inputs,
            args.out,
            progress=not args.quiet,
            mode="overwrite" if args.overwrite else "append" if args.append else "new",
            keep_cache=args.keep_cache,
            **common,
        )
    except (ShardDirError, LockedError) as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as e:  # --distributor ray: Ray missing, or a part failed every retry
        if args.distributor != "ray":
            raise
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"make_shards: error: cannot write output: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    return _summary(args, res)


def _part_arg(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--part``, else the Slurm array task's part (None: a whole build).

    Raises:
        ValueError: a malformed ``--part`` or Slurm array environment.
    """
    if args.part == "all":
        return None
    if args.part is not None:
        return parse_part(args.part)
    if args.commit or args.distributor == "ray":
        return None
    part = slurm_part()
    if part is not None:
        logging.getLogger(__name__).info("part %d/%d from the Slurm array task (--part all builds the whole set)",
                                         *part)
    return part


def _settings(args: argparse.Namespace) -> tuple[EncodeSettings | ImageEncodeSettings, str | None]:
    modality = args.modality
    if modality is None and args.annotations:
        modality = _read_annotations(_localize(args.annotations))[1]
    if modality == "image":
        return ImageEncodeSettings(short_side=args.short_side, quality=args.jpeg_quality), modality
    ratio = args.max_bytes_ratio
    if ratio is not None and ratio != 0 and args.codec != "h264":
        raise ValueError(f"--max-bytes-ratio applies to --codec h264, not {args.codec}")
    if ratio is not None and ratio < 0:
        raise ValueError(f"--max-bytes-ratio must be > 0 (0: no cap), got {ratio:g}")
    return EncodeSettings(codec=args.codec, short_side=args.short_side, gop=args.gop, fps_cap=args.fps_cap, crf=args.crf,
                          min_frames=args.min_frames, on_truncated=args.on_truncated,
                          max_bytes_ratio=DEFAULT_MAX_BYTES_RATIO if ratio is None else ratio or None), modality


def _part_summary(res: PartResult) -> int:
    """Print what a part did; 0 (a part with no usable input is not an error: the others may have some)."""
    where = f"part {res.part}/{res.parts} of {res.out_dir}"
    if res.committed:
        print(f"{res.out_dir} already holds this data set, committed: nothing to do")
    elif res.packed:
        n = sum(s["samples"] for s in res.shards)
        span = f"indices {res.first_index}..{res.first_index + n - 1}" if n else "no samples"
        print(f"{where}: {res.inputs} inputs, {res.usable} usable, {res.encoded} encoded this run; "
              f"{len(res.shards)} shards ({span}) in {res.seconds:.1f} s; packed")
    else:
        waiting = ", ".join(f"{i}/{res.parts}" for i in res.waiting_for[:10])
        print(f"{where}: {res.inputs} inputs, {res.usable} usable, {res.encoded} encoded this run in "
              f"{res.seconds:.1f} s; not packed yet: its sample indices follow those of part(s) {waiting}, not "
              "encoded yet (re-run this command after them, or --commit packs it)")
    return 0


def _summary(args: argparse.Namespace, res: BuildResult) -> int:
    """Print the summary of a whole (or committed) build; the exit status."""
    total_bytes = sum(s["bytes"] for s in res.shards)
    if res.already_built:
        print(f"{res.out_dir} already holds this data set (same inputs and settings): nothing to do")
    print(
        f"{res.num_samples} samples in {len(res.shards)} shards ({total_bytes / 2**20:.1f} MiB) -> {res.out_dir}; "
        f"{len(res.skipped)} skipped; {len(res.warnings)} packed with a warning; "
        f"{res.encoded} encoded this run in {res.seconds:.1f} s"
    )
    if getattr(args, "append", False):
        print(f"  appended {res.added or 0} new samples; {len(res.duplicates)} already in the data set, left out")
        for d in res.duplicates[:20]:
            print(f"    {d['input']}: {d['reason']}")
    for reason, n in sorted(iter_reasons({"reason": w["warning"]} for w in res.warnings).items()):
        print(f"  warning {n:5d}: {reason}")
    for w in res.warnings[:20]:
        print(f"    {w['input']}: {w['warning']}")
    for reason, n in sorted(iter_reasons(res.skipped).items()):
        print(f"  skipped {n:5d}: {reason}")
    for s in res.skipped[:20]:
        print(f"    {s['input']}: {s['reason']}")
    if res.num_samples == 0 and not getattr(args, "append", False):
        print(f"make_shards: error: no usable {res_modality(res)} was found; nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
