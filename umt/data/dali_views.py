"""The DALI graph of the multi-view evaluation: per temporal clip one short-side resize, then its spatial crops.

Source: :func:`umt.data.views.views_outputs` (through :class:`umt.data.source.ClipSource`). On CPU the source has
decoded the union of the video's temporal clips once with the seeking decoder; on a GPU each temporal clip's frames
go to DALI's mixed decoder (one decode call per clip over the same encoded bytes; merging them into one call
depends on the mixed decoder accepting an unsorted frame list, not yet checked on a GPU). Outputs are
``video0 .. video{V-1}`` (float [3, T, S, S], CFHW, view ``v = c · spatial_views + s``) and ``meta``.
"""

from __future__ import annotations

from typing import Any

from umt.data.config import DataConfig

__all__ = ["build_views_pipeline"]


def build_views_pipeline(cfg: DataConfig, source: Any, *, device_id: int | None) -> Any:
    """Build (not yet ``build()``) the multi-view evaluation pipeline around ``source``.

    Args:
        cfg: data settings with ``train=False`` and ``temporal_views · spatial_views > 1``.
        source: the per-sample :class:`umt.data.source.ClipSource`; ``source.decode`` is False exactly on a GPU.
        device_id: CUDA device, or None for a CPU pipeline.

    Raises:
        ImportError: DALI is not installed.
        ValueError: ``source.decode`` does not match the device.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    gpu = device_id is not None
    if source.decode == gpu:
        raise ValueError("the source decodes on CPU pipelines only; GPU pipelines decode with DALI's mixed decoder")
    n_t, n_s, size = cfg.temporal_views, cfg.spatial_views, cfg.input_size
    n_video = n_t if source.decode else 1
    n_out = n_video + 2 + n_t * n_s + (0 if source.decode else n_t)
    dtypes = [types.UINT8] * n_video + [types.INT32, types.FLOAT] + [types.INT32] * (n_out - n_video - 2)
    ndims = [4 if source.decode else 1] * n_video + [1, 1] + [1] * (n_out - n_video - 2)
    layouts = ["FHWC" if source.decode else ""] * n_video + [""] * (n_out - n_video)
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    interp = types.INTERP_CUBIC if cfg.interp == "bicubic" else types.INTERP_LINEAR
    workers = cfg.num_workers

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=max(1, workers),
        device_id=device_id,
        prefetch_queue_depth=2,
        exec_dynamic=True,
        py_num_workers=max(1, workers),
        py_start_method="spawn" if gpu else "fork",
    )
    def pipe() -> Any:
        parallel = {"parallel": True, "prefetch_queue_depth": 2} if workers > 0 else {}
        outs = fn.external_source(
            source=source, num_outputs=n_out, batch=False, **parallel, dtype=dtypes, ndim=ndims, layout=layouts
        )
        meta, resized = outs[n_video], outs[n_video + 1]
        anchors = outs[n_video + 2 : n_video + 2 + n_t * n_s]
        views = []
        for c in range(n_t):
            if gpu:
                frames = fn.decoders.video(outs[0], device="mixed", frames=outs[n_out - n_t + c])  # [T, H0, W0, 3]
            else:
                frames = outs[c]
            res = fn.resize(frames, size=resized, interp_type=interp, antialias=True, dtype=types.FLOAT)  # [T, H, W, 3]
            if cfg.interp == "bicubic":
                res = dmath.clamp(res, 0.0, 255.0)
            for s in range(n_s):
                crop = fn.slice(
                    res, anchors[c * n_s + s], [size, size], axis_names="WH", normalized_anchor=False,
                    normalized_shape=False,
                )  # [T, S, S, 3]
                views.append(
                    fn.crop_mirror_normalize(crop, dtype=types.FLOAT, output_layout="CFHW", mean=mean, std=std)
                )  # [3, T, S, S]
        return (*views, meta.gpu() if gpu else meta)

    return pipe()
