"""Random erasing boxes reach every position the official ``_erase_cube`` allows: ``top`` uniform in
``[0, H − h]`` and ``left`` in ``[0, W − w]``, both inclusive, so a box can touch the last row and column."""

from __future__ import annotations

import numpy as np

from tests.data_utils import ScriptedRng
from umt.data.augment.erasing import draw_erase


def test_box_can_touch_the_last_row_and_column() -> None:
    # erase (u = 0); area fraction draw 0 → 0.02 · 100 = 2 px; aspect draw 0.5 → exp(0) = 1; h = w = round(√2) = 1;
    # then the position draws just below 1: top = H − h = 9, left = W − w = 9
    below_one = float(np.nextafter(1.0, 0.0))
    box = draw_erase(ScriptedRng([0.0, 0.0, 0.5, below_one, below_one]), 1.0, 10, 10)
    assert box is not None and (box.h, box.w) == (1, 1)
    assert (box.y, box.x) == (9, 9) and box.y + box.h == 10 and box.x + box.w == 10
    box = draw_erase(ScriptedRng([0.0, 0.0, 0.5, 0.0, 0.0]), 1.0, 10, 10)
    assert (box.y, box.x) == (0, 0)


def test_real_draws_cover_both_edges() -> None:
    rng = np.random.default_rng(0)
    boxes = [draw_erase(rng, 1.0, 6, 6) for _ in range(400)]
    boxes = [b for b in boxes if b is not None]
    assert all(0 <= b.y and b.y + b.h <= 6 and 0 <= b.x and b.x + b.w <= 6 for b in boxes)
    # on a 6×6 clip the boxes are 1-3 px: with top uniform over H − h + 1 values, the bottom edge is hit often
    assert any(b.y + b.h == 6 for b in boxes) and any(b.x + b.w == 6 for b in boxes)
    assert any(b.y == 0 for b in boxes) and any(b.x == 0 for b in boxes)
