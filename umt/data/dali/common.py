"""What every DALI graph of the project shares (stage 1 and fine-tuning clips, multi-view evaluation, stage-2 videos
and images): the pipeline's executor settings, the parallel external source, the resize filter and the
normalisation. Imported only where DALI is used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from umt.data.config import DataConfig

__all__ = ["pipeline_kwargs", "external_outputs", "resize", "normalize"]


def pipeline_kwargs(cfg: DataConfig, device_id: int | None, *, batch_size: int | None = None,
                    conditionals: bool = False) -> dict[str, Any]:
    """``pipeline_def`` arguments: ``batch_size`` (default ``cfg.batch_size``), ``cfg.num_workers`` CPU threads and
    source worker processes, two batches of prefetch, the dynamic executor, ``spawn`` on a GPU (fork is cheap, but not
    after CUDA is initialised), DALI conditionals when a graph selects ops per sample."""
    gpu = device_id is not None
    workers = max(1, cfg.num_workers)
    kw = dict(batch_size=batch_size or cfg.batch_size, num_threads=workers, device_id=device_id,
              prefetch_queue_depth=2, exec_dynamic=True, py_num_workers=workers,
              py_start_method="spawn" if gpu else "fork")
    if conditionals:
        kw["enable_conditionals"] = True
    return kw


def external_outputs(source: Any, cfg: DataConfig, dtypes: Sequence[Any], ndims: Sequence[int],
                     layouts: Sequence[str]) -> list[Any]:
    """The per-sample source's outputs (``fn.external_source``, ``batch=False``): run by DALI's worker processes
    (``parallel``) unless ``cfg.num_workers`` is 0 (in this process)."""
    import nvidia.dali.fn as fn

    parallel = {"parallel": True, "prefetch_queue_depth": 2} if cfg.num_workers > 0 else {}
    return list(fn.external_source(source=source, num_outputs=len(dtypes), batch=False, **parallel,
                                   dtype=list(dtypes), ndim=list(ndims), layout=list(layouts)))


def resize(x: Any, size: Any, cfg: DataConfig) -> Any:
    """Resize ``x`` (``[(T,) h, w, 3]``) to ``size`` as float with ``cfg.interp``, antialiased when shrinking
    (PIL's filters in the official code also filter); bicubic is clamped to [0, 255] like torchvision's uint8
    output."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    interp = types.INTERP_CUBIC if cfg.interp == "bicubic" else types.INTERP_LINEAR
    out = fn.resize(x, size=size, interp_type=interp, antialias=True, dtype=types.FLOAT)
    return dmath.clamp(out, 0.0, 255.0) if cfg.interp == "bicubic" else out


def normalize(x: Any, cfg: DataConfig, layout: str, flip: Any = None) -> Any:
    """``(x − 255·mean) / (255·std)`` in ``layout`` (``CFHW`` clips, ``CHW`` images), mirrored where ``flip``."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    kw = {} if flip is None else {"mirror": flip}
    return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout=layout, mean=[255.0 * m for m in cfg.mean],
                                    std=[255.0 * s for s in cfg.std], **kw)
