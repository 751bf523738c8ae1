"""Multi-view evaluation pieces of :mod:`umt.data.views` on hand-made inputs: what the DALI source hands over for
a sample (the meta kept unless padding, encoded bytes and indices with ``decode=False``), and the reference
backend's resize, clamp and normalisation on a frame whose bicubic resize overshoots."""

from __future__ import annotations

import numpy as np
import pytest

from umt.data.config import DataConfig
from umt.data.format import encode_meta
from umt.data.views import ViewsClip, views_outputs, views_reference


class _Index:
    """A one-sample stand-in for :class:`umt.data.format.ShardIndex` (a 30-frame 64×48 video, label 3, index 7)."""

    def __init__(self) -> None:
        self.meta = encode_meta(frames=30, width=64, height=48, label=3, index=7)
        self.entries = [("x.tar", {"meta": (0, 0), "mp4": (0, 0)})]

    def read(self, i: int, ext: str) -> bytes:
        return self.meta if ext == "meta" else b"\x01\x02\x03"


def test_outputs_keep_the_sample_unless_padding() -> None:
    cfg = DataConfig(train=False, num_frames=4, input_size=32, temporal_views=2, spatial_views=1)
    out = views_outputs(_Index(), 0, cfg, decode=False)  # type: ignore[arg-type]
    # encoded bytes, meta [9], (H, W) resized, 2 anchors, then the 2 clips' indices
    assert len(out) == 1 + 1 + 1 + 2 + 2
    assert out[0].tolist() == [1, 2, 3] and out[0].dtype == np.uint8
    meta = out[1]
    assert meta.dtype == np.int32 and meta.shape == (9,) and meta[-1] == 0
    assert 3 in meta.tolist() and 7 in meta.tolist()  # label and index kept
    assert out[2].tolist() == [32.0, 42.0] and out[2].dtype == np.float32  # 64×48 → short side 32: 42×32, (H, W)
    assert all(a.dtype == np.int32 and a.shape == (2,) for a in out[3:5])
    assert [ix.dtype for ix in out[5:]] == [np.int32, np.int32] and all(ix.shape == (4,) for ix in out[5:])
    padded = views_outputs(_Index(), 0, cfg, decode=False, pad=True)[1]  # type: ignore[arg-type]
    assert sorted(set(meta.tolist()) - set(padded.tolist())) == [3, 7] and padded.tolist().count(-1) == 2


def _clip(frame_hw: tuple[int, int], resized_wh: tuple[int, int], anchors: list[tuple[int, int]]) -> ViewsClip:
    return ViewsClip({}, [np.arange(2)], resized_wh, anchors)


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_reference_resizes_clamps_bicubic_and_normalises(interp: str) -> None:
    # a 0/255 step upsampled 8×8 → 32×32: bicubic overshoots below 0 and above 255 next to the edge, bilinear not
    frame = np.zeros((2, 8, 8, 3), np.uint8)
    frame[:, :, 4:] = 255
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)
    cfg = DataConfig(train=False, num_frames=2, input_size=32, interp=interp, mean=mean, std=std)
    out = views_reference([frame], _clip((8, 8), (32, 32), [(0, 0)]), cfg)  # [V, 3, T, S, S]
    assert out.shape == (1, 3, 2, 32, 32) and out.dtype.is_floating_point
    for ch in range(3):
        lo, hi = (0 - 255 * mean[ch]) / (255 * std[ch]), (255 - 255 * mean[ch]) / (255 * std[ch])
        x = out[0, ch]
        assert float(x.min()) == pytest.approx(lo, abs=1e-6) and float(x.max()) == pytest.approx(hi, abs=1e-6)
        assert float(x[:, :, 0].mean()) == pytest.approx(lo, abs=1e-6)  # the left edge is black
        assert float(x[:, :, -1].mean()) == pytest.approx(hi, abs=1e-6)


def test_reference_without_resize_cuts_each_anchor() -> None:
    # frames already at the resized size: no interpolation, crops at the anchors, views in clip-major order
    t, h, w = 2, 6, 8
    vals = np.arange(t * h * w, dtype=np.float32).reshape(t, h, w) % 251
    frame = np.repeat(vals[..., None], 3, axis=3).astype(np.uint8)
    cfg = DataConfig(train=False, num_frames=2, input_size=4, interp="bicubic", mean=(0.0, 0.0, 0.0),
                     std=(1 / 255, 1 / 255, 1 / 255), spatial_views=3)
    out = views_reference([frame], _clip((h, w), (w, h), [(0, 0), (2, 1), (4, 2)]), cfg)
    assert out.shape == (3, 3, 2, 4, 4)
    for v, (x, y) in enumerate([(0, 0), (2, 1), (4, 2)]):
        np.testing.assert_array_equal(out[v, 1].numpy(), vals[:, y:y + 4, x:x + 4])


def test_multi_view_and_rows_per_video() -> None:
    from umt.data.views import multi_view, num_views

    assert not multi_view(DataConfig(train=True, temporal_views=2, spatial_views=3))  # training: never
    assert multi_view(DataConfig(train=False, temporal_views=1, spatial_views=3))
    assert multi_view(DataConfig(train=False, temporal_views=2, spatial_views=1))
    assert not multi_view(DataConfig(train=False))
    assert num_views(DataConfig(train=False)) == 1
    assert num_views(DataConfig(train=False, temporal_views=2, spatial_views=3)) == 6
    assert num_views(DataConfig(train=True, num_sample=2, temporal_views=2, spatial_views=3)) == 2


def test_temporal_view_indices_range_and_dtype() -> None:
    from umt.data.views import temporal_view_indices

    # N = 30, T = 4, 2 clips: seg = 29/4 = 7.25, np.round(7.25 i) = 0, 7, 14 (half to even), 22; duration = 7.25/3,
    # clip 0 adds int(2.42) = 2, clip 1 int(4.83) = 4
    assert temporal_view_indices(30, 4, 0, 2).tolist() == [2, 9, 16, 24]
    got = temporal_view_indices(30, 4, 1, 2)
    assert got.tolist() == [4, 11, 18, 26] and got.dtype == np.int32
    with pytest.raises(ValueError, match="0 <= clip < 2"):
        temporal_view_indices(30, 4, 2, 2)
    with pytest.raises(ValueError, match="num_frames >= 1"):
        temporal_view_indices(0, 4, 0, 1)


def test_read_views_hands_the_stored_key_frames_to_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import umt.data.views as views

    seen = {}

    def decode_sampled(video, indices, keyframes, *, stats):  # noqa: ANN001, ANN202
        seen.update(video=video, indices=indices.tolist(), keyframes=keyframes, stats=stats)
        stats.decoded = len(indices)
        return np.zeros((len(indices), 48, 64, 3), np.uint8)

    class WithJson(_Index):
        def __init__(self) -> None:
            super().__init__()
            self.entries = [("x.tar", {"meta": (0, 0), "mp4": (0, 0), "json": (0, 0)})]

        def read(self, i: int, ext: str) -> bytes:
            return json.dumps({"keyframes": [[0, 0], [8, 800]]}).encode() if ext == "json" else super().read(i, ext)

    monkeypatch.setattr(views, "decode_sampled", decode_sampled)
    cfg = DataConfig(train=False, num_frames=4, input_size=32, temporal_views=2, spatial_views=1)
    clip = views.read_views(WithJson(), 0, cfg)  # type: ignore[arg-type]
    assert seen["video"] == b"\x01\x02\x03" and seen["keyframes"] == [[0, 0], [8, 800]]
    assert seen["indices"] == [2, 9, 16, 24, 4, 11, 18, 26] and seen["stats"] is clip.stats
    assert clip.stats.decoded == 8 and [f.shape for f in clip.frames] == [(4, 48, 64, 3)] * 2
    views.read_views(_Index(), 0, cfg)  # type: ignore[arg-type]  # older shards: no json, the decoder probes
    assert seen["keyframes"] is None
