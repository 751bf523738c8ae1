"""The GPU check-list in one command: ``python -m benchmarks.gpu_validation``.

On a machine with a CUDA GPU it runs, in order, each as its own process (a failing step is recorded and the next
one runs):

1. ``pytest -m gpu``: every GPU test (kernels at real shapes, no host syncs, the DALI GPU path, …).
2. The attention config sweep: every candidate of :data:`kernels.flash_attention.CANDIDATES` for this GPU timed at
   the real shapes in bf16, D = 64 (teacher N = 197 forward; student N = 320 and 1568 forward + backward), with the
   pinned config marked, so the pinned table can be re-chosen from measurements.
3. The benchmark suite with the budget check: ``python -m benchmarks --device cuda --check`` (matmul ceiling, DALI
   ``mixed`` decoding of the H.264 and VP9 shards, the kernel benchmarks against SDPA-flash and the original recipe's
   path, the batch-64 UMT-B/L steps with the PyTorch backend, the scaling projection and the 6-day budget).
4. The batch-64 UMT-B/L steps with the Triton backend: ``python -m benchmarks.bench_step --device cuda --kernels
   triton``, to compare with step 3's.

It writes one dated report, ``<date>_gpu_validation_<gpu>.{md,json}`` under ``--out`` (never overwriting: a
``_2`` … suffix is added), with each step's command, exit status, wall time and output tail; the sub-benchmarks
also write their own reports there. Exit status: 0 when every step passed, 1 otherwise, 2 without a GPU (nothing is
run: "no GPU").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, hardware_info, hardware_label
from umt.fileio import atomic_write

__all__ = ["EXIT_NO_GPU", "Step", "main", "plan", "sweep_attention_configs"]

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2
NO_GPU_MESSAGE = ("no GPU: benchmarks.gpu_validation needs a CUDA GPU (torch.cuda.is_available() is False here); "
                  "nothing was run. On a CPU machine use `python -m pytest -m triton` (interpreter + AOT compile) and "
                  "`python -m benchmarks.kernel_resources`.")


@dataclass
class Step:
    """One check: a name, the command (argv) and, after running, its outcome."""

    name: str
    argv: list[str]
    rc: int | None = None
    wall_s: float | None = None
    tail: str = ""


def plan(out_dir: Path, quick: bool = False) -> list[Step]:
    """The steps, in order, as argv lists run from the repository root."""
    py = sys.executable
    q = ["--quick"] if quick else []
    return [
        Step("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests"]),
        Step("attention config sweep", [py, "-m", "benchmarks.gpu_validation", "--sweep-only", "--out", str(out_dir)]
             + q),
        Step("suite + budget check (torch backend)",
             [py, "-m", "benchmarks", "--device", "cuda", "--check", "--out", str(out_dir)] + q),
        Step("batch-64 steps, triton backend",
             [py, "-m", "benchmarks.bench_step", "--device", "cuda", "--kernels", "triton"] + q),
    ]


def _run_step(step: Step, root: Path, timeout: float) -> Step:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(step.argv, cwd=root, capture_output=True, text=True, timeout=timeout)
        step.rc, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        step.rc, out = 124, f"timed out after {timeout:.0f} s\n{(e.stdout or b'')[-4000:]!r}"
    step.wall_s = round(time.perf_counter() - t0, 1)
    step.tail = "\n".join(out.strip().splitlines()[-40:])
    return step


def sweep_attention_configs(quick: bool = False) -> list[dict[str, Any]]:
    """Time every attention candidate config on this GPU (bf16, D = 64) at the real shapes.

    Returns:
        Rows ``{kernel, N, B, H, config, pinned, ms}``: forward alone for the teacher (N = 197, 8 frames × 64 clips,
        12 heads), forward + backward for the students (N = 320 and 1568, batch 64, 12 heads); each kernel's
        candidates are timed with the other kernels at their pinned configs.
    """
    import kernels.flash_attention as fa
    from benchmarks.common import measure

    dev = torch.device("cuda")
    arch = fa.target_arch(dev)
    rows = []
    shapes = [("fwd", 197, 512, 12), ("bwd", 320, 64, 12), ("bwd", 1568, 64, 12)]
    for mode, n, b, h in shapes:
        kernels = ("fwd",) if mode == "fwd" else ("fwd", "bwd_kv", "bwd_q")
        q, k, v = (torch.randn(b, h, n, 64, device=dev, dtype=torch.bfloat16, requires_grad=mode == "bwd")
                   for _ in range(3))
        for kn in kernels:
            pinned = fa.pick_config(kn, n, 64, torch.bfloat16, arch)
            key = fa.config_key(kn, n, 64, torch.bfloat16, arch)
            for cfg in fa.CANDIDATES[kn][arch]:
                fa.pin_configs({key: cfg.as_dict()})
                try:
                    if mode == "fwd":
                        fn = lambda: fa.flash_attention(q, k, v, impl="triton")  # noqa: E731
                    else:
                        def fn() -> None:
                            fa.flash_attention(q, k, v, impl="triton").sum().backward()
                    st = measure(fn, warmup=2, repeat=5 if quick else 20, device=dev)
                    ms = round(st.median * 1e3, 4)
                except Exception as e:  # noqa: BLE001 - a config that fails to launch is a result
                    ms = f"failed: {type(e).__name__}"
                finally:
                    fa._OVERRIDES.pop(key, None)
                rows.append({"kernel": kn, "N": n, "B": b, "H": h, "config": f"{cfg.block_m}x{cfg.block_n} "
                             f"w{cfg.num_warps} s{cfg.num_stages}", "pinned": cfg == pinned, "ms": ms})
    return rows


def _report_base(out_dir: Path, name: str, info: dict[str, Any]) -> tuple[Path, _dt.datetime]:
    from benchmarks.kernel_resources import report_path

    now = _dt.datetime.now(_dt.timezone.utc)
    device = re.sub(r"[^A-Za-z0-9]+", "-", info.get("gpu") or "cpu").strip("-").lower()
    return report_path(out_dir, f"{now:%Y-%m-%d}_{name}_{device}"), now


def _write(out_dir: Path, name: str, title: str, body: list[str], payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    info = hardware_info()
    base, now = _report_base(out_dir, name, info)
    command = "python -m benchmarks.gpu_validation " + shlex.join(sys.argv[1:])
    payload = {"date": now.isoformat(timespec="seconds"), "command": command, "hardware": info, **payload}
    atomic_write(base.with_suffix(".json"), json.dumps(payload, indent=1, default=str) + "\n")
    md = [f"# {title}: {now:%Y-%m-%d}", "", f"- Hardware: {hardware_label(info)}",
          f"- Versions: Python {info['python']}, torch {info['torch']}, triton {info.get('triton')}, "
          f"DALI {info.get('nvidia-dali-cuda130')}", f"- Command: `{command}`", "", *body]
    atomic_write(base.with_suffix(".md"), "\n".join(md) + "\n")
    return base.with_suffix(".md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="report directory")
    p.add_argument("--quick", action="store_true", help="smoke sizes and few repeats (not for decisions)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    p.add_argument("--sweep-only", action="store_true", help="only the attention config sweep (step 2)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="per-step limit in seconds")
    a = p.parse_args(argv)
    steps = plan(a.out, a.quick)
    if a.dry_run:
        for s in steps:
            print(f"{s.name}: {shlex.join(s.argv)}")
        return EXIT_OK
    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return EXIT_NO_GPU
    if a.sweep_only:
        from benchmarks.common import format_table

        rows = sweep_attention_configs(a.quick)
        table = format_table(rows)
        print(table)
        path = _write(a.out, "attention_configs", "Attention config sweep (bf16, D = 64)",
                      ["The pinned config is marked; re-pin kernels/flash_attention.py `_PINNED` from the fastest.",
                       "", table], {"rows": rows})
        print(f"wrote {path}")
        return EXIT_OK
    root = Path(__file__).resolve().parents[1]
    for s in steps:
        print(f"== {s.name}: {shlex.join(s.argv)}", flush=True)
        _run_step(s, root, a.timeout)
        print(f"   rc {s.rc} in {s.wall_s} s", flush=True)
    ok = all(s.rc == 0 for s in steps)
    body = ["| step | exit | wall s |", "|---|---|---|", *(f"| {s.name} | {s.rc} | {s.wall_s} |" for s in steps), ""]
    for s in steps:
        body += [f"## {s.name}", "", f"`{shlex.join(s.argv)}` → exit {s.rc} in {s.wall_s} s", "", "```", s.tail,
                 "```", ""]
    body += ["Verdict: " + ("every step passed." if ok else "some steps failed (see above)."), ""]
    path = _write(a.out, "gpu_validation", "GPU validation", body, {"steps": [asdict(s) for s in steps], "ok": ok})
    print(f"wrote {path}")
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
