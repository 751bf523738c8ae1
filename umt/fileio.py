"""Crash-consistent file writes: every writer of the project (shards, ``.idx``, manifests, progress records,
checkpoints, exports, evaluation reports, benchmark reports, previews) goes through this module.

A file is durable only once its data *and* its directory entry are on disk. The protocol, as SQLite and PostgreSQL do
it: write a temporary file in the same directory (same file system, so the rename is atomic), flush it, ``fsync`` it,
``os.replace`` it onto the final name, then ``fsync`` the directory so that the rename itself survives a power loss.
A reader therefore sees either the old file or the whole new one, never a prefix; an interrupted writer leaves at most
a ``*.tmp`` file, which the next run of the same writer overwrites.

Imports nothing else of :mod:`umt` (it sits at the bottom of the layer order in ``docs/design.md``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockedError", "atomic_path", "atomic_write", "check_writable", "exclusive_lock", "fsync_dir", "fsync_file", "replace",
           "sha256_file", "tmp_path"]


def tmp_path(path: str | Path) -> Path:
    """The temporary name a write of ``path`` goes through: ``NAME.tmp`` in the same directory."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def fsync_file(path: str | Path) -> None:
    """``fsync`` the data of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """``fsync`` the directory ``path`` so that entries created, renamed or deleted in it are durable.

    A no-op on platforms that cannot open a directory (Windows), where the rename itself is the best available.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (IsADirectoryError, PermissionError):  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: str | Path, what: str) -> None:
    """Refuse, before any work starts, an output location that cannot be written: the nearest existing directory
    at or above ``path`` must be a directory, on a file system mounted read-write, and writable by this process.
    Missing directories below it are fine (writers create them).

    Args:
        path: the output directory (or file) a command is about to write.
        what: what it is, for the message (e.g. ``"--out"``).

    Raises:
        OSError: ``ENOTDIR``, ``EROFS`` or ``EACCES`` with a one-line message naming ``path``.
    """
    path = Path(path).absolute()
    anc = path
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OSError(errno.ENOTDIR, f"{what} {path}: {anc} is not a directory")
    if os.statvfs(anc).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, f"{what} {path}: {anc} is on a read-only file system")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"{what} {path}: {anc} is not writable by this user")


def _ensure_dir(d: Path) -> None:
    """Create ``d`` (and missing parents) with each new entry made durable in its parent."""
    if d.is_dir():
        return
    _ensure_dir(d.parent)
    d.mkdir(exist_ok=True)
    fsync_dir(d.parent)


def replace(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)``, then ``fsync`` the directories involved (the rename is durable on return)."""
    src, dst = Path(src), Path(dst)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_dir(src.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on a clean exit make it durable under the final name.

    Missing parent directories are created (durably). The caller writes the whole file to the yielded path (any writer: ``torch.save``, ``tarfile``, PIL, safetensors),
    then this ``fsync``-s it, renames it onto ``path`` and ``fsync``-s the directory. If the block raises, the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        FileNotFoundError: the block wrote nothing to the temporary path.
        OSError: ``ENOSPC`` with a one-line message naming the file and the bytes written; other write errors as
            raised.
    """
    path = Path(path)
    _ensure_dir(path.parent)
    tmp = tmp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        size = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent} while writing {path.name} "
                          f"({size} bytes written of it; free space and re-run: finished files are intact)") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` durably and atomically (see :func:`atomic_path`). Returns ``path``."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LockedError(RuntimeError):
    """Another live process holds the lock (the message names it: pid, host, since when)."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold an advisory exclusive lock on ``path`` (created if missing) for the life of the block.

    Two writers pointed at the same place (two ``make_shards`` into one ``--out``, two trainers into one run
    directory) must not interleave: the second fails at once with :class:`LockedError` naming the holder. The lock is
    ``flock`` on an open file, so the kernel releases it on any exit of the holder, ``SIGKILL`` included: a lock file
    left by a dead process is never stale, only a file that the next holder reuses. The holder's pid, host and start
    time are written into the file for the message. The file is removed on a clean release.

    Args:
        path: the lock file.
        what: what is being locked, for the message (e.g. ``"shard directory shards/built/k400"``).

    Raises:
        LockedError: another process holds the lock.
    """
    path = Path(path)
    _ensure_dir(path.parent)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            raise LockedError(f"{what} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                              f"(since {holder.get('since', '?')}; lock {path}): wait for it to finish, or stop it "
                              "first") from None
        try:  # the previous holder may have removed the file between our open and flock: lock the live file
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
