"""Durable writes: the file is fsynced before the rename and its directory after it (umt.fileio's protocol), and a
checkpoint save follows the same protocol."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from umt import fileio


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append(("fsync-dir" if target.is_dir() else "fsync-file", target.name))
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        events.append(("replace", f"{Path(src).name}->{Path(dst).name}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")


def _order_ok(events: list[tuple[str, str]], tmp_name: str, final: str, dir_name: str) -> None:
    rename = ("replace", f"{tmp_name}->{final}")
    assert rename in events, events
    r = events.index(rename)
    assert ("fsync-file", tmp_name) in events[:r], events  # the data is on disk before the name points at it
    assert ("fsync-dir", dir_name) in events[r + 1:], events  # and the rename itself is made durable after it


def test_atomic_write_fsyncs_file_then_renames_then_fsyncs_dir(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "out"
    d.mkdir()
    events = _record(monkeypatch)
    fileio.atomic_write(d / "a.json", "{}\n")
    _order_ok(events, "a.json.tmp", "a.json", "out")
    assert (d / "a.json").read_text() == "{}\n" and not (d / "a.json.tmp").exists()


def test_atomic_path_fsyncs_file_then_renames_then_fsyncs_dir(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "out"
    d.mkdir()
    events = _record(monkeypatch)
    with fileio.atomic_path(d / "b.bin") as tmp:
        tmp.write_bytes(b"xyz")
    _order_ok(events, "b.bin.tmp", "b.bin", "out")
    assert (d / "b.bin").read_bytes() == b"xyz"


def test_save_checkpoint_fsyncs_file_then_renames_then_fsyncs_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.train.checkpoint import save_checkpoint

    events = _record(monkeypatch)
    path = save_checkpoint(tmp_path / "checkpoints", 3, {"step": 3}, keep_last=2)
    assert path.name == "step_00000003.pt"
    _order_ok(events, "step_00000003.pt.tmp", "step_00000003.pt", "checkpoints")
