"""The stage-2 DALI graphs: item source → decode → crop + flip → resize → normalise, for videos and for images.

The source is :class:`umt.data.pairs.PairSource` (``fn.external_source``, ``parallel=True``), which draws the
window and flip from ``(seed, epoch, item)`` and tokenises the caption on the host. Per modality:

* **video**: as the stage-1 graph (:mod:`umt.data.dali.clips`) with one view: on CPU the source hands over only the
  sampled frames, already cut to the window; on a GPU the encoded video goes to ``fn.decoders.video(device="mixed")``
  with the sampled indices. Then ``fn.slice`` to the window, ``fn.resize`` to S² (``data.interp``, antialiased;
  bicubic clamped to [0, 255]), ``fn.crop_mirror_normalize`` to float [3, T, S, S].
* **image**: the JPEG bytes go to ``fn.decoders.image_slice`` with the window (absolute pixels), which decodes the
  window only (libjpeg-turbo on CPU, nvJPEG with ``device="mixed"``); then the same resize and normalisation to
  float [3, S, S] (the loader adds T = 1).

The token ids and lengths pass through unchanged. One pipeline serves every epoch (the source signals each end).
"""

from __future__ import annotations

from typing import Any

from umt.data.pairs import PairSource

__all__ = ["PAIR_OUTPUTS", "build_pair_pipeline"]

#: Pipeline outputs: media (float [3, T, S, S] video / [3, S, S] image), meta int32 [8], text ids int32 [max_len],
#: text length int32 [].
PAIR_OUTPUTS = ["video", "meta", "text_ids", "text_len"]


def build_pair_pipeline(source: PairSource, *, device_id: int | None) -> Any:
    """Build (not yet ``build()``) the DALI pipeline around ``source`` (its ``cfg`` and ``modality``).

    Args:
        source: the item source; for videos ``source.decode`` must be False exactly when ``device_id`` is set.
        device_id: CUDA device (mixed decoding and GPU augmentation) or None for a CPU-only pipeline.

    Returns:
        A ``nvidia.dali.Pipeline`` whose outputs are :data:`PAIR_OUTPUTS`.

    Raises:
        ImportError: DALI is not installed.
        ValueError: ``source.decode`` does not match the device (videos).
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from umt.data.dali.common import external_outputs, normalize, pipeline_kwargs, resize

    cfg = source.cfg
    gpu = device_id is not None
    image = source.modality == "image"
    if not image and source.decode == gpu:
        raise ValueError("the source decodes on CPU pipelines only; GPU pipelines decode with DALI's mixed decoder")
    S = cfg.input_size
    encoded = image or not source.decode  # the source hands over encoded bytes
    n_out = 5 + (1 if not image and gpu else 0) + 2
    dtypes = [types.UINT8] + [types.INT32] * (n_out - 1)
    ndims = [1 if encoded else 4, 1, 1, 1, 0] + ([1] if not image and gpu else []) + [1, 0]
    layouts = ["" if encoded else "FHWC"] + [""] * (n_out - 1)

    @pipeline_def(**pipeline_kwargs(cfg, device_id))
    def pipe() -> Any:
        outs = external_outputs(source, cfg, dtypes, ndims, layouts)
        media, meta, anchor, shape, flip = outs[:5]
        ids, length = outs[-2], outs[-1]
        if image:
            crop = fn.decoders.image_slice(
                media, anchor, shape, device="mixed" if gpu else "cpu", output_type=types.RGB, axis_names="WH",
                normalized_anchor=False, normalized_shape=False,
            )  # [h, w, 3] uint8: only the window decoded
            layout = "CHW"
        else:
            frames = fn.decoders.video(media, device="mixed", frames=outs[5]) if gpu else media  # [T, H0, W0, 3]
            crop = fn.slice(frames, anchor, shape, axis_names="WH", normalized_anchor=False,
                            normalized_shape=False)  # [T, h, w, 3]
            layout = "CFHW"
        out = normalize(resize(crop, [S, S], cfg), cfg, layout, flip)  # [3, (T,) S, S] float
        return out, (meta.gpu() if gpu else meta), ids, length

    return pipe()
