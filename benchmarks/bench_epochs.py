"""Epoch boundaries of the DALI loader: does the pipeline idle between epochs?

A training loop asks for epoch after epoch. With ``VideoLoader.seamless_epochs`` (the default) one DALI pipeline
streams every epoch: its source never ends, so the prefetch queue and the source processes keep working across the
boundary. The baseline (``seamless_epochs = False``, the former behaviour) ends each epoch in the source and calls
``reset()``, so the queue drains at the end of an epoch and refills only after the next one starts.

For each mode, in a fresh process: one warm-up epoch, then ``--epochs`` epochs consumed by a loop that spends
``--step-ms`` per batch (standing in for the training step, during which the loader prefetches). Rows: the mean wait
for a batch inside epochs, the wait for the first batch of each epoch after the first (the boundary), the whole
wall time and clips/s. Inputs: the embedded 10 s sample cuts (480x270 H.264), re-encoded to the default storage.

    python -m benchmarks.bench_epochs [--epochs 4] [--batch 4] [--workers 2] [--step-ms 100] [--copies 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_data import _build, _default_sources
from benchmarks.common import BenchResult, run_child, write_report

__all__ = ["main", "run"]


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In a child process: waits per batch over ``epochs`` epochs after a warm-up epoch."""
    from umt.data import DataConfig
    from umt.data.loader import VideoLoader

    cfg = DataConfig(shards=spec["shards"], backend="dali", batch_size=spec["batch"], num_workers=spec["workers"],
                     num_frames=8, input_size=224)
    loader = VideoLoader(cfg)
    loader.seamless_epochs = spec["seamless"]
    step = spec["step_ms"] / 1000.0
    for _ in loader.epoch_iter(0):  # warm-up: pipeline build, worker start, page cache
        time.sleep(step)
    waits: list[list[float]] = []
    t_all, clips = time.perf_counter(), 0
    for e in range(1, 1 + spec["epochs"]):
        it, ep = loader.epoch_iter(e), []
        while True:
            t0 = time.perf_counter()
            b = next(it, None)
            if b is None:
                break
            ep.append(time.perf_counter() - t0)
            clips += int(b["video"].shape[0])
            time.sleep(step)  # the training step: the loader prefetches meanwhile
        waits.append(ep)
    wall = time.perf_counter() - t_all
    builds = loader.pipeline_builds
    loader.close()
    inner = [w for ep in waits for w in ep[1:]]
    first = [ep[0] for ep in waits]
    return {"mean wait in epoch ms": 1000 * statistics.fmean(inner), "first-batch wait ms": 1000 * statistics.fmean(first),
            "max first-batch wait ms": 1000 * max(first), "wall s": wall, "clips/s": clips / wall,
            "batches/epoch": len(waits[0]), "pipelines built": builds}


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_child("benchmarks.bench_epochs", spec)


def run(*, epochs: int = 4, batch: int = 4, workers: int = 2, step_ms: float = 100.0, copies: int = 6,
        reps: int = 1) -> BenchResult:
    """Both modes, ``reps`` times each, alternating (so load drifts hit both)."""
    from umt.data.build.encode import DEFAULT_CODEC, DEFAULT_GOP

    res = BenchResult("bench_epochs")
    with tempfile.TemporaryDirectory(prefix="bench_epochs_") as tmp:
        files, _ = _default_sources(Path(tmp), copies=copies)
        shards = Path(tmp) / "shards"
        _build(files, shards, DEFAULT_CODEC, DEFAULT_GOP, None, workers)
        for r in range(reps):
            for seamless in (True, False):
                spec = {"shards": str(shards), "batch": batch, "workers": workers, "epochs": epochs,
                        "step_ms": step_ms, "seamless": seamless}
                row = _run_child(spec)
                res.rows.append({"rep": r + 1, "mode": "seamless (default)" if seamless else "reset per epoch",
                                 **row, "load": round(os.getloadavg()[0], 1)})
    res.notes += [
        f"Inputs: {len(files)} videos ({copies} copies of the 4 embedded 10 s cuts), default storage "
        f"({DEFAULT_CODEC} GOP {DEFAULT_GOP}); DALI on CPU, train mode, T=8, 224², batch {batch}, {workers} source "
        f"processes and threads; {epochs} timed epochs after a warm-up epoch; the consumer sleeps {step_ms:g} ms per "
        "batch (the training step).",
        "mean wait in epoch: time in next() for the 2nd..last batch of each epoch; first-batch wait: for the first "
        "batch of each timed epoch (the boundary: the previous epoch's last batch was taken one step earlier).",
        "load: the 1-minute load average after the row (the machine is shared: compare rows of one run).",
    ]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_epochs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per mode (after one warm-up epoch)")
    ap.add_argument("--batch", type=int, default=4, help="clips per batch")
    ap.add_argument("--workers", type=int, default=2, help="DALI threads and source processes")
    ap.add_argument("--step-ms", type=float, default=100.0, help="simulated training step per batch, milliseconds")
    ap.add_argument("--copies", type=int, default=6, help="copies of the 4 embedded cuts (4 x copies videos)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of the pair of modes")
    ap.add_argument("--out", default=None, help="report directory (default benchmarks/results)")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._one:
        print(json.dumps(_measure(json.loads(a._one))))
        return 0
    res = run(epochs=a.epochs, batch=a.batch, workers=a.workers, step_ms=a.step_ms, copies=a.copies, reps=a.reps)
    j, m = write_report(res, a.out)
    print(m.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
