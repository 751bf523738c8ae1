"""Random erasing (umt.data.augment.erasing): the cases the mutation run found untested: a draw exactly equal to the
probability still erases (timm returns only when ``random() > probability``), a box as tall as the clip is rejected
and the next attempt taken (timm accepts ``h < H`` only), and noise seeds span the full 63-bit range."""

from __future__ import annotations

import numpy as np

from tests.data_utils import ScriptedRng
from umt.data.augment.erasing import draw_erase


def test_a_draw_equal_to_the_probability_erases() -> None:
    # u = 0.25 with prob 0.25: not u > prob → erase; area draw 0 → 2 px, aspect draw 0.5 → 1: a 1×1 box at (0, 0)
    box = draw_erase(ScriptedRng([0.25, 0.0, 0.5, 0.0, 0.0]), 0.25, 10, 10)
    assert box is not None and (box.y, box.x, box.h, box.w, box.noise_seed) == (0, 0, 1, 1, 7)
    assert draw_erase(ScriptedRng([0.2500001]), 0.25, 10, 10) is None


def test_a_box_as_tall_as_the_clip_is_rejected() -> None:
    # 10×10 clip. Attempt 1: area draw 0.999999 → (0.02 + (1/3 − 0.02)·0.999999)·100 ≈ 33.33 px; aspect draw 0.95 →
    # exp(ln 0.3 + 0.95·(ln(1/0.3) − ln 0.3)) ≈ 2.955; h = round(√98.5) = 10 (= H: rejected), w = round(√11.28) = 3.
    # Attempt 2: area draw 0 → 2 px, aspect draw 0.5 → 1: h = w = 1, placed by the draws 0.0 and 0.0 at (0, 0).
    # (Accepting attempt 1 would give a 10×3 box at top 0, left int(0.5 · 8) = 4.)
    box = draw_erase(ScriptedRng([0.0, 0.999999, 0.95, 0.0, 0.5, 0.0, 0.0]), 1.0, 10, 10)
    assert box is not None and (box.y, box.x, box.h, box.w) == (0, 0, 1, 1)
    # the same on a 2-row clip with real draws: every accepted box is 1 row tall
    rng = np.random.default_rng(0)
    boxes = [b for b in (draw_erase(rng, 1.0, 2, 100) for _ in range(200)) if b is not None]
    assert boxes and all(b.h == 1 and b.y + b.h <= 2 for b in boxes)


def test_noise_seeds_span_63_bits() -> None:
    boxes = [draw_erase(np.random.default_rng(i), 1.0, 8, 8) for i in range(64)]
    got = [b.noise_seed for b in boxes if b is not None]
    assert len(got) > 50 and len(set(got)) == len(got)  # independent draws from 2⁶³ values: no repeat
    assert max(got) > 2**60 and all(0 <= s < 2**63 for s in got)
