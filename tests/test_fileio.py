"""umt.fileio: the advisory lock that keeps two writers out of one place (the crash tests of the writers check
the durable-write protocol)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from umt.fileio import LockedError, exclusive_lock


def _hold_in_child(path, ready):
    """Fork a child that takes the lock, signals through the ``ready`` file and sleeps; returns its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            with exclusive_lock(path, "thing"):
                ready.write_text("x")
                time.sleep(60)
        finally:
            os._exit(0)
    for _ in range(500):
        if ready.exists():
            return pid
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the child never took the lock")


def test_second_holder_refused_with_the_holders_pid_then_free_after_sigkill(tmp_path):
    lock = tmp_path / "run.lock"
    pid = _hold_in_child(lock, tmp_path / "ready")
    try:
        with pytest.raises(LockedError, match=rf"thing is in use by pid {pid} on "):
            with exclusive_lock(lock, "thing"):
                pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert lock.exists()  # a SIGKILLed holder leaves its file: it must not block the next holder
    with exclusive_lock(lock, "thing") as p:
        assert p == lock
        assert f'"pid": {os.getpid()}' in lock.read_text()
    assert not lock.exists()  # removed on a clean release


def test_lock_is_released_when_the_block_raises(tmp_path):
    lock = tmp_path / "a.lock"
    with pytest.raises(KeyError):
        with exclusive_lock(lock, "thing"):
            raise KeyError("x")
    with exclusive_lock(lock, "thing"):
        pass


def test_make_shards_refuses_a_second_build_into_the_same_out(tmp_path, capsys):
    from umt.data.build.cli import main

    out = tmp_path / "set"
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    pid = _hold_in_child(tmp_path / ".set.lock", tmp_path / "ready")
    try:
        rc = main([str(tmp_path / "clip.mp4"), "--out", str(out), "--quiet"])
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert rc == 2
    err = capsys.readouterr().err
    assert f"shard directory {out} is in use by pid {pid}" in err and err.count("\n") == 1
    assert not out.exists()  # nothing was started


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Under a regular file, or on a read-only file system: make_shards, the trainer and export each refuse with
    one line and a non-zero exit before reading any input."""
    import errno

    from umt.data.build.cli import main as make_shards
    from umt.fileio import check_writable
    from umt.train.__main__ import main as train
    from umt.train.export import main as export

    blocker = tmp_path / "file"
    blocker.write_text("user data")
    with pytest.raises(OSError) as e:
        check_writable(blocker / "sub" / "dir", "--out")
    assert e.value.errno == errno.ENOTDIR and f"{blocker} is not a directory" in str(e.value)

    real = os.statvfs
    ro = tmp_path / "ro"
    ro.mkdir()

    class _ReadOnly:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, k):
            return getattr(self.st, k)

        @property
        def f_flag(self):
            return self.st.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: _ReadOnly(real(p)) if str(p).startswith(str(ro)) else real(p))
    missing = tmp_path / "no_such_input.mp4"  # never read: the refusal comes first
    assert make_shards([str(missing), "--out", str(ro / "set"), "--quiet"]) == 1
    assert train(["--recipe", "demo", "--run-dir", str(ro / "run"), "--set", "synthetic_data=true"]) == 1
    assert export([str(missing), str(ro / "x.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("is on a read-only file system" in line for line in err), err
    assert blocker.read_text() == "user data" and list(ro.iterdir()) == []
