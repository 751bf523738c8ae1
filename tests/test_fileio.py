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
