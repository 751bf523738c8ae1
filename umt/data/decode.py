"""Sampled-frame video decoding (start at the key frame at or before each target and decode only the pictures the
target depends on), and stored-image decoding (:func:`decode_image`).

Sparse (TSN) sampling takes T = 8 frames from a video of N frames. Decoding from the first frame to the last target
costs O(N) frames; starting at key frames costs O(T x GOP) frames, whatever the video's length. DALI 2.4's CPU video
decoder decodes from the first frame even with ``build_index=True`` and all-intra input (measured:
``benchmarks/results/2026-11-22_bench_data_seek_cpu.md``, ``python -m benchmarks.bench_data --parts seek``), so every
CPU path decodes here, with PyAV (FFmpeg).

Within a GOP, pictures that no other picture references need not be decoded unless they are targets. The shard
builder's H.264 stores three such B-frames between reference frames (``umt.data.build.encode.CODECS``), so a target
costs its key frame, the reference frames before it in decode order and itself: 2.9 frames on average at GOP 8
against 4.5 when every frame before the target is decoded. Which pictures are unreferenced is read from the
bitstream (H.264 ``nal_ref_idc``); other codecs are treated as referencing every picture.

The key frames of a stored video are recorded at build time (``keyframes``: ``[[frame index, pts], ...]`` in the
sample's ``KEY.json``, see :func:`probe_keyframes`); the packets are demuxed once per call (no decoding: about 1 ms
for 240 packets).

Frame identity: indices are presentation order (the rank of a packet's pts), 0-based; a decoded frame is matched
to its target by pts. A key frame record that does not name a key packet of the stream, or a target the decoder
did not return, falls back to a decode from the first frame, so a wrong frame is never returned.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DecodeStats", "decode_image", "decode_sampled", "probe_keyframes"]


@dataclass
class DecodeStats:
    """Work done by one :func:`decode_sampled` call."""

    decoded: int = 0
    """Frames the decoder produced (the cost: proportional to CPU time)."""
    seeks: int = 0
    """Decoder runs started at a key frame (0 when decoding from the first frame)."""
    fallback: bool = False
    """True when seeking was not possible or not trusted and the video was decoded from its first frame."""


def probe_keyframes(data: bytes) -> list[list[int]]:
    """Key frames of the first video stream: ``[[presentation index, pts], ...]`` in ascending index order.

    Demuxes packets only (no decoding). Presentation order is the order of packet pts, so streams with reordered
    frames (B-frames) are indexed correctly.

    Raises:
        av.FFmpegError: ``data`` is not a readable container.
        ValueError: no video stream, or packets without pts.
    """
    import av

    with av.open(io.BytesIO(data)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        vs = c.streams.video[0]
        pkts = [(p.pts, bool(p.is_keyframe)) for p in c.demux(vs) if p.size]
    if any(p is None for p, _ in pkts):
        raise ValueError("packets without pts: cannot index key frames")
    order = sorted(p for p, _ in pkts)  # presentation order
    rank = {p: i for i, p in enumerate(order)}
    return sorted([rank[p], int(p)] for p, k in pkts if k)


def _to_rgb(frame: object) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")  # type: ignore[attr-defined]  # [H, W, 3] uint8


def _decode_from_start(data: bytes, want: list[int], stats: DecodeStats) -> dict[int, np.ndarray]:
    import av

    got: dict[int, np.ndarray] = {}
    stats.fallback = True
    with av.open(io.BytesIO(data)) as c:
        vs = c.streams.video[0]
        vs.codec_context.thread_count = 1
        targets = set(want)
        for k, frame in enumerate(c.decode(vs)):
            stats.decoded += 1
            if k in targets:
                got[k] = _to_rgb(frame)
            if k >= want[-1]:
                break
    return got


def _h264_nal_length_size(extradata: bytes | None) -> int | None:
    """NAL length field size of an avcC (MP4) H.264 stream; None for Annex B or unknown extradata."""
    if not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


def _h264_is_reference(pkt: bytes, nal_len: int) -> bool:
    """False only when every slice of the picture has ``nal_ref_idc`` 0 (ITU-T H.264 §7.4.1: no later picture
    references it, so a decoder may drop it); True otherwise, and whenever the packet does not parse."""
    i, slices, n = 0, 0, len(pkt)
    while i + nal_len < n:
        size = int.from_bytes(pkt[i : i + nal_len], "big")
        head = pkt[i + nal_len]
        if head & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            if head >> 5:
                return True
            slices += 1
        i += nal_len + size
    return slices == 0


class _Packets:
    """The video stream's packets in decode order, with presentation indices and which ones other frames need."""

    def __init__(self, c: object) -> None:
        vs = c.streams.video[0]  # type: ignore[attr-defined]
        self.pkts = [p for p in c.demux(vs) if p.size]  # type: ignore[attr-defined]
        if any(p.pts is None for p in self.pkts):
            raise ValueError("packets without pts")
        rank = {pts: i for i, pts in enumerate(sorted(p.pts for p in self.pkts))}
        self.index = [rank[p.pts] for p in self.pkts]  # [packets] presentation index of each packet
        self.at = {ix: d for d, ix in enumerate(self.index)}  # presentation index -> decode position
        self.pts = {ix: p.pts for ix, p in zip(self.index, self.pkts)}  # presentation index -> pts
        self.by_pts = rank  # pts -> presentation index
        nal = _h264_nal_length_size(vs.codec_context.extradata) if vs.codec_context.name == "h264" else None
        self._nal = nal
        self._ref: dict[int, bool] = {}

    def is_reference(self, d: int) -> bool:
        """Whether the packet at decode position ``d`` may be referenced (only H.264 says otherwise)."""
        if self._nal is None:
            return True
        if d not in self._ref:
            self._ref[d] = _h264_is_reference(bytes(self.pkts[d]), self._nal)
        return self._ref[d]


def decode_sampled(
    data: bytes,
    indices: Sequence[int],
    keyframes: Sequence[Sequence[int]] | None = None,
    *,
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` (presentation order, 0-based; any order, repeats allowed) from their key frames.

    The targets are grouped by key frame (the one at or before each target, from ``keyframes``). Each group is one
    decoder run (counted as a seek) fed, in decode order, the key frame and the packets after it up to the group's
    last target, **less the pictures nothing references** (H.264 slices with ``nal_ref_idc`` 0, e.g. non-reference
    B-frames) unless they are targets; then the decoder is drained. A target's cost is thus its key frame, the
    reference frames before it in decode order and itself, not every frame before it. Targets in one GOP share a
    run; a run goes on into the next GOP instead of restarting when nothing lies between the two that must be
    decoded. Decoding runs single-threaded: parallelism comes from decoding several videos at once.

    Args:
        data: the encoded container (e.g. a sample's ``KEY.mp4``).
        indices: [T] frame indices.
        keyframes: ``[[index, pts], ...]`` as from :func:`probe_keyframes` (None: probe now). A record that does not
            name a key packet of the stream makes the call decode from the first frame instead.
        stats: filled in with the work done (frames decoded, runs started).

    Returns:
        uint8 [T, H, W, 3] RGB, row t holding frame ``indices[t]``.

    Raises:
        ValueError: ``indices`` is empty, negative, or beyond the last decodable frame.
    """
    import av

    st = stats if stats is not None else DecodeStats()
    want = sorted({int(i) for i in indices})
    if not want or want[0] < 0:
        raise ValueError(f"frame indices must be non-empty and >= 0, got {list(indices)}")
    kf = [list(k) for k in keyframes] if keyframes is not None else None
    if kf is None:
        try:
            kf = probe_keyframes(data)
        except (av.FFmpegError, ValueError):
            kf = []
    got: dict[int, np.ndarray] = {}
    if not kf or kf[0][0] != 0:
        got = _decode_from_start(data, want, st)
    else:
        kf_index = [k[0] for k in kf]
        trusted = True
        with av.open(io.BytesIO(data)) as c:
            try:
                pk = _Packets(c)
            except ValueError:
                pk = None
            if pk is None or want[-1] >= len(pk.pkts):
                trusted = pk is not None
                runs: list[list[int]] = []
            else:
                # runs: [key decode position, last decode position, targets...]
                runs = []
                for t in want:
                    kidx, kpts = kf[bisect.bisect_right(kf_index, t) - 1]
                    kd = pk.at.get(kidx)
                    if kd is None or pk.pts[kidx] != kpts or not pk.pkts[kd].is_keyframe:
                        trusted = False
                        break
                    td = pk.at[t]
                    if runs and (kd == runs[-1][0] or (kd > runs[-1][1] and not any(
                            pk.is_reference(d) for d in range(runs[-1][1] + 1, kd)))):
                        runs[-1][1] = max(runs[-1][1], td)
                        runs[-1].append(t)
                    else:
                        runs.append([kd, td, t])
            cc = c.streams.video[0].codec_context
            cc.thread_count = 1
            for r in runs if trusted else ():
                kd, last, targets = r[0], r[1], set(r[2:])
                st.seeks += 1
                feed = [d for d in range(kd, last + 1) if pk.index[d] in targets or pk.is_reference(d)]
                for d in (*feed, None):
                    for frame in cc.decode(pk.pkts[d] if d is not None else None):  # None: drain
                        ix = pk.by_pts.get(frame.pts)
                        if ix in targets:
                            got[ix] = _to_rgb(frame)
                st.decoded += len(feed)
                cc.flush_buffers()
                if not targets <= got.keys():
                    trusted = False  # the decoder did not return a target: never guess, decode from the start
                    break
        if not trusted:
            got = _decode_from_start(data, want, st)
    missing = [i for i in want if i not in got]
    if missing:
        raise ValueError(f"frames {missing} not decodable (video has fewer frames)")
    return np.stack([got[int(i)] for i in indices])  # [T, H, W, 3]


def decode_image(data: bytes) -> np.ndarray:
    """Decode stored JPEG bytes with PIL (libjpeg-turbo; the same pixels as DALI's CPU decoder).

    Returns:
        uint8 [H, W, 3] RGB.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy takes it without a warning
