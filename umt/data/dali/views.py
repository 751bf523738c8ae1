"""The DALI graph of the multi-view evaluation: per temporal clip one short-side resize, then its spatial crops.

Source: :func:`umt.data.views.views_outputs` (through :class:`umt.data.clips.ClipSource`). On CPU the source has
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
        source: the per-sample :class:`umt.data.clips.ClipSource`; ``source.decode`` is False exactly on a GPU.
        device_id: CUDA device, or None for a CPU pipeline.

    Raises:
        ImportError: DALI is not installed.
        ValueError: ``source.decode`` does not match the device.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from umt.data.dali.common import external_outputs, normalize, pipeline_kwargs, resize

    gpu = device_id is not None
    if source.decode == gpu:
        raise ValueError("the source decodes on CPU pipelines only; GPU pipelines decode with DALI's mixed decoder")
    n_t, n_s, size = cfg.temporal_views, cfg.spatial_views, cfg.input_size
    n_video = n_t if source.decode else 1
    n_out = n_video + 2 + n_t * n_s + (0 if source.decode else n_t)
    dtypes = [types.UINT8] * n_video + [types.INT32, types.FLOAT] + [types.INT32] * (n_out - n_video - 2)
    ndims = [4 if source.decode else 1] * n_video + [1, 1] + [1] * (n_out - n_video - 2)
    layouts = ["FHWC" if source.decode else ""] * n_video + [""] * (n_out - n_video)

    @pipeline_def(**pipeline_kwargs(cfg, device_id))
    def pipe() -> Any:
        outs = external_outputs(source, cfg, dtypes, ndims, layouts)
        meta, resized = outs[n_video], outs[n_video + 1]
        anchors = outs[n_video + 2 : n_video + 2 + n_t * n_s]
        views = []
        for c in range(n_t):
            if gpu:
                frames = fn.decoders.video(outs[0], device="mixed", frames=outs[n_out - n_t + c])  # [T, H0, W0, 3]
            else:
                frames = outs[c]
            res = resize(frames, resized, cfg)  # [T, H, W, 3] float
            for s in range(n_s):
                crop = fn.slice(
                    res, anchors[c * n_s + s], [size, size], axis_names="WH", normalized_anchor=False,
                    normalized_shape=False,
                )  # [T, S, S, 3]
                views.append(normalize(crop, cfg, "CFHW"))  # [3, T, S, S]
        return (*views, meta.gpu() if gpu else meta)

    return pipe()
