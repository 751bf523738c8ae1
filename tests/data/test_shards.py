"""Shard builder: round trip of every field, bad inputs, resume after a crash, determinism, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.data_utils import cached, good_shards, make_audio_only, make_clip, make_good_set
from umt.data.decode import decode_sampled as decode_frames
from umt.data.build.shards import DEFAULT_CODEC, DEFAULT_GOP, EncodeSettings, build_shards
from umt.data.format import META_BYTES, decode_meta, encode_meta, read_manifest


def _digest_dir(d: Path) -> dict[str, str]:
    """sha256 of every shard, index and the manifest."""
    names = sorted(p.name for p in d.iterdir() if p.suffix in (".tar", ".idx") or p.name == "manifest.json")
    return {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in names}


def test_meta_roundtrip() -> None:
    b = encode_meta(frames=120, width=320, height=240, label=3, index=7, fps_milli=29970, duration_ms=4004)
    assert len(b) == META_BYTES == 32
    m = decode_meta(b)
    got = (m["frames"], m["width"], m["height"], m["label"], m["index"], m["fps_milli"])
    assert got == (120, 320, 240, 3, 7, 29970)
    assert decode_meta(encode_meta(frames=9))["label"] == -1  # unlabelled default
    with pytest.raises(ValueError):
        decode_meta(b[:-4])


def test_round_trip_every_field(tmp_path_factory: pytest.TempPathFactory, good_shard_set: Path) -> None:
    import webdataset as wds

    d = good_shard_set
    clips, ann = cached("src", tmp_path_factory, lambda p: make_good_set(p))
    rows = {os.path.abspath(ann.parent / json.loads(x)["video"]): json.loads(x) for x in ann.read_text().splitlines()}
    m = read_manifest(d)
    assert m["num_samples"] == 8 and [s["samples"] for s in m["shards"]] == [3, 3, 2]
    assert m["classes"] == ["cat", "dog", "eel"] and m["codecs"] == [DEFAULT_CODEC] and m["skipped"] == []
    assert m["encoding"]["codec"] == DEFAULT_CODEC and m["encoding"]["gop"] == DEFAULT_GOP
    for s in m["shards"]:  # manifest bytes and sha256 describe the files on disk
        data = (d / s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]

    urls = [str(d / s["name"]) for s in m["shards"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = decode_meta(sample["meta"])
        info = json.loads(sample["json"])
        row = rows[info["source"]]
        assert sample["__key__"] == f"{meta['index']:08d}" and info["index"] == meta["index"]
        assert m["classes"][int(sample["cls"])] == row["label"] == info["class_name"]
        assert meta["label"] == int(sample["cls"]) == info["label"]
        assert sample["txt"].decode() == row["caption"] == info["caption"]
        src_i = int(Path(info["source"]).stem[-2:])
        assert meta["frames"] == info["frames"] == 12 + 3 * src_i  # every frame kept, none invented
        size = (64, 48) if src_i % 2 == 0 else (48, 64)
        assert (meta["width"], meta["height"]) == size == (info["width"], info["height"])
        assert info["codec"] == DEFAULT_CODEC and info["source_codec"] == "h264" and info["fps"] == 25
        assert meta["fps_milli"] == 25000 and abs(info["duration"] - meta["frames"] / 25) < 1e-6
        # the stored video really is those frames: brightness encodes the frame number (tests/data_utils.py)
        fr = decode_frames(sample["mp4"], [0, meta["frames"] - 1])
        assert fr.shape == (2, meta["height"], meta["width"], 3)
        ref = np.stack([np.full(3, (16 + 10 * k) % 224) for k in (0, meta["frames"] - 1)])
        assert np.abs(np.median(fr.reshape(2, -1, 3), axis=1) - ref).max() <= 6
        seen.append(meta["index"])
    assert seen == list(range(8))  # manifest order = shard order


def test_index_matches_dali_wds2idx(good_shard_set: Path, tmp_path: Path) -> None:
    wds2idx = pytest.importorskip("wds2idx")
    d = good_shard_set
    for tar in sorted(d.glob("*.tar")):
        out = tmp_path / (tar.stem + ".idx")
        with wds2idx.IndexCreator(str(tar), str(out), verbose=False) as c:
            c.create_index()
        assert out.read_text() == tar.with_suffix(".idx").read_text()


def test_bad_inputs_are_skipped_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "in"
    good = [make_clip(src / f"good{i}.mp4", n_frames=10) for i in range(2)]
    (src / "empty.mp4").write_bytes(b"")
    (src / "notvideo.mp4").write_text("hello, I am text\n" * 50)
    whole = make_clip(tmp_path / "whole.mp4", n_frames=30).read_bytes()
    (src / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    make_audio_only(src / "audio.mp4")
    make_clip(src / "short.mp4", n_frames=4)
    os.symlink(tmp_path / "nowhere.mp4", src / "dangling.mp4")  # unreadable path
    ann = tmp_path / "labels.csv"
    ann.write_text("path,label\nin/good0.mp4,0\nin/good1.mp4,1\nin/missing.mp4,2\n")
    res = build_shards([src, tmp_path / "no_such_dir"], tmp_path / "out", annotations=ann, samples_per_shard=4)
    reasons = {Path(s["input"]).name: s["reason"] for s in res.skipped}
    assert res.num_samples == 2
    assert "empty" in reasons["empty.mp4"]
    assert "not a readable video" in reasons["notvideo.mp4"]
    assert "truncated" in reasons["truncated.mp4"] or "not a readable video" in reasons["truncated.mp4"]
    assert "audio-only" in reasons["audio.mp4"]
    assert "too short" in reasons["short.mp4"] and "4 frames" in reasons["short.mp4"]
    assert "missing" in reasons["dangling.mp4"]
    assert "missing" in reasons["missing.mp4"] and "labels.csv:4" in reasons["missing.mp4"]
    assert "missing" in reasons["no_such_dir"]
    assert len(res.skipped) == 8
    m = read_manifest(tmp_path / "out")
    assert sorted(Path(s["input"]).name for s in m["skipped"]) == sorted(reasons)
    assert m["classes"] == []  # integer labels stay integers


def _cut_faststart_mp4(tmp_path: Path) -> Path:
    """An mp4 whose index (moov) is intact but whose media data is cut: opens, then runs out of frames."""
    import av

    src = make_clip(tmp_path / "a.mp4", n_frames=60, width=64, height=48)
    fs = tmp_path / "fs.mp4"
    with av.open(str(src)) as i, av.open(str(fs), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.size:
                p.stream = s
                o.mux(p)
    data = fs.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    return tmp_path / "cut.mp4"


def test_truncated_inputs_are_packed_with_a_warning(tmp_path: Path) -> None:
    """A truncated but decodable input (an AVI whose header announces 60 frames, cut to about half; an
    mp4 cut after its index) is packed with the frames that decode, its true frame count and a manifest warning;
    ``on_truncated="skip"`` rejects it as before."""
    import av

    whole = make_clip(tmp_path / "src" / "whole.avi", n_frames=60, codec="mjpeg").read_bytes()
    avi = tmp_path / "in" / "cut.avi"
    avi.parent.mkdir()
    avi.write_bytes(whole[: len(whole) // 2])
    with av.open(str(avi)) as c:
        assert c.streams.video[0].frames == 60  # the header still announces every frame
        decodable = 0
        try:
            for _ in c.decode(video=0):
                decodable += 1
        except av.FFmpegError:
            pass
    assert 8 <= decodable < 40
    mp4 = _cut_faststart_mp4(tmp_path / "in")
    res = build_shards([avi, mp4], tmp_path / "out", settings=EncodeSettings(codec="mjpeg"))
    assert res.num_samples == 2 and res.skipped == []
    m = read_manifest(tmp_path / "out")
    assert sorted(Path(w["input"]).name for w in m["warnings"]) == ["cut.avi", "cut.mp4"]
    assert all(w["warning"].startswith("truncated") for w in m["warnings"]) and len(res.warnings) == 2
    from umt.data.format import ShardIndex

    ix = ShardIndex(tmp_path / "out", m["shards"])
    frames = {}
    for i in range(2):
        info = json.loads(ix.read(i, "json"))
        meta = decode_meta(ix.read(i, "meta"))
        assert meta["frames"] == info["frames"] and info["warnings"]
        fr = decode_frames(ix.read(i, "mp4"), [meta["frames"] - 1])  # the last packed frame really decodes
        assert abs(float(np.median(fr)) - (16 + 10 * (meta["frames"] - 1)) % 224) <= 6
        frames[Path(info["source"]).name] = meta["frames"]
    assert frames["cut.avi"] in (decodable, decodable - 1)

    res = build_shards([avi, mp4], tmp_path / "skip", settings=EncodeSettings(codec="mjpeg", on_truncated="skip"))
    assert res.num_samples == 0 and len(res.skipped) == 2
    assert all("truncated" in s["reason"] for s in res.skipped)
    assert not (tmp_path / "skip" / "manifest.json").exists()


def test_resume_after_crash_gives_identical_output(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    clips, ann = cached("src", tmp_path_factory, lambda p: make_good_set(p))
    ref = good_shards(tmp_path_factory)  # clean build, same inputs/settings/seed
    out = tmp_path / "out"

    class Crash(RuntimeError):
        pass

    def crash_after_first(k: int) -> None:
        if k == 0:
            raise Crash

    with pytest.raises(Crash):
        build_shards([], out, annotations=ann, samples_per_shard=3, _after_shard=crash_after_first)
    assert not (out / "manifest.json").exists()
    # a half-written shard and a damaged complete one, as a killed process might leave
    (out / "train-000001.tar.tmp").write_bytes(b"partial")
    shutil.copy(out / "train-000000.tar", out / "train-000002.tar")  # stale garbage under a final name
    res = build_shards([], out, annotations=ann, samples_per_shard=3)
    assert res.encoded == 0  # every input came from the encode cache
    assert _digest_dir(out) == _digest_dir(ref)
    assert not list(out.glob("*.tmp"))
    # a third run is a no-op that rewrites nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    build_shards([], out, annotations=ann, samples_per_shard=3)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


def test_determinism_and_seed(tmp_path_factory: pytest.TempPathFactory, good_shard_set: Path, tmp_path: Path) -> None:
    clips, ann = cached("src", tmp_path_factory, lambda p: make_good_set(p))
    ref = good_shard_set
    build_shards([], tmp_path / "a", annotations=ann, samples_per_shard=3, workers=2)  # processes: same bytes
    assert _digest_dir(tmp_path / "a") == _digest_dir(ref)
    build_shards([], tmp_path / "b", annotations=ann, samples_per_shard=3, seed=1)
    ma, mb = read_manifest(ref), read_manifest(tmp_path / "b")
    assert [s["sha256"] for s in ma["shards"]] != [s["sha256"] for s in mb["shards"]]  # another order


def test_settings_scale_gop_fps_and_copy(tmp_path: Path) -> None:
    import av

    src = make_clip(tmp_path / "big.mp4", n_frames=40, width=96, height=72, fps=25)
    st = EncodeSettings(codec="mjpeg", short_side=36, gop=1, fps_cap=12.5)
    build_shards([src], tmp_path / "o1", settings=st)
    from umt.data.format import ShardIndex

    m = read_manifest(tmp_path / "o1")
    ix = ShardIndex(tmp_path / "o1", m["shards"])
    meta = decode_meta(ix.read(0, "meta"))
    assert (meta["width"], meta["height"]) == (48, 36)  # short side 72 -> 36, 4:3 kept, even
    assert meta["frames"] == 20 and meta["fps_milli"] == 12500  # every second frame of 40 at 25 fps
    fr = decode_frames(ix.read(0, "mp4"), [1])
    assert abs(float(np.median(fr)) - (16 + 10 * 2)) <= 6  # output frame 1 is source frame 2
    with av.open(__import__("io").BytesIO(ix.read(0, "mp4"))) as c:
        assert c.streams.video[0].codec_context.name == "mjpeg"
    build_shards([src], tmp_path / "o2", settings=EncodeSettings(codec="copy"))
    m2 = read_manifest(tmp_path / "o2")
    assert m2["codecs"] == ["h264"]
    ix2 = ShardIndex(tmp_path / "o2", m2["shards"])
    assert decode_meta(ix2.read(0, "meta"))["frames"] == 40
    with av.open(str(src)) as c:
        src_pkts = [bytes(p) for p in c.demux(video=0) if p.size]
    with av.open(__import__("io").BytesIO(ix2.read(0, "mp4"))) as c:
        assert [bytes(p) for p in c.demux(video=0) if p.size] == src_pkts  # stream kept bit-exact


def test_gop_controls_keyframes(tmp_path: Path) -> None:
    import av
    import io

    from umt.data.format import ShardIndex

    src = make_clip(tmp_path / "v.mp4", n_frames=24)
    for codec in ("vp9", "h264"):
        out = tmp_path / codec
        build_shards([src], out, settings=EncodeSettings(codec=codec, gop=8))
        m = read_manifest(out)
        with av.open(io.BytesIO(ShardIndex(out, m["shards"]).read(0, "mp4"))) as c:
            pkts = sorted(((p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size))  # presentation order
            keys = [i for i, (_, key) in enumerate(pkts) if key]
        if codec == "vp9":
            assert keys == [0, 8, 16]
        else:  # x264 may add key frames at scene cuts (every frame of this clip is one): never more than 8 apart
            bounds = [*keys, len(pkts)]  # each GOP runs from a key frame to the next (or the end)
            assert keys[0] == 0 and max(b - a for a, b in zip(bounds, bounds[1:])) <= 8, keys


def test_cli_exit_status_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from umt.data.build.cli import main

    make_clip(tmp_path / "in" / "a.mp4", n_frames=9)
    (tmp_path / "in" / "b.mp4").write_bytes(b"")
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet", "--codec", "mjpeg"]) == 0
    text = capsys.readouterr().out
    assert "1 samples in 1 shards" in text and "1 skipped" in text and "empty file" in text
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"junk")
    assert main([str(tmp_path / "bad"), "--out", str(tmp_path / "out2"), "--quiet"]) == 1
    assert "nothing written" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(tmp_path / "in"), "--out", str(blocker / "sub"), "--quiet"]) == 1  # cannot create output


def _two_clip_dirs(tmp_path: Path) -> tuple[Path, Path]:
    for name in ("a", "b"):
        for i in range(2):
            make_clip(tmp_path / name / f"{name}{i}.mp4", n_frames=9 + i + (2 if name == "b" else 0))  # distinct bytes
    return tmp_path / "a", tmp_path / "b"


MJPEG = EncodeSettings(codec="mjpeg")


def test_existing_directory_is_refused_resumed_or_replaced_atomically(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Another data set is never silently replaced; the same build resumes or is a no-op;
    --overwrite swaps only a complete new set in; a finished build leaves only the data set behind."""
    from umt.data.build.cli import main
    from umt.data.build.shards import ShardDirError

    a, b = _two_clip_dirs(tmp_path)
    out = tmp_path / "out"
    build_shards([a], out, settings=MJPEG, samples_per_shard=1)
    names = sorted(p.name for p in out.iterdir())  # no .work cache, no resume records left
    assert names == ["manifest.json", "sources.jsonl", "train-000000.idx", "train-000000.tar", "train-000001.idx",
                     "train-000001.tar"]
    before = _digest_dir(out)
    with pytest.raises(ShardDirError, match="--overwrite"):
        build_shards([b], out, settings=MJPEG, samples_per_shard=1)
    with pytest.raises(ShardDirError):  # same inputs, other settings: another data set too
        build_shards([a], out, settings=EncodeSettings(codec="mjpeg", gop=4), samples_per_shard=1)
    capsys.readouterr()
    assert main([str(b), "--out", str(out), "--quiet", "--codec", "mjpeg", "--samples-per-shard", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--append" in err
    assert _digest_dir(out) == before
    again = build_shards([a], out, settings=MJPEG, samples_per_shard=1)  # the same build: a no-op
    assert again.already_built and again.num_samples == 2 and _digest_dir(out) == before

    # a directory with the user's own files is refused in every mode, and nothing of theirs is touched
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for mode in ("new", "overwrite", "append"):
        with pytest.raises(ShardDirError, match="no data set"):
            build_shards([a], user, settings=MJPEG, mode=mode)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]

    # --overwrite: the old set stays complete and readable until the new one is; then it is swapped in
    seen = []

    def old_still_there(k: int) -> None:
        m = read_manifest(out)
        seen.append(m["num_samples"] == 2 and all((out / s["name"]).is_file() for s in m["shards"])
                    and _digest_dir(out) == before)

    res = build_shards([b], out, settings=MJPEG, samples_per_shard=1, mode="overwrite", _after_shard=old_still_there)
    assert seen == [True, True] and res.out_dir == out
    m = read_manifest(out)
    srcs = [json.loads(x)["source"] for x in (out / "sources.jsonl").read_text().splitlines()]
    assert m["num_samples"] == 2 and sorted(Path(p).parent.name for p in srcs) == ["b", "b"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_interrupted_build_resumes_only_with_the_same_inputs(tmp_path: Path) -> None:
    from umt.data.build.shards import ShardDirError

    a, b = _two_clip_dirs(tmp_path)
    out = tmp_path / "out"

    def crash(k: int) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_shards([a], out, settings=MJPEG, samples_per_shard=1, _after_shard=crash)
    with pytest.raises(ShardDirError, match="interrupted"):
        build_shards([b], out, settings=MJPEG, samples_per_shard=1)
    with pytest.raises(ShardDirError, match="interrupted"):
        build_shards([b], out, settings=MJPEG, samples_per_shard=1, mode="append")
    res = build_shards([a], out, settings=MJPEG, samples_per_shard=1, keep_cache=True)
    assert res.num_samples == 2 and res.encoded == 0  # resumed from the cache
    assert (out / ".work").is_dir() and not (out / ".progress.json").exists()  # keep_cache keeps only the cache


def test_append_adds_shards_and_deduplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--append``: new inputs become further shards, the manifest covers both, inputs already in the
    set (same path, or same content under another name) are left out and reported; the cache is not needed."""
    from umt.data.build.cli import main
    from umt.data.build.shards import ShardDirError

    a, b = _two_clip_dirs(tmp_path)
    shutil.copy(a / "a0.mp4", b / "copy_of_a0.mp4")
    out = tmp_path / "out"
    build_shards([a], out, settings=MJPEG, samples_per_shard=1)
    old = read_manifest(out)
    assert not (out / ".work").exists()
    capsys.readouterr()
    assert main([str(b), str(a), "--out", str(out), "--append", "--quiet", "--codec", "mjpeg",
                 "--samples-per-shard", "1"]) == 0
    text = capsys.readouterr().out
    assert "appended 2 new" in text and "3 already in the data set" in text
    m = read_manifest(out)
    assert m["num_samples"] == 4 and m["shards"][:2] == old["shards"]  # the old shards untouched
    assert [s["name"] for s in m["shards"]] == [f"train-{k:06d}.tar" for k in range(4)]
    rows = [json.loads(x) for x in (out / "sources.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert sorted(Path(r["source"]).name for r in rows) == ["a0.mp4", "a1.mp4", "b0.mp4", "b1.mp4"]
    from umt.data.format import ShardIndex

    ix = ShardIndex(out, m["shards"])
    assert [decode_meta(ix.read(i, "meta"))["index"] for i in range(4)] == [0, 1, 2, 3]
    assert len(m["build"]["appends"]) == 1 and m["build"]["appends"][0]["duplicates"] == 3
    res = build_shards([b], out, settings=MJPEG, samples_per_shard=1, mode="append")  # again: nothing new
    assert res.added == 0 and len(res.duplicates) == 3 and read_manifest(out)["num_samples"] == 4
    with pytest.raises(ShardDirError, match="encoding"):
        build_shards([tmp_path / "c"], out, settings=EncodeSettings(codec="vp9"), mode="append")


def test_a_build_with_nothing_usable_leaves_no_blocking_state(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"junk")
    res = build_shards([tmp_path / "bad"], tmp_path / "out")
    assert res.num_samples == 0 and not (tmp_path / "out").exists()  # created by it, removed again
    good = make_clip(tmp_path / "good" / "g.mp4", n_frames=9)
    assert build_shards([good], tmp_path / "out", settings=MJPEG).num_samples == 1  # not refused as "interrupted"


def test_default_h264_encoding_is_byte_reproducible_within_a_process() -> None:
    """x264 with macroblock-tree rate control gave different bytes for the same input encoded a second time in one
    process (a builder worker encodes many videos): the default settings must give the same bytes every time."""
    from umt.data.build.encode import SampleSource, encode_video
    from umt.data.build.samples import SAMPLES_DIR

    a, b = (str(SAMPLES_DIR / f"bbb_trailer_long_0{i}.mp4") for i in (0, 1))
    for st in (EncodeSettings(), EncodeSettings(max_bytes_ratio=None)):  # capped (these low-rate clips) and CRF alone
        assert st.codec == "h264"
        first, info = encode_video(SampleSource(a), st)
        assert ("rate_cap_kbit_s" in info) == (st.max_bytes_ratio is not None)
        encode_video(SampleSource(b), st)
        assert encode_video(SampleSource(a), st)[0] == first


def test_crf_setting_is_checked_and_changes_the_size(tmp_path: Path) -> None:
    from umt.data.build.encode import SampleSource, encode_video
    from umt.data.build.samples import SAMPLES_DIR

    with pytest.raises(ValueError, match="crf"):
        EncodeSettings(codec="mjpeg", crf=20)
    with pytest.raises(ValueError, match="crf"):
        EncodeSettings(codec="h264", crf=52)
    assert EncodeSettings(codec="vp9").digest() != EncodeSettings(codec="vp9", crf=32).digest()
    src = SampleSource(str(SAMPLES_DIR / "bbb_trailer_00.mp4"))
    # uncapped: with the default byte cap this low-rate clip would be held to 0.7x its bytes at either CRF
    hi, lo = (len(encode_video(src, EncodeSettings(codec="h264", crf=c, max_bytes_ratio=None))[0]) for c in (20, 30))
    assert hi > 1.5 * lo  # 10 CRF steps: about 3.2x the bit rate by x264's rate model; 1.5x is a loose floor


def test_byte_cap_shrinks_a_low_rate_source_and_leaves_a_high_rate_one_alone(tmp_path: Path) -> None:
    """max_bytes_ratio: a 480x270 clip at about 140 kbit/s (x264 CRF 23 with a key frame every 8 frames takes about 3x
    its bytes) is stored in at most 0.7x its file's bytes, with the same key frames; a high-rate source (x264 CRF 10)
    gets the plain CRF encode, byte for byte."""
    from umt.data.build.encode import DEFAULT_MAX_BYTES_RATIO, SampleSource, encode_video
    from umt.data.build.samples import SAMPLES_DIR
    from umt.data.decode import probe_keyframes

    assert EncodeSettings().max_bytes_ratio == DEFAULT_MAX_BYTES_RATIO == 0.7
    low = SAMPLES_DIR / "bbb_trailer_00.mp4"
    src = low.stat().st_size
    free, free_info = encode_video(SampleSource(str(low)), EncodeSettings(max_bytes_ratio=None))
    capped, info = encode_video(SampleSource(str(low)), EncodeSettings())
    assert len(free) > 2 * src and "rate_cap_kbit_s" not in free_info  # the CRF encode alone: far over
    assert len(capped) <= 0.7 * src and 0 < info["rate_cap_kbit_s"] < 8 * 0.7 * src / 1000 / info["duration"]
    assert "warnings" not in info and info["frames"] == free_info["frames"] == 60
    assert info["keyframes"] == free_info["keyframes"] == probe_keyframes(capped)  # same GOPs: same decode cost
    assert [k for k, _ in info["keyframes"]] == list(range(0, 60, 8))
    half, half_info = encode_video(SampleSource(str(low)), EncodeSettings(max_bytes_ratio=0.35))
    assert len(half) <= 0.35 * src and half_info["rate_cap_kbit_s"] < info["rate_cap_kbit_s"]

    high = make_clip(tmp_path / "high.mp4", n_frames=24, width=96, height=64)  # CRF 10: the CRF 23 encode is smaller
    a, a_info = encode_video(SampleSource(str(high)), EncodeSettings())
    b, b_info = encode_video(SampleSource(str(high)), EncodeSettings(max_bytes_ratio=None))
    assert a == b and a_info == b_info and "rate_cap_kbit_s" not in a_info and len(a) <= 0.7 * high.stat().st_size


def test_byte_cap_setting_digest_cli_and_old_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from umt.data.build.cli import main, parser, _settings
    from umt.data.build.parts import _settings_from

    uncapped = EncodeSettings(max_bytes_ratio=None)
    # the default changed, so its digest did; settings without a cap keep the digest they had before the field
    assert EncodeSettings().digest() != uncapped.digest() == "60b8dae250821456"
    assert EncodeSettings(max_bytes_ratio=0.5).digest() not in (EncodeSettings().digest(), uncapped.digest())
    assert EncodeSettings(codec="vp9").max_bytes_ratio is None  # no cap for other codecs: their digests as before
    assert EncodeSettings(codec="vp9").digest() == "c73223d73f5b2d24"
    for bad in (0, -0.5):
        with pytest.raises(ValueError, match="max_bytes_ratio"):
            EncodeSettings(max_bytes_ratio=bad)
    assert _settings_from({k: v for k, v in vars(uncapped).items() if k != "max_bytes_ratio"}, "video") == uncapped

    def cli(*args: str) -> EncodeSettings:
        return _settings(parser().parse_args(["x.mp4", "--out", str(tmp_path / "o"), *args]))[0]

    assert cli() == EncodeSettings() and cli("--max-bytes-ratio", "0") == uncapped
    assert cli("--max-bytes-ratio", "0.5").max_bytes_ratio == 0.5 and cli("--codec", "vp9").max_bytes_ratio is None
    clip = make_clip(tmp_path / "a.mp4", n_frames=9)
    assert main([str(clip), "--out", str(tmp_path / "o"), "--codec", "vp9", "--max-bytes-ratio", "0.5"]) == 2
    assert "--max-bytes-ratio applies to --codec h264" in capsys.readouterr().err
    assert main([str(clip), "--out", str(tmp_path / "o"), "--max-bytes-ratio", "0.5", "--quiet"]) == 0
    assert read_manifest(tmp_path / "o")["encoding"]["max_bytes_ratio"] == 0.5
