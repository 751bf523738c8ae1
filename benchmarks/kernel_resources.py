"""Per-kernel GPU resources without a GPU: registers, spills, shared memory and theoretical occupancy.

::

    python -m benchmarks.kernel_resources [--quick] [--jobs 2] [--out benchmarks/results]

Compiles every Triton kernel × config × target (sm_90 H100, sm_80 A100) at the real shapes with :mod:`kernels.aot`
(the wrappers' own launch arguments, specialised by Triton's binder; ``ptxas -v`` with Triton's flags on the PTX;
shared memory from the compiled metadata) and writes ``<date>_kernel_resources_<device>.{json,md}`` under ``--out``,
never overwriting an existing report (a ``_2``, ``_3`` … suffix is added). ``--quick``: the representative subset
the default test compiles, instead of every candidate config at every shape and dtype.

Theoretical occupancy = resident warps per SM / 64, limited by registers (allocated per warp in units of 256),
threads (2,048), blocks (32) and shared memory (228 KiB sm_90 / 164 KiB sm_80 per SM, +1 KiB reserved per block);
see :func:`kernels.aot.occupancy`. It is an upper bound, not a measurement.
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
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, BenchResult, format_table, hardware_info, hardware_label
from umt.fileio import atomic_write

__all__ = ["main", "report_path", "run", "summarise"]

_COLUMNS = ("op", "arch", "dtype", "D", "config", "pinned", "regs", "spill_B", "stack_B", "smem_KiB", "smem_limit_KiB",
            "blocks_per_sm", "occupancy", "mma", "shapes")


def _head_dim(shape: str) -> int:
    return 128 if shape.startswith("d128") else 64


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per (op, arch, dtype, head dim, config): the worst figures over the real shapes it ran at
    (shapes differ only in how Triton specialises their sizes), with the shapes listed."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["op"], r["arch"], r["dtype"], _head_dim(r["shape"]) if r["op"].startswith("flash") else None,
               r["config"])
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "op": r["op"], "arch": r["arch"], "dtype": r["dtype"], "D": key[3], "config": r["config"],
                "pinned": False, "regs": 0, "spill_B": 0, "stack_B": 0, "smem_KiB": 0.0,
                "smem_limit_KiB": r["smem_limit"] / 1024, "blocks_per_sm": 99, "occupancy": 1.0, "mma": r.get("mma"),
                "shapes": [], "error": None,
            }
        g["pinned"] = g["pinned"] or r["pinned"]
        if r.get("error"):
            g["error"] = r["error"]
            continue
        g["regs"] = max(g["regs"], r["registers"])
        g["spill_B"] = max(g["spill_B"], r["spill_stores"] + r["spill_loads"])
        g["stack_B"] = max(g["stack_B"], r["stack_bytes"])
        g["smem_KiB"] = max(g["smem_KiB"], r["shared"] / 1024)
        g["blocks_per_sm"] = min(g["blocks_per_sm"], r["blocks_per_sm"])
        g["occupancy"] = min(g["occupancy"], r["occupancy"])
        if r["shape"] not in g["shapes"]:
            g["shapes"].append(r["shape"])
    out = []
    for g in groups.values():
        g["shapes"] = ", ".join(g["shapes"])
        g["pinned"] = "yes" if g["pinned"] else ""
        out.append(g)
    order = {"sm90": 0, "sm80": 1}
    return sorted(out, key=lambda g: (g["op"], order.get(g["arch"], 9), g["dtype"], g["D"] or 0, g["config"]))


def _ptxas_version() -> str:
    from kernels.aot import _ptxas

    try:
        text = subprocess.run([_ptxas(), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    m = re.search(r"release ([\d.]+), (V[\d.]+)", text)
    return f"{m.group(1)} ({m.group(2)})" if m else text.strip().splitlines()[-1]


def run(*, quick: bool = False, jobs: int = 2) -> BenchResult:
    """Compile the matrix and return its summary table (rows as in :func:`summarise`; per-launch rows are folded
    into them, worst figures kept).

    Raises:
        RuntimeError: the compile subprocess failed.
    """
    from kernels.aot import run_matrix

    t0 = time.perf_counter()
    matrix = run_matrix(full=not quick, jobs=jobs)
    wall = time.perf_counter() - t0
    table = summarise(matrix["rows"])
    pinned = [g for g in table if g["pinned"]]
    errors = [g for g in table if g["error"]]
    scope = "representative subset" if quick else "every candidate config at every real shape and dtype"
    notes = [
        f"{len(matrix['rows'])} launches ({scope}), {len(table)} distinct (op, target, dtype, D, config) rows; "
        f"compiled in {wall:.0f} s "
        f"with {jobs} processes (Triton's cache dir reused where warm).",
        f"ptxas {_ptxas_version()} (bundled with triton), flags as Triton's: -lineinfo -v --regAllocOptLevel=2 "
        "--gpu-name=sm_90a | sm_80.",
        f"Pinned configs (what the wrappers launch): {len(pinned)} rows, "
        f"max {max((g['regs'] for g in pinned), default=0)} "
        f"registers, {sum(1 for g in pinned if g['spill_B'])} with spills, max shared memory "
        f"{max((g['smem_KiB'] for g in pinned), default=0):.0f} KiB.",
        f"Candidates that spill: {sum(1 for g in table if g['spill_B'])}; over the shared-memory limit: "
        f"{sum(1 for g in table if g['smem_KiB'] > g['smem_limit_KiB'])}; compile errors: {len(errors)}.",
        "Head dim 128 is refused on sm_80 (every backward tile spills there), so it has no sm_80 rows.",
        "spill_B = spill stores + spill loads (bytes per thread); occupancy is theoretical (see the module docstring).",
    ]
    return BenchResult(name="kernel_resources", rows=table, notes=notes,
                       extra={"launches": len(matrix["rows"]), "wall_s": round(wall, 1), "quick": quick})


def report_path(out_dir: Path, stem: str) -> Path:
    """``out_dir/stem`` with the first free suffix (``stem``, ``stem_2``, ``stem_3`` …): reports are never
    overwritten."""
    n = 1
    while True:
        cand = out_dir / (stem if n == 1 else f"{stem}_{n}")
        if not cand.with_suffix(".md").exists() and not cand.with_suffix(".json").exists():
            return cand
        n += 1


def write(result: BenchResult, out_dir: Path, command: str) -> tuple[Path, Path]:
    """Write the JSON and markdown report (hardware, versions, exact command, tables) without overwriting."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = hardware_info()
    now = _dt.datetime.now(_dt.timezone.utc)
    device = re.sub(r"[^A-Za-z0-9]+", "-", info.get("gpu") or "cpu").strip("-").lower()
    base = report_path(out_dir, f"{now:%Y-%m-%d}_{result.name}_{device}")
    payload = {"date": now.isoformat(timespec="seconds"), "command": command, "hardware": info,
               "name": result.name, "rows": result.rows, "notes": result.notes, "extra": result.extra}
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    atomic_write(json_path, json.dumps(payload, indent=1, default=str) + "\n")
    pinned = [g for g in result.rows if g["pinned"]]
    md = [
        f"# Kernel resources (AOT, no GPU): {now:%Y-%m-%d}",
        "",
        f"- Compiled on: {hardware_label(info)}; targets sm_90 (H100, sm_90a) and sm_80 (A100), `GPUTarget('cuda', "
        "90|80, 32)`",
        f"- Versions: Python {info['python']}, torch {info['torch']}, triton {info.get('triton')}",
        f"- Command: `{command}`",
        "",
        "Notes:",
        "",
        *(f"- {n}" for n in result.notes),
        "",
        "## Pinned configs (what the wrappers launch)",
        "",
        format_table(pinned, _COLUMNS),
        "",
        "## Every kernel × config × target",
        "",
        format_table(result.rows, _COLUMNS),
        "",
    ]
    atomic_write(md_path, "\n".join(md))
    return json_path, md_path


def _command(argv: list[str]) -> str:
    """The command as typed (``python -m benchmarks.kernel_resources …``; sys.argv[0] would be the file path)."""
    return " ".join(["python", "-m", "benchmarks.kernel_resources", *map(shlex.quote, argv)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the representative subset only")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile processes")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    a = p.parse_args(argv)
    result = run(quick=a.quick, jobs=a.jobs)
    print(format_table([g for g in result.rows if g["pinned"]], _COLUMNS))
    print("\n".join(result.notes))
    json_path, md_path = write(result, a.out, _command(sys.argv[1:] if argv is None else argv))
    print(f"wrote {md_path} and {json_path}")
    return 1 if any(g["error"] for g in result.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
