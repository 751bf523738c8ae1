"""Shard-build throughput of partitioned builds: 1, 2 and 4 parts run at once (each its own process, one encoder
each, as N machines would), the commit, and a single-machine build of the same inputs for reference.

::

    python -m benchmarks.bench_build [--clips 24] [--seconds 2] [--size 320x240] [--parts 1,2,4] [--codec vp9]
                                     [--inputs DIR] [--out benchmarks/results]

Inputs: ``--inputs DIR`` (your own videos), else ``--clips`` synthetic H.264 clips (moving gradients + noise, so the
encoder has real work) written to a temporary directory. Per row: wall time from launching the parts to the last one
done (``parts_s``, includes each process's start-up and imports), the slowest part's own time (``max_part_s``), the
commit (``commit_s``, which packs the parts that finished encoding before the parts ahead of them), inputs per
second over both, and whether the committed set equals the single-machine one sample for sample (``same``).
A part runs ``--workers`` encoders (default 1), so N parts on a machine with fewer than N cores measure contention,
not scaling: the report names the core count.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchResult, format_table, write_report
from benchmarks.sources import write_h264

__all__ = ["run"]


def _synth_clips(root: Path, n: int, seconds: float, width: int, height: int, fps: int = 24) -> list[Path]:
    """``n`` H.264 clips of moving gradients with noise (deterministic per clip)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        p = root / f"clip{i:03d}.mp4"
        rng = np.random.default_rng(i)

        def frames(i: int = i, rng: np.random.Generator = rng) -> Iterator[np.ndarray]:
            for k in range(int(seconds * fps)):
                img = np.stack([(xx + 3 * k + 17 * i) % 256, (yy + 2 * k) % 256, (xx + yy + k) % 256], -1)
                yield (img + rng.integers(0, 24, img.shape)).clip(0, 255).astype(np.uint8)  # [H, W, 3]

        write_h264(p, frames(), fps, {"crf": "20", "preset": "ultrafast"})
        paths.append(p)
    return paths


def _part_proc(inputs: list[str], out: str, part: int, parts: int, kw: dict[str, Any], q: Any) -> None:
    from umt.data.build.parts import build_part

    t = time.perf_counter()
    r = build_part(inputs, out, part, parts, **kw)
    q.put((part, time.perf_counter() - t, r.packed))


def _samples_equal(a: Path, b: Path) -> bool:
    import tarfile

    from umt.data.format import read_manifest

    def members(d: Path) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for sh in read_manifest(d)["shards"]:
            with tarfile.open(d / sh["name"]) as tf:
                for ti in tf:
                    out[ti.name] = tf.extractfile(ti).read()  # type: ignore[union-attr]
        return out

    return members(a) == members(b)


def run(*, clips: int = 24, seconds: float = 2.0, size: tuple[int, int] = (320, 240), parts: Sequence[int] = (1, 2, 4),
        codec: str = "vp9", workers: int = 1, inputs: str | None = None, samples_per_shard: int = 8) -> BenchResult:
    """Measure the builds (module docstring) and return the table."""
    from umt.data.build.parts import commit_parts
    from umt.data.build.shards import EncodeSettings, build_shards

    res = BenchResult("bench_build")
    st = EncodeSettings(codec=codec)
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        root = Path(tmp)
        ins = [inputs] if inputs else [str(p) for p in _synth_clips(root / "src", clips, seconds, *size)]
        n_inputs = clips if not inputs else None
        kw: dict[str, Any] = {"settings": st, "samples_per_shard": samples_per_shard, "workers": workers}
        t = time.perf_counter()
        single = build_shards(ins, root / "single", **kw)
        t_single = time.perf_counter() - t
        n_inputs = n_inputs or single.num_samples + len(single.skipped)
        res.rows.append({"mode": "single machine", "parts": 1, "inputs": n_inputs, "samples": single.num_samples,
                         "parts_s": round(t_single, 2), "max_part_s": None, "commit_s": None,
                         "inputs_per_s": round(n_inputs / t_single, 2), "packed_by_commit": None, "same": True})
        ctx = mp.get_context("spawn")
        for n in parts:
            out = root / f"parts{n}"
            q = ctx.Queue()
            t = time.perf_counter()
            procs = [ctx.Process(target=_part_proc, args=(ins, str(out), i, n, kw, q)) for i in range(n)]
            for p in procs:
                p.start()
            done = [q.get() for _ in procs]
            for p in procs:
                p.join()
            t_parts = time.perf_counter() - t
            t = time.perf_counter()
            committed = commit_parts(out)
            t_commit = time.perf_counter() - t
            res.rows.append({"mode": f"{n} parts at once + commit", "parts": n, "inputs": n_inputs,
                             "samples": committed.num_samples, "parts_s": round(t_parts, 2),
                             "max_part_s": round(max(d[1] for d in done), 2), "commit_s": round(t_commit, 2),
                             "inputs_per_s": round(n_inputs / (t_parts + t_commit), 2),
                             "packed_by_commit": sum(not d[2] for d in done),
                             "same": _samples_equal(out, root / "single")})
    what = inputs or f"synthetic {size[0]}x{size[1]} H.264, {seconds} s"
    res.notes += [
        f"{os.cpu_count()} CPU cores; {n_inputs} inputs ({what}); codec {codec}, {workers} encoder process(es) per "
        f"part, {samples_per_shard} samples per shard.",
        "parts_s includes each part process's start-up (Python + torch imports, about 3 s here); max_part_s is the "
        "slowest part's own time. Parts run as processes of this one machine: with more parts than cores they "
        "share the cores, so the figures show the overhead of partitioning, not multi-machine scaling.",
        "same: the committed set's tar members (every sample's key and bytes) equal the single-machine build's.",
    ]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Run and write ``<date>_bench_build_<device>.{json,md}``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--size", default="320x240", help="WxH of the synthetic clips")
    p.add_argument("--parts", default="1,2,4")
    p.add_argument("--codec", default="vp9")
    p.add_argument("--workers", type=int, default=1, help="encoder processes per part")
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--inputs", default=None, help="a directory of your own videos instead of synthetic clips")
    p.add_argument("--out", default=None, help="report directory (default benchmarks/results)")
    a = p.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    res = run(clips=a.clips, seconds=a.seconds, size=(w, h), parts=[int(x) for x in a.parts.split(",")],
              codec=a.codec, workers=a.workers, inputs=a.inputs, samples_per_shard=a.samples_per_shard)
    print(format_table(res.rows))
    for n in res.notes:
        print(n)
    json_path, md_path = write_report(res, a.out)
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
