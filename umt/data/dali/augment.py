"""Fine-tuning augmentation in the DALI graph: RandAugment programs and pixel-mode random erasing.

Every random decision is drawn in the source (:func:`umt.data.clips.draw_params`), so a resumed run is exact: the
graph only *applies* per-sample programs with argument inputs, selecting each layer's op by its kind through DALI
conditionals (the pipeline needs ``enable_conditionals=True``). The ops work on uint8 ``FHWC`` video on CPU and GPU
(checked on CPU: ``warp_affine``, ``equalize``, ``filter``, reductions and arithmetic take sequences; the GPU path
moves the per-sample parameters to the device where an arithmetic input needs it, as DALI's ``auto_aug`` does).

Semantics per kind (:data:`umt.data.augment.randaugment.KINDS`; formulas of torchvision's uint8 kernels, which the reference
backend runs):

* ``affine``: ``warp_affine`` with the 2×3 inverse map, bilinear, fill 128;
* ``levels``: ``((x ^ (x >= t1 ? v : 0)) + (x < t2 ? a : 0)) & mask`` in uint8 (Invert, Posterize, Solarize,
  SolarizeAdd); ``brightness``: ``floor(f·x)`` with DALI's ``brightness``;
* ``color``: blend with the per-pixel grey ``floor(0.2989 R + 0.587 G + 0.114 B)``; ``contrast``: with its per-frame
  mean; ``sharpness``: with the 3×3 smoothing (1 1 1 / 1 5 1 / 1 1 1)/13, rounded, the 1-pixel border kept;
  each blend is ``floor(clamp(f·x + (1−f)·d, 0, 255))``;
* ``autocontrast``: per frame and channel, ``floor((x − lo) / ((hi − lo) / 255))`` (unchanged where ``hi = lo``);
* ``equalize``: ``fn.equalize`` (OpenCV's formula), per frame and channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from umt.data.augment.randaugment import KINDS

__all__ = ["erase_pixels", "rand_augment"]

_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)  # PIL ImageFilter.SMOOTH


def _like(node: Any, data: Any) -> Any:
    """``node`` on ``data``'s device (arithmetic inputs must share it; argument inputs stay on the CPU)."""
    return node.gpu() if getattr(data, "device", "cpu") == "gpu" and node.device == "cpu" else node


def _to_uint8(y: Any) -> Any:
    """``clamp(floor(y), 0, 255)`` as uint8 (torchvision's truncating uint8 cast of a clamped float).

    DALI's casts round half away from zero and saturate, so ``floor(y) = round(y - 0.5)`` for ``y >= 0`` (exact in
    float32 here) and negatives saturate to 0; the int16 step is cheaper on CPU than a float → uint8 cast.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    return fn.cast(fn.cast(y - 0.5, dtype=types.INT16), dtype=types.UINT8)


def _grey(x: Any) -> Any:
    """floor(0.2989 R + 0.587 G + 0.114 B) as float [F, H, W, 1] (torchvision's ``rgb_to_grayscale``, floored)."""
    import nvidia.dali.math as dmath

    r, g, b = x[:, :, :, 0:1], x[:, :, :, 1:2], x[:, :, :, 2:3]
    return dmath.floor(r * _GREY[0] + g * _GREY[1] + b * _GREY[2])


def _blend(x: Any, other: Any, f: Any) -> Any:
    return _to_uint8(x * f + other * (1.0 - f))


def _levels(x: Any, p: Any) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    pu = fn.cast(p, dtype=types.UINT8)  # [6]: (t1, v, t2, a, mask, 0), integers in [0, 255]
    t1, v, t2, a, mask = (_like(pu[i], x) for i in range(5))
    return ((x ^ ((x >= t1) * v)) + (x < t2) * a) & mask  # uint8 throughout: no overflow (a <= 127 below 128)


def _sharpness(x: Any, f: Any) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    blurred = dmath.floor(fn.filter(x, _SMOOTH, dtype=types.FLOAT) + 0.5)  # k/13 is never a tie: round = floor(+.5)
    diff = blurred - x  # float [F, H, W, C]
    # PIL (and torchvision) smooth the interior only: zero the difference on the 1-pixel border
    hw = x.shape(dtype=types.FLOAT)[1:3]  # (H, W)
    hw4 = fn.cat(hw, hw, hw, hw)  # [8]: (H, W) for each of 4 regions
    last = np.array([0, 0, 1, 0, 0, 0, 0, 1], np.float32)  # region anchors: (0, 0), (H-1, 0), (0, 0), (0, W-1)
    anchor = hw4 * last - last
    shape = hw4 * np.array([0, 1, 0, 1, 1, 0, 1, 0], np.float32) + np.array([1, 0, 1, 0, 0, 1, 0, 1], np.float32)
    diff = fn.erase(diff, anchor=anchor, shape=shape, axis_names="HW", fill_value=0.0)  # rows 0, H-1; columns 0, W-1
    return _to_uint8(x + diff * (1.0 - f))


def _autocontrast(x: Any) -> Any:
    import nvidia.dali.fn as fn

    lo = fn.reductions.min(x, axis_names="HW", keep_dims=True) * 1.0  # float [F, 1, 1, C]
    hi = fn.reductions.max(x, axis_names="HW", keep_dims=True) * 1.0
    flat = hi == lo
    inv_scale = (hi - lo) * np.float32(1.0 / 255.0) + flat  # 1 where flat (then lo is 0 too): unchanged
    return _to_uint8((x - lo * (flat ^ True)) / inv_scale)


def _apply(kind: int, x: Any, p: Any) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    if kind == KINDS["affine"]:
        m = fn.reshape(p, shape=[2, 3])
        return fn.warp_affine(x, matrix=m, fill_value=128.0, interp_type=types.INTERP_LINEAR, inverse_map=True)
    if kind == KINDS["levels"]:
        return _levels(x, p)
    if kind == KINDS["brightness"]:  # blend with black: DALI rounds half away, so -0.5 makes it floor(x · f)
        return fn.brightness(x, brightness=p[0], brightness_shift=-0.5 / 255.0)
    if kind == KINDS["color"]:
        return _blend(x, _grey(x), _like(p[0], x))
    if kind == KINDS["contrast"]:
        mean = fn.reductions.mean(_grey(x), axis_names="HW", keep_dims=True)  # [F, 1, 1, 1]
        return _blend(x, mean, _like(p[0], x))
    if kind == KINDS["sharpness"]:
        return _sharpness(x, _like(p[0], x))
    if kind == KINDS["autocontrast"]:
        return _autocontrast(x)
    if kind == KINDS["equalize"]:
        return fn.equalize(x)
    raise ValueError(f"unknown RandAugment kind {kind}")


def rand_augment(x: Any, kinds: Any, params: Any, num_layers: int) -> Any:
    """Apply a RandAugment program to a batch of clips inside a pipeline built with ``enable_conditionals=True``.

    Args:
        x: DataNode, uint8 [F, H, W, 3] per sample (CPU or GPU).
        kinds: DataNode (CPU), int32 [n] per sample: the op kind of each layer (0: skip).
        params: DataNode (CPU), float32 [n, 6] per sample (:func:`umt.data.augment.randaugment.rand_augment_program`).
        num_layers: n.

    Returns:
        DataNode, uint8 [F, H, W, 3].
    """
    for layer in range(num_layers):
        k = kinds[layer]
        p = params[layer]
        # one conditional per kind: the batch splits into the samples of each kind and merges again
        if k == KINDS["affine"]:
            x = _apply(KINDS["affine"], x, p)
        elif k == KINDS["levels"]:
            x = _apply(KINDS["levels"], x, p)
        elif k == KINDS["brightness"]:
            x = _apply(KINDS["brightness"], x, p)
        elif k == KINDS["color"]:
            x = _apply(KINDS["color"], x, p)
        elif k == KINDS["contrast"]:
            x = _apply(KINDS["contrast"], x, p)
        elif k == KINDS["sharpness"]:
            x = _apply(KINDS["sharpness"], x, p)
        elif k == KINDS["autocontrast"]:
            x = _apply(KINDS["autocontrast"], x, p)
        elif k == KINDS["equalize"]:
            x = _apply(KINDS["equalize"], x, p)
    return x


def erase_pixels(x: Any, box: Any, noise: Any) -> Any:
    """Pixel-mode random erasing of one box per clip (timm ``RandomErasing(mode='pixel')``, the official ``cube``).

    Args:
        x: DataNode, float [3, F, S, S] per sample (normalised; layout CFHW).
        box: DataNode (CPU), int32 [4] per sample: ``(y, x, h, w)``; ``h = 0`` erases nothing.
        noise: DataNode (CPU), float32 [3, F, h, w] per sample: the box's content (N(0, 1) drawn in the source).

    Returns:
        DataNode, float [3, F, S, S]: ``x`` with the box replaced by ``noise``.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    box = fn.cast(box, dtype=types.FLOAT)
    anchor, shape = box[0:2], box[2:4]
    cleared = fn.erase(x, anchor=anchor, shape=shape, axis_names="HW", fill_value=0.0)
    sh = x.shape(dtype=types.FLOAT)  # [C, F, S, S]
    # the noise placed at the box inside a zero canvas of the clip's size: a slice that starts before the patch
    canvas = fn.slice(
        _like(noise, x), -anchor, sh[2:4], axes=[2, 3], normalized_anchor=False, normalized_shape=False,
        out_of_bounds_policy="pad", fill_values=0.0,
    )  # [3, F, S, S]
    return cleared + canvas
