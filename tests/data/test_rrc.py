"""Random resized crop (stage 2 and fine-tuning, ``data.crop="rrc"``) and the bicubic resize: the window follows
torchvision's ``RandomResizedCrop`` written out here, and both loader backends put exactly that window, with its
flip, into the pixels of a clip whose pixels encode their own coordinates (``test_loader_train``'s pattern)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_utils import PATTERN_FRAMES as N_FRAMES, torchvision_rrc
from umt.data import DataConfig
from umt.data.loader import VideoLoader
from umt.data.sampling import rrc_window
from umt.data.clips import draw_params

BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]
W0, H0 = 128, 96


def test_rrc_window_hand_cases() -> None:
    u = np.zeros((10, 4))
    u[0] = (0.0, 0.0, 0.5, 0.25)  # area 0.5·5000 = 2500 at aspect 1 → 50×50, y = ⌊0.5·1⌋, x = ⌊0.25·51⌋
    assert rrc_window(100, 50, (0.5, 0.5), (1.0, 1.0), u) == (12, 0, 50, 50)
    # nothing fits (aspect 2 at full area of a square): the fallback is the centred 10×5 window of ratio 2
    assert rrc_window(10, 10, (1.0, 1.0), (2.0, 2.0), np.full((10, 4), 0.3)) == (0, 2, 10, 5)
    with pytest.raises(ValueError, match="shape"):
        rrc_window(10, 10, (0.5, 1.0), (0.75, 1.33), np.zeros((9, 4)))


def test_rrc_window_equals_torchvision_and_stays_inside() -> None:
    rng = np.random.default_rng(0)
    for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (3.0, 4.0))]:
        for _ in range(300):
            w0, h0 = int(rng.integers(16, 400)), int(rng.integers(16, 400))
            u = rng.random((10, 4))
            got = rrc_window(w0, h0, scale, ratio, u)
            assert got == torchvision_rrc(w0, h0, scale, ratio, u)
            x, y, w, h = got
            assert 0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= w0 and y + h <= h0


def test_rrc_draws_depend_on_sample_only() -> None:
    cfg = DataConfig(crop="rrc", num_sample=2)
    a, b = draw_params(cfg, 3, 1, 7), draw_params(cfg, 3, 1, 7)
    assert all(np.array_equal(x, y) for x, y in zip(a.rrc, b.rrc)) and a.crops == b.crops
    assert not np.array_equal(a.rrc[0], a.rrc[1])  # two repeated views, two windows
    assert not np.array_equal(a.rrc[0], draw_params(cfg, 3, 1, 8).rrc[0])
    # the frame draws are the stage-1 ones (the crop kind changes only what follows them)
    assert np.array_equal(a.u, draw_params(DataConfig(num_sample=2), 3, 1, 7).u)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_rrc_window_and_flip_reach_the_pixels(pattern_shards: Path, backend: str, interp: str) -> None:
    T, S = 4, 32
    cfg = DataConfig(shards=str(pattern_shards), backend=backend, batch_size=2, num_workers=0, input_size=S,
                     num_frames=T, num_sample=2, crop="rrc", rrc_scale=(0.2, 1.0), interp=interp)
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    L = VideoLoader(cfg)
    flips, widths = set(), set()
    try:
        for epoch in range(2):
            for b in L.epoch_iter(epoch):
                for row in range(b["video"].shape[0]):
                    i, j = int(b["index"][row]), row % 2
                    p = draw_params(cfg, cfg.seed, epoch, i)
                    x, y, cw, ch = torchvision_rrc(W0, H0, cfg.rrc_scale, cfg.rrc_ratio, p.rrc[j])
                    flip = p.crops[j][2]
                    pix = b["video"][row] * std + mean  # [3, T, S, S]
                    assert pix.min() >= -1e-3 and pix.max() <= 255 + 1e-3  # bicubic is clamped
                    assert abs(pix[0].mean() - 2 * (x + (cw - 1) / 2)) < 3, (i, j, "x")
                    assert abs(pix[1].mean() - (40 + 2 * (y + (ch - 1) / 2))) < 3, (i, j, "y")
                    # the window's width sets the red ramp's slope: 2·cw/S per output pixel
                    slope = (pix[0, :, :, -1].mean() - pix[0, :, :, 0].mean()) / (S - 1)
                    assert abs(abs(slope) - 2 * cw / S) < 0.35 * 2 * cw / S + 0.2, (i, j, "w")
                    assert (slope < 0) == flip
                    blue = pix[2].mean(dim=(1, 2))
                    want_t = [min(int((np.float32(t) + p.u[t]) * np.float32(N_FRAMES) / np.float32(T)),
                                  N_FRAMES - 1) for t in range(T)]
                    assert torch.allclose(blue, torch.tensor([20.0 + 8 * k for k in want_t]), atol=3)
                    flips.add(flip)
                    widths.add(cw)
    finally:
        L.close()
    assert flips == {False, True} and len(widths) > 4
