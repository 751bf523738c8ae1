"""Fine-tuning augmentation and multi-view evaluation loaders against stage 1's (docs/finetune_augmentation.md).

Rows (one report):

* **loader** — DALI on CPU (the source seeks and decodes with PyAV, the graph augments), train mode, T=8, 224²,
  ``--workers`` threads and source processes: stage 1 (multi-scale crop, bilinear, flip, one clip per video) against
  fine-tuning (RandAugment ``rand-m7-n4-mstd0.5-inc1`` on the full frames, RRC 0.08-1, bicubic, flip, erasing 0.25,
  ``num_sample=2``), and fine-tuning without RandAugment (what RandAugment costs). clips/s counts delivered rows
  (two per video with ``num_sample=2``), videos/s decoded videos; CPU-s per clip counts the whole process tree.
* **eval** — the 4×3 multi-view evaluation loader (short side 224, 3 crops × 4 clips): views/s and CPU-s per view.
* **position** — where RandAugment runs: the same drawn programs through the DALI graph alone (no decode) on the
  stored full frames (the official position, before the crop) against on 224² crops; CPU-s per clip on one thread.

Inputs: the embedded 10 s sample cuts (480x270 H.264), re-encoded to the default shard storage.

    python -m benchmarks.bench_ftaug [--quick] [--workers 2] [--batch 8] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_data import _build, _default_sources, _PeakRSS, _tree_cpu_s
from benchmarks.common import BenchResult, run_child, format_table, write_report

__all__ = ["CONFIGS", "main", "run"]

RA = "rand-m7-n4-mstd0.5-inc1"
#: name -> DataConfig fields (beyond shards, backend, batch, workers, T = 8, 224²)
CONFIGS: dict[str, dict[str, Any]] = {
    "stage 1 (multiscale, 1 clip)": {},
    "fine-tuning (RA + RRC + erase, 2 clips)": dict(crop="rrc", interp="bicubic", rand_augment=RA, erase_prob=0.25,
                                                    num_sample=2),
    "fine-tuning without RA (2 clips)": dict(crop="rrc", interp="bicubic", erase_prob=0.25, num_sample=2),
    "eval 4x3 views": dict(train=False, temporal_views=4, spatial_views=3, drop_last=False),
}  # fmt: skip


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In a child process: one warm-up epoch, then ``epochs`` timed epochs; rows/s, videos/s, CPU-s per row."""
    import umt  # noqa: F401
    from umt.data import DataConfig
    from umt.data.loader import VideoLoader

    cfg = DataConfig(shards=spec["shards"], backend="dali", batch_size=spec["batch"], num_workers=spec["workers"],
                     **spec["cfg"])  # fmt: skip
    loader = VideoLoader(cfg)
    peak = _PeakRSS(os.getpid())
    for _ in loader.epoch_iter(0):  # warm-up: worker start, pipeline build, page cache
        pass
    cpu0, t0, rows, videos = _tree_cpu_s(os.getpid()), time.perf_counter(), 0, 0
    for e in range(1, 1 + spec["epochs"]):
        for b in loader.epoch_iter(e):
            b["video"].sum()
            real = b["index"] >= 0
            rows += int(real.sum())
            videos += len(set(b["index"][real].tolist()))
    dt, cpu = time.perf_counter() - t0, _tree_cpu_s(os.getpid()) - cpu0
    loader.close()
    return {"rows/s": rows / dt, "videos/s": videos / dt, "CPU-s/row": cpu / rows, "CPU-s/video": cpu / videos,
            "peak MiB": peak.stop() / 2**20}  # fmt: skip


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_child("benchmarks.bench_ftaug", spec)


def _position(shards: Path, clips: int, reps: int) -> list[dict[str, Any]]:
    """CPU-s per clip of the RandAugment graph alone on the stored frames against 224² crops (one thread)."""
    import numpy as np
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from umt.data import DataConfig
    from umt.data.dali.augment import rand_augment
    from umt.data.augment.randaugment import parse_rand_augment, rand_augment_program
    from umt.data.format import read_manifest
    from umt.data.clips import draw_params, read_clip
    from umt.data.format import ShardIndex

    cfg = DataConfig(crop="rrc", rand_augment=RA)
    spec = parse_rand_augment(RA)
    ix = ShardIndex(shards, read_manifest(shards)["shards"])
    full = [read_clip(ix, i % len(ix), cfg, draw_params(cfg, 0, 0, i)).frames for i in range(clips)]
    ix.close()
    rows = []
    for name, frames in (("full stored frames (official)", full), ("224x224 crops", [f[:, :224, :224] for f in full])):
        frames = [np.ascontiguousarray(f) for f in frames]
        progs = [rand_augment_program(spec, draw_params(cfg, 0, 0, i).ra[0], f.shape[2], f.shape[1])
                 for i, f in enumerate(frames)]  # fmt: skip
        samples = [(f, *p) for f, p in zip(frames, progs)]

        @pipeline_def(batch_size=clips, num_threads=1, device_id=None, enable_conditionals=True, exec_dynamic=True)
        def pipe() -> Any:
            v, k, p = fn.external_source(source=lambda info: samples[info.idx_in_epoch % clips], num_outputs=3,
                                         batch=False, layout=["FHWC", "", ""],
                                         dtype=[types.UINT8, types.INT32, types.FLOAT])  # fmt: skip
            return rand_augment(v, k, p, spec.num_layers)

        p = pipe()
        p.build()
        p.run()  # warm-up
        t0 = time.process_time()
        for _ in range(reps):
            p.run()
        cpu = (time.process_time() - t0) / (reps * clips)
        h, w = frames[0].shape[1:3]
        rows.append({"part": "position", "setting": f"RandAugment on {name}", "frame": f"{w}x{h}",
                     "CPU-s/row": cpu, "rows/s": 1.0 / cpu})  # fmt: skip
        del p
    return rows


def run(*, quick: bool = False, workers: int = 2, batch: int = 8, epochs: int = 2, copies: int = 4) -> BenchResult:
    """Measure the loader rows, the evaluation rows and the RandAugment position rows."""
    from umt.data.build.encode import DEFAULT_CODEC, DEFAULT_GOP

    res = BenchResult("bench_ftaug")
    with tempfile.TemporaryDirectory(prefix="bench_ftaug_") as tmp:
        files, _ = _default_sources(Path(tmp), copies=1 if quick else copies)
        shards = Path(tmp) / "shards"
        _build(files, shards, DEFAULT_CODEC, DEFAULT_GOP, None, workers)
        if quick:
            batch, epochs = min(batch, 2), 1
        for name, kw in CONFIGS.items():
            r = _run_child({"shards": str(shards), "batch": batch, "workers": workers, "epochs": epochs, "cfg": kw})
            res.rows.append({"part": "eval" if name.startswith("eval") else "loader", "setting": name,
                             "backend": "dali (cpu)", **r})  # fmt: skip
            logging.warning("%s", res.rows[-1])
        base = res.rows[0]["CPU-s/video"]
        for r in res.rows:
            r["CPU-s/video x stage 1"] = r["CPU-s/video"] / base
        res.rows += _position(shards, clips=2 if quick else 8, reps=1 if quick else 3)
    res.notes += [
        f"Inputs: the 4 embedded 10 s cuts (480x270 H.264, 240 frames) x {1 if quick else copies} copies, re-encoded "
        f"to the default storage ({DEFAULT_CODEC}, GOP {DEFAULT_GOP}, short side <= 320: stored 480x270).",
        f"Loaders: DALI CPU pipeline, T=8, 224x224, batch {batch} videos, {workers} threads + {workers} source "
        f"processes, 1 warm-up epoch then {epochs} timed epochs in a fresh process. rows: delivered clips (training: "
        "num_sample per video; eval: 12 views per video); CPU-s counts the whole process tree.",
        "position: the RandAugment graph alone (no decode, no crop), 8 clips' drawn programs, one DALI thread; the "
        "224x224 rows cut the same frames to 224x224 first. The official code runs RandAugment on the full frames.",
        "Machine shared with other jobs (2 cores): compare rows of one run, not absolutes across runs.",
    ]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 videos, batch 2, one timed epoch")
    p.add_argument("--workers", type=int, default=2, help="DALI threads and source processes (default 2)")
    p.add_argument("--batch", type=int, default=8, help="videos per batch (default 8)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (default 2)")
    p.add_argument("--copies", type=int, default=4, help="copies of the 4 sample cuts (default 4: 16 videos)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        print(json.dumps(_measure(json.loads(args._one))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    res = run(quick=args.quick, workers=args.workers, batch=args.batch, epochs=args.epochs, copies=args.copies)
    print(format_table(res.rows))
    for n in res.notes:
        print(f"- {n}")
    paths = write_report(res, args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
