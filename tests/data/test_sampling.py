"""TSN frame choice and the multi-scale crop window against values worked out by hand.

Every expected number here is written down from docs/design.md's formulas / the official ``GroupMultiScaleCrop``,
never computed with the function under test, so an off-by-one, a swapped x/y or a wrong table shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from umt.data import DataConfig, build_loader
from umt.data.sampling import (FIX_OFFSETS_5, FIX_OFFSETS_13, crop_pairs, crop_size_table, eval_crop, multiscale_crop,
                               tsn_indices)

SCALES = (1.0, 0.875, 0.75, 0.66)

#: Segment centres floor((i + 0.5) · N / 8), by hand, for the frame counts of ``tests.data_utils.make_good_set``.
CENTRES_8 = {
    12: [0, 2, 3, 5, 6, 8, 9, 11],  # 0.75, 2.25, 3.75, 5.25, 6.75, 8.25, 9.75, 11.25
    15: [0, 2, 4, 6, 8, 10, 12, 14],  # 0.9375, 2.8125, ...
    18: [1, 3, 5, 7, 10, 12, 14, 16],  # 1.125, 3.375, 5.625, 7.875, 10.125, ...
    21: [1, 3, 6, 9, 11, 14, 17, 19],  # 1.3125, 3.9375, 6.5625, 9.1875, ...
    24: [1, 4, 7, 10, 13, 16, 19, 22],
    27: [1, 5, 8, 11, 15, 18, 21, 25],  # 1.6875, 5.0625, 8.4375, ...
    30: [1, 5, 9, 13, 16, 20, 24, 28],  # 1.875, 5.625, 9.375, 13.125, 16.875, ...
    33: [2, 6, 10, 14, 18, 22, 26, 30],  # 2.0625, 6.1875, ...
    3: [0, 0, 0, 1, 1, 2, 2, 2],  # fewer frames than segments: repeats
    1: [0] * 8,
}


@pytest.mark.parametrize("n", sorted(CENTRES_8))
def test_tsn_eval_centres_by_hand(n: int) -> None:
    got = tsn_indices(n, 8)
    assert got.dtype == np.int32 and got.tolist() == CENTRES_8[n]


def test_tsn_train_positions_by_hand() -> None:
    # N = 10, T = 4: floor((i + u_i) · 2.5)
    assert tsn_indices(10, 4, [0.0, 0.999, 0.5, 0.25]).tolist() == [0, 4, 6, 8]
    assert tsn_indices(10, 4, [0.0, 0.0, 0.0, 0.0]).tolist() == [0, 2, 5, 7]  # segment starts
    # u just below 1 rounds (float32) to the segment's end: the last frame is clamped to N − 1.
    assert tsn_indices(3, 8, np.full(8, 0.99999994, np.float32)).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert tsn_indices(8, 8, np.full(8, 0.99999994, np.float32)).tolist() == [0, 2, 3, 4, 5, 6, 7, 7]
    # u arrives as Python floats (float64): rounded to float32 first, as the DALI graph holds it. 0.99999999 is 1.0
    # in float32, so every position lands on the next segment's start (float64 arithmetic would floor to i).
    assert tsn_indices(8, 8, [0.99999999] * 8).tolist() == [1, 2, 3, 4, 5, 6, 7, 7]
    with pytest.raises(ValueError):
        tsn_indices(0, 8)
    with pytest.raises(ValueError):
        tsn_indices(10, 4, [0.5, 0.5])


def test_crop_tables_by_hand() -> None:
    # (height index, width index) with |i − j| <= 1, row-major: the official order.
    assert crop_pairs(4) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
    assert crop_pairs(3, max_distort=2) == [(i, j) for i in range(3) for j in range(3)]
    fh2, fw2 = crop_size_table(SCALES[:3], max_distort=2)  # every pair of 3 scales
    np.testing.assert_array_equal(fh2, np.float32([1, 1, 1, .875, .875, .875, .75, .75, .75]))
    np.testing.assert_array_equal(fw2, np.float32([1, .875, .75] * 3))
    fh, fw = crop_size_table(SCALES)
    assert fh.dtype == np.float32 and fw.dtype == np.float32
    np.testing.assert_array_equal(fh, np.float32([1, 1, .875, .875, .875, .75, .75, .75, .66, .66]))
    np.testing.assert_array_equal(fw, np.float32([1, .875, 1, .875, .75, .875, .75, .66, .75, .66]))
    # Official fill_fix_offset(more_fix_crop=True), as (w multiple, h multiple) of the quarter step.
    assert FIX_OFFSETS_13 == ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                              (1, 1), (3, 1), (1, 3), (3, 3))
    assert FIX_OFFSETS_5 == FIX_OFFSETS_13[:5]


# 320 × 240 frame, model size 224: crop sides 240, 210, 180, 158 (= int(240 · 0.66)); none within 3 px of 224.
@pytest.mark.parametrize("pair,offset,want", [
    (0, 0, (0, 0, 240, 240)),
    (0, 3, (80, 0, 240, 240)),  # lower right: x = 4 · (80 // 4)
    (1, 1, (108, 0, 210, 240)),  # upper right, width 210: x = 4 · (110 // 4) = 108
    (2, 2, (0, 28, 240, 210)),  # lower left, height 210: y = 4 · (30 // 4) = 28
    (4, 1, (140, 0, 180, 210)),  # h 210, w 180: upper right, x = 4 · 35
    (4, 2, (0, 28, 180, 210)),  # lower left, y = 4 · 7
    (4, 10, (105, 7, 180, 210)),  # quarter point (3, 1): x = 3 · 35, y = 1 · 7
    (5, 11, (27, 45, 210, 180)),  # h 180, w 210: (1, 3): x = 1 · (110 // 4), y = 3 · (60 // 4)
    (7, 6, (160, 30, 158, 180)),  # h 180, w 158: centre right (4, 2): x = 4 · (162 // 4), y = 2 · (60 // 4)
    (9, 4, (80, 40, 158, 158)),  # centre: x = 2 · (162 // 4) = 80, y = 2 · (82 // 4) = 40
])
def test_multiscale_crop_windows_by_hand(pair: int, offset: int, want: tuple[int, int, int, int]) -> None:
    assert multiscale_crop(320, 240, 224, SCALES, pair, offset) == want


def test_crop_snap_and_clamp_by_hand() -> None:
    # Short side 226 at scale 1 is within 3 px of 224: snapped to 224. 229 is not (|229 − 224| = 5).
    assert multiscale_crop(300, 226, 224, SCALES, 0, 0) == (0, 0, 224, 224)
    assert multiscale_crop(300, 229, 224, SCALES, 0, 4) == (2 * (71 // 4), 0, 229, 229)
    # Portrait frames: the offsets move along y. 240 × 320, pair (1, 2): h = 210, w = 180; offset (3, 1).
    assert multiscale_crop(240, 320, 224, SCALES, 4, 10) == (3 * (60 // 4), 1 * (110 // 4), 180, 210)
    assert multiscale_crop(300, 227, 224, SCALES, 0, 0) == (0, 0, 227, 227)  # |227 − 224| = 3: not within 3 px
    assert multiscale_crop(300, 221, 224, SCALES, 0, 0) == (0, 0, 221, 221)
    assert multiscale_crop(300, 222, 224, SCALES, 0, 0) == (0, 0, 224, 222)  # 222 snaps to 224 > H: h clamped
    # Short side 222 snaps to 224, wider than the 222-px frame: the crop width is clamped to the frame.
    assert multiscale_crop(222, 300, 224, (1.0,), 0, 0) == (0, 0, 222, 224)
    # The 5-offset table (no more_fix_crop): index 3 is the lower right corner.
    assert multiscale_crop(320, 240, 224, SCALES, 4, 3, offsets=FIX_OFFSETS_5) == (140, 28, 180, 210)
    assert eval_crop(320, 240) == (40, 0, 240, 240)
    assert eval_crop(240, 330) == (0, 44, 240, 240)  # 2 · (90 // 4)
    assert eval_crop(64, 64) == (0, 0, 64, 64)


def test_eval_loader_frames_are_hand_computed_centres(good_shard_set: Path) -> None:
    """Reference backend, evaluation: the grey level of every delivered frame is that of the hand-computed centre
    (``tests.data_utils``: frame k has level (16 + 10·k) mod 224), so an off-by-one in the TSN formula shows."""
    from umt.data.format import ShardIndex
    from umt.data.format import decode_meta, read_manifest

    d = good_shard_set
    ix = ShardIndex(d, read_manifest(d)["shards"])
    cfg = DataConfig(shards=str(d), backend="reference", batch_size=4, num_workers=0, input_size=32, train=False)
    mean = torch.tensor(cfg.mean).view(3, 1)
    std = torch.tensor(cfg.std).view(3, 1)
    loader = build_loader(cfg)
    seen = set()
    try:
        for b in loader.epoch_iter(0):
            for v, i in zip(b["video"], b["index"].tolist()):
                n = decode_meta(ix.read(i, "meta"))["frames"]
                seen.add(n)
                want = torch.tensor([(16 + 10 * k) % 224 for k in CENTRES_8[n]], dtype=torch.float32)  # [T]
                pix = (v.flatten(2).median(dim=2).values * std + mean) * 255  # [3, T] back to pixel values
                assert (pix - want).abs().max() < 6, (i, n, pix[0], want)
    finally:
        loader.close()
        for f in ix._files.values():
            f.close()
    assert len(seen) == 8  # every clip length of the set was checked
