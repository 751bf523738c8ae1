"""Shared benchmark plumbing: timing protocol, hardware/version description, tables and dated reports.

Every ``benchmarks/bench_*.py`` uses these so that all reports name the hardware, the versions and the exact
command, and all timings follow one protocol: warm-up runs, then repeated timed runs (CUDA events on a GPU,
``time.perf_counter`` after a synchronise otherwise), reported as median with the 10th/90th percentiles.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from umt.fileio import atomic_write

__all__ = [
    "RESULTS_DIR",
    "BenchResult",
    "Stats",
    "format_table",
    "hardware_info",
    "measure",
    "write_report",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        xs = sorted(samples)
        if not xs:
            raise ValueError("no samples")

        def q(f: float) -> float:
            return xs[min(len(xs) - 1, max(0, round(f * (len(xs) - 1))))]

        return cls(statistics.median(xs), q(0.1), q(0.9), len(xs))


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 10, device: torch.device | str | None = None
) -> Stats:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed calls.

    On CUDA each call is bracketed by CUDA events (no host sync inside the timed region other than the final
    event wait); elsewhere by ``time.perf_counter``.

    Returns:
        :class:`Stats` in seconds per call.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    cuda = device is not None and torch.device(device).type == "cuda"
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return Stats.of(samples)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else (platform.processor() or "unknown")


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - absent or unregistered package
        return None


def hardware_info() -> dict[str, Any]:
    """Hardware and software the figures were taken on: GPU model/count/driver/CUDA or the CPU, and versions."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    for pkg in ("nvidia-dali-cuda130", "triton", "timm", "open_clip_torch", "webdataset", "av"):
        info[pkg] = _version(pkg)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            driver=_nvidia_driver(),
        )
    return info


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None


def hardware_label(info: dict[str, Any]) -> str:
    """One-line device description, e.g. ``"1× NVIDIA H100 80GB HBM3"`` or ``"CPU: <model> (2 cores)"``."""
    if info.get("gpu"):
        return f"{info['gpu_count']}× {info['gpu']} (driver {info.get('driver')}, CUDA {info.get('cuda')})"
    return f"CPU: {info['cpu']} ({info['cpu_count']} cores), no GPU"


@dataclass
class BenchResult:
    """What one benchmark produced: table rows (dicts with the same keys) and free-text notes."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-2):
            return f"{v:.3g}"
        return f"{v:.2f}"
    return "" if v is None else str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of ``rows`` (also readable as plain text)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols), sep, *(line(r) for r in cells)])


def command_line() -> str:
    """The exact command that is running, shell-quoted (``python -m pkg.mod`` for a module run with ``-m``)."""
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and argv and argv[0].endswith(".py"):
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        argv[0:1] = ["-m", name]
    return " ".join(shlex.quote(a) for a in ["python", *argv])


def _free_report_paths(out: Path, stem: str) -> tuple[Path, Path]:
    """``(stem.json, stem.md)``, or with the first suffix ``-2``, ``-3``, ... whose pair is free; the .json name is
    created empty with ``O_EXCL`` to reserve it."""
    n = 1
    while True:
        s = stem if n == 1 else f"{stem}-{n}"
        json_path, md_path = out / f"{s}.json", out / f"{s}.md"
        if not md_path.exists():
            try:
                os.close(os.open(json_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return json_path, md_path
            except FileExistsError:
                pass
        n += 1


def write_report(
    result: BenchResult, out_dir: str | Path | None = None, command: str | None = None, info: dict | None = None
) -> tuple[Path, Path]:
    """Write ``<date>_<name>_<device>.json`` and ``.md`` under ``out_dir`` (default ``benchmarks/results``).

    The markdown names the date, hardware, versions and exact command, then holds the table and notes. A report never
    replaces another: a second run of the same benchmark on the same day and device writes
    ``<date>_<name>_<device>-2.json``/``.md`` (then ``-3``, ...); the name is reserved atomically (``O_EXCL``), so
    concurrent runs do not collide either.

    Returns:
        ``(json_path, md_path)``.
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    info = info or hardware_info()
    command = command or command_line()
    now = _dt.datetime.now(_dt.timezone.utc)
    device = re.sub(r"[^A-Za-z0-9]+", "-", info.get("gpu") or "cpu").strip("-").lower()
    json_path, md_path = _free_report_paths(out, f"{now:%Y-%m-%d}_{result.name}_{device}")
    payload = {"date": now.isoformat(timespec="seconds"), "command": command, "hardware": info, **asdict(result)}
    atomic_write(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "nvidia-dali-cuda130", "triton", "timm", "av") if info.get(k))
    md = [
        f"# {result.name}: {now:%Y-%m-%d}",
        "",
        f"- Hardware: {hardware_label(info)}",
        f"- Versions: Python {info['python']}, {versions}",
        f"- Command: `{command}`",
        "",
        format_table(result.rows),
        "",
    ]
    if result.notes:
        md += ["Notes:", "", *(f"- {n}" for n in result.notes), ""]
    atomic_write(md_path, "\n".join(md))
    return json_path, md_path


def run_child(module: str, spec: dict[str, Any], *, env: dict[str, str] | None = None, python: str | None = None,
              what: str = "measurement", tail: int = 3) -> dict[str, Any]:
    """Run ``python -m MODULE --_one SPEC_JSON`` in a fresh process (``python``: default this interpreter) from the
    repository root, so the project's source tree is importable whatever the interpreter, and return the last JSON
    line it prints.

    Raises:
        RuntimeError: the child failed or printed no JSON line (``what`` and the last ``tail`` lines of its output).
    """
    import subprocess

    cmd = [python or sys.executable, "-m", module, "--_one", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"{what} failed: {(p.stderr or p.stdout).strip().splitlines()[-tail:]}")
    return json.loads(lines[-1])
