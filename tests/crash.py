"""Crash injection for writers: run a function in a forked child and ``SIGKILL`` it at a chosen point.

Kill points are deterministic: right before or right after the N-th ``os.replace`` of the child (every durable write
of the project renames through :mod:`umt.fileio`, so these are the instants where a half-done write could become
visible), or at a random instant (a timer). The child shares nothing with the parent but the file system, as a
machine that dies mid-write would. :func:`run_killed` forks (fast; for writers that do not use torch's thread pools,
which a forked child cannot safely reuse); :func:`run_module_killed` starts a fresh ``python -m`` process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

def _record(killed: bool, **point: Any) -> None:
    """Append one kill point to ``$UMT_FAULT_LOG`` (JSON lines) when set: ``python -m benchmarks.fault_campaign``
    counts them per writer."""
    log = os.environ.get("UMT_FAULT_LOG")
    if log:
        import json

        with open(log, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "killed": killed, **point}) + "\n")


__all__ = ["count_replaces", "install_kill_hook", "run_killed", "run_module_killed"]


def count_replaces(fn: Callable[[], Any]) -> int:
    """How many ``os.replace`` calls ``fn()`` makes (run in this process)."""
    real, n = os.replace, [0]

    def counting(*a: Any, **k: Any) -> None:
        n[0] += 1
        real(*a, **k)

    os.replace = counting
    try:
        fn()
    finally:
        os.replace = real
    return n[0]


def install_kill_hook(at: int | None = None, when: str = "before", after_s: float | None = None) -> None:
    """In this process: ``SIGKILL`` itself right ``when`` (``"before"``/``"after"``) the ``at``-th ``os.replace``,
    and/or ``after_s`` seconds from now."""
    if at is not None:
        real, n = os.replace, [0]

        def killing(*a: Any, **k: Any) -> None:
            n[0] += 1
            if n[0] == at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real(*a, **k)
            if n[0] == at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = killing
    if after_s is not None:
        threading.Timer(after_s, os.kill, (os.getpid(), signal.SIGKILL)).start()


def run_module_killed(module: str, args: list[str], *, at: int | None = None, when: str = "before",
                      after_s: float | None = None, timeout: float = 300) -> bool:
    """``python -m module args`` in a fresh process with :func:`install_kill_hook` applied first (for writers that
    use torch's thread pools, which a forked child cannot safely reuse). Returns True if it was killed.

    Raises:
        AssertionError: the process failed in another way.
    """
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import runpy, sys; from tests.crash import install_kill_hook; "
            f"install_kill_hook({at!r}, {when!r}, {after_s!r}); sys.argv = [{module!r}, *sys.argv[1:]]; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode in (0, -signal.SIGKILL), f"{module} failed (exit {p.returncode}): {p.stderr[-2000:]}"
    _record(p.returncode != 0, at=at, when=when, after_s=after_s)
    return p.returncode != 0


def run_killed(fn: Callable[[], Any], *, at: int | None = None, when: str = "before",
               after_s: float | None = None) -> bool:
    """Run ``fn()`` in a forked child that kills itself with ``SIGKILL``.

    Args:
        fn: the writer.
        at: kill at the ``at``-th ``os.replace`` call (1-based) of the child, ``when`` = ``"before"`` or ``"after"`` it.
        after_s: or kill after this many seconds.

    Returns:
        True if the child was killed, False if ``fn`` finished first (exit status 0).

    Raises:
        AssertionError: the child failed in another way (an exception: exit status 1).
    """
    pid = os.fork()
    if pid == 0:  # child
        try:
            install_kill_hook(at, when, after_s)
            fn()
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
    else:
        assert os.WEXITSTATUS(status) == 0, f"the writer failed in the child (exit {os.WEXITSTATUS(status)})"
    _record(os.WIFSIGNALED(status), at=at, when=when, after_s=after_s)
    return os.WIFSIGNALED(status)
