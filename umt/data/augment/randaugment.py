"""RandAugment for video clips: timm's ``rand-m{M}-n{N}-mstd{S}-inc{0|1}``, the same ops and magnitudes on every frame.

Official fine-tuning (``single_modality/datasets/kinetics_sparse.py`` ``_aug_frame``, ``video_transforms.
create_random_augment``, ``rand_augment.py``, a copy of timm's ``auto_augment.py``) applies
``rand-m7-n4-mstd0.5-inc1`` to the list of a clip's full decoded frames, before the crop: ``n`` layers, each an op
drawn uniformly (with replacement) from the 15-op list, applied with probability 0.5, at magnitude
``clip(N(m, mstd), 0, 10)`` and (for signed ops) a random sign, one draw per clip for all its frames. Ops that read
image statistics (AutoContrast, Equalize, Contrast) read each frame's own, as PIL does frame by frame.

Here every draw comes from the sample's generator (:func:`draw_rand_augment`, called by
:func:`umt.data.clips.draw_params`), so resume stays exact and tests can observe the draws. The draws become

* for the DALI graph (:mod:`umt.data.dali.augment`) a small program per clip (:func:`rand_augment_program`): per
  layer an op *kind* (int32) and six float32 parameters (the inverse affine map, the levels of a pointwise op, a
  blend factor), computed from the draws and the frame size;
* for the reference backend, the same ops through torchvision's tensor functional ops
  (:func:`rand_augment_reference`), with two own ops where DALI's semantics differ from torchvision's or
  torchvision has none (listed below).

Arithmetic follows torchvision's uint8 kernels (blends truncate, the grey level is
``0.2989 R + 0.587 G + 0.114 B``), which follow PIL's up to rounding. Where the official (PIL) behaviour differs:

* Rotate, Shear, Translate resample **bilinearly** (official: bicubic, ``train_interpolation``): DALI's
  ``warp_affine`` has no cubic filter. Outside the frame reads the fill grey 128 (official ``_FILL``).
* Equalize follows OpenCV's formula (DALI's ``fn.equalize``), not PIL's: the reference implements the same.
* Blends, AutoContrast and Posterize match PIL's within two levels (PIL rounds its grey level and mean).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where the reference ops run, not in DALI's source workers
    import torch

__all__ = [
    "KINDS",
    "RAND_OPS",
    "RAND_INCREASING_OPS",
    "RandAugmentDraws",
    "RandAugmentSpec",
    "draw_rand_augment",
    "equalize_reference",
    "op_argument",
    "parse_rand_augment",
    "rand_augment_program",
    "rand_augment_reference",
    "warp_affine_reference",
]

#: timm's ``_RAND_TRANSFORMS`` and ``_RAND_INCREASING_TRANSFORMS`` (``inc1``), in their order (op draws index them).
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip

_MAX_LEVEL = 10.0  # timm's _MAX_LEVEL
_FILL = 128.0  # timm's _FILL (128, 128, 128): official hparams set no img_mean
_TRANSLATE_PCT = 0.45  # timm's default translate_pct for the *Rel ops
_OP_PROB = 0.5  # timm's rand_augment_ops prob

#: Op kinds of the DALI program (:func:`rand_augment_program`); the parameters each reads are in its docstring.
KINDS = {
    "none": 0,
    "affine": 1,
    "levels": 2,
    "brightness": 3,
    "color": 4,
    "contrast": 5,
    "sharpness": 6,
    "autocontrast": 7,
    "equalize": 8,
}


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (``rand-m7-n4-mstd0.5-inc1``: magnitude 7, 4 layers, std 0.5, increasing)."""

    magnitude: float = 10.0
    """``m``: mean magnitude in [0, 10]."""
    num_layers: int = 2
    """``n``: ops per clip."""
    magnitude_std: float = 0.0
    """``mstd``: std of the Gaussian noise on the magnitude (0: fixed)."""
    increasing: bool = False
    """``inc1``: the op list whose severity grows with the magnitude."""

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_rand_augment(spec: str) -> RandAugmentSpec:
    """Parse ``rand-m{M}-n{N}-mstd{S}-inc{0|1}`` (sections after ``rand`` in any order; timm's defaults m10, n2).

    Raises:
        ValueError: not a ``rand-`` string, an unknown or malformed section (timm's ``w`` weights are not supported).
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"data.rand_augment must start with 'rand' (timm RandAugment), got {spec!r}")
    kw: dict[str, float] = {}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|inc|m|n)(\d+(?:\.\d+)?)", part)
        if m is None:
            raise ValueError(f"data.rand_augment: unsupported section {part!r} in {spec!r} (m, n, mstd, inc)")
        kw[m.group(1)] = float(m.group(2))
    out = RandAugmentSpec(
        magnitude=kw.get("m", _MAX_LEVEL),
        num_layers=int(kw.get("n", 2)),
        magnitude_std=kw.get("mstd", 0.0),
        increasing=bool(kw.get("inc", 0)),
    )
    if not 0 <= out.magnitude <= _MAX_LEVEL or out.num_layers < 1:
        raise ValueError(f"data.rand_augment: need 0 <= m <= 10 and n >= 1, got {spec!r}")
    return out


@dataclass(frozen=True)
class RandAugmentDraws:
    """One clip's RandAugment draws (layers in order)."""

    ops: np.ndarray
    """int64 [n]: index into :attr:`RandAugmentSpec.ops`."""
    apply: np.ndarray
    """bool [n]: the layer runs (probability 0.5)."""
    magnitude: np.ndarray
    """float64 [n]: magnitude, ``clip(N(m, mstd), 0, 10)``."""
    negate: np.ndarray
    """bool [n]: the signed ops use the negative magnitude."""


def draw_rand_augment(rng: np.random.Generator, spec: RandAugmentSpec) -> RandAugmentDraws:
    """Draw one clip's ops, apply flags, magnitudes and signs from ``rng`` (always 4 arrays of ``n``, in this order).

    timm's semantics: ``np.random.choice`` with replacement over the op list; ``random() > prob`` skips a layer;
    ``gauss(m, mstd)`` clipped to [0, 10]; ``random() > 0.5`` negates.
    """
    n = spec.num_layers
    ops = rng.integers(len(spec.ops), size=n)
    apply = rng.random(n) <= _OP_PROB
    mag = np.clip(spec.magnitude + spec.magnitude_std * rng.standard_normal(n), 0.0, _MAX_LEVEL)
    negate = rng.random(n) > 0.5
    return RandAugmentDraws(ops, apply, mag, negate)


def op_argument(name: str, magnitude: float, negate: bool) -> float:
    """timm's level-to-argument map for op ``name`` (``rand_augment.py`` ``LEVEL_TO_ARG``), 0.0 for ops without one.

    Returns: degrees (Rotate), shear factor, translation as a fraction of the frame side, posterize bits, solarize
    threshold, solarize-add shift, or enhancement factor (1 = unchanged).

    Raises:
        KeyError: unknown op name.
    """
    lv = magnitude / _MAX_LEVEL
    sign = -1.0 if negate else 1.0
    table = {
        "AutoContrast": 0.0,
        "Equalize": 0.0,
        "Invert": 0.0,
        "Rotate": sign * lv * 30.0,
        "Posterize": float(int(lv * 4)),
        "PosterizeIncreasing": float(4 - int(lv * 4)),
        "Solarize": float(int(lv * 256)),
        "SolarizeIncreasing": float(256 - int(lv * 256)),
        "SolarizeAdd": float(int(lv * 110)),
        "ShearX": sign * lv * 0.3,
        "ShearY": sign * lv * 0.3,
        "TranslateXRel": sign * lv * _TRANSLATE_PCT,
        "TranslateYRel": sign * lv * _TRANSLATE_PCT,
    }
    if name in table:
        return table[name]
    base = name.removesuffix("Increasing")
    if base not in ("Color", "Contrast", "Brightness", "Sharpness"):
        raise KeyError(name)
    if name.endswith("Increasing"):
        return 1.0 + sign * lv * 0.9  # _enhance_increasing_level_to_arg
    return lv * 1.8 + 0.1  # _enhance_level_to_arg


def _affine_matrix(name: str, arg: float, width: int, height: int) -> np.ndarray:
    """The inverse map (output → input, continuous pixel coordinates, centres at +0.5) of PIL's ``transform``."""
    if name == "Rotate":  # PIL Image.rotate(deg) about (w/2, h/2), counter-clockwise
        a = -math.radians(arg)
        c, s = math.cos(a), math.sin(a)
        cx, cy = width / 2.0, height / 2.0
        return np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy]])
    if name == "ShearX":
        return np.array([[1.0, arg, 0.0], [0.0, 1.0, 0.0]])
    if name == "ShearY":
        return np.array([[1.0, 0.0, 0.0], [arg, 1.0, 0.0]])
    if name == "TranslateXRel":
        return np.array([[1.0, 0.0, arg * width], [0.0, 1.0, 0.0]])
    if name == "TranslateYRel":
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, arg * height]])
    raise KeyError(name)


def _levels(name: str, arg: float) -> tuple[float, float, float, float, float, float]:
    """Integer pointwise ops in uint8 as ``((x ^ (v if x >= t1 else 0)) + (a if x < t2 else 0)) & mask``: the
    parameters ``(t1, v, t2, a, mask, 0)`` (integers in [0, 255]; ``255 - x == x ^ 255`` in uint8)."""
    base = name.removesuffix("Increasing")
    if name == "Invert":
        return (0.0, 255.0, 0.0, 0.0, 255.0, 0.0)
    if base == "Posterize":  # keep the top ``bits`` bits
        bits = min(int(arg), 8)
        return (0.0, 0.0, 0.0, 0.0, float(((1 << bits) - 1) << (8 - bits)), 0.0)
    if base == "Solarize":  # x >= threshold → 255 - x (threshold 256: nothing)
        return (min(arg, 255.0), 255.0 if arg <= 255 else 0.0, 0.0, 0.0, 255.0, 0.0)
    if name == "SolarizeAdd":  # x < 128 → x + shift (shift <= 110: never past 255)
        if not 0 <= arg <= 127:
            raise ValueError(f"SolarizeAdd shift must be in [0, 127], got {arg}")
        return (0.0, 0.0, 128.0, arg, 255.0, 0.0)
    raise KeyError(name)


_KIND_OF = {
    "AutoContrast": "autocontrast",
    "Brightness": "brightness",
    "Equalize": "equalize",
    "Color": "color",
    "Contrast": "contrast",
    "Sharpness": "sharpness",
    "Rotate": "affine",
    "ShearX": "affine",
    "ShearY": "affine",
    "TranslateXRel": "affine",
    "TranslateYRel": "affine",
}


def rand_augment_program(
    spec: RandAugmentSpec, draws: RandAugmentDraws, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """The clip's draws as a program for the DALI graph (:func:`umt.data.dali.augment.rand_augment`).

    Args:
        spec, draws: the clip's RandAugment.
        width, height: the frames' size W, H in pixels (the translations and the rotation centre depend on it).

    Returns:
        ``kinds`` int32 [n] (:data:`KINDS`; ``none`` for skipped layers) and ``params`` float32 [n, 6]:
        ``affine``: the row-major 2×3 inverse map (output → input pixel coordinates); ``levels``:
        ``(t1, v, t2, a, mask, 0)`` (see :func:`_levels`); ``brightness``/``color``/``contrast``/``sharpness``: the
        factor in ``params[:, 0]``; the others read nothing.
    """
    n = spec.num_layers
    kinds = np.zeros(n, np.int32)
    params = np.zeros((n, 6), np.float32)
    for layer in range(n):
        if not draws.apply[layer]:
            continue
        name = spec.ops[int(draws.ops[layer])]
        arg = op_argument(name, float(draws.magnitude[layer]), bool(draws.negate[layer]))
        kind = _KIND_OF.get(name.removesuffix("Increasing"), "levels")
        kinds[layer] = KINDS[kind]
        if kind == "affine":
            params[layer] = _affine_matrix(name, arg, width, height).reshape(6)
        elif kind == "levels":
            params[layer] = _levels(name, arg)
        else:
            params[layer, 0] = arg
    return kinds, params


# -- reference (torch / torchvision) -----------------------------------------------------------------------------


def warp_affine_reference(frames: torch.Tensor, matrix: np.ndarray, fill: float = _FILL) -> torch.Tensor:
    """Bilinear inverse-map warp with the fill value read outside the frame (DALI ``warp_affine`` semantics).

    Args:
        frames: uint8 [T, C, H, W].
        matrix: [2, 3] output → input map in continuous pixel coordinates (pixel centres at +0.5).

    Returns:
        uint8 [T, C, H, W], rounded half up.
    """
    import torch
    import torch.nn.functional as F

    t, c, h, w = frames.shape
    m = torch.as_tensor(np.asarray(matrix, np.float32), dtype=torch.float64)  # the float32 values DALI receives
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )  # [H, W] output pixel centres
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + 1.0  # +1: the one-pixel fill border added below
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + 1.0
    grid = torch.stack([2.0 * sx / (w + 2) - 1.0, 2.0 * sy / (h + 2) - 1.0], -1).float()  # [H, W, 2]
    padded = F.pad(frames.float(), (1, 1, 1, 1), value=fill)  # [T, C, H+2, W+2]: taps outside read the fill
    out = F.grid_sample(
        padded, grid.expand(t, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False
    )  # [T, C, H, W]
    return torch.floor(out + 0.5).clamp(0, 255).to(torch.uint8)


def equalize_reference(frames: torch.Tensor) -> torch.Tensor:
    """Per frame and channel histogram equalisation with OpenCV's formula (DALI ``fn.equalize``).

    ``lut[v] = round(255 · (cdf(v) − h[v0]) / (H·W − h[v0]))`` for ``v > v0`` (``v0``: the lowest value present),
    ``lut[v0] = 0``; a one-valued channel is returned unchanged.

    Args:
        frames: uint8 [T, C, H, W].

    Returns:
        uint8 [T, C, H, W].
    """
    import torch

    t, c, h, w = frames.shape
    flat = frames.reshape(t * c, h * w).long()  # [T·C, H·W]
    hist = torch.zeros(t * c, 256, dtype=torch.int64).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(1, keepdim=True)  # [T·C, 1] lowest value present
    h0 = hist.gather(1, first)  # [T·C, 1]
    total = h * w
    cdf = hist.cumsum(1)  # [T·C, 256]
    scale = 255.0 / (total - h0).clamp(min=1).float()  # float32, as OpenCV computes it
    lut = torch.round((cdf - h0).float() * scale).clamp(0, 255)  # [T·C, 256]; values below v0 never occur
    out = lut.gather(1, flat).to(torch.uint8)
    single = h0 == total  # a one-valued channel stays as it is
    out = torch.where(single, flat.to(torch.uint8), out)
    return out.reshape(t, c, h, w)


def _solarize_add(frames: torch.Tensor, shift: float) -> torch.Tensor:
    import torch

    return torch.where(frames < 128, (frames.int() + int(shift)).clamp(max=255), frames.int()).to(torch.uint8)


def rand_augment_reference(
    frames: torch.Tensor, spec: RandAugmentSpec, draws: RandAugmentDraws
) -> torch.Tensor:
    """Apply one clip's RandAugment with torchvision's tensor ops (the reference backend's path).

    Args:
        frames: uint8 [T, 3, H, W] (each op treats every frame alike; statistics are per frame).

    Returns:
        uint8 [T, 3, H, W].
    """
    import torchvision.transforms.v2.functional as TF

    _, _, h, w = frames.shape
    x = frames
    for layer in range(spec.num_layers):
        if not draws.apply[layer]:
            continue
        name = spec.ops[int(draws.ops[layer])]
        arg = op_argument(name, float(draws.magnitude[layer]), bool(draws.negate[layer]))
        base = name.removesuffix("Increasing")
        if _KIND_OF.get(base) == "affine":
            x = warp_affine_reference(x, _affine_matrix(name, arg, w, h))
        elif name == "AutoContrast":
            x = TF.autocontrast(x)
        elif name == "Equalize":
            x = equalize_reference(x)  # DALI's (OpenCV's) formula; torchvision's is PIL's
        elif name == "Invert":
            x = TF.invert(x)
        elif base == "Posterize":
            x = TF.posterize(x, min(int(arg), 8))
        elif base == "Solarize":
            x = x if arg > 255 else TF.solarize(x, arg)  # threshold 256: nothing reaches it
        elif name == "SolarizeAdd":
            x = _solarize_add(x, arg)
        elif base == "Color":
            x = TF.adjust_saturation(x, arg)
        elif base == "Contrast":
            x = TF.adjust_contrast(x, arg)
        elif base == "Brightness":
            x = TF.adjust_brightness(x, arg)
        elif base == "Sharpness":
            x = TF.adjust_sharpness(x, arg)
        else:  # pragma: no cover - the op lists hold only the names above
            raise KeyError(name)
    return x
