"""RandAugment edges the main tests leave open, on tiny hand-made clips: the parser's sections and bounds, the order
of the generator draws, the exact affine and level parameters of the DALI program (skipped layers zero), the warp's
fill and border, OpenCV's equalisation on hand-worked histograms, and every op of the reference backend against its
formula written out here (torchvision's uint8 arithmetic: truncating blends, the grey level
``0.2989 R + 0.587 G + 0.114 B`` floored)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import umt  # noqa: F401 - torchvision shim
from umt.data.augment.randaugment import (
    KINDS,
    RAND_INCREASING_OPS,
    RAND_OPS,
    RandAugmentDraws,
    RandAugmentSpec,
    _affine_matrix,
    _levels,
    _solarize_add,
    draw_rand_augment,
    equalize_reference,
    op_argument,
    parse_rand_augment,
    rand_augment_program,
    rand_augment_reference,
    warp_affine_reference,
)

# -- parser ------------------------------------------------------------------------------------------------------


def test_parse_sections_in_any_order_and_defaults() -> None:
    s = parse_rand_augment("rand-n3-inc1-mstd1.5-m7.5")
    assert (s.magnitude, s.num_layers, s.magnitude_std, s.increasing) == (7.5, 3, 1.5, True)
    assert isinstance(s.num_layers, int)
    d = parse_rand_augment("rand-inc0")
    assert (d.magnitude, d.num_layers, d.magnitude_std, d.increasing) == (10.0, 2, 0.0, False)
    assert d.ops == RAND_OPS
    assert RandAugmentSpec() == RandAugmentSpec(10.0, 2, 0.0, False)


def test_parse_bounds_are_inclusive() -> None:
    assert parse_rand_augment("rand-m0").magnitude == 0.0
    assert parse_rand_augment("rand-m10").magnitude == 10.0
    assert parse_rand_augment("rand-n1").num_layers == 1
    for bad in ("rand-m10.5", "rand-n0", "Rand-m7", "rand-m", "rand-m7x", "rand-xm7", "rand-m7-", "randm7", ""):
        with pytest.raises(ValueError):
            parse_rand_augment(bad)


# -- draws -------------------------------------------------------------------------------------------------------


def test_draw_order_and_values_from_the_generator() -> None:
    """The four arrays come from the generator in this order: integers over the op list, the apply draws
    (``u <= 0.5``), the Gaussian magnitudes clipped to [0, 10], the sign draws (``u > 0.5``)."""
    spec = RandAugmentSpec(magnitude=5.0, num_layers=64, magnitude_std=6.0, increasing=True)
    d = draw_rand_augment(np.random.default_rng(11), spec)
    r = np.random.default_rng(11)
    ops = r.integers(15, size=64)
    apply = r.random(64) <= 0.5
    mag = np.clip(5.0 + 6.0 * r.standard_normal(64), 0.0, 10.0)
    neg = r.random(64) > 0.5
    assert np.array_equal(d.ops, ops) and np.array_equal(d.apply, apply)
    assert np.array_equal(d.magnitude, mag) and np.array_equal(d.negate, neg)
    assert d.magnitude.min() == 0.0 and d.magnitude.max() == 10.0  # both clips bind at std 6
    assert d.apply.dtype == bool and d.negate.dtype == bool and d.ops.shape == (64,)


def test_draws_with_zero_std_are_the_magnitude() -> None:
    d = draw_rand_augment(np.random.default_rng(0), RandAugmentSpec(magnitude=7.0, num_layers=5))
    assert np.array_equal(d.magnitude, np.full(5, 7.0))


# -- op arguments, affine maps, levels --------------------------------------------------------------------------


def test_op_argument_unknown_names_raise() -> None:
    for name in ("Foo", "FooIncreasing", "Increasing", "Rotate2"):
        with pytest.raises(KeyError, match=f"^'{name}'$"):  # the error names the op
            op_argument(name, 5.0, False)
    assert op_argument("Brightness", 5.0, True) == pytest.approx(1.0)  # 0.5 * 1.8 + 0.1, no sign
    assert op_argument("BrightnessIncreasing", 5.0, True) == pytest.approx(0.55)
    assert op_argument("SharpnessIncreasing", 5.0, False) == pytest.approx(1.45)
    assert op_argument("Rotate", 5.0, True) == pytest.approx(-15.0)


def test_affine_matrices_by_hand() -> None:
    # PIL's rotate(90) about (w/2, h/2) = (3, 2): a = -pi/2, cos 0, sin -1; offset = M(-c) + c = (2 + 3, -3 + 2)
    np.testing.assert_allclose(_affine_matrix("Rotate", 90.0, 6, 4), [[0, -1, 5], [1, 0, -1]], atol=1e-12)
    a = -math.radians(30.0)
    c, s = math.cos(a), math.sin(a)
    np.testing.assert_allclose(
        _affine_matrix("Rotate", 30.0, 10, 4),
        [[c, s, 5 - 5 * c - 2 * s], [-s, c, 2 + 5 * s - 2 * c]], atol=1e-12)  # fmt: skip
    assert np.array_equal(_affine_matrix("ShearX", 0.25, 7, 5), [[1, 0.25, 0], [0, 1, 0]])
    assert np.array_equal(_affine_matrix("ShearY", -0.25, 7, 5), [[1, 0, 0], [-0.25, 1, 0]])
    assert np.array_equal(_affine_matrix("TranslateXRel", 0.5, 8, 6), [[1, 0, 4], [0, 1, 0]])
    assert np.array_equal(_affine_matrix("TranslateYRel", -0.5, 8, 6), [[1, 0, 0], [0, 1, -3]])
    with pytest.raises(KeyError, match="Invert"):
        _affine_matrix("Invert", 0.0, 8, 6)


def test_levels_by_hand() -> None:
    assert _levels("Invert", 0.0) == (0, 255, 0, 0, 255, 0)
    assert _levels("Posterize", 0.0) == (0, 0, 0, 0, 0, 0)  # 0 bits: everything black
    assert _levels("Posterize", 1.0) == (0, 0, 0, 0, 0x80, 0)
    assert _levels("PosterizeIncreasing", 3.0) == (0, 0, 0, 0, 0xE0, 0)
    assert _levels("Posterize", 8.0) == (0, 0, 0, 0, 255, 0)
    assert _levels("Solarize", 77.0) == (77, 255, 0, 0, 255, 0)
    assert _levels("SolarizeIncreasing", 255.0) == (255, 255, 0, 0, 255, 0)  # x = 255 still flips
    assert _levels("Solarize", 256.0) == (255, 0, 0, 0, 255, 0)  # threshold 256: nothing flips
    assert _levels("SolarizeAdd", 0.0) == (0, 0, 128, 0, 255, 0)
    assert _levels("SolarizeAdd", 127.0) == (0, 0, 128, 127, 255, 0)
    for bad in (-1.0, 128.0):
        with pytest.raises(ValueError):
            _levels("SolarizeAdd", bad)
    with pytest.raises(KeyError):
        _levels("Rotate", 1.0)


# -- the DALI program -------------------------------------------------------------------------------------------


def _draws(ops: list[int], apply: list[bool], mag: list[float], neg: list[bool]) -> RandAugmentDraws:
    return RandAugmentDraws(np.array(ops), np.array(apply), np.array(mag, float), np.array(neg))


def test_program_by_hand() -> None:
    spec = RandAugmentSpec(magnitude=5.0, num_layers=7, increasing=True)
    inc = list(RAND_INCREASING_OPS)
    d = _draws(
        [inc.index("TranslateXRel"), inc.index("Invert"), inc.index("SolarizeAdd"), inc.index("BrightnessIncreasing"),
         inc.index("AutoContrast"), inc.index("Equalize"), inc.index("ShearY")],
        [True, False, True, True, True, True, True], [10.0, 5.0, 5.0, 5.0, 3.0, 3.0, 10.0],
        [True, False, False, True, False, False, False])  # fmt: skip
    kinds, params = rand_augment_program(spec, d, 20, 10)
    assert kinds.dtype == np.int32 and params.dtype == np.float32 and params.shape == (7, 6)
    assert kinds.tolist() == [1, 0, 2, 3, 7, 8, 1]
    want = np.zeros((7, 6), np.float32)
    want[0] = [1, 0, -0.45 * 20, 0, 1, 0]  # translate left by 0.45 W
    want[2] = [0, 0, 128, 55, 255, 0]  # int(0.5 * 110)
    want[3, 0] = 0.55  # 1 - 0.5 * 0.9
    want[6] = [1, 0, 0, 0.3, 1, 0]
    np.testing.assert_allclose(params, want, atol=1e-6)
    # the plain list: Solarize at magnitude 3 is threshold int(0.3 * 256) = 76; Color's factor 0.3 * 1.8 + 0.1
    d2 = _draws([RAND_OPS.index("Solarize"), RAND_OPS.index("Color")], [True, True], [3.0, 3.0], [True, True])
    k2, p2 = rand_augment_program(RandAugmentSpec(num_layers=2), d2, 8, 8)
    assert k2.tolist() == [KINDS["levels"], KINDS["color"]]
    np.testing.assert_allclose(p2, [[76, 255, 0, 0, 255, 0], [0.64, 0, 0, 0, 0, 0]], atol=1e-6)


def test_program_kinds_of_every_op() -> None:
    want = {"AutoContrast": 7, "Equalize": 8, "Invert": 2, "Rotate": 1, "Posterize": 2, "Solarize": 2,
            "SolarizeAdd": 2, "Color": 4, "Contrast": 5, "Brightness": 3, "Sharpness": 6, "ShearX": 1, "ShearY": 1,
            "TranslateXRel": 1, "TranslateYRel": 1}  # fmt: skip
    for inc in (False, True):
        spec = RandAugmentSpec(magnitude=5.0, num_layers=15, increasing=inc)
        d = _draws(list(range(15)), [True] * 15, [5.0] * 15, [False] * 15)
        kinds, _ = rand_augment_program(spec, d, 8, 8)
        assert kinds.tolist() == [want[n.removesuffix("Increasing")] for n in spec.ops]


# -- reference ops -----------------------------------------------------------------------------------------------


def test_warp_identity_translation_and_fill() -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8))
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    out = warp_affine_reference(x, ident)
    assert out.dtype == torch.uint8 and torch.equal(out, x)
    out = warp_affine_reference(x, np.array([[1.0, 0, 2], [0, 1.0, 0]]))  # out[x] = in[x + 2]
    assert torch.equal(out[..., :3], x[..., 2:]) and (out[..., 3:] == 128).all()
    out = warp_affine_reference(x, np.array([[1.0, 0, 0], [0, 1.0, -1]]), fill=7.0)  # out[y] = in[y - 1]
    assert torch.equal(out[..., 1:, :], x[..., :3, :]) and (out[..., 0, :] == 7).all()
    shift = np.array([[1.0, 0, 2], [0, 1.0, 0]])
    white = torch.full((1, 3, 4, 5), 255, dtype=torch.uint8)
    assert (warp_affine_reference(white, shift, fill=300.0) == 255).all()  # a fill past 255 is clamped
    black = torch.zeros((1, 3, 4, 5), dtype=torch.uint8)
    assert (warp_affine_reference(black, shift, fill=-50.0) == 0).all()  # and one below 0
    # half a pixel outside: a 50/50 blend of the edge pixel and the fill (100 and 200 -> 150)
    flat = torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)
    out = warp_affine_reference(flat, np.array([[1.0, 0, 0.5], [0, 1.0, 0]]), fill=200.0)
    assert out[0, 0, :, 0].tolist() == [100, 100] and out[0, 0, :, 1].tolist() == [150, 150]


def test_equalize_by_hand() -> None:
    # channel values 5,5,5,7,9,9: v0 = 5, h0 = 3, H*W - h0 = 3; cdf 3, 4, 6 -> 0, 255/3 = 85, 255
    a = torch.tensor([[5, 7, 9], [5, 9, 5]], dtype=torch.uint8)
    b = torch.full((2, 3), 42, dtype=torch.uint8)  # one value: unchanged
    c = torch.tensor([[0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    x = torch.stack([torch.stack([a, b, c]), torch.stack([c, a, b])])  # [2, 3, 2, 3]
    out = equalize_reference(x)
    ea = torch.tensor([[0, 85, 255], [0, 255, 0]], dtype=torch.uint8)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.stack([torch.stack([ea, b, c]), torch.stack([c, ea, b])]))
    # cdf 1, 2, 4 of values 10, 20, 30 (counts 1, 1, 2): 255 * (2 - 1) / 3 = 85, 255
    d = torch.tensor([[[[30, 10], [20, 30]]]], dtype=torch.uint8).expand(1, 3, 2, 2)
    assert equalize_reference(d)[0, 0].tolist() == [[255, 0], [85, 255]]
    # 0, 1, 2, 3 (H*W = 4, h0 = 1): 255 * k / 3 -> 0, 85, 170, 255
    e = torch.tensor([[[[3, 2], [1, 0]]]], dtype=torch.uint8).expand(1, 3, 2, 2)
    assert equalize_reference(e)[0, 0].tolist() == [[255, 170], [85, 0]]


def test_solarize_add_by_hand() -> None:
    x = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.uint8)
    assert _solarize_add(x, 55.0).tolist() == [55, 155, 182, 128, 200, 255]
    assert _solarize_add(x, 127.9).tolist() == [127, 227, 254, 128, 200, 255]
    assert _solarize_add(x, 55.0).dtype == torch.uint8
    # past 255 it saturates, as PIL's ``solarize_add`` LUT (``min(255, i + add)``) in timm
    assert _solarize_add(x, 200.0).tolist() == [200, 255, 255, 128, 200, 255]


def _clip() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8))


def _grey(x: np.ndarray) -> np.ndarray:
    """torchvision's grey level of a uint8 clip [T, 3, H, W] (float32, floored): [T, 1, H, W]."""
    x = x.astype(np.float32)
    g = x[:, 0] * np.float32(0.2989) + x[:, 1] * np.float32(0.587) + x[:, 2] * np.float32(0.114)
    return np.floor(g)[:, None]


def _blend(x: np.ndarray, other: np.ndarray, f: float) -> np.ndarray:
    return np.clip(x.astype(np.float32) * np.float32(f) + other * np.float32(1 - f), 0, 255).astype(np.uint8)


def _ref_one(name: str, mag: float, neg: bool, x: torch.Tensor, inc: bool) -> np.ndarray:
    spec = RandAugmentSpec(magnitude=mag, num_layers=3, increasing=inc)
    i = spec.ops.index(name)
    d = _draws([i, i, i], [False, True, False], [0.0, mag, 0.0], [False, neg, False])  # only the middle layer runs
    return rand_augment_reference(x, spec, d).numpy()


def test_reference_pointwise_ops_by_formula() -> None:
    x = _clip()
    v = x.numpy().astype(np.int64)
    u8 = lambda a: np.asarray(a).astype(np.uint8)  # noqa: E731
    assert np.array_equal(_ref_one("Invert", 5.0, False, x, False), u8(255 - v))
    # Posterize at m 2.6: int(0.26 * 4) = 1 bit; increasing: 4 - 1 = 3 bits; at m 1: 0 bits
    assert np.array_equal(_ref_one("Posterize", 2.6, False, x, False), u8(v & 0x80))
    assert np.array_equal(_ref_one("PosterizeIncreasing", 2.6, False, x, True), u8(v & 0xE0))
    assert np.array_equal(_ref_one("Posterize", 1.0, False, x, False), u8(v * 0))
    # Solarize at m 3: threshold int(0.3 * 256) = 76; increasing 256 - 76 = 180; m 10 / m 0: threshold 256
    assert np.array_equal(_ref_one("Solarize", 3.0, False, x, False), u8(np.where(v >= 76, 255 - v, v)))
    assert np.array_equal(_ref_one("SolarizeIncreasing", 3.0, False, x, True), u8(np.where(v >= 180, 255 - v, v)))
    assert np.array_equal(_ref_one("Solarize", 10.0, False, x, False), u8(v))
    assert np.array_equal(_ref_one("SolarizeIncreasing", 0.0, False, x, True), u8(v))
    assert np.array_equal(_ref_one("Solarize", 9.97, False, x, False), u8(np.where(v >= 255, 0, v)))
    # SolarizeAdd at m 5: shift int(0.5 * 110) = 55 below 128
    assert np.array_equal(_ref_one("SolarizeAdd", 5.0, False, x, True), u8(np.where(v < 128, v + 55, v)))
    # Brightness: x * f truncated; plain factor 0.5 * 1.8 + 0.1 = 1.0 at m 5 (identity), 0.64 at m 3
    xf = v.astype(np.float32)
    assert np.array_equal(_ref_one("Brightness", 3.0, True, x, False), np.clip(xf * np.float32(0.64), 0, 255).astype(np.uint8))
    got = _ref_one("BrightnessIncreasing", 5.0, False, x, True)  # 1.45
    assert np.abs(got.astype(int) - np.clip(xf * np.float32(1.45), 0, 255).astype(np.uint8)).max() <= 1
    got = _ref_one("BrightnessIncreasing", 5.0, True, x, True)  # 0.55
    assert np.abs(got.astype(int) - np.clip(xf * np.float32(0.55), 0, 255).astype(np.uint8)).max() <= 1


def test_reference_blend_ops_by_formula() -> None:
    import torchvision.transforms.v2.functional as TF

    x = _clip()
    v = x.numpy()
    # Color: blend with the floored grey level; factor 1 + 0.5 * 0.9 = 1.45 (or 0.55 negated)
    for neg, f in ((False, 1.45), (True, 0.55)):
        got = _ref_one("ColorIncreasing", 5.0, neg, x, True).astype(int)
        assert np.abs(got - _blend(v, _grey(v), f)).max() <= 1, neg
    # Contrast: blend with the mean grey level of each frame
    for neg, f in ((False, 1.45), (True, 0.55)):
        mean = _grey(v).mean(axis=(1, 2, 3), keepdims=True)
        got = _ref_one("ContrastIncreasing", 5.0, neg, x, True).astype(int)
        assert np.abs(got - _blend(v, mean, f)).max() <= 1, neg
    got = _ref_one("Contrast", 3.0, False, x, False).astype(int)  # 0.64
    assert np.abs(got - _blend(v, _grey(v).mean(axis=(1, 2, 3), keepdims=True), 0.64)).max() <= 1
    # Sharpness: torchvision's own kernel at the hand-computed factor
    assert np.array_equal(_ref_one("SharpnessIncreasing", 5.0, True, x, True), TF.adjust_sharpness(x, 0.55).numpy())
    assert np.array_equal(_ref_one("Sharpness", 3.0, True, x, False), TF.adjust_sharpness(x, 0.64).numpy())
    # AutoContrast: per frame and channel (x - min) * 255 / (max - min), truncated
    lo, hi = v.min(axis=(2, 3), keepdims=True).astype(np.float32), v.max(axis=(2, 3), keepdims=True).astype(np.float32)
    want = np.clip((v - lo) / ((hi - lo) / np.float32(255)), 0, 255).astype(np.uint8)
    assert np.abs(_ref_one("AutoContrast", 5.0, False, x, False).astype(int) - want).max() <= 1
    assert np.array_equal(_ref_one("Equalize", 5.0, False, x, True), equalize_reference(x).numpy())
    assert not np.array_equal(equalize_reference(x).numpy(), v)


def test_reference_geometric_ops() -> None:
    x = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (1, 3, 20, 20), dtype=np.uint8))
    v = x.numpy()
    # Translate at m 10: 0.45 * 20 = 9 pixels; negated: the other way
    got = _ref_one("TranslateXRel", 10.0, False, x, False)
    assert np.array_equal(got[..., :11], v[..., 9:]) and (got[..., 11:] == 128).all()
    got = _ref_one("TranslateXRel", 10.0, True, x, True)
    assert np.array_equal(got[..., 9:], v[..., :11]) and (got[..., :9] == 128).all()
    got = _ref_one("TranslateYRel", 10.0, False, x, False)
    assert np.array_equal(got[..., :11, :], v[..., 9:, :]) and (got[..., 11:, :] == 128).all()
    # Rotate / Shear: the warp with the hand-written map (rotate 30 degrees about (10, 10); shear 0.3)
    a = -math.radians(30.0)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, s, 10 - 10 * c - 10 * s], [-s, c, 10 + 10 * s - 10 * c]])
    assert np.array_equal(_ref_one("Rotate", 10.0, False, x, False), warp_affine_reference(x, rot).numpy())
    assert np.array_equal(_ref_one("ShearX", 10.0, True, x, False),
                          warp_affine_reference(x, np.array([[1, -0.3, 0], [0, 1, 0]])).numpy())  # fmt: skip
    assert np.array_equal(_ref_one("ShearY", 10.0, False, x, True),
                          warp_affine_reference(x, np.array([[1, 0, 0], [0.3, 1, 0]])).numpy())  # fmt: skip


def test_reference_skips_layers_and_chains_in_order() -> None:
    x = _clip()
    v = x.numpy().astype(np.int64)
    spec = RandAugmentSpec(magnitude=5.0, num_layers=3)
    none = _draws([2, 2, 2], [False, False, False], [5.0] * 3, [False] * 3)
    assert torch.equal(rand_augment_reference(x, spec, none), x)
    # Invert then SolarizeAdd (+55 below 128) is not SolarizeAdd then Invert
    d = _draws([RAND_OPS.index("Invert"), RAND_OPS.index("SolarizeAdd"), 0], [True, True, False], [5.0] * 3,
               [False] * 3)  # fmt: skip
    w = 255 - v
    assert np.array_equal(rand_augment_reference(x, spec, d).numpy(), np.where(w < 128, w + 55, w).astype(np.uint8))


# -- after the first mutation run --------------------------------------------------------------------------------


def test_levels_caps_posterize_at_eight_bits_and_names_unknown_ops() -> None:
    assert _levels("Posterize", 9.0) == (0, 0, 0, 0, 255, 0)  # more than 8 bits keeps every bit
    assert _levels("PosterizeIncreasing", 12.0) == (0, 0, 0, 0, 255, 0)
    with pytest.raises(KeyError, match="ShearX"):
        _levels("ShearX", 1.0)


def test_warp_raises_no_warning() -> None:
    import warnings

    x = torch.zeros((1, 3, 2, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. meshgrid without an explicit ``indexing``
        warp_affine_reference(x, np.array([[1.0, 0, 0], [0, 1.0, 0]]))


def test_equalize_one_pixel_apart() -> None:
    # values 5, 5, 5, 9: h0 = 3, H*W - h0 = 1, so 9 -> 255 * (4 - 3) / 1 = 255
    x = torch.tensor([[5, 5], [5, 9]], dtype=torch.uint8).expand(1, 3, 2, 2)
    assert equalize_reference(x)[0, 0].tolist() == [[0, 0], [0, 255]]
