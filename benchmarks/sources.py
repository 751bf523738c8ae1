"""Source videos for the data benchmarks: typical 720p H.264 web video cut from a real film.

The peers comparison needs inputs like a user's raw data set: 10 s clips of real footage at 1280x720,
H.264 with a key frame every 2 s (``keyint`` 48 at 24 frames/s, the spacing video sites use), CRF 23. They are cut
from the *Big Buck Bunny* trailer (CC BY 3.0, Blender Foundation) in the moviepy 2.2.1 source archive, which the user
downloads from the package registry first (nothing here downloads)::

    pip download --no-deps --no-binary :all: moviepy==2.2.1 -d /tmp/mp
    python -m benchmarks.sources --moviepy-sdist /tmp/mp/moviepy-2.2.1.tar.gz --out benchmarks/.sources

Writes ``clip_NN.mp4`` (``--clips`` cuts of ``--seconds`` s at evenly spaced starts) and ``long_60s.mp4`` (the
trailer looped to 60 s) into ``--out``; an existing file of the same name is kept (resumable), never overwritten.
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

__all__ = ["TRAILER_MEMBER", "make_sources", "write_h264"]

log = logging.getLogger(__name__)

TRAILER_MEMBER = "docs/_static/medias/getting_started/moviepy_10_minutes/trailer_bbb.mp4"
_FPS = 24


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


def make_sources(sdist: str | Path, out: str | Path, *, clips: int = 48, seconds: float = 10.0) -> list[Path]:
    """Cut ``clips`` clips of ``seconds`` s and one 60 s clip from the trailer into ``out`` (kept if present).

    Returns:
        The short clips' paths, then the 60 s clip's.

    Raises:
        FileNotFoundError: ``sdist`` is not the moviepy 2.2.1 source archive.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"clip_{i:02d}.mp4" for i in range(clips)] + [out / "long_60s.mp4"]
    if all(p.is_file() for p in paths):
        return paths
    frames = _trailer_frames(Path(sdist))
    n = int(seconds * _FPS)
    starts = np.linspace(0, len(frames) - n, clips).astype(int)
    for p, s in zip(paths[:-1], starts):
        if not p.is_file():
            log.info("writing %s (frames %d..%d)", p, s, s + n)
            write_h264(p, frames[s : s + n])
    if not paths[-1].is_file():
        write_h264(paths[-1], [frames[k % len(frames)] for k in range(60 * _FPS)])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moviepy-sdist", required=True, help="path of moviepy-2.2.1.tar.gz (see above)")
    p.add_argument("--out", default="benchmarks/.sources", help="output folder (default: benchmarks/.sources)")
    p.add_argument("--clips", type=int, default=48, help="number of short clips (default 48)")
    p.add_argument("--seconds", type=float, default=10.0, help="short clip length in seconds (default 10)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = make_sources(args.moviepy_sdist, args.out, clips=args.clips, seconds=args.seconds)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    print(f"{len(paths)} source videos in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
