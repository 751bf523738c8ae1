"""Source videos for the data benchmarks: three kinds of H.264 web video cut from one real film.

The storage matrix and the peers comparison need inputs like a user's raw data set. All kinds are 10 s cuts of the
*Big Buck Bunny* trailer (CC BY 3.0, Blender Foundation) in the moviepy 2.2.1 source archive, encoded from the same
decoded frames (the same content), which the user downloads from the package registry first (nothing here
downloads)::

    pip download --no-deps --no-binary :all: moviepy==2.2.1 -d /tmp/mp
    python -m benchmarks.sources --moviepy-sdist /tmp/mp/moviepy-2.2.1.tar.gz --out benchmarks/.sources

Source kinds (:data:`KINDS`; ``--kinds`` picks some):

* ``short_gop`` (``OUT/clip_NN.mp4``): 1280x720 H.264, a key frame every 2 s (``keyint`` 48 at 24 frames/s),
  CRF 23, x264 preset fast: high-bit-rate video with frequent key frames.
* ``long_gop`` (``OUT/long_gop/clip_NN.mp4``): 1280x720 H.264 with x264's own defaults (preset medium, CRF 23,
  3 B-frames, a key frame at most every 250 frames, so one or two per 10 s clip): a typical web upload.
* ``webvid`` (``OUT/webvid/clip_NN.mp4``): 596x336 H.264, x264 defaults but CRF 28: low resolution and low bit rate,
  the size of WebVid's preview clips.

Also writes ``long_60s.mp4`` (the trailer looped to 60 s, short-GOP settings). Clip ``i`` of every kind starts at
the same frame (``--clips`` cuts of ``--seconds`` s at evenly spaced starts). An existing file of the same name is
kept (resumable), never overwritten.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tarfile
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from umt.fileio import atomic_path

__all__ = ["KINDS", "TRAILER_MEMBER", "make_sources", "write_h264"]

log = logging.getLogger(__name__)

TRAILER_MEMBER = "docs/_static/medias/getting_started/moviepy_10_minutes/trailer_bbb.mp4"
_FPS = 24

#: source kind → (sub-folder of ``--out``, (width, height) or None for the trailer's 1280x720, libx264 options)
KINDS: dict[str, tuple[str, tuple[int, int] | None, dict[str, str]]] = {
    "short_gop": ("", None, {"preset": "fast", "crf": "23", "g": str(2 * _FPS), "keyint_min": str(_FPS)}),
    # x264's defaults spelled out (FFmpeg's wrapper would otherwise pass its own GOP of 12)
    "long_gop": ("long_gop", None, {"preset": "medium", "crf": "23", "g": "250", "keyint_min": "25", "bf": "3"}),
    "webvid": ("webvid", (596, 336), {"preset": "medium", "crf": "28", "g": "250", "keyint_min": "25", "bf": "3"}),
}


def _trailer_frames(sdist: Path) -> list[np.ndarray]:
    """All frames of the trailer as RGB arrays [720, 1280, 3] (about 1,300 frames, 3.6 GB: decoded once)."""
    import io

    import av

    with tarfile.open(sdist) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith(TRAILER_MEMBER)), None)
        if member is None:
            raise FileNotFoundError(f"{sdist} holds no {TRAILER_MEMBER}: is it the moviepy 2.2.1 source archive?")
        data = tf.extractfile(member).read()  # type: ignore[union-attr]
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def write_h264(path: Path, frames: Iterable[np.ndarray], fps: int = _FPS,
               options: dict[str, str] | None = None) -> None:
    """Encode RGB ``frames`` (uint8 [H, W, 3], one size) as H.264 in mp4 at ``fps`` with libx264 ``options``
    (default: the web-video settings of the module docstring), written durably (:mod:`umt.fileio`)."""
    import av

    frames = iter(frames)
    first = next(frames)
    opts = options if options is not None else {"preset": "fast", "crf": "23", "g": str(2 * fps),
                                                 "keyint_min": str(fps)}
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        s.codec_context.options = opts
        for n, a in enumerate(itertools.chain([first], frames)):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts, f.time_base = n, Fraction(1, fps)
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def _resized(frames: Sequence[np.ndarray], size: tuple[int, int] | None) -> Iterable[np.ndarray]:
    """``frames`` scaled to ``size`` (width, height) with swscale's bicubic filter (None: unchanged)."""
    import av

    for a in frames:
        if size is None:
            yield a
        else:
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            yield f.reformat(width=size[0], height=size[1], interpolation="BICUBIC").to_ndarray()


def make_sources(sdist: str | Path, out: str | Path, *, clips: int = 48, seconds: float = 10.0,
                 kinds: Sequence[str] = ("short_gop",)) -> list[Path]:
    """Cut ``clips`` clips of ``seconds`` s of each of ``kinds`` (:data:`KINDS`) and one 60 s clip from the trailer
    into ``out`` (each kept if present).

    Returns:
        The clips' paths, kind by kind in ``kinds`` order, then the 60 s clip's.

    Raises:
        FileNotFoundError: ``sdist`` is not the moviepy 2.2.1 source archive.
        KeyError: an unknown kind.
    """
    out = Path(out)
    plan = []
    for kind in kinds:
        sub, size, opts = KINDS[kind]
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        plan += [(d / f"clip_{i:02d}.mp4", i, size, opts) for i in range(clips)]
    long60 = out / "long_60s.mp4"
    paths = [p for p, *_ in plan] + [long60]
    if all(p.is_file() for p in paths):
        return paths
    frames = _trailer_frames(Path(sdist))
    n = int(seconds * _FPS)
    starts = np.linspace(0, len(frames) - n, clips).astype(int)
    for p, i, size, opts in plan:
        if not p.is_file():
            log.info("writing %s (frames %d..%d)", p, starts[i], starts[i] + n)
            write_h264(p, _resized(frames[starts[i] : starts[i] + n], size), options=opts)
    if not long60.is_file():
        write_h264(long60, [frames[k % len(frames)] for k in range(60 * _FPS)], options=KINDS["short_gop"][2])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moviepy-sdist", required=True, help="path of moviepy-2.2.1.tar.gz (see above)")
    p.add_argument("--out", default="benchmarks/.sources", help="output folder (default: benchmarks/.sources)")
    p.add_argument("--clips", type=int, default=48, help="number of short clips (default 48)")
    p.add_argument("--seconds", type=float, default=10.0, help="short clip length in seconds (default 10)")
    p.add_argument("--kinds", default="short_gop",
                   help=f"comma list of source kinds, of {','.join(KINDS)} (default short_gop)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = make_sources(args.moviepy_sdist, args.out, clips=args.clips, seconds=args.seconds,
                             kinds=args.kinds.split(","))
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e}")
        return 2
    print(f"{len(paths)} source videos in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
