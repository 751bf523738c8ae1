"""Sampled-frame video decoding (seek to the key frame at or before each target and decode forward only that far),
and stored-image decoding (:func:`decode_image`).

Sparse (TSN) sampling takes T = 8 frames from a video of N frames. Decoding from the first frame to the last target
costs O(N) frames; seeking costs O(T x GOP) frames, whatever the video's length. DALI 2.4's CPU video
decoder decodes from the first frame even with ``build_index=True`` and all-intra input (measured:
``benchmarks/results/2026-11-22_bench_data_seek_cpu.md``, ``python -m benchmarks.bench_data --parts seek``), so every CPU path decodes here, with PyAV (FFmpeg).

The key frames of a stored video are recorded at build time (``keyframes``: ``[[frame index, pts], ...]`` in the
sample's ``KEY.json``, see :func:`probe_keyframes`), so nothing is probed per sample; for older shards without the
record the packets are scanned once per call (demuxing without decoding: about 1 ms for 240 packets).

Frame identity: indices are presentation order, 0-based. After a seek the decoder's first frame must carry the key
frame's pts; frames are then counted forward (the decoder returns them in presentation order). Any mismatch falls
back to a decode from the first frame, so a wrong frame is never returned.
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
    """Seeks to a key frame (0 when decoding from the first frame)."""
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


def decode_sampled(
    data: bytes,
    indices: Sequence[int],
    keyframes: Sequence[Sequence[int]] | None = None,
    *,
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` (presentation order, 0-based; any order, repeats allowed) by seeking.

    For each distinct target in ascending order: when its key frame lies beyond the decoder's position (or the
    target is behind it), seek to that key frame; otherwise keep decoding forward, so targets that share a GOP share
    the work. Decoding runs single-threaded: parallelism comes from decoding several videos at once.

    Args:
        data: the encoded container (e.g. a sample's ``KEY.mp4``).
        indices: [T] frame indices.
        keyframes: ``[[index, pts], ...]`` as from :func:`probe_keyframes` (None: probe now).
        stats: filled in with the work done (frames decoded, seeks).

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
            vs = c.streams.video[0]
            vs.codec_context.thread_count = 1
            frames = None
            pos = -1  # index of the next frame ``frames`` yields; -1: no decoder position yet
            for t in want:
                k = bisect.bisect_right(kf_index, t) - 1  # key frame at or before t
                kidx, kpts = kf[k]
                if frames is None or pos > t or kidx > pos:
                    c.seek(kpts, stream=vs, backward=True, any_frame=False)
                    frames = c.decode(vs)
                    st.seeks += 1
                    # skip frames that precede the key frame (leading frames of an open GOP)
                    first = None
                    for frame in frames:
                        st.decoded += 1
                        if frame.pts is not None and frame.pts >= kpts:
                            first = frame
                            break
                    if first is None or first.pts != kpts:
                        trusted = False
                        break
                    pos = kidx
                    if kidx == t:
                        got[t] = _to_rgb(first)
                        pos = kidx + 1
                        continue
                    pos = kidx + 1
                for frame in frames:
                    st.decoded += 1
                    if pos == t:
                        got[t] = _to_rgb(frame)
                        pos += 1
                        break
                    pos += 1
                if t not in got:
                    break  # ran out of frames: reported below
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
