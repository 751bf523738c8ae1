"""The DALI graph: sample source → (GPU decode) → multi-scale crop + flip → resize → normalise.

The source is :class:`umt.data.clips.ClipSource`, a per-sample ``fn.external_source`` callback run by DALI's
worker processes (``parallel=True``): it reads each sample through the shards' ``.idx`` files in the epoch's global
order, draws the sample's TSN positions, crop and flip from ``(seed, epoch, sample)``, and

* on CPU decodes **only the sampled frames**, seeking to key frames with PyAV. DALI 2.4's CPU ``fn.decoders.video``
  decodes from the first frame whatever the arguments (``frames``, ``start_frame`` + ``sequence_length``,
  ``build_index``; measured on GOP 1, 8 and 32: a late frame costs as much as the whole prefix), and it decodes only
  VP8/VP9/MJPEG;
* on a GPU hands the encoded video and the sampled indices to ``fn.decoders.video(device="mixed")`` (NVDEC). Whether
  the mixed decoder seeks is checked by the ``gpu`` test ``test_mixed_decoder_seeks`` (not yet run: no GPU lent).

Fine-tuning: RandAugment (``data.rand_augment``) runs on the whole frames before the crop as per-sample
programs drawn in the source (:mod:`umt.data.dali.augment`, DALI conditionals), and random erasing
(``data.erase_prob``) after normalisation, with the source's box and noise. Multi-view evaluation has its own graph
(:mod:`umt.data.dali.views`).

The crop, resize (bilinear, antialiased), flip and normalisation run in DALI (on the GPU with ``device_id``). One
pipeline serves every epoch: the loaders' source never ends (:attr:`umt.data.clips.ClipSource.seamless`), so its
prefetch runs on across epoch boundaries, with no per-epoch rebuild or ``reset()``; resuming at ``start_batch``
builds the pipeline with that offset (nothing is decoded and discarded).
"""

from __future__ import annotations

from typing import Any

from umt.data.config import DataConfig
from umt.data.dali.augment import erase_pixels, rand_augment
from umt.data.augment.randaugment import parse_rand_augment
from umt.data.clips import ClipSource

__all__ = ["GPU_DECODABLE", "build_pipeline", "output_names"]

#: Codecs DALI's mixed (GPU) decoder accepts; on CPU the source decodes anything FFmpeg reads (PyAV).
GPU_DECODABLE = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})


def output_names(num_sample: int) -> list[str]:
    """Pipeline outputs: ``video0 .. video{k-1}`` (float [3, T, H, W] each, layout CFHW) and ``meta`` (int32 [8])."""
    return [f"video{j}" for j in range(num_sample)] + ["meta"]


def build_pipeline(cfg: DataConfig, source: ClipSource, *, device_id: int | None) -> Any:
    """Build (not yet ``build()``) the DALI pipeline around ``source``.

    Args:
        cfg: data settings (batch size, frames, input size, normalisation, workers).
        source: the per-sample source; ``source.decode`` must be False exactly when ``device_id`` is set.
        device_id: CUDA device (mixed decoding and GPU augmentation) or None for a CPU-only pipeline.

    Returns:
        A ``nvidia.dali.Pipeline`` whose outputs are :func:`output_names` ``(cfg.num_sample)``.

    Raises:
        ImportError: DALI is not installed.
        ValueError: ``source.decode`` does not match the device.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from umt.data.dali.common import external_outputs, normalize, pipeline_kwargs, resize
    from umt.data.views import multi_view

    if multi_view(cfg):  # temporal x spatial evaluation views: their own graph
        from umt.data.dali.views import build_views_pipeline

        return build_views_pipeline(cfg, source, device_id=device_id)
    gpu = device_id is not None
    if source.decode == gpu:
        raise ValueError("the source decodes on CPU pipelines only; GPU pipelines decode with DALI's mixed decoder")
    k, S = cfg.num_sample, cfg.input_size
    n_out = 2 + 3 * k + (0 if source.decode else 1)
    dtypes = [types.UINT8, types.INT32] + [types.INT32] * (n_out - 2)
    ndims = [4 if source.decode else 1, 1] + [1, 1, 0] * k + ([] if source.decode else [1])
    layouts = ["FHWC" if source.decode else "", ""] + [""] * (n_out - 2)
    # fine-tuning augmentation (umt.data.clips.ft_outputs): per clip a RandAugment program, an erasing box + noise
    ra_layers = parse_rand_augment(cfg.rand_augment).num_layers if cfg.train and cfg.rand_augment else 0
    erase = cfg.train and cfg.erase_prob > 0
    ft_base, ft_per_clip = n_out, 2 * bool(ra_layers) + 2 * erase
    for _ in range(k if cfg.train else 0):
        if ra_layers:
            dtypes += [types.INT32, types.FLOAT]
            ndims += [1, 2]
        if erase:
            dtypes += [types.INT32, types.FLOAT]
            ndims += [1, 4]
    layouts += [""] * (len(dtypes) - n_out)

    # per-sample op selection (umt.data.dali.augment) needs DALI's conditionals
    @pipeline_def(**pipeline_kwargs(cfg, device_id, conditionals=bool(ra_layers) or erase))
    def pipe() -> Any:
        outs = external_outputs(source, cfg, dtypes, ndims, layouts)
        video, meta = outs[0], outs[1]
        if gpu:
            frames = fn.decoders.video(video, device="mixed", frames=outs[-1])  # [T, H0, W0, 3] uint8, on GPU
        else:
            frames = video
        clips = []
        for j in range(k):
            anchor, shape, flip = outs[2 + 3 * j], outs[3 + 3 * j], outs[4 + 3 * j]
            ft = outs[ft_base + ft_per_clip * j : ft_base + ft_per_clip * (j + 1)]
            augmented = rand_augment(frames, ft[0], ft[1], ra_layers) if ra_layers else frames  # whole frames
            crop = fn.slice(
                augmented, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False
            )  # [T, ch, cw, 3]
            clip = normalize(resize(crop, [S, S], cfg), cfg, "CFHW", flip)  # [3, T, S, S] float
            if erase:
                box, noise = ft[-2], ft[-1]
                if box[2] > 0:  # erased: 25 % of clips in the official recipe
                    clip = erase_pixels(clip, box, noise)
            clips.append(clip)
        return (*clips, meta.gpu() if gpu else meta)

    return pipe()
