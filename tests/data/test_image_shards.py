"""Image-text (and video-text) shards: the round trip of images and caption lists, bad inputs skipped with reasons
and counted, byte-identical rebuilds, resume after a crash, --append/--overwrite rules, one modality per directory."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from umt.data.build.images import ImageEncodeSettings, psnr
from umt.data.decode import decode_image
from umt.data.build.shards import ShardDirError, build_shards
from umt.data.format import decode_meta, read_manifest
from umt.data.format import ShardIndex
from umt.data.format import decode_captions


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth colour image (JPEG-friendly): uint8 [h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / (7 + seed))
    g = 128 + 100 * np.cos(y / (9 + seed))
    b = (x + y) * 200 / (w + h) + 20 * seed
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, exif_orientation: int = 0) -> Path:
    from PIL import Image

    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    kw = {}
    if exif_orientation:
        ex = Image.Exif()
        ex[0x0112] = exif_orientation
        kw["exif"] = ex.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def _image_set(root: Path) -> Path:
    """Six good images (PNG, grey, RGBA, JPEG with an EXIF rotation, a big one) and bad ones, with a JSONL file
    using caption lists, a plain caption and COCO-style repeated rows; returns the annotation file."""
    _save(root / "a.png", _photo(40, 30, 0))
    _save(root / "grey.png", _photo(36, 36, 1), mode="L")
    _save(root / "alpha.png", _photo(30, 40, 2), mode="RGBA")
    _save(root / "rot.jpg", _photo(48, 32, 3), fmt="JPEG", exif_orientation=6)  # stored 48x32, shown 32x48
    _save(root / "big.png", _photo(200, 100, 4))
    _save(root / "coco.png", _photo(24, 24, 5))
    (root / "corrupt.jpg").write_bytes(b"this is not an image at all\n" * 20)
    data = io.BytesIO()
    from PIL import Image

    Image.fromarray(_photo(64, 64, 6)).save(data, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 3])
    (root / "empty.png").write_bytes(b"")
    _save(root / "nocap.png", _photo(20, 20, 7))
    _save(root / "blank.png", _photo(20, 20, 8))
    rows = [
        {"image": "a.png", "caption": ["a red and green pattern", "stripes of colour"]},
        {"image": "grey.png", "caption": "a grey picture"},
        {"image": "alpha.png", "caption": ["has alpha", "", "  drops the empty one  "]},
        {"image": "rot.jpg", "caption": ["rotated by exif"]},
        {"image": "big.png", "caption": ["wide image, capped"]},
        {"image": "coco.png", "caption": "coco row one"},
        {"image": "corrupt.jpg", "caption": "bad bytes"},
        {"image": "coco.png", "caption": "coco row two"},
        {"image": "truncated.jpg", "caption": "cut short"},
        {"image": "empty.png", "caption": "zero bytes"},
        {"image": "missing.png", "caption": "not there"},
        {"image": "nocap.png"},
        {"image": "blank.png", "caption": ["", "   "]},
        {"image": "coco.png", "caption": "coco row three"},
    ]
    ann = root / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ann


CAPTIONS = {
    "a.png": ["a red and green pattern", "stripes of colour"],
    "grey.png": ["a grey picture"],
    "alpha.png": ["has alpha", "drops the empty one"],
    "rot.jpg": ["rotated by exif"],
    "big.png": ["wide image, capped"],
    "coco.png": ["coco row one", "coco row two", "coco row three"],
}
ST = ImageEncodeSettings(short_side=64, quality=90)


def _digest(d: Path) -> dict[str, str]:
    names = sorted(p.name for p in d.iterdir() if p.suffix in (".tar", ".idx") or p.name == "manifest.json")
    return {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in names}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    ann = _image_set(root / "src")
    out = root / "shards"
    build_shards([], out, annotations=ann, settings=ST, samples_per_shard=4)
    return ann, out


def test_image_round_trip_and_skips(built: tuple[Path, Path]) -> None:
    from PIL import Image, ImageOps

    ann, out = built
    m = read_manifest(out)
    assert m["modality"] == "image" and m["num_samples"] == 6 and [s["samples"] for s in m["shards"]] == [4, 2]
    assert m["encoding"] == {"short_side": 64, "quality": 90, "container": "jpeg"} and m["codecs"] == ["jpeg"]
    assert m["components"][0] == "jpg"
    assert m["captions"] == {"captioned": 6, "total": 10, "per_item": {"1": 3, "2": 2, "3": 1}}
    reasons = {Path(s["input"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg", "empty.png", "missing.png", "nocap.png", "blank.png"}
    assert "not a readable image" in reasons["corrupt.jpg"]
    assert "corrupt or truncated" in reasons["truncated.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "missing file" in reasons["missing.png"] and "ann.jsonl:11" in reasons["missing.png"]
    assert reasons["nocap.png"].startswith("missing caption") and "ann.jsonl:12" in reasons["nocap.png"]
    assert reasons["blank.png"].startswith("empty caption")
    ix = ShardIndex(out, m["shards"])
    seen = []
    for i in range(len(ix)):
        meta, info = decode_meta(ix.read(i, "meta")), json.loads(ix.read(i, "json"))
        name = Path(info["source"]).name
        assert meta["index"] == i == info["index"] and meta["frames"] == 1
        assert decode_captions(ix.read(i, "txt")) == CAPTIONS[name]  # every caption back, in annotation order
        assert info["caption"] == CAPTIONS[name][0] and info.get("captions", [info["caption"]]) == CAPTIONS[name]
        img = decode_image(ix.read(i, "jpg"))  # a real JPEG, 3 channels, the stored size
        assert ix.read(i, "jpg")[:2] == b"\xff\xd8" and img.shape == (meta["height"], meta["width"], 3)
        with Image.open(info["source"]) as src:  # the upright source, RGB, resized as the builder does
            want = ImageOps.exif_transpose(src).convert("RGB")
            if min(want.size) > 64:
                want = want.resize((meta["width"], meta["height"]), Image.Resampling.BICUBIC, reducing_gap=None)
            assert psnr(img, np.asarray(want)) > 30
        if name == "rot.jpg":
            assert (meta["width"], meta["height"]) == (32, 48) == (info["source_height"], info["source_width"])
        if name == "big.png":
            assert (meta["width"], meta["height"]) == (128, 64)  # short side 100 capped to 64, aspect kept
        seen.append(name)
    ix.close()
    assert sorted(seen) == sorted(CAPTIONS)
    rows = [json.loads(x) for x in (out / "sources.jsonl").read_text().splitlines()]
    assert sorted(r["captions"] for r in rows) == [1, 1, 1, 2, 2, 3]  # per-item caption counts


def test_image_build_is_deterministic_and_resumes(built: tuple[Path, Path], tmp_path: Path) -> None:
    ann, ref = built
    build_shards([], tmp_path / "again", annotations=ann, settings=ST, samples_per_shard=4)
    assert _digest(tmp_path / "again") == _digest(ref)  # byte-identical rebuild

    class Crash(RuntimeError):
        pass

    def crash(k: int) -> None:
        if k == 0:
            raise Crash

    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        build_shards([], out, annotations=ann, settings=ST, samples_per_shard=4, _after_shard=crash)
    assert not (out / "manifest.json").exists()
    res = build_shards([], out, annotations=ann, settings=ST, samples_per_shard=4)
    assert res.encoded == 0 and _digest(out) == _digest(ref)  # resumed from the cache, same bytes
    assert build_shards([], out, annotations=ann, settings=ST, samples_per_shard=4).already_built
    with pytest.raises(ShardDirError, match="--overwrite"):  # other settings: another data set
        build_shards([], out, annotations=ann, settings=ImageEncodeSettings(short_side=48), samples_per_shard=4)
    res = build_shards([], out, annotations=ann, settings=ImageEncodeSettings(short_side=48), samples_per_shard=4,
                       mode="overwrite")
    assert res.num_samples == 6 and read_manifest(out)["encoding"]["short_side"] == 48


def test_append_images_and_one_modality_per_directory(built: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tests.data_utils import make_clip
    from umt.data.build.cli import main

    ann, ref = built
    out = tmp_path / "set"
    build_shards([], out, annotations=ann, settings=ST, samples_per_shard=4)
    more = tmp_path / "more"
    _save(more / "new.png", _photo(30, 30, 9))
    ann2 = more / "ann.json"  # JSON (a list) this time
    ann2.write_text(json.dumps([{"image": "new.png", "caption": ["one", "two"]},
                                {"image": str(ann.parent / "a.png"), "caption": "already in"}]))
    res = build_shards([], out, annotations=ann2, settings=ST, samples_per_shard=4, mode="append")
    m = read_manifest(out)
    assert res.added == 1 and len(res.duplicates) == 1 and m["num_samples"] == 7
    assert m["captions"]["total"] == 12 and m["captions"]["per_item"] == {"1": 3, "2": 3, "3": 1}

    clip = make_clip(tmp_path / "v" / "c.mp4", n_frames=9)
    vann = tmp_path / "v" / "ann.jsonl"
    vann.write_text(json.dumps({"video": clip.name, "caption": ["a clip", "a short clip"]}) + "\n")
    with pytest.raises(ShardDirError, match="one modality"):
        build_shards([], out, annotations=vann, mode="append")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"image": str(ann.parent / "a.png"), "caption": "x"}) + "\n"
                     + json.dumps({"video": str(clip), "caption": "y"}) + "\n")
    capsys.readouterr()
    assert main(["--annotations", str(mixed), "--out", str(tmp_path / "mix"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "two directories" in err and not (tmp_path / "mix").exists()
    # the CLI builds images from an image annotation file (modality from the rows) and video-text with lists
    assert main(["--annotations", str(ann2), "--out", str(tmp_path / "cli"), "--quiet", "--short-side", "32",
                 "--jpeg-quality", "80"]) == 0
    mc = read_manifest(tmp_path / "cli")
    assert mc["modality"] == "image" and mc["encoding"]["quality"] == 80 and mc["num_samples"] == 2
    assert main(["--annotations", str(vann), "--out", str(tmp_path / "vid"), "--quiet", "--codec", "mjpeg"]) == 0
    mv = read_manifest(tmp_path / "vid")
    assert mv["modality"] == "video" and mv["captions"] == {"captioned": 1, "total": 2, "per_item": {"2": 1}}
    ix = ShardIndex(tmp_path / "vid", mv["shards"])
    assert decode_captions(ix.read(0, "txt")) == ["a clip", "a short clip"]
    ix.close()


def test_info_shows_images_and_captions(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from umt.data.build.info import main, summarize

    s = summarize(built[1])
    assert s["modality"] == "image" and s["captions"] == {"items": 6, "total": 10, "per_item": {"1": 3, "2": 2, "3": 1}}
    assert s["short_side"]["max"] == 64 and s["classes"] == {}
    assert main([str(built[1])]) == 0
    text = capsys.readouterr().out
    assert "6 images" in text and "JPEG quality 90" in text and "10 on 6 of 6 images" in text
    assert "duration" not in text  # images have none


def test_sample_image_shards(built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from umt.data.build.samples import SAMPLE_IMAGES_DIR, ensure_sample_image_shards

    monkeypatch.chdir(tmp_path)
    out = ensure_sample_image_shards()
    assert out == Path("shards/built/sample_images")
    m = read_manifest(out)
    rows = [json.loads(x) for x in (SAMPLE_IMAGES_DIR / "annotations.jsonl").read_text().splitlines()]
    assert m["modality"] == "image" and m["num_samples"] == len(rows) == 16 and m["skipped"] == []
    assert m["captions"]["total"] == sum(len(r["caption"]) for r in rows) == 32
    before = _digest(out)
    assert ensure_sample_image_shards() == out and _digest(out) == before  # up to date: nothing rewritten
    user = tmp_path / "mine"
    shutil.copytree(built[1], user)  # someone's own image set: never written to
    mine = _digest(user)
    with pytest.raises(ShardDirError, match="another data set"):
        ensure_sample_image_shards(user)
    assert _digest(user) == mine
