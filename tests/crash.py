"""Crash injection for writers: run a function in a forked child and ``SIGKILL`` it at a chosen point.

Kill points are deterministic: right before or right after the N-th ``os.replace`` of the child (every durable write
of the project renames through :mod:`umt.fileio`, so these are the instants where a half-done write could become
visible), or at a random instant (a timer). The child shares nothing with the parent but the file system, as a
machine that dies mid-write would.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["count_replaces", "run_killed"]


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
            fn()
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return True
    assert os.WEXITSTATUS(status) == 0, f"the writer failed in the child (exit {os.WEXITSTATUS(status)})"
    return False
