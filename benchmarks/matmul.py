"""The achievable matmul rate: the practical ceiling that MFU is also reported against.

A square ``[M, K] @ [K, N]`` matmul costs ``2·M·N·K`` FLOPs (one multiply-add = 2 FLOPs, as in
:mod:`umt.flops`). On a GPU it runs in bf16 (the dtype the trainer's autocast uses) at sizes that fill the device
(4096–8192); on CPU in fp32 at small sizes, where it only exercises the code path. The best size's median is the
"achievable" rate; the rows also give the fraction of the device's dense bf16 peak.

``python -m benchmarks.matmul [--quick] [--device cuda]`` prints the table and writes a report.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.budget import device_peak_tflops
from benchmarks.common import BenchResult, format_table, measure, write_report

__all__ = ["achievable_tflops", "matmul_flops", "run", "main"]

log = logging.getLogger(__name__)

#: Square sizes per (device type, quick).
_SIZES = {("cuda", False): (4096, 8192, 16384), ("cuda", True): (4096, 8192), ("cpu", False): (512, 1024), ("cpu", True): (128, 256)}


def matmul_flops(m: int, n: int, k: int) -> float:
    """FLOPs of ``[m, k] @ [k, n]``: ``2·m·n·k``."""
    return 2.0 * m * n * k


def run(
    *,
    quick: bool = False,
    models: Sequence[str] = ("umt_b16", "umt_l16"),
    device: str | None = None,
    sizes: Sequence[int] | None = None,
    **kwargs: Any,
) -> BenchResult:
    """Measure square-matmul TFLOP/s at each size (bf16 on CUDA, fp32 on CPU).

    Args:
        quick: fewer sizes and repeats.
        models: unused (the suite passes it to every part).
        device: ``"cuda"``/``"cpu"``; default CUDA when available.
        sizes: override the square sizes.

    Returns:
        A :class:`BenchResult` named ``"matmul"``; rows ``{device, dtype, size, tflops, tflops_p10, tflops_p90,
        peak_tflops, frac_of_peak}``; ``extra["achievable_tflops"]`` is the best median.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = device_peak_tflops(name) if dev.type == "cuda" else None
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for n in sizes or _SIZES[(dev.type, quick)]:
        a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)  # [n, n], not all zeros
        b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)  # [n, n]
        out = torch.empty(n, n, device=dev, dtype=dtype)
        stats = measure(lambda: torch.matmul(a, b, out=out), warmup=2 if quick else 5, repeat=5 if quick else 20, device=dev)
        f = matmul_flops(n, n, n)
        tf = f / stats.median / 1e12
        rows.append(
            {
                "device": name,
                "dtype": str(dtype).removeprefix("torch."),
                "size": n,
                "tflops": tf,
                "tflops_p10": f / stats.p90 / 1e12,  # slowest 10 % of runs → lowest rate
                "tflops_p90": f / stats.p10 / 1e12,
                "peak_tflops": peak,
                "frac_of_peak": tf / peak if peak else None,
            }
        )
        log.info("matmul %s %d³: %.3g TFLOP/s", rows[-1]["dtype"], n, tf)
        del a, b, out
    best = max(r["tflops"] for r in rows)
    notes = [f"Square matmul, 2·n³ FLOPs, median of repeated runs; {rows[0]['dtype']} on {name}."]
    if dev.type != "cuda":
        notes.append("CPU fp32 at small sizes: exercises the code path only; not a GPU ceiling.")
    return BenchResult(name="matmul", rows=rows, notes=notes, extra={"achievable_tflops": best, "peak_tflops": peak})


def achievable_tflops(result: BenchResult) -> float | None:
    """The achievable rate (TFLOP/s) from a :func:`run` result, or None if it has none."""
    value = result.extra.get("achievable_tflops")
    return float(value) if value else None


def main(argv: list[str] | None = None) -> int:
    """Command line: print the table and write the report under ``benchmarks/results``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.matmul", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(quick=args.quick, device=args.device)
    print(format_table(result.rows))
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
