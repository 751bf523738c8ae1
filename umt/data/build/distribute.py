"""``make_shards --distributor ray``: the parts of a partitioned build (:mod:`umt.data.build.parts`) as Ray tasks,
then the commit, from one command.

Each part is one task (``max_retries`` on a lost worker or a failed attempt: the part resumes from what it wrote to
the shared ``--out``, on whichever node Ray picks). A part that finished encoding before the parts ahead of it
cannot pack yet; once every part has run, those are run again (they pack from their cache), then the driver commits.
Ray is optional (the ``ray`` extra); every node must see ``--out`` and the inputs under the same paths and import
this package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from umt.data.build.parts import PartResult, build_part, commit_parts
from umt.data.build.shards import BuildResult, _origin_path

__all__ = ["PartFailedError", "build_with_ray"]


class PartFailedError(RuntimeError):
    """A part's Ray task failed on every attempt (the message names the part and its last error)."""


def _run_part(inputs: Sequence[str], out: str, part: int, parts: int, kwargs: dict[str, Any]) -> PartResult:
    """One part on a Ray worker (no progress bar there: the driver shows the aggregate)."""
    return build_part(inputs, out, part, parts, progress=False, **kwargs)


def build_with_ray(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    parts: int | None = None,
    address: str | None = None,
    retries: int = 3,
    progress: bool = False,
    _exit_after_encode: dict[int, str] | None = None,
    **kwargs: Any,
) -> BuildResult:
    """Build ``out_dir`` as ``parts`` Ray tasks and commit it.

    Args:
        inputs: as for :func:`umt.data.build.shards.build_shards`.
        out_dir: the output directory, on a file system every node shares.
        parts: how many parts (None: 4 per CPU of the cluster, so that a lost part costs little).
        address: the Ray cluster (None: ``RAY_ADDRESS``, else a local cluster started here; an already initialised
            Ray is used as it is).
        retries: Ray retries of a part's task (a lost worker, or an exception).
        progress: one progress bar over the inputs of all parts (advanced as parts finish).
        _exit_after_encode: test hook: ``{part: marker file}``, that part's first attempt exits after encoding.
        kwargs: the remaining options of :func:`umt.data.build.parts.build_part` (annotations, settings, ...).

    Returns:
        The committed data set's :class:`BuildResult` (``encoded``: inputs encoded by all parts in this run).

    Raises:
        ImportError: Ray is not installed (``pip install -e ".[ray]"``).
        PartFailedError: a part failed on every attempt (named).
        umt.data.build.shards.ShardDirError: the directory holds something else, or the commit refused (the
            message names the parts).
        ValueError: bad arguments.
    """
    import time

    t0 = time.perf_counter()
    try:
        import ray
    except ImportError as e:
        raise ImportError("--distributor ray needs Ray: pip install -e \".[ray]\" (or pip install ray)") from e
    if parts is not None and parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    if parts is None:
        parts = max(1, 4 * int(ray.cluster_resources().get("CPU", 1)))
    out = str(Path(out_dir).absolute())
    ins = [_origin_path(i) for i in inputs]  # workers may start elsewhere: absolute paths (URLs as they are)
    if kwargs.get("annotations") is not None:
        kwargs["annotations"] = _origin_path(kwargs["annotations"])
    task = ray.remote(_run_part).options(max_retries=retries, retry_exceptions=True)
    hooks = _exit_after_encode or {}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=parts, unit="part", desc=f"{parts} parts")
    results: dict[int, PartResult] = {}
    pending = {task.remote(ins, out, i, parts, {**kwargs, "_exit_after_encode": hooks.get(i)}): i
               for i in range(parts)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayError as e:  # every attempt failed: name the part, keep what the others did
                last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise PartFailedError(f"part {i}/{parts} failed after {retries} retries ({last}); the other parts "
                                      f"are kept: re-run the same command, or that part with --part {i}/{parts}, "
                                      "then --commit") from e
            if bar:
                bar.update()
                bar.set_postfix(samples=sum(r.usable for r in results.values()))
    if bar:
        bar.close()
    # parts that encoded before the parts ahead of them: every part has encoded now, so each packs at once
    late = [i for i, r in results.items() if not r.packed and not r.committed]
    again = ray.get([task.remote(ins, out, i, parts, kwargs) for i in late])
    res = commit_parts(out)
    res.encoded = sum(r.encoded for r in results.values()) + sum(r.encoded for r in again)
    res.seconds = time.perf_counter() - t0
    return res
