"""The DALI graph: shards → TSN frame indices → video decode → multi-scale crop + flip → resize → normalise.

Everything per sample happens inside the graph; Python only builds it once per epoch. The two random decisions are
the ones written down in :mod:`umt.data.sampling` (same formulas, float32, same order of operations):

* frame indices ``min(floor(((i + u_i) * N) / T), N - 1)`` from the stored frame count N (``KEY.meta``);
* crop pair (uniform over the 10 neighbouring (h, w) scale pairs) and offset (uniform over 13 fixed grid
  positions), via ``fn.lookup_table``; crop sides within 3 px of the model size snap to it.

``fn.decoders.video`` runs with ``device="mixed"`` on a GPU and ``"cpu"`` otherwise (CPU: VP8/VP9/MJPEG only).
``num_sample=k`` decodes once and emits k independently augmented clips (outputs ``video0 .. video{k-1}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from umt.data.config import DataConfig
from umt.data.sampling import FIX_OFFSETS_13, crop_size_table

__all__ = ["CPU_DECODABLE", "GPU_DECODABLE", "build_pipeline", "output_names"]

#: Codecs DALI's video decoder handles per device (ENVIRONMENT.md; DALI 2.4 docs).
CPU_DECODABLE = frozenset({"vp8", "vp9", "mjpeg"})
GPU_DECODABLE = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1"})

_SNAP_PX = 3


def output_names(num_sample: int) -> list[str]:
    """Pipeline outputs: ``video0 .. video{k-1}`` (float [3, T, H, W] each, layout CFHW) and ``meta`` (int32 [8])."""
    return [f"video{j}" for j in range(num_sample)] + ["meta"]


def build_pipeline(
    cfg: DataConfig,
    paths: Sequence[str],
    index_paths: Sequence[str],
    *,
    shard_id: int,
    num_shards: int,
    seed: int,
    device_id: int | None,
    fixed_crop: tuple[int, int] | None = None,
    decode_only: bool = False,
) -> Any:
    """Build (not yet ``build()``) the DALI pipeline for one epoch.

    Args:
        cfg: data settings (batch size, frames, input size, scales, train/eval, normalisation, threads).
        paths, index_paths: the shards' tar files and their DALI ``.idx`` files.
        shard_id, num_shards: this reader's part of the data set (DALI splits samples into contiguous ranges).
        seed: pipeline seed (reader shuffle and every random op); derive it from (cfg.seed, epoch, rank).
        device_id: CUDA device (``"mixed"`` decoding and GPU augmentation) or None for a CPU-only pipeline.
        fixed_crop: test hook, ``(pair_index, offset_index)`` used instead of random draws (segment centres, no flip).
        decode_only: benchmark hook: outputs ``(frames [T, H0, W0, 3] uint8, meta)`` right after the decoder.

    Returns:
        A ``nvidia.dali.Pipeline`` whose outputs are :func:`output_names` ``(cfg.num_sample)``.

    Raises:
        ImportError: DALI is not installed.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    T, S = cfg.num_frames, cfg.input_size
    gpu = device_id is not None
    fh_tab, fw_tab = crop_size_table(cfg.scales)
    n_pairs = len(fh_tab)
    offsets = FIX_OFFSETS_13
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    per_rank = max(1, 1024 // max(1, num_shards))

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=max(1, cfg.num_workers),
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )
    def pipe() -> Any:
        enc, meta = fn.readers.webdataset(
            paths=list(paths),
            index_paths=list(index_paths),
            ext=["mp4", "meta"],
            dtypes=[types.UINT8, types.INT32],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=cfg.train,
            initial_fill=per_rank,
            seed=seed,
            name="Reader",
        )
        n, w, h = meta[0], meta[1], meta[2]  # frames, width, height (int32 scalars)
        # TSN indices: ((i + u) * N) / T in float32, floored; u = 0.5 in evaluation
        seg = types.Constant(np.arange(T, dtype=np.float32))
        if cfg.train and fixed_crop is None:
            u = fn.random.uniform(range=[0.0, 1.0], shape=[T])
        else:
            u = types.Constant(np.full(T, 0.5, np.float32))
        pos = ((seg + u) * fn.cast(n, dtype=types.FLOAT)) / np.float32(T)  # [T] float32
        # DALI's cast rounds to nearest (ConvertSat): floor first, as the reference's truncation of a positive value
        idx = dmath.min(fn.cast(dmath.floor(pos), dtype=types.INT32), n - 1)  # [T] int32
        frames = fn.decoders.video(enc, device="mixed" if gpu else "cpu", frames=idx)  # [T, H0, W0, 3] uint8
        if decode_only:
            return frames, meta

        short = fn.cast(dmath.min(w, h), dtype=types.FLOAT)
        outs = []
        for _ in range(cfg.num_sample):
            if cfg.train:
                if fixed_crop is None:
                    pair = fn.random.uniform(values=list(range(n_pairs)), dtype=types.INT32)
                    off = fn.random.uniform(values=list(range(len(offsets))), dtype=types.INT32)
                else:
                    pair = types.Constant(np.int32(fixed_crop[0]))
                    off = types.Constant(np.int32(fixed_crop[1]))
                keys = list(range(n_pairs))
                fh = fn.lookup_table(pair, keys=keys, values=[float(v) for v in fh_tab], dtype=types.FLOAT)
                fw = fn.lookup_table(pair, keys=keys, values=[float(v) for v in fw_tab], dtype=types.FLOAT)
                ch = fn.cast(dmath.floor(short * fh), dtype=types.INT32)
                cw = fn.cast(dmath.floor(short * fw), dtype=types.INT32)
                ch = dmath.min(ch + fn.cast(dmath.abs(ch - S) < _SNAP_PX, dtype=types.INT32) * (S - ch), h)
                cw = dmath.min(cw + fn.cast(dmath.abs(cw - S) < _SNAP_PX, dtype=types.INT32) * (S - cw), w)
                okeys = list(range(len(offsets)))
                mw = fn.lookup_table(off, keys=okeys, values=[float(o[0]) for o in offsets], dtype=types.INT32)
                mh = fn.lookup_table(off, keys=okeys, values=[float(o[1]) for o in offsets], dtype=types.INT32)
                x = mw * ((w - cw) // 4)
                y = mh * ((h - ch) // 4)
                mirror = (
                    fn.random.coin_flip(probability=0.5, dtype=types.INT32)
                    if cfg.flip and fixed_crop is None
                    else types.Constant(np.int32(0))
                )
            else:  # centre square of the short side (sampling.eval_crop)
                side = dmath.min(w, h)
                cw = ch = side
                x = 2 * ((w - side) // 4)
                y = 2 * ((h - side) // 4)
                mirror = types.Constant(np.int32(0))
            crop = fn.slice(
                frames,
                fn.cast(fn.stack(x, y), dtype=types.INT32),
                fn.cast(fn.stack(cw, ch), dtype=types.INT32),
                axis_names="WH",
                normalized_anchor=False,
                normalized_shape=False,
            )  # [T, ch, cw, 3]
            # Bilinear with antialiasing (PIL's BILINEAR in the official code also filters when shrinking)
            res = fn.resize(
                crop, size=[S, S], interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT
            )  # [T, S, S, 3] float
            out = fn.crop_mirror_normalize(
                res, dtype=types.FLOAT, output_layout="CFHW", mean=mean, std=std, mirror=mirror
            )  # [3, T, S, S]
            outs.append(out)
        return (*outs, meta.gpu() if gpu else meta)

    return pipe()
