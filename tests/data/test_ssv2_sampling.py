"""SSv2 frame sampling (``data.sampling="ssv2"``), official ``single_modality/datasets/ssv2.py``
(``loadvideo_decord``): its own training segments (``N // T``), the validation centres and the two test clips
(segment starts, segment centres), and the SSv2 recipes select it. Expected indices are worked out by hand from the
official formulas; both backends take the indices from the source (:func:`umt.data.clips.read_clip`,
:func:`umt.data.views.read_views`), which these tests read with ``decode=False``."""

from __future__ import annotations

import numpy as np
import pytest

from umt.data.config import DataConfig
from umt.data.format import encode_meta
from umt.data.sampling import frame_indices


class _Index:
    """A one-sample stand-in for :class:`umt.data.format.ShardIndex` (meta of an N-frame 64×48 video)."""

    def __init__(self, frames: int) -> None:
        self.meta = encode_meta(frames=frames, width=64, height=48, index=0)
        self.entries = [("x.tar", {"meta": (0, 0), "mp4": (0, 0)})]

    def read(self, i: int, ext: str) -> bytes:
        return self.meta if ext == "meta" else b"\0"


def test_training_segments_are_n_div_t_long() -> None:
    # N = 30, T = 8: official average_duration = 30 // 8 = 3, index_i = 3 i + randint(3); the last 6 frames never
    u = np.array([0.0, 0.5, 0.99, 0.34, 0.67, 0.0, 0.99, 0.5], np.float32)
    got = frame_indices(30, 8, u, "ssv2")
    assert got.tolist() == [0, 4, 8, 10, 14, 15, 20, 22]  # 3i + floor(3u)
    # the Kinetics (TSN) formula spreads over all 30 frames instead: floor((i + u) · 30 / 8)
    assert frame_indices(30, 8, u, "tsn").tolist() != got.tolist()
    # u → 1 stays inside the segment
    assert frame_indices(30, 8, np.full(8, 0.9999999, np.float32), "ssv2").tolist() == [2, 5, 8, 11, 14, 17, 20, 23]


def test_short_videos_follow_the_official_fallbacks() -> None:
    # N // T = 0 and N > T cannot happen together; N = T: segments of 1 frame
    assert frame_indices(8, 8, np.full(8, 0.7, np.float32), "ssv2").tolist() == list(range(8))
    # N < T: official np.zeros(T) -> frame 0 throughout (not padding with the last frame)
    assert frame_indices(5, 8, np.full(8, 0.7, np.float32), "ssv2").tolist() == [0] * 8


def test_evaluation_centres_use_tick_n_over_t() -> None:
    # N = 30, T = 8: tick = 3.75, int(1.875 + 3.75 i)
    assert frame_indices(30, 8, None, "ssv2").tolist() == [1, 5, 9, 13, 16, 20, 24, 28]
    # the same formula as the TSN centres floor((i + 0.5) · N / T) (only the float width differs): the SSv2
    # evaluation drift is in the test clips, below
    assert frame_indices(10, 4, None, "ssv2").tolist() == [1, 3, 6, 8] == frame_indices(10, 4, None, "tsn").tolist()


def test_test_clips_are_the_segment_starts_then_the_centres() -> None:
    from umt.data.views import read_views

    cfg = DataConfig(train=False, num_frames=8, input_size=32, sampling="ssv2", temporal_views=2, spatial_views=3)
    clip = read_views(_Index(30), 0, cfg, decode=False)  # type: ignore[arg-type]
    starts = [int(3.75 * i) for i in range(8)]  # 0, 3, 7, 11, 15, 18, 22, 26
    centres = [int(1.875 + 3.75 * i) for i in range(8)]
    assert [ix.tolist() for ix in clip.indices] == [starts, centres]
    # the Kinetics test clips differ (offsets 1/3 and 2/3 of each segment)
    kin = read_views(_Index(30), 0, DataConfig(train=False, num_frames=8, input_size=32, temporal_views=2,
                                               spatial_views=3), decode=False)  # type: ignore[arg-type]
    assert [ix.tolist() for ix in kin.indices] != [starts, centres]
    with pytest.raises(ValueError, match="1 or 2 temporal clips"):
        read_views(_Index(30), 0, DataConfig(train=False, num_frames=8, input_size=32, sampling="ssv2",
                                             temporal_views=3, spatial_views=1), decode=False)  # type: ignore[arg-type]


def test_training_read_takes_the_ssv2_frames() -> None:
    from umt.data.clips import draw_params, read_clip

    cfg = DataConfig(num_frames=8, input_size=32, sampling="ssv2", crop="rrc", flip=False)
    p = draw_params(cfg, 0, 0, 0)
    clip = read_clip(_Index(30), 0, cfg, p, decode=False)  # type: ignore[arg-type]
    assert clip.indices.tolist() == (np.arange(8) * 3 + np.floor(np.asarray(p.u, np.float64) * 3)).tolist()


@pytest.mark.parametrize("name", ["umt_b16_ssv2_ft", "umt_l16_ssv2_ft"])
def test_ssv2_recipes_sample_as_ssv2_py(name: str) -> None:
    from umt.train.recipes import get_recipe

    assert get_recipe(name).data.sampling == "ssv2"
    assert get_recipe("umt_b16_k400_ft").data.sampling == "tsn"
