"""Sampled-frame decoding: frame-exact against a full decode, and work proportional to the targets."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.data_utils import frame_image
from umt.data.decode import DecodeStats, decode_sampled, probe_keyframes


def _encode(
    n: int, *, codec: str = "libvpx-vp9", gop: int = 1000, force_key: set[int] | None = None, pts0: int = 0
) -> bytes:
    """An mp4 of ``n`` frames (grey level = frame number) with key frames only where forced (and frame 0)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = gop
        opts = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"} if "vpx" in codec else {}
        if codec == "libx264":
            opts = {"preset": "ultrafast", "bf": "0", "sc_threshold": "0"}
        s.codec_context.options = {**opts, "keyint_min": str(gop)}
        for k in range(n):
            f = av.VideoFrame.from_ndarray(frame_image(k, 64, 48), format="rgb24")
            f.pts, f.time_base = pts0 + k, Fraction(1, 24)
            if force_key and k in force_key:
                f.pict_type = av.video.frame.PictureType.I
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def _full_decode(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])  # [N, H, W, 3]


@pytest.fixture(scope="module")
def irregular() -> tuple[bytes, np.ndarray]:
    keys = {0, 5, 6, 23, 40, 41, 77, 99}  # irregular: adjacent key frames, long and short GOPs
    data = _encode(100, force_key=keys)
    return data, _full_decode(data)


def test_probe_finds_the_forced_key_frames(irregular: tuple[bytes, np.ndarray]) -> None:
    kf = probe_keyframes(irregular[0])
    idx = [k for k, _ in kf]
    assert {0, 5, 6, 23, 40, 41, 77, 99} <= set(idx)  # the encoder may add some, never drop a forced one
    assert idx == sorted(idx) and len({p for _, p in kf}) == len(kf)


def test_seeking_is_frame_exact(irregular: tuple[bytes, np.ndarray]) -> None:
    data, full = irregular
    kf = probe_keyframes(data)
    rng = np.random.default_rng(0)
    cases = [[99], [0], [98, 99], [5, 6, 7], [24, 25, 26, 39], [76, 77, 78], [40, 40, 3, 99, 0]]
    cases += [sorted(rng.integers(0, 100, 8).tolist()) for _ in range(20)]
    cases += [rng.integers(0, 100, 8).tolist() for _ in range(5)]  # unsorted with repeats
    for ind in cases:
        for keyframes in (kf, None):  # recorded at build time, or probed now
            got = decode_sampled(data, ind, keyframes)
            assert got.shape == (len(ind), 48, 64, 3)
            assert np.array_equal(got, full[ind]), ind


def test_decode_work_follows_targets_not_length() -> None:
    """Count decoded frames: a late frame costs a GOP at most, not the prefix of the video."""
    data = _encode(240, gop=8)
    kf = probe_keyframes(data)
    st = DecodeStats()
    decode_sampled(data, [239], kf, stats=st)
    assert st.decoded <= 8 and st.seeks == 1 and not st.fallback
    st = DecodeStats()
    decode_sampled(data, [15 + 30 * i for i in range(8)], kf, stats=st)  # one TSN-like target per 30 frames
    assert st.decoded <= 8 * 8 and st.decoded < 240 / 3
    # targets inside one GOP share the work: one seek, decoding runs forward
    st = DecodeStats()
    decode_sampled(data, [16, 18, 20, 23], kf, stats=st)
    assert st.seeks == 1 and st.decoded == 8


def test_h264_and_wrong_records_fall_back_exactly() -> None:
    data = _encode(60, codec="libx264", gop=12)
    full = _full_decode(data)
    kf = probe_keyframes(data)
    assert [k for k, _ in kf][:3] == [0, 12, 24]
    assert np.array_equal(decode_sampled(data, [59, 13, 0], kf), full[[59, 13, 0]])
    lying = [[0, kf[0][1]], [30, 12345678]]  # a key frame record whose pts is not in the stream
    st = DecodeStats()
    assert np.array_equal(decode_sampled(data, [31, 59], lying, stats=st), full[[31, 59]])
    assert st.fallback
    with pytest.raises(ValueError, match="not decodable"):
        decode_sampled(data, [60], kf)


def test_shards_record_key_frames(tmp_path: Path) -> None:
    """The builder stores each sample's key frames (no per-sample probing at read time), and they are right."""
    from tests.data_utils import make_clip
    from umt.data.build.shards import EncodeSettings, build_shards
    from umt.data.format import read_manifest
    from umt.data.format import ShardIndex

    src = make_clip(tmp_path / "a.mp4", n_frames=40)
    out = tmp_path / "shards"
    build_shards([src], out, settings=EncodeSettings(codec="vp9", gop=8))  # exact GOP (x264 adds scene cuts)
    ix = ShardIndex(out, read_manifest(out)["shards"])
    rec = json.loads(ix.read(0, "json"))["keyframes"]
    assert rec == probe_keyframes(ix.read(0, "mp4"))
    assert [k for k, _ in rec][:5] == [0, 8, 16, 24, 32]


@pytest.mark.gpu
@pytest.mark.dali
def test_mixed_decoder_seeks() -> None:
    """Whether DALI's GPU (mixed) decoder seeks: a late frame alone must cost well under the whole video.

    Timed (a GPU decoder exposes no frame counter); run by ``pytest -m gpu`` on a machine with a GPU.
    """
    import time

    from nvidia.dali import fn, pipeline_def

    data = np.frombuffer(_encode(240, gop=8), np.uint8)

    def cost(kwargs: dict) -> float:
        @pipeline_def(batch_size=1, num_threads=1, device_id=0)
        def p():  # type: ignore[no-untyped-def]
            e = fn.external_source(source=lambda: [data], batch=True)
            return fn.decoders.video(e, device="mixed", **kwargs)

        pipe = p()
        pipe.build()
        pipe.run()
        t0 = time.perf_counter()
        for _ in range(5):
            pipe.run()
        return (time.perf_counter() - t0) / 5

    assert cost({"frames": [239]}) < 0.3 * cost({})


def test_probed_key_frames_seek_and_fallbacks_decode_exactly_the_prefix() -> None:
    data = _encode(60, gop=8)
    full = _full_decode(data)
    st = DecodeStats()
    assert np.array_equal(decode_sampled(data, [57], None, stats=st), full[[57]])  # probed now, then seeking
    assert st.seeks == 1 and not st.fallback and st.decoded <= 8
    for records in ([], [[5, 12345]]):  # nothing to seek to / no key frame at 0: decode from the first frame
        st = DecodeStats()
        assert np.array_equal(decode_sampled(data, [40, 3], records, stats=st), full[[40, 3]])
        assert st.fallback and st.seeks == 0 and st.decoded == 41  # frames 0..40, then stop
    st = DecodeStats()  # three targets: the fallback stops after the LAST one (40), not the second (20)
    assert np.array_equal(decode_sampled(data, [40, 3, 20], [], stats=st), full[[40, 3, 20]])
    assert st.decoded == 41
    with pytest.raises(ValueError, match=">= 0"):
        decode_sampled(data, [-1])
    with pytest.raises(ValueError, match="non-empty"):
        decode_sampled(data, [])


def test_seek_and_decode_counts_are_exact() -> None:
    """GOP 8 over 240 frames: the exact seeks and decoded frames for targets across GOPs, at GOP edges and in a row.

    Hand-counted: a seek lands on the key frame ``8·floor(t/8)`` and decodes ``t - 8·floor(t/8) + 1`` frames;
    a target whose frame is the decoder's next one (even a key frame) costs one frame and no seek.
    """
    data = _encode(240, gop=8)
    kf = probe_keyframes(data)
    full = _full_decode(data)
    cases = [
        ([200, 5, 100], 3, 6 + 5 + 1),  # three GOPs: frames 0..5, 96..100, 200
        ([16, 17], 1, 2),  # consecutive targets: decode forward, no second seek
        ([7, 8], 1, 9),  # the next frame is a key frame: still decode forward (0..8), no seek
        ([3, 3, 30], 2, 4 + 7),  # a repeated target costs nothing; 24..30
    ]
    for targets, seeks, decoded in cases:
        st = DecodeStats()
        assert np.array_equal(decode_sampled(data, targets, kf, stats=st), full[targets])
        assert (st.seeks, st.decoded, st.fallback) == (seeks, decoded, False), targets


def test_streams_that_start_at_a_nonzero_pts_still_seek() -> None:
    """MP4s often start at pts > 0 (B-frame delay, edits): the first key frame is frame 0 whatever its pts."""
    data = _encode(48, gop=8, pts0=5)
    kf = probe_keyframes(data)
    assert kf[0][0] == 0 and kf[0][1] != 0
    st = DecodeStats()
    assert np.array_equal(decode_sampled(data, [45], kf, stats=st), _full_decode(data)[[45]])
    assert not st.fallback and st.seeks == 1 and st.decoded == 6


def _encode_bframes(n: int, gop: int) -> bytes:
    """H.264 with the shard builder's GOP structure: 3 non-reference B-frames between references, no pyramid."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.thread_count = 1
        s.codec_context.options = {"preset": "ultrafast", "bf": "3", "b-pyramid": "none", "sc_threshold": "0",
                                   "keyint_min": str(gop), "x264-params": "b-adapt=0:threads=1"}
        for k in range(n):
            f = av.VideoFrame.from_ndarray(frame_image(k, 64, 48), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, 24)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def test_unreferenced_b_frames_are_skipped_and_frames_stay_exact() -> None:
    """GOP 8 with B-frames, presentation ``I0 b1 b2 b3 P4 b5 b6 P7`` (decode order I0 P4 b1 b2 b3 P7 b5 b6).

    Hand-counted cost of one target at offset o in its GOP: the key frame, the P-frames it needs (a B-frame needs the
    P after it) and itself: o=0: 1; o=1..3: I0 P4 b = 3; o=4: 2; o=5, 6: I0 P4 P7 b = 4; o=7: 3 (mean 2.875),
    against o + 1 (mean 4.5) when every frame before the target is decoded.
    """
    data = _encode_bframes(96, gop=8)
    full = _full_decode(data)
    kf = probe_keyframes(data)
    assert [k for k, _ in kf] == list(range(0, 96, 8))
    for o, cost in enumerate([1, 3, 3, 3, 2, 4, 4, 3]):
        for g in (0, 5):
            st = DecodeStats()
            t = 8 * g + o
            assert np.array_equal(decode_sampled(data, [t], kf, stats=st), full[[t]]), t
            assert (st.decoded, st.seeks, st.fallback) == (cost, 1, False), t
    # targets in one GOP share a run: 2 and 6 need I0 P4 b2 P7 b6
    st = DecodeStats()
    assert np.array_equal(decode_sampled(data, [6, 2], kf, stats=st), full[[6, 2]])
    assert (st.decoded, st.seeks) == (5, 1)
    rng = np.random.default_rng(1)
    for _ in range(15):  # TSN-like draws and arbitrary ones, with repeats: always the full decode's frames
        ind = [int(12 * i + rng.integers(0, 12)) for i in range(8)] if _ % 2 else rng.integers(0, 96, 8).tolist()
        assert np.array_equal(decode_sampled(data, ind, kf), full[ind]), ind
