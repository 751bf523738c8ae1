"""Data pipeline benchmark: the storage matrix, the peers side by side, and decode cost against video length.

Three parts, each a set of rows in one report:

* **matrix** — for every kind of source in ``--sources`` (:data:`benchmarks.sources.KINDS`: short-GOP 720p, long-GOP
  720p, low-resolution low-bit-rate) and every storage setting of :data:`MATRIX` (codec × GOP × fps cap × CRF), the
  first ``--matrix-clips`` clips are re-encoded into shards (build CPU-s per video, KiB per clip, ratio to the source
  bytes, PSNR against the source), then read by our loader: decode-only work (frames decoded per clip and per sampled
  frame, a hardware-independent cost, and decode CPU-s per clip on one core) and the full pipeline (clips/s with
  ``--workers`` workers, CPU-s per clip, peak memory).
* **peers** (``--peers``) — per source kind, on the same inputs, in the same run: our pipeline on our shards (DALI and
  reference backends); the official UMT stage-1 loader (decord + PIL, :mod:`benchmarks.peers`), decord alone, SPDL
  0.8 and TorchCodec on the raw source videos and on the video files inside our shards, each when it imports (a
  missing one is named in the log and skipped). Ratios against the official loader. TorchCodec's measurement runs
  under ``--torchcodec-python`` (default: ``benchmarks/.venv-torchcodec/bin/python`` when it exists, made by
  ``bash benchmarks/setup_torchcodec.sh``: its wheel needs the CUDA build of torch; it decodes on CPU).
* **length** — decode CPU-s per clip for 10 s against 60 s clips at the default settings (target: at most 1.5×).
* **seek** (``--parts seek``) — CPU-s for one early, middle or late frame through DALI's CPU video decoder against
  our seeking decoder: DALI decodes from the first frame whatever the arguments.

Every loader runs in its own process; CPU-s counts the whole process tree (workers included) and peak memory is the
tree's summed proportional set size (PSS), sampled every 50 ms. Inputs: ``--sources DIR`` (see :mod:`benchmarks.sources`: 10 s 720p H.264
cuts of a real film and a 60 s clip); without it the embedded sample clips (10 s cuts at 480x270).

    python -m benchmarks.bench_data --sources benchmarks/.sources --peers [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, format_table, write_report
from umt.data.build.encode import DEFAULT_MAX_BYTES_RATIO

__all__ = ["MATRIX", "QUICK", "main", "run"]

#: (codec, gop, fps cap, crf or None for the codec's own, max bytes ratio or None for no cap): the storage matrix.
#: MJPEG is all-intra whatever the GOP (it is per-frame JPEG storage in a video container: decoded by libjpeg on CPU;
#: nvJPEG / NVDEC on a GPU). The uncapped rows are the CRF encodes as such; the default caps them (``bytes<=``).
Setting = tuple[str, int, "float | None", "int | None", "float | None"]
MATRIX: tuple[Setting, ...] = (
    ("vp9", 8, None, None, None), ("h264", 8, None, None, DEFAULT_MAX_BYTES_RATIO), ("h264", 8, None, None, None),
    ("h264", 8, None, 25, None), ("h264", 16, None, None, None), ("h264", 32, None, 28, None),
    ("h264", 8, 8.0, None, None), ("mjpeg", 1, 8.0, None, None),
)
QUICK: tuple[Setting, ...] = (("vp9", 8, None, None, None), ("h264", 8, None, None, DEFAULT_MAX_BYTES_RATIO))
_T = 8


def _label(codec: str, gop: int, fps: float | None, crf: int | None = None, ratio: float | None = None) -> str:
    from umt.data.build.encode import CODECS

    g = "all-intra" if gop == 1 else f"gop {gop}"
    q = CODECS[codec][2].get("crf") if crf is None else str(crf)
    return (f"{codec} {g}" + (f" crf {q}" if q else "") + (f" fps<={fps:g}" if fps else "")
            + (f" bytes<={ratio:g}x" if ratio else ""))


def _selected(label: str, only: str) -> bool:
    """``label`` matches one of the comma list ``only``: starts with an item, or equals one that ends with ``$``."""
    return any(label == o.strip()[:-1] if o.strip().endswith("$") else label.startswith(o.strip())
               for o in only.split(","))


# -- process-tree accounting (runs inside the measured process) -------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants, plus reaped children (getrusage)."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + ru.ru_utime + ru.ru_stime


def _pss(pid: int, page: int) -> int:
    """Proportional set size in bytes (shared pages split among their users: forked workers are not counted twice);
    RSS where smaps_rollup is unavailable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    except (OSError, IndexError, ValueError):
        return 0


class _PeakRSS:
    """Peak of the summed proportional set size (PSS) of a process tree, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.05):
            total = 0
            for p in _tree(self.pid):
                total += _pss(p, page)
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


# -- one measurement (in a child process) -----------------------------------------------------------------------


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["epochs"]`` epochs after one warm-up epoch; clips/s, CPU-s per clip, peak MiB."""
    import torch

    import umt  # noqa: F401 - torchvision shim before the peers import PIL/torch bits

    batch, workers = spec["batch"], spec["workers"]
    kind = spec["kind"]
    if kind == "ours":
        from umt.data import DataConfig
        from umt.data.loader import VideoLoader

        cfg = DataConfig(shards=spec["shards"], backend=spec["backend"], batch_size=batch, num_workers=workers)
        loader = VideoLoader(cfg, device=spec.get("device", "cpu"))
        epochs = lambda e: loader.epoch_iter(e)  # noqa: E731
    else:
        from benchmarks.peers import DecordDataset, OfficialUMTDataset, SPDLDataset, TorchCodecDataset

        cls = {"official": OfficialUMTDataset, "decord": DecordDataset, "spdl": SPDLDataset,
               "torchcodec": TorchCodecDataset}[kind]
        ds = cls(spec["files"])
        dl = torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
        )
        epochs = lambda e: iter(dl)  # noqa: E731
    peak = _PeakRSS(os.getpid())
    n = 0
    for b in epochs(0):  # warm-up: worker start, imports, page cache
        n += 1
    cpu0, t0, clips = _tree_cpu_s(os.getpid()), time.perf_counter(), 0
    for e in range(1, 1 + spec["epochs"]):
        for b in epochs(e):
            v = b["video"] if isinstance(b, dict) else b
            v.sum()
            clips += v.shape[0]
    dt, cpu = time.perf_counter() - t0, _tree_cpu_s(os.getpid()) - cpu0
    return {"clips/s": clips / dt, "CPU-s/clip": cpu / clips, "peak MiB": peak.stop() / 2**20, "clips": clips}


def _run_child(spec: dict[str, Any], env: dict[str, str] | None = None, python: str | None = None) -> dict[str, Any]:
    """One measurement in a fresh ``python`` (default: this interpreter) run from the repository root, so that the
    project's source tree is importable whatever the interpreter (the child needs numpy, torch and the peer only)."""
    from benchmarks.common import run_child

    return run_child("benchmarks.bench_data", spec, env=env, python=python, what=spec["kind"], tail=1)


# -- decode-only work (in this process, one core) ---------------------------------------------------------------


def _decode_work(shards: Path, epochs: int = 2) -> dict[str, float]:
    """Frames decoded per clip and decode CPU-s per clip on one core: read + TSN draws + seeking decode, no crop."""
    from umt.data import DataConfig
    from umt.data.format import read_manifest
    from umt.data.clips import ClipSource, read_clip
    from umt.data.format import ShardIndex

    m = read_manifest(shards)
    cfg = DataConfig(shards=str(shards), batch_size=1, num_workers=0)
    decoded = clips = 0
    t0 = time.process_time()
    for e in range(epochs):
        src = ClipSource(ShardIndex(shards, m["shards"]), cfg, rank=0, world_size=1, first_epoch=e, start_batch=0)
        for i in src.order(e):
            c = read_clip(src.index, int(i), cfg, src.params(e, int(i)))
            decoded += c.stats.decoded
            clips += 1
        src.index.close()
    cpu = time.process_time() - t0
    return {"decoded frames/clip": decoded / clips, "decode CPU-s/clip": cpu / clips}


def _seek_probe(shards: Path, label: str, reps: int = 3) -> list[dict[str, Any]]:
    """CPU-s to get one frame (first, middle, last), the 8 TSN centres and all frames of the first sample, through
    DALI's CPU ``fn.decoders.video`` (``frames=[...]``, ``build_index=True``) and through our seeking decoder."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    from umt.data.format import decode_meta, read_manifest
    from umt.data.format import ShardIndex
    from umt.data.decode import DecodeStats, decode_sampled

    ix = ShardIndex(shards, read_manifest(shards)["shards"])
    data, n = ix.read(0, "mp4"), decode_meta(ix.read(0, "meta"))["frames"]
    kf = json.loads(ix.read(0, "json")).get("keyframes")
    ix.close()
    arr = np.frombuffer(data, np.uint8)
    cases = {"frame 0": [0], "middle frame": [n // 2], "last frame": [n - 1],
             "8 TSN centres": [int((i + 0.5) * n / 8) for i in range(8)], f"all {n} frames": list(range(n))}  # fmt: skip
    rows = []
    for name, frames in cases.items():

        @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True)
        def pipe() -> Any:
            e = fn.external_source(source=lambda: [arr], batch=True)
            return fn.decoders.video(e, device="cpu", frames=frames, build_index=True)

        p = pipe()
        p.build()
        p.run()
        t0 = time.process_time()
        for _ in range(reps):
            p.run()
        dali_s = (time.process_time() - t0) / reps
        del p
        st = DecodeStats()
        t0 = time.process_time()
        for _ in range(reps):
            decode_sampled(data, frames, kf, stats=st)
        ours_s = (time.process_time() - t0) / reps
        rows.append({"part": "seek", "setting": f"{label}, {name}", "backend": "DALI cpu vs ours (PyAV seek)",
                     "DALI CPU-s": dali_s, "ours CPU-s": ours_s, "ours decoded frames": st.decoded / reps})  # fmt: skip
    return rows


def _psnr(shards: Path, probes: int = 6, sample: int = 0) -> float:
    """Mean PSNR (dB, RGB) of stored clip ``sample`` against its source file (``KEY.json``'s ``source``) scaled to the
    stored size (bicubic), over ``probes`` frames matched by time (fps caps drop frames)."""
    import io

    import av
    import numpy as np

    from umt.data.format import decode_meta, read_manifest
    from umt.data.format import ShardIndex

    ix = ShardIndex(shards, read_manifest(shards)["shards"])
    meta = decode_meta(ix.read(sample, "meta"))
    source = json.loads(ix.read(sample, "json"))["source"]
    with av.open(io.BytesIO(ix.read(sample, "mp4"))) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    ix.close()
    with av.open(str(source)) as c:
        src = [(float(f.time), f) for f in c.decode(c.streams.video[0])]
    fps = meta["fps_milli"] / 1000
    out = []
    for j in np.linspace(0, len(stored) - 1, probes).astype(int):
        t = j / fps
        f = min(src, key=lambda x: abs(x[0] - t))[1]
        ref = f.reformat(width=meta["width"], height=meta["height"], format="rgb24", interpolation="BICUBIC")
        mse = np.mean((ref.to_ndarray().astype(np.float64) - stored[j]) ** 2)
        out.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
    return float(np.mean(out))


def _build(files: Sequence[Path], out: Path, codec: str, gop: int, fps: float | None, workers: int,
           crf: int | None = None, ratio: float | None = None) -> dict[str, Any]:
    from umt.data.build.shards import EncodeSettings, build_shards

    t0 = time.perf_counter()
    cpu0 = _tree_cpu_s(os.getpid())
    st = EncodeSettings(codec=codec, gop=gop, fps_cap=fps, crf=crf, max_bytes_ratio=ratio)
    br = build_shards(list(files), out, settings=st, samples_per_shard=16, workers=workers)  # fmt: skip
    dt = time.perf_counter() - t0
    cpu = _tree_cpu_s(os.getpid()) - cpu0
    nbytes = sum(s["bytes"] for s in br.shards)
    src_bytes = sum(Path(f).stat().st_size for f in files)
    return {
        "build CPU-s/video": cpu / max(br.num_samples, 1),
        "build videos/s/core": br.num_samples / dt / workers,
        "KiB/clip": nbytes / br.num_samples / 1024,
        "x source bytes": nbytes / src_bytes,
        "capped": sum(1 for r in _rows(out) if "rate_cap_kbit_s" in r),
        "samples": br.num_samples,
    }


def _rows(shards: Path) -> list[dict[str, Any]]:
    """Every sample's ``KEY.json``."""
    from umt.data.format import ShardIndex, read_manifest

    ix = ShardIndex(shards, read_manifest(shards)["shards"])
    rows = [json.loads(ix.read(i, "json")) for i in range(len(ix))]
    ix.close()
    return rows


def _extract_videos(shards: Path, out: Path) -> list[Path]:
    """The video files inside our shards, written out as plain files (the peers read files)."""
    from umt.data.format import read_manifest
    from umt.data.format import ShardIndex

    ix = ShardIndex(shards, read_manifest(shards)["shards"])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(ix)):
        p = out / f"{i:06d}.mp4"
        p.write_bytes(ix.read(i, "mp4"))
        paths.append(p)
    ix.close()
    return paths


def _default_sources(tmp: Path, copies: int = 6) -> tuple[list[Path], Path | None]:
    """The four embedded 10 s sample cuts, symlinked ``copies`` times (distinct paths are distinct samples)."""
    from umt.data.build.samples import SAMPLES_DIR

    out = []
    for c in range(copies):
        for f in sorted(SAMPLES_DIR.glob("bbb_trailer_long_*.mp4")):
            link = tmp / "samples" / f"c{c}_{f.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
            out.append(link)
    return out, None


def _sources(sources: str | None, tmp: Path, quick: bool) -> tuple[dict[str, list[Path]], Path | None]:
    """Source clips by kind (:data:`benchmarks.sources.KINDS`: the kinds present in ``sources``), and the 60 s clip."""
    if sources is None:
        return {"samples": _default_sources(tmp, copies=2 if quick else 6)[0]}, None
    from benchmarks.sources import KINDS

    d = Path(sources)
    kinds = {k: sorted((d / sub).glob("clip_*.mp4")) for k, (sub, _, _) in KINDS.items()}
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        raise FileNotFoundError(f"{d} holds no clip_*.mp4: run python -m benchmarks.sources first")
    long = d / "long_60s.mp4"
    return kinds, long if long.is_file() else None


def _peers_available() -> dict[str, bool]:
    import importlib.util

    return {m: importlib.util.find_spec(m) is not None for m in ("decord", "spdl", "torchcodec")}


#: The interpreter bash benchmarks/setup_torchcodec.sh makes for the TorchCodec peer (not resolved: it is a venv's).
TORCHCODEC_VENV_PYTHON = Path(__file__).resolve().parent / ".venv-torchcodec" / "bin" / "python"
_TORCHCODEC_PROBE = """import json, torch, torchcodec
from torchcodec.decoders import VideoDecoder
try:
    from torchcodec._core import get_ffmpeg_library_versions as f
    ff = f().get("ffmpeg_version")
except Exception:
    ff = None
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "torchcodec": torchcodec.__version__,
                  "ffmpeg": ff}))"""


def _torchcodec_python(python: str | None) -> dict[str, Any]:
    """The interpreter that runs the TorchCodec peer and what it imports: ``python`` (``--torchcodec-python``), else
    :data:`TORCHCODEC_VENV_PYTHON` when it exists, else this interpreter. Returns ``{"python", "label", "torch",
    "cuda", "torchcodec", "ffmpeg"}`` from a probe that imports torchcodec there, or ``{"python", "skip": why}``."""
    import importlib.util

    how = "bash benchmarks/setup_torchcodec.sh makes a venv with the CUDA build of torch and the system FFmpeg"
    if python is None:
        python = str(TORCHCODEC_VENV_PYTHON) if TORCHCODEC_VENV_PYTHON.exists() else sys.executable
    if python == sys.executable and importlib.util.find_spec("torchcodec") is None:
        venv = TORCHCODEC_VENV_PYTHON.parent.parent
        return {"python": python, "skip": f"not installed in the project's environment and no {venv.name} ({how})"}
    if os.sep in python:  # a path: absolute (the child runs from the repository root), not resolved (a venv's link)
        python = os.path.abspath(python)
    if not (Path(python).exists() or shutil.which(python)):
        return {"python": python, "skip": f"--torchcodec-python {python} does not exist ({how})"}
    info: Any = None
    try:
        p = subprocess.run([python, "-c", _TORCHCODEC_PROBE], capture_output=True, text=True, timeout=300)
        err = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        info = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        err = str(e)
    if not isinstance(info, dict):
        return {"python": python, "skip": f"'import torchcodec' fails under {python}: {err} ({how})"}
    venv = Path(python).parent.parent
    where = "project" if python == sys.executable else venv.name if (venv / "pyvenv.cfg").exists() else python
    cuda = f", CUDA {info['cuda']}" if info.get("cuda") and "+cu" not in info["torch"] else ""
    return {**info, "python": python, "label": f"{where} (torch {info['torch']}{cuda})"}


def _peers(files: Sequence[Path], tmp: Path, kind: str, default: tuple, backends: Sequence[str], dev: str,
           common: dict[str, Any], tc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Our loader on our shards and every available peer on the raw ``files`` and on the files inside our shards;
    TorchCodec under the interpreter ``tc`` names (:func:`_torchcodec_python`), skipped when it has ``"skip"``."""
    import torch

    tc = tc if tc is not None else _torchcodec_python(None)
    have = _peers_available()
    shards = tmp / "default_all"
    b = _build(files, shards, *default[:3], common["workers"], *default[3:])
    logging.warning("peers %s: %d clips, default storage %s: %s", kind, len(files), _label(*default), b)
    inner = _extract_videos(shards, tmp / "inner")
    runs: list[tuple[str, str, dict[str, Any], dict[str, str] | None, dict[str, Any] | None]] = []
    for backend in backends:
        runs.append((f"ours: {backend}", "our shards", {"kind": "ours", "backend": backend,
                     "shards": str(shards), "device": dev}, None, None))  # fmt: skip
    tc_name = "TorchCodec " + ".".join(tc.get("torchcodec", "").split(".")[:2])
    peer_kinds = [("official (decord+PIL)", "official", "decord", None), ("decord 0.6", "decord", "decord", None),
                  ("SPDL 0.8", "spdl", "spdl", "spdl"), (tc_name.strip(), "torchcodec", "torchcodec", None)]
    have["torchcodec"] = "skip" not in tc
    for name, k, need, env_kind in peer_kinds:
        if not have.get(need):
            logging.warning("%s: %s, skipped", name, tc["skip"] if k == "torchcodec" else "not installed here")
            continue
        env = None
        if env_kind == "spdl":
            from benchmarks.peers import spdl_env

            env = spdl_env()
        py = tc if k == "torchcodec" else None
        runs.append((name, "raw source videos", {"kind": k, "files": [str(f) for f in files]}, env, py))
        runs.append((name, "files inside our shards", {"kind": k, "files": [str(f) for f in inner]}, env, py))
    rows = []
    for name, inp, spec, env, py in runs:
        try:
            r = _run_child({**spec, **common}, env, py["python"] if py else None)
        except RuntimeError as e:
            logging.warning("%s on %s: %s", name, inp, e)
            continue
        label = py["label"] if py else f"project (torch {torch.__version__})"
        rows.append({"part": "peers", "source": kind, "setting": inp, "backend": name, "python (torch)": label, **r})
        logging.warning("%s", rows[-1])
    ref = next((r for r in rows if r["backend"].startswith("official") and r["setting"].startswith("raw")), None)
    ref_same = next((r for r in rows if r["backend"].startswith("official") and r["setting"].startswith("files")), None)
    for r in rows:
        r["x official (raw)"] = r["clips/s"] / ref["clips/s"] if ref else float("nan")
        r["x official (same files)"] = r["clips/s"] / ref_same["clips/s"] if ref_same else float("nan")
    shutil.rmtree(shards, ignore_errors=True)
    shutil.rmtree(tmp / "inner", ignore_errors=True)
    # peers' rows carry no "dali" backend label: the suite's data rate reads our rows only
    return [{**r, "backend": r["backend"].replace("ours: ", "")} if not r["backend"].startswith("ours") else r
            for r in rows]


def run(
    *,
    quick: bool = False,
    models: Sequence[str] = (),  # noqa: ARG001 - shared benchmark signature; data has no model
    device: str | None = None,
    workers: int = 2,
    batch: int = 8,
    sources: str | None = None,
    peers: bool = False,
    epochs: int = 2,
    parts: Sequence[str] = ("matrix", "length"),
    matrix_clips: int = 16,
    only: str | None = None,
    kinds: Sequence[str] = (),
    crf: int | None = None,
    psnr_all: bool = False,
    torchcodec_python: str | None = None,
) -> BenchResult:
    """Measure the matrix, the length rows and, with ``peers``, the peers side by side.

    ``quick``: two settings on 8 clips, batch <= 4, one timed epoch (a smoke run for the suite, not a measurement).
    ``psnr_all``: also the median and minimum PSNR over every clip of a matrix setting, not only the first.
    ``torchcodec_python``: the interpreter of the TorchCodec peer (:func:`_torchcodec_python`).
    """
    from umt.data.build.encode import DEFAULT_CODEC, DEFAULT_GOP
    from umt.data.loader import dali_available

    dev = device or "cpu"
    res = BenchResult("bench_data")
    have = _peers_available()
    settings = (QUICK if quick else MATRIX) if "matrix" in parts else ()
    if only:  # e.g. "h264 gop 8,mjpeg": settings whose label starts with one of these
        settings = tuple(x for x in settings if _selected(_label(*x), only))
    _ = have
    backends = (["dali"] if dali_available() else []) + ["reference"]
    tc = _torchcodec_python(torchcodec_python) if (peers or "peers" in parts) else None
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        by_kind, long_clip = _sources(sources, Path(tmp), quick)
        if kinds:
            by_kind = {k: v for k, v in by_kind.items() if k in kinds}
        if quick:
            by_kind, batch, epochs = {k: v[:8] for k, v in by_kind.items()}, min(batch, 4), 1
        inputs = []
        default = (DEFAULT_CODEC, DEFAULT_GOP, None, crf, DEFAULT_MAX_BYTES_RATIO)
        for kind, files in by_kind.items():
            src_mib = sum(f.stat().st_size for f in files) / 2**20
            inputs.append(f"{kind}: {len(files)} clips, {src_mib:.1f} MiB")
            for codec, gop, fps, crf, ratio in settings:
                label = _label(codec, gop, fps, crf, ratio)
                out = Path(tmp) / kind / label.replace(" ", "_").replace("<=", "")
                b = _build(files[:matrix_clips], out, codec, gop, fps, workers, crf, ratio)
                dw = _decode_work(out, epochs=2)
                psnr = _psnr(out)
                every = [_psnr(out, sample=i) for i in range(b["samples"])] if psnr_all else []
                backend = backends[0]
                r = _run_child({"kind": "ours", "backend": backend, "shards": str(out), "batch": batch,
                                "workers": workers, "epochs": epochs, "device": dev})  # fmt: skip
                res.rows.append({
                    "part": "matrix",
                    "source": kind,
                    "setting": label + (" (default)" if (codec, gop, fps, crf, ratio) == default else ""),
                    "backend": f"{backend} ({'mixed' if dev.startswith('cuda') and backend == 'dali' else 'cpu'})",
                    "clips/s": r["clips/s"],
                    "CPU-s/clip": r["CPU-s/clip"],
                    "peak MiB": r["peak MiB"],
                    **dw,
                    "decoded per sampled frame": dw["decoded frames/clip"] / _T,
                    "decode clips/s/core": 1.0 / dw["decode CPU-s/clip"],
                    **{k: b[k] for k in ("KiB/clip", "x source bytes", "capped", "build CPU-s/video",
                                         "build videos/s/core")},
                    "PSNR dB": psnr,
                    **({"PSNR dB median": statistics.median(every), "PSNR dB min": min(every)} if every else {}),
                })  # fmt: skip
                logging.warning("%s", res.rows[-1])
                shutil.rmtree(out, ignore_errors=True)
            if "seek" in parts:
                for gop in (1, 8, 32):
                    out = Path(tmp) / kind / f"seek_gop{gop}"
                    _build(files[:1], out, "vp9", gop, None, 1)
                    res.rows += [{"source": kind, **r} for r in _seek_probe(out, _label("vp9", gop, None))]
            if peers or "peers" in parts:
                res.rows += _peers(files, Path(tmp) / kind, kind, default, backends, dev,
                                   {"batch": batch, "workers": workers, "epochs": epochs}, tc)
        # length: 10 s against 60 s at the default settings (decode work only; augmentation does not depend on it)
        files = next(iter(by_kind.values()))
        if long_clip is not None and "length" in parts:
            short_dir = Path(tmp) / "default_short"
            _build(files[:matrix_clips], short_dir, *default[:3], workers, *default[3:])
            long_dir = Path(tmp) / "long60"
            _build([long_clip], long_dir, *default[:3], workers, *default[3:])
            a, b2 = _decode_work(short_dir, epochs=2), _decode_work(long_dir, epochs=16)
            for name, d in (("10 s", a), ("60 s", b2)):
                res.rows.append({"part": "length", "setting": f"{_label(*default)}, {name} clips", "backend": "source",
                                 **d, "x 10 s cost": d["decode CPU-s/clip"] / a["decode CPU-s/clip"]})  # fmt: skip
    res.notes += [
        f"Inputs ({'--sources ' + sources if sources else 'the embedded 10 s sample cuts, 480x270 H.264'}): "
        + "; ".join(inputs) + (f"; and {long_clip.name}" if long_clip and "length" in parts else "")
        + f". The matrix uses the first {matrix_clips} clips of each kind, the peers all of them."
        " Shards re-encode to short side <= 320.",
        f"Loaders: train mode, T={_T}, 224x224, batch {batch}, {workers} workers (DALI: {workers} threads + {workers} "
        f"source processes; peers: torch DataLoader workers), 1 warm-up epoch then {epochs} timed epochs in a fresh "
        "process. CPU-s/clip counts the whole process tree; peak MiB is its summed PSS (shared pages split, so forked "
        "workers are not counted twice).",
        "decoded frames/clip: frames the decoder decoded per clip of 8 sampled frames (from the key frame at or before "
        "each target: the key frame, the frames before the target that others reference, the target; shared within a "
        "GOP); decoded per sampled frame = that / 8. decode CPU-s/clip: read + draw + decode on one core.",
        "build CPU-s/video: CPU seconds of the whole build (decode the source, scale, encode, validate, pack) per "
        "video, all processes; build videos/s/core: wall-clock rate over the encoder processes.",
        "fps<=8: frames dropped at build time to at most 8 frames/s. TSN then draws each of the 8 frames from "
        "duration x 8 / 8 candidates per segment (a 10 s clip: 10 per segment instead of 30 at 24 frames/s).",
        "x source bytes: shard bytes over the source files' bytes (target <= 0.7 for typical source video). PSNR dB: "
        "the first stored clip against its source scaled to the stored size (bicubic), 6 frames matched by time "
        "(--psnr-all: also the median and minimum over every clip). "
        "bytes<=Rx: encodes that would take more than R x their source's bytes are redone with x264's rate capped "
        "(EncodeSettings.max_bytes_ratio; capped: how many of the clips).",
        "Machine shared with other jobs: compare rows of one run, not absolutes across runs.",
    ]
    if tc is not None:
        res.notes.append(_torchcodec_note(tc))
    return res


def _torchcodec_note(tc: dict[str, Any]) -> str:
    """The report's note on the interpreters of the peers part (from :func:`_torchcodec_python`)."""
    import torch

    own = f"{sys.executable} (torch {torch.__version__})"
    if "skip" in tc:
        return f"Interpreters: every row ran under {own}. TorchCodec: skipped, {tc['skip']}."
    cuda = f", the CUDA {tc['cuda']} build, decoding on CPU" if tc.get("cuda") else ""
    ff = f", FFmpeg {tc['ffmpeg']}" if tc.get("ffmpeg") else ""
    return (f"Interpreters: TorchCodec rows ran under {tc['python']} (torch {tc['torch']}{cuda}; torchcodec "
            f"{tc['torchcodec']}{ff}); every other row under {own}.")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 settings, 8 clips, one timed epoch")
    p.add_argument("--peers", action="store_true",
                   help="also run the official loader, decord, SPDL and TorchCodec (those installed) on the same inputs")
    p.add_argument("--torchcodec-python", default=None, metavar="PATH",
                   help="interpreter for the TorchCodec peer (default: benchmarks/.venv-torchcodec/bin/python when it "
                        "exists, from bash benchmarks/setup_torchcodec.sh; else this one)")
    p.add_argument("--sources", default=None, help="folder from python -m benchmarks.sources (default: sample clips)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda (DALI mixed decoder)")
    p.add_argument("--workers", type=int, default=2, help="loader workers / threads (default 2)")
    p.add_argument("--batch", type=int, default=8, help="videos per batch (default 8)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (default 2)")
    p.add_argument("--parts", default="matrix,length",
                   help="comma list of matrix, length, peers, seek (default matrix,length)")
    p.add_argument("--only", default=None,
                   help='matrix settings whose label starts with one of these, e.g. "h264 gop 8 crf 25,mjpeg" (an item '
                        'ending in $ must equal the label: "h264 gop 8 crf 23$" is the uncapped CRF 23 row alone)')
    p.add_argument("--matrix-clips", type=int, default=16, help="source clips per matrix setting (default 16)")
    p.add_argument("--kinds", default="", help="comma list of source kinds to run (default: every kind in --sources)")
    p.add_argument("--crf", type=int, default=None,
                   help="CRF of the default codec for the peers and length parts (default: the codec's own)")
    p.add_argument("--psnr-all", action="store_true",
                   help="matrix: also the median and minimum PSNR over every clip (default: the first clip only)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        print(json.dumps(_measure(json.loads(args._one))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    res = run(quick=args.quick, device=args.device, workers=args.workers, batch=args.batch, sources=args.sources,
              peers=args.peers, epochs=args.epochs, parts=args.parts.split(","),
              matrix_clips=args.matrix_clips, only=args.only,
              kinds=[k for k in args.kinds.split(",") if k], crf=args.crf, psnr_all=args.psnr_all,
              torchcodec_python=args.torchcodec_python)  # fmt: skip
    print(format_table(res.rows))
    for n in res.notes:
        print(f"- {n}")
    paths = write_report(res, args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
