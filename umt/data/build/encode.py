"""Probe and re-encode one input video with PyAV (runs in the shard builder's worker processes).

Re-encoding is the main lever on decode cost for sparse sampling: the short side is scaled down, key frames
are placed every ``gop`` frames, the frame rate can be capped, and the codec is one that DALI can decode where needed.
Every way an input can be unusable raises :class:`Reject` with a human-readable reason; nothing else escapes for
bad input.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from umt.data.decode import probe_keyframes

__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_GOP", "DEFAULT_MAX_BYTES_RATIO", "EncodeSettings", "Reject", "SampleSource",
           "encode_video"]

#: ``--codec`` choices → (PyAV encoder, pixel format, encoder options). Every codec decodes on every CPU path (PyAV,
#: from the key frame before each target, :func:`umt.data.decode.decode_sampled`); DALI's GPU (mixed) decoder takes
#: all three (NVDEC: H.264, VP9; nvJPEG: MJPEG), its CPU decoder only VP9 and MJPEG. Quality: 36-38 dB PSNR against
#: the source scaled to the stored size on 10 s 720p real clips (bench_data's "PSNR dB" column).
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    # realtime/cpu-used 8: ~10x faster to encode than "good" at similar size for ≤320p clips; crf 32 is visually clean
    # at this size. No lag (realtime) means no hidden alt-ref frames: every packet is one displayed frame.
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}),
    # a fixed quantiser (the encoder ignores "q:v"; without qmin/qmax it runs at its default bit rate, ~32 dB)
    "mjpeg": ("mjpeg", "yuvj420p", {"qmin": "5", "qmax": "5"}),
    # Fixed "I b b b P b b P" GOPs: 3 B-frames that nothing references (no B-pyramid, no adaptive placement), so the
    # reader decodes a target's key frame, the P-frames before it and itself (2.9 frames per sampled frame at GOP 8
    # instead of 4.5), and the B-frames make the file smaller. Byte-reproducible: one thread, no sliced or lookahead
    # threads, and macroblock-tree rate control off -- with it on, encoding the same input twice in one process gave
    # different bytes (measured with av 18.1.0's x264), which breaks the builder's rebuild and resume guarantees.
    # Scene cuts may add key frames (recorded, so readers start there too).
    "h264": ("libx264", "yuv420p", {
        "preset": "medium", "crf": "23", "bf": "3", "b-pyramid": "none",
        # b-adapt is no option of FFmpeg's libx264 wrapper (an unknown option is ignored): it goes through x264-params
        "x264-params": "b-adapt=0:threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0",
    }),
}

#: Default codec and GOP (benchmarks/results/2026-12-07_storage_matrix_cpu.md: 16 real 10 s clips of each of three
#: source kinds -- 720p H.264 with a key frame every 2 s, 720p x264 defaults with one every 250 frames, and 596x336
#: low-bit-rate WebVid-like video -- T = 8): H.264 CRF 23, GOP 8 with non-reference B-frames: 0.49x / 0.61x the
#: source bytes on the two 720p kinds at 36.3 / 37.8 dB PSNR (the former default: 36.7 / 37.1), 2.81-2.85 frames
#: decoded per sampled frame. The former default (VP9 GOP 8, CRF 32, libvpx realtime) took 0.75x / 0.93x the bytes
#: and decodes 4.4 frames per sampled frame. The WebVid-like kind grows at CRF 23 with key frames this close (3.05x),
#: hence the byte cap (benchmarks/results/2026-12-07_storage_capped_cpu.md, the same 16 clips per kind): at most
#: 0.7x the source file's bytes per video. It caps every WebVid-like clip (0.68x the source bytes with the tars, a
#: median of 30.4 dB over the clips against 37.8 uncapped, 2.86 frames decoded per sampled frame, loader CPU-s per
#: clip 0.043-0.049 against 0.065-0.076) and none of the 720p clips (their shards byte-identical to the uncapped
#: ones: 0.49x / 0.61x).
DEFAULT_CODEC = "h264"
DEFAULT_GOP = 8
DEFAULT_MAX_BYTES_RATIO = 0.7

#: codecs whose rate :attr:`EncodeSettings.max_bytes_ratio` caps
_RATE_CAPPED = ("h264",)
#: the capped rate as a share of the byte budget's rate (VBV lets a 10 s clip overshoot its rate by a few per cent:
#: its buffer starts nine-tenths full), and how many capped encodes are tried before a larger result is kept
_CAP_SHARE = 0.9
_CAP_TRIES = 3


@dataclass(frozen=True)
class EncodeSettings:
    """How each input is re-encoded (recorded in the manifest and in the cache key)."""

    codec: str = DEFAULT_CODEC
    """``vp9``, ``mjpeg``, ``h264`` or ``copy`` (keep the source stream, remuxed into mp4)."""
    short_side: int = 320
    """Scale down so that the short side is at most this many pixels (even dimensions)."""
    gop: int = DEFAULT_GOP
    """Key frame every ``gop`` frames (1 = all-intra). Ignored by ``copy``."""
    fps_cap: float | None = None
    """Drop frames so that the output rate is at most this (frames/s)."""
    crf: int | None = None
    """Constant rate factor of ``vp9`` (0-63) or ``h264`` (0-51); lower is better quality and more bytes.
    None: the codec's setting in :data:`CODECS`."""
    min_frames: int = 8
    """Reject videos with fewer frames (the sampling needs one per TSN segment)."""
    max_bytes_ratio: float | None = DEFAULT_MAX_BYTES_RATIO
    """``h264``: each stored video takes at most about this many times its source file's bytes. A video whose CRF
    encode would take more is encoded again with its rate capped (x264's VBV) at this share of the source's bit rate;
    one within it is the plain CRF encode, byte for byte. None: no cap. Other codecs have no such cap (set to None
    for them)."""
    on_truncated: str = "pack"
    """A truncated input (fewer frames decode than its header announces, or decoding stops at damaged data):
    ``pack`` keeps the frames that decode when there are at least ``min_frames`` of them, with the true frame count
    and a warning in ``info["warnings"]``; ``skip`` rejects it."""

    def __post_init__(self) -> None:
        if self.codec not in (*CODECS, "copy"):
            raise ValueError(f"codec must be one of {[*CODECS, 'copy']}, got {self.codec!r}")
        if self.on_truncated not in ("pack", "skip"):
            raise ValueError(f"on_truncated must be 'pack' or 'skip', got {self.on_truncated!r}")
        if self.short_side < 16 or self.gop < 1 or self.min_frames < 1:
            raise ValueError(f"bad encoding settings {self}")
        if self.fps_cap is not None and self.fps_cap <= 0:
            raise ValueError(f"fps_cap must be > 0, got {self.fps_cap}")
        if self.codec not in _RATE_CAPPED:  # nothing to cap: recorded as None (their digest stays what it was)
            object.__setattr__(self, "max_bytes_ratio", None)
        if self.max_bytes_ratio is not None and not 0 < self.max_bytes_ratio:
            raise ValueError(f"max_bytes_ratio must be > 0 (or None: no cap), got {self.max_bytes_ratio}")
        if self.crf is not None and not (self.codec in ("vp9", "h264") and 0 <= self.crf <= (63 if self.codec == "vp9" else 51)):
            raise ValueError(f"crf applies to vp9 (0-63) and h264 (0-51), got crf={self.crf} with codec {self.codec!r}")

    def digest(self) -> str:
        d = asdict(self)
        for k in ("crf", "max_bytes_ratio"):  # settings without one keep the digest they had before the field existed
            if d[k] is None:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SampleSource:
    """One input (video or image) and its annotation."""

    path: str
    """Absolute path of the video file."""
    label: int | None = None
    caption: str | None = None
    """The first caption (None: uncaptioned)."""
    origin: str = ""
    """Where the entry came from (for skip reasons), e.g. ``annotations.csv:12``."""
    captions: list[str] = field(default_factory=list)
    """Every caption of the item, in annotation order (image-text and video-text data sets; ``[]``: none)."""
    qa: list[dict[str, Any]] = field(default_factory=list)
    """Question-answer pairs about the video, in annotation order (video-QA data sets; ``[]``: none): each
    ``{"question": str, "answer": [str, ...], "question_id": str | int, "type": str}`` (``type`` may be absent)."""


# ---------------------------------------------------------------------------------------------------------------
# probe + re-encode one input (runs in worker processes)


class Reject(Exception):
    """An input that is skipped; the message is the reason recorded in the manifest."""


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def _target_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    s = min(w, h)
    if s <= short_side:
        return _even(w) if w % 2 else w, _even(h) if h % 2 else h
    scale = short_side / s
    return _even(w * scale), _even(h * scale)


class _OverBudget(Exception):
    """The encode passed its byte budget: it stops there and is done again with a rate cap."""


@dataclass
class _Encoded:
    """What one pass over the input produced."""

    data: bytes
    n_in: int
    n_out: int
    width: int
    height: int
    warnings: list[str]


def _seconds(inp: Any, vs: Any) -> float | None:
    """The input's duration from its header (None: not recorded)."""
    if vs.duration and vs.time_base:
        return float(vs.duration * vs.time_base)
    return float(inp.duration) / 1e6 if inp.duration else None


def encode_video(src: SampleSource, st: EncodeSettings) -> tuple[bytes, dict[str, Any]]:
    """Decode ``src`` and re-encode it (or remux for ``copy``). Returns (mp4 bytes, info).

    A truncated input is packed with what decodes (``info["frames"]`` the true count, ``info["warnings"]`` saying
    why) unless ``st.on_truncated == "skip"``. With ``st.max_bytes_ratio``, an encode that would take more than that
    share of the source file's bytes is done again with x264's VBV capping the rate (``info["rate_cap_kbit_s"]``, only
    then); a second and third try lower the cap by what the previous one overshot, after which a still larger
    result is kept with a warning.

    Raises:
        Reject: an unusable input (the message is the reason).
    """
    import av

    path = Path(src.path)
    if not path.exists():
        raise Reject("missing file" + (f" (annotation {src.origin})" if src.origin != "input" else ""))
    if not os.access(path, os.R_OK):
        raise Reject("unreadable: permission denied")
    src_bytes = path.stat().st_size
    if src_bytes == 0:
        raise Reject("empty file (0 bytes)")
    try:
        inp = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise Reject(f"not a readable video container ({type(e).__name__}: {e})") from None
    budget = None if st.max_bytes_ratio is None else st.max_bytes_ratio * src_bytes
    with inp:
        if not inp.streams.video:
            raise Reject("no video stream (audio-only)" if inp.streams.audio else "no video stream")
        vs = inp.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        expected = vs.frames or (int(float(inp.duration) / 1e6 * float(rate)) if inp.duration else 0)
        src_codec = vs.codec_context.name
        out_rate = Fraction(rate).limit_denominator(1001)
        if st.fps_cap is not None and float(out_rate) > st.fps_cap:
            out_rate = Fraction(st.fps_cap).limit_denominator(1001)
        seconds = _seconds(inp, vs)
        try:  # stopped early once over the budget only where the header says how long the input is (for the cap)
            enc: _Encoded | None = _transcode(inp, vs, st, rate, out_rate, None, budget if seconds else None)
        except _OverBudget:
            enc = None
    cap_kbit = None
    if budget is not None and (enc is None or len(enc.data) > budget):
        if enc is not None and enc.n_in and not seconds:
            seconds = enc.n_in / float(rate)
        if seconds:
            cap_kbit = max(1, int(_CAP_SHARE * budget * 8 / 1000 / seconds))
            for attempt in range(_CAP_TRIES):
                with av.open(str(path)) as inp:
                    enc = _transcode(inp, inp.streams.video[0], st, rate, out_rate, cap_kbit, None)
                if len(enc.data) <= budget or attempt == _CAP_TRIES - 1:
                    break
                cap_kbit = max(1, int(cap_kbit * _CAP_SHARE * budget / len(enc.data)))
    assert enc is not None
    n_in, n_out, warnings = enc.n_in, enc.n_out, enc.warnings
    if n_in == 0:
        raise Reject("no decodable video frames")
    if expected and n_in < 0.9 * expected - 1 and not warnings:
        if st.on_truncated == "skip":
            raise Reject(f"truncated: decoded {n_in} of {expected} frames the header announces")
        warnings.append(f"truncated: decoded {n_in} of {expected} frames the header announces")
    if n_out < st.min_frames:
        raise Reject(f"too short: {n_out} frames < {st.min_frames} needed for sparse sampling"
                     + (f" ({warnings[0]})" if warnings else ""))
    if budget is not None and len(enc.data) > budget:
        warnings.append(f"over the byte budget: {len(enc.data) / src_bytes:.2f}x the source's bytes "
                        f"(max_bytes_ratio {st.max_bytes_ratio:g})"
                        + (f" at a rate cap of {cap_kbit} kbit/s" if cap_kbit else ", duration unknown: not capped"))
    fps = float(out_rate)
    data = enc.data
    info = {
        "frames": n_out,
        "width": enc.width,
        "height": enc.height,
        "fps": round(fps, 6),
        "duration": round(n_out / fps, 6),
        "codec": st.codec if st.codec != "copy" else src_codec,
        "source_codec": src_codec,
        # where a reader can seek: [[frame index, pts], ...] (umt.data.decode.decode_sampled); no per-sample probing
        "keyframes": probe_keyframes(data),
    }
    if cap_kbit is not None:  # only then: an uncapped sample's info (and its sample's JSON) is unchanged
        info["rate_cap_kbit_s"] = cap_kbit
    if warnings:  # only then: a clean input's info (and its sample's JSON) is unchanged
        info["warnings"] = warnings
    return data, info


def _transcode(inp: Any, vs: Any, st: EncodeSettings, rate: Fraction, out_rate: Fraction, cap_kbit: int | None,
               stop_above: float | None) -> _Encoded:
    """One pass: decode ``vs`` of the open container ``inp`` and re-encode it (or remux it for ``copy``) into mp4,
    x264's rate capped at ``cap_kbit`` kbit/s (None: CRF alone).

    Raises:
        Reject: unusable input.
        _OverBudget: the output passed ``stop_above`` bytes (None: never stops).
    """
    import av

    vs.thread_type = "NONE"  # frame-threaded decoding made the encoded output vary run to run
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    n_in = n_out = 0
    width = height = 0
    next_t = 0.0
    ostream = None
    warnings: list[str] = []

    def mux(pkt: Any) -> None:
        out.mux(pkt)
        if stop_above is not None and buf.tell() > stop_above:
            raise _OverBudget

    try:
        if st.codec == "copy":
            if st.fps_cap is not None:
                raise Reject("--fps-cap needs re-encoding (not --codec copy)")
            os_ = out.add_stream_from_template(vs)
            for pkt in inp.demux(vs):
                if pkt.size == 0:
                    continue
                for frame in pkt.decode():  # decode to validate and count; the packet itself is copied
                    width, height = frame.width, frame.height
                    n_out += 1
                pkt.stream = os_
                out.mux(pkt)
            n_in = n_out
        else:
            enc_name, pix_fmt, opts = CODECS[st.codec]
            if st.crf is not None:
                opts = {**opts, "crf": str(st.crf)}
            if cap_kbit is not None:  # x264's VBV: a buffer of one second at the capped rate
                opts = {**opts, "x264-params": f"{opts['x264-params']}:vbv-maxrate={cap_kbit}:vbv-bufsize={cap_kbit}"}
            for frame in inp.decode(vs):
                n_in += 1
                if st.fps_cap is not None:
                    t = float(frame.time) if frame.time is not None else n_in / float(rate)
                    if t + 1e-6 < next_t:
                        continue
                    next_t = max(next_t + 1.0 / st.fps_cap, t)
                if ostream is None:
                    width, height = _target_size(frame.width, frame.height, st.short_side)
                    ostream = out.add_stream(enc_name, rate=out_rate)
                    ostream.width, ostream.height, ostream.pix_fmt = width, height, pix_fmt
                    ostream.codec_context.gop_size = st.gop
                    ostream.codec_context.thread_count = 1  # one process per input: deterministic output
                    ostream.codec_context.options = {**opts, "keyint_min": str(st.gop)}
                # swscale bicubic (PyAV's reformat default is bilinear; bicubic downsizes with less aliasing)
                f2 = frame.reformat(width=width, height=height, format=pix_fmt, interpolation="BICUBIC")
                # a fresh, tightly packed frame: x264's output varied run to run with the reformatted frame
                # (its buffer padding is uninitialised), which broke byte-identical rebuilds
                f2 = av.VideoFrame.from_ndarray(f2.to_ndarray(), format=pix_fmt)
                f2.pts, f2.time_base = n_out, Fraction(1) / out_rate
                for pkt in ostream.encode(f2):
                    mux(pkt)
                n_out += 1
            if ostream is not None:
                for pkt in ostream.encode():
                    mux(pkt)
    except (Reject, _OverBudget):
        raise
    except (av.FFmpegError, ValueError, OSError) as e:
        reason = f"decode error after {n_in} frames, truncated or corrupt ({type(e).__name__}: {e})"
        if st.on_truncated == "skip" or n_out < st.min_frames:
            raise Reject(reason) from None
        try:  # keep what decoded: flush the encoder's delayed frames
            for pkt in ostream.encode() if ostream is not None else ():
                mux(pkt)
        except (av.FFmpegError, ValueError, OSError):
            raise Reject(reason) from None
        warnings.append(f"truncated: decoding stopped after {n_in} frames ({type(e).__name__}); "
                        f"kept the {n_out} frames before it")
    finally:
        try:
            out.close()
        except Exception:  # noqa: BLE001 - closing a muxer with no stream fails; the reason is reported above
            pass
    return _Encoded(buf.getvalue(), n_in, n_out, width, height, warnings)
