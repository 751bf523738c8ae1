"""The TorchCodec peer of bench_data --peers: its interpreter (--torchcodec-python, the setup script's venv), the skip
note when there is none, and the light import chain its measurement child needs in that venv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_data
from benchmarks.common import BenchResult

ROOT = Path(__file__).resolve().parents[2]
PROBE = {"torch": "2.13.0", "cuda": "13.0", "torchcodec": "0.17.0", "ffmpeg": "5.1.9"}


def _fake_python(path: Path, stdout: str, rc: int = 0) -> Path:
    """An executable that ignores its arguments (``-c PROBE``) and answers like a probed interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\necho 'ImportError: libc10_cuda.so' >&2\nexit {rc}\n")
    path.chmod(0o755)
    return path


def test_option_reaches_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(**kw: Any) -> BenchResult:
        seen.update(kw)
        return BenchResult("bench_data")

    monkeypatch.setattr(bench_data, "run", fake_run)
    bench_data.main(["--parts", "peers", "--torchcodec-python", "/opt/tc/bin/python", "--out", str(tmp_path)])
    assert seen["torchcodec_python"] == "/opt/tc/bin/python" and seen["parts"] == ["peers"]
    bench_data.main(["--parts", "peers", "--out", str(tmp_path)])
    assert seen["torchcodec_python"] is None  # the default is chosen by _torchcodec_python


def test_default_is_the_setup_scripts_venv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_python = _fake_python(tmp_path / ".venv-torchcodec" / "bin" / "python", json.dumps(PROBE))
    (tmp_path / ".venv-torchcodec" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    monkeypatch.setattr(bench_data, "TORCHCODEC_VENV_PYTHON", venv_python)
    tc = bench_data._torchcodec_python(None)
    assert tc["python"] == str(venv_python) and "skip" not in tc
    assert tc["label"] == ".venv-torchcodec (torch 2.13.0, CUDA 13.0)"
    note = bench_data._torchcodec_note(tc)
    assert str(venv_python) in note and "CUDA 13.0 build, decoding on CPU" in note
    assert "torchcodec 0.17.0, FFmpeg 5.1.9" in note
    assert sys.executable in note  # the other rows' interpreter


def test_explicit_python_wins_over_the_venv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench_data, "TORCHCODEC_VENV_PYTHON", _fake_python(tmp_path / "v" / "bin" / "python", "{}"))
    other = _fake_python(tmp_path / "other", json.dumps({**PROBE, "cuda": None}))
    tc = bench_data._torchcodec_python(str(other))
    assert tc["python"] == str(other) and tc["label"] == f"{other} (torch 2.13.0)"


def test_relative_path_is_made_absolute_not_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = _fake_python(tmp_path / "base" / "python3", json.dumps(PROBE))
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(real)  # a venv's interpreter is a link to the base one
    monkeypatch.chdir(tmp_path)
    tc = bench_data._torchcodec_python(str(Path("venv") / "bin" / "python"))
    assert tc["python"] == str(tmp_path / "venv" / "bin" / "python") and "skip" not in tc


def test_skipped_with_a_clear_note_without_the_venv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setattr(bench_data, "TORCHCODEC_VENV_PYTHON", tmp_path / "absent" / "bin" / "python")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchcodec" else real(n, *a))
    tc = bench_data._torchcodec_python(None)
    assert tc["python"] == sys.executable and "setup_torchcodec.sh" in tc["skip"]
    note = bench_data._torchcodec_note(tc)
    assert note.startswith(f"Interpreters: every row ran under {sys.executable}") and "TorchCodec: skipped" in note
    missing = bench_data._torchcodec_python(str(tmp_path / "nope" / "python"))
    assert "does not exist" in missing["skip"] and "setup_torchcodec.sh" in missing["skip"]


def test_skipped_when_torchcodec_does_not_import_there(tmp_path: Path) -> None:
    tc = bench_data._torchcodec_python(str(_fake_python(tmp_path / "py", "", rc=1)))
    assert "'import torchcodec' fails" in tc["skip"] and "libc10_cuda.so" in tc["skip"]


def test_child_uses_the_given_interpreter(tmp_path: Path) -> None:
    py = _fake_python(tmp_path / "py", json.dumps({"clips/s": 1.0, "CPU-s/clip": 2.0, "peak MiB": 3.0, "clips": 8}))
    assert bench_data._run_child({"kind": "torchcodec"}, None, str(py))["clips"] == 8


def test_measurement_child_imports_no_heavy_modules() -> None:
    """The TorchCodec child runs in a venv with only numpy, torch and torchcodec: beyond what numpy and torch import,
    importing bench_data and the peers must bring in no third-party module (no decoder, PIL, DALI, timm...)."""
    code = (
        "import sys, json\n"
        "import numpy, torch, torch.utils.data\n"
        "top = lambda: {m.split('.')[0] for m in sys.modules}\n"
        "before = top()\n"
        "import benchmarks.bench_data, benchmarks.peers, umt\n"
        "print(json.dumps(sorted(m for m in top() - before if m not in sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert set(json.loads(out.stdout.strip().splitlines()[-1])) <= {"benchmarks", "umt"}, out.stdout


def test_setup_script_is_documented_and_pinned() -> None:
    s = (ROOT / "benchmarks" / "setup_torchcodec.sh").read_text()
    assert s.startswith("#!/usr/bin/env bash\n# ") and "set -euo pipefail" in s
    assert 'TORCH_SPEC="torch===2.13.0"' in s and 'TORCHCODEC_SPEC="torchcodec==0.17.0"' in s
    assert "/benchmarks/.venv-torchcodec/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(not bench_data.TORCHCODEC_VENV_PYTHON.exists(),
                    reason="no benchmarks/.venv-torchcodec (bash benchmarks/setup_torchcodec.sh)")
def test_torchcodec_peer_runs_in_its_venv(tmp_path: Path) -> None:
    """TorchCodecDataset under the setup script's venv: a [3, T, S, S] clip of distinct frames, decoded on CPU."""
    import os

    from tests.data_utils import make_clip

    clip = make_clip(tmp_path / "a.mp4", n_frames=24, width=96, height=64)
    code = (
        "import benchmarks.bench_data\n"
        "from benchmarks.peers import TorchCodecDataset\n"
        f"v = TorchCodecDataset([{str(clip)!r}], size=32)[0]\n"
        "print(tuple(v.shape), bool(v.isfinite().all()), bool((v[:, 1:] - v[:, :-1]).abs().amax() > 0))"
    )
    out = subprocess.run([str(bench_data.TORCHCODEC_VENV_PYTHON), "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert out.stdout.strip().splitlines()[-1:] == ["(3, 8, 32, 32) True True"], out.stderr[-800:]
