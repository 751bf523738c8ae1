"""Shard builder pieces of :mod:`umt.data.build.shards` at unit level: the directory-state rules on hand-made
directories (which names are the builder's, what counts as empty / finished / interrupted / the user's), the build
key, order and part hashes written out, the tar and index bytes by hand (512-byte headers and blocks), manifest and
caption counts, annotation parsing; and, on builds of two or three 16x16 MJPEG clips (a fraction of a second each),
the safety rules that protect a user's files: an interrupted build beside user files is refused in every mode with
nothing moved, ``overwrite`` of a finished set beside user files keeps them all, resume after an interruption,
append with path and content duplicates, and a build with nothing usable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.data_utils import dir_listing as _listing, frame_image, mjpeg_clip, user_files as _user_files
from umt.data.build import shards as S
from umt.data.build.encode import EncodeSettings, SampleSource
from umt.data.build.images import ImageEncodeSettings
from umt.data.build.shards import ShardDirError, build_shards

ST = EncodeSettings(codec="mjpeg", min_frames=4)


# ------------------------------------------------------------------------------------------------- directory state


def _mk(d: Path, *names: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n.endswith("/"):
            (d / n).mkdir()
        else:
            (d / n).write_text("x")
    return d


@pytest.mark.parametrize("name", [
    "manifest.json", "sources.jsonl", ".build.json", ".progress.json", ".work", ".parts", "manifest.json.tmp",
    ".progress.json.tmp", "train-000000.tar", "train-123456.idx", "val-000007.tar.tmp", "a-b-000001.idx.tmp",
    "train-p001of004-000003.tar",
])
def test_names_of_ours(name: str) -> None:
    assert S._OURS.match(name)


@pytest.mark.parametrize("name", [
    "notes.txt", "manifest.json.bak", "xmanifest.json", "manifest.jsonl", "train-00000.tar", "train-0000000.tar",
    "train-000000.tar.gz", "-000000.tar", "train-000000.mp4", "sources.jsonl.old", ".work2", "x.tmp", "work",
])
def test_names_not_ours(name: str) -> None:
    assert not S._OURS.match(name)


def test_dir_state(tmp_path: Path) -> None:
    assert S._dir_state(tmp_path / "nothing") == "absent"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardDirError, match="exists and is not a directory"):
        S._dir_state(tmp_path / "file")
    assert S._dir_state(_mk(tmp_path / "e")) == "empty"
    assert S._dir_state(_mk(tmp_path / "t", "manifest.json.tmp", ".build.json.tmp", "train-000000.tar.tmp")) == "empty"
    assert S._dir_state(_mk(tmp_path / "t2", "notes.tmp")) == "foreign"
    assert S._dir_state(_mk(tmp_path / "t3", "train-000000.tar.tmp", "notes.txt")) == "foreign"
    for mark in (".build.json", ".progress.json", ".work/", ".parts/"):
        d = _mk(tmp_path / f"p{mark.strip('./')}", mark, "train-000000.tar", "train-000001.idx.tmp", "sources.jsonl")
        assert S._dir_state(d) == "partial", mark
        (d / "mine.txt").write_text("user")
        assert S._dir_state(d) == "foreign", mark
    assert S._dir_state(_mk(tmp_path / "noMark", "train-000000.tar", "train-000000.idx")) == "foreign"


def test_dir_state_of_manifests(tmp_path: Path) -> None:
    def with_manifest(name: str, text: str, *extra: str) -> Path:
        d = _mk(tmp_path / name, *extra)
        (d / "manifest.json").write_text(text)
        return d

    assert S._dir_state(with_manifest("ok", '{"format": "umt-webdataset"}')) == "finished"
    # a finished set with the user's files beside it is still a finished set (overwrite refuses it later)
    assert S._dir_state(with_manifest("okplus", '{"format": "umt-webdataset"}', "notes.txt")) == "finished"
    assert S._dir_state(with_manifest("other", '{"format": "something"}', ".build.json")) == "foreign"
    assert S._dir_state(with_manifest("noformat", "{}")) == "foreign"
    assert S._dir_state(with_manifest("broken", "{not json", ".build.json")) == "foreign"
    assert S._dir_state(with_manifest("list", "[1, 2]")) == "foreign"
    d = _mk(tmp_path / "mdir", "manifest.json/", ".build.json")  # a directory called manifest.json is no manifest:
    assert S._dir_state(d) == "partial"  # every name is ours and a build record is there


def test_foreign_names(tmp_path: Path) -> None:
    d = _mk(tmp_path / "d", "b.txt", "manifest.json", "a/", ".work/", "train-000000.tar", "Z")
    assert S._foreign_names(d) == ["Z", "a", "b.txt"]


# -------------------------------------------------------------------------------------------- keys, order, parts


def test_order_key_and_part_of_written_out() -> None:
    k = int.from_bytes(hashlib.sha256(b"7\x00/data/a.mp4").digest()[:8], "big")
    assert S.order_key(7, "/data/a.mp4") == k
    assert S.part_of(7, "/data/a.mp4", 5) == k * 5 // 2**64
    assert S.part_of(7, "/data/a.mp4", 1) == 0
    keys = {p: S.order_key(3, p) for p in ("/a", "/b", "/c", "/d")}
    good = [(SampleSource(p), {"n": p}) for p in ("/a", "/b", "/c", "/d")]
    assert [s.path for s, _ in S._global_order(good, 3)] == sorted(keys, key=keys.get)


def test_build_key_written_out() -> None:
    st = ST
    srcs = [SampleSource("/a", 0, "hi", captions=["hi"]), SampleSource("/b", None, "x", captions=["x", "y"])]
    skipped = [{"input": "/z", "reason": "r"}, {"input": "/y", "reason": "r"}]
    spec = [1, st.digest(), 5, 3, "val", ["cat"], [["/a", 0, "hi"], ["/b", None, ["x", "y"]]], ["/y", "/z"]]
    want = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:32]
    assert S._build_key(srcs, ["cat"], skipped, st, 5, 3, "val") == want
    assert S._build_key(srcs, ["cat"], skipped[::-1], st, 5, 3, "val") == want  # skips sorted by input
    qa = [SampleSource("/a", qa=[{"question": "q", "answer": ["a"]}])]
    spec_qa = [1, st.digest(), 0, 1, "t", [], [["/a", None, None]], [], [[{"question": "q", "answer": ["a"]}]]]
    assert S._build_key(qa, [], [], st, 0, 1, "t") == hashlib.sha256(json.dumps(spec_qa).encode()).hexdigest()[:32]


def test_caption_key() -> None:
    assert S._caption_key(SampleSource("/a")) is None
    assert S._caption_key(SampleSource("/a", caption="c", captions=["c"])) == "c"
    assert S._caption_key(SampleSource("/a", caption="c", captions=["c", "d"])) == ["c", "d"]


def test_cache_name_and_media_ext() -> None:
    src = SampleSource("/v/a.mp4")
    want = hashlib.sha256(f"/v/a.mp4\0{ST.digest()}".encode()).hexdigest()[:24]
    assert S._cache_name(src, ST) == want
    assert S._media_ext(ST) == "mp4" and S._media_ext(ImageEncodeSettings()) == "jpg"


# ------------------------------------------------------------------------------------------------- tar and index


def test_write_shard_bytes_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "t-000000.tar"
    samples = [("00000000", {"mp4": b"A" * 600, "meta": b"m" * 32}), ("00000001", {"cls": b"3"})]
    nbytes, sha = S._write_shard(path, samples)
    data = path.read_bytes()
    assert nbytes == len(data) == 10240 and sha == hashlib.sha256(data).hexdigest()  # one 20-block record
    # headers of 512 bytes; data padded to 512: mp4 at 512 (1024 bytes), meta header at 1536, data at 2048, ...
    assert path.with_suffix(".idx").read_text() == (
        "v1.2 2\nmp4 512 600 00000000.mp4 meta 2048 32 00000000.meta\ncls 3072 1 00000001.cls\n")
    assert data[512:1112] == b"A" * 600 and data[2048:2080] == b"m" * 32 and data[3072:3073] == b"3"
    with tarfile.open(path) as tf:
        ti = tf.getmembers()[0]
        assert (ti.name, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname) == ("00000000.mp4", 0, 0o444, 0, 0,
                                                                                    "", "")
        assert ti.type == tarfile.REGTYPE
    assert not list(tmp_path.glob("*.tmp"))
    again = tmp_path / "u-000000.tar"
    assert S._write_shard(again, samples) == (nbytes, sha)  # fixed metadata: byte-identical


def test_tarinfo_fields() -> None:
    ti = S._tarinfo("k.mp4", 7)
    assert (ti.name, ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname) == ("k.mp4", 7, 0, 0o444, 0,
                                                                                         0, "", "")


def test_write_index(tmp_path: Path) -> None:
    S.write_index([("a.mp4", 512, 3), ("a.cls", 1536, 1), ("b.mp4", 2560, 2)], tmp_path / "x.idx")
    assert (tmp_path / "x.idx").read_text() == "v1.2 2\nmp4 512 3 a.mp4 cls 1536 1 a.cls\nmp4 2560 2 b.mp4\n"


# ---------------------------------------------------------------------------------------- manifest and records


def test_caption_stats_and_reasons() -> None:
    rows = [{"captions": 2}, {}, {"captions": 1}, {"captions": 2}, {"captions": 0}]
    assert S._caption_stats(rows) == {"captioned": 3, "total": 5, "per_item": {"1": 1, "2": 2}}
    assert S._caption_stats([]) == {"captioned": 0, "total": 0, "per_item": {}}
    sk = [{"reason": "too short (3 frames)"}, {"reason": " too short: 2"}, {"reason": "unreadable"},
          {"reason": "a(b:c"}, {"reason": "x: y (z)"}]
    assert S.iter_reasons(sk) == {"too short": 2, "unreadable": 1, "a": 1, "x": 1}
    assert S.iter_reasons([]) == {}


def test_sources_text_and_read_sources(tmp_path: Path) -> None:
    rows = [{"index": 0, "source": "/a", "sha256": "h"}, {"index": 1, "source": "/b", "sha256": None}]
    assert S._sources_text(rows) == (b'{"index": 0, "source": "/a", "sha256": "h"}\n'
                                     b'{"index": 1, "source": "/b", "sha256": null}\n')
    (tmp_path / "sources.jsonl").write_bytes(S._sources_text(rows) + b"\n  \n")
    assert S._read_sources(tmp_path, {"shards": []}) == rows
    # without sources.jsonl: the samples' JSON members, in the tars' order, sha256 unknown
    old = tmp_path / "old"
    old.mkdir()
    S._write_shard(old / "t-000000.tar", [("00000000", {"mp4": b"v", "json": b'{"index": 0, "source": "/p"}'}),
                                          ("00000001", {"json": b'{"index": 1, "source": "/q", "x": 1}'})])
    S._write_shard(old / "t-000001.tar", [("00000002", {"json": b'{"index": 2, "source": "/r"}'})])
    m = {"shards": [{"name": "t-000000.tar"}, {"name": "t-000001.tar"}]}
    assert S._read_sources(old, m) == [{"index": 0, "source": "/p", "sha256": None},
                                       {"index": 1, "source": "/q", "sha256": None},
                                       {"index": 2, "source": "/r", "sha256": None}]


def test_manifest_fields_in_order() -> None:
    rows = [{"captions": 2}, {"captions": 1}]
    m = S._manifest(st=ST, modality="video", split="val", num_samples=2, shards=[{"name": "s"}], seed=4,
                    samples_per_shard=3, codecs={"vp9", "mjpeg"}, classes=["c"], rows=rows,
                    skipped=[{"input": "/z", "reason": "r"}], warnings=[{"w": 1}], build={"key": "k"})
    enc = {**dataclasses.asdict(ST), "container": "mp4"}  # every setting, then the container
    assert enc["codec"] == "mjpeg" and enc["min_frames"] == 4 and enc["short_side"] == 320
    assert list(m.items()) == [
        ("format", "umt-webdataset"), ("version", 1), ("modality", "video"), ("split", "val"), ("num_samples", 2),
        ("shards", [{"name": "s"}]), ("encoding", enc), ("seed", 4), ("samples_per_shard", 3),
        ("meta_fields", ["frames", "width", "height", "label", "index", "fps_milli", "duration_ms", "version"]),
        ("components", ["mp4", "meta", "json", "cls", "txt"]), ("codecs", ["mjpeg", "vp9"]), ("classes", ["c"]),
        ("captions", {"captioned": 2, "total": 3, "per_item": {"1": 1, "2": 1}}),
        ("skipped", [{"input": "/z", "reason": "r"}]), ("warnings", [{"w": 1}]), ("build", {"key": "k"})]
    im = S._manifest(st=ImageEncodeSettings(), modality="image", split="t", num_samples=0, shards=[], seed=0,
                     samples_per_shard=None, codecs=set(), classes=[], rows=[], skipped=[], warnings=[], build={})
    assert im["encoding"]["container"] == "jpeg" and im["components"][0] == "jpg"


def test_sample_members(tmp_path: Path) -> None:
    (tmp_path / "c1.mp4").write_bytes(b"VIDEO")
    info = {"frames": 8, "width": 16, "height": 12, "fps": 24.5, "duration": 2.5004, "codec": "mjpeg",
            "keyframes": [0, 4]}
    s = SampleSource("/in/a.mp4", 1, "first", "ann:3", captions=["first", "second"], qa=[{"question": "q"}])
    comps = S._sample_members(s, {"info": info, "cache": "c1"}, 9, st=ST, modality="video", classes=["x", "y"],
                              work=tmp_path)
    assert list(comps) == ["mp4", "meta", "json", "cls", "txt"]
    assert comps["mp4"] == b"VIDEO" and comps["cls"] == b"1" and comps["txt"] == b"first\nsecond"
    import numpy as np
    assert np.frombuffer(comps["meta"], "<i4").tolist() == [8, 16, 12, 1, 9, 24500, 2500, 1]  # ms, rounded
    assert json.loads(comps["json"]) == {"source": "/in/a.mp4", **info, "label": 1, "class_name": "y",
                                         "caption": "first", "captions": ["first", "second"],
                                         "qa": [{"question": "q"}], "index": 9}
    assert comps["json"] == json.dumps(json.loads(comps["json"]), sort_keys=True).encode()
    # unlabelled, one caption, integer labels: no cls, no class_name, no captions list
    one = SampleSource("/in/b.mp4", None, "only", captions=["only"])
    c = S._sample_members(one, {"info": info, "cache": "c1"}, 0, st=ST, modality="video", classes=[],
                          work=tmp_path)
    assert list(c) == ["mp4", "meta", "json", "txt"] and c["txt"] == b"only"
    assert np.frombuffer(c["meta"], "<i4").tolist()[3] == -1
    j = json.loads(c["json"])
    assert "label" not in j and "class_name" not in j and "captions" not in j and "qa" not in j
    assert j["caption"] == "only"
    lab = S._sample_members(SampleSource("/in/c.mp4", 0), {"info": info, "cache": "c1"}, 2, st=ST,
                            modality="video", classes=[], work=tmp_path)
    assert lab["cls"] == b"0" and "txt" not in lab and "class_name" not in json.loads(lab["json"])
    assert "caption" not in json.loads(lab["json"])
    cap_only = S._sample_members(SampleSource("/in/d.mp4", None, "plain"), {"info": info, "cache": "c1"}, 2, st=ST,
                                 modality="video", classes=[], work=tmp_path)
    assert cap_only["txt"] == b"plain"
    (tmp_path / "c2.jpg").write_bytes(b"JPG")
    img = S._sample_members(SampleSource("/in/e.jpg", 1), {"info": {"width": 5, "height": 7}, "cache": "c2"}, 3,
                            st=ImageEncodeSettings(), modality="image", classes=[], work=tmp_path)
    assert list(img) == ["jpg", "meta", "json", "cls"] and img["jpg"] == b"JPG"
    assert np.frombuffer(img["meta"], "<i4").tolist() == [1, 5, 7, 1, 3, 0, 0, 1]
    img2 = S._sample_members(SampleSource("/in/f.jpg"), {"info": {"width": 5, "height": 7}, "cache": "c2"}, 3,
                             st=ImageEncodeSettings(), modality="image", classes=[], work=tmp_path)
    assert np.frombuffer(img2["meta"], "<i4").tolist()[3] == -1


def test_sample_members_probe_key_frames_of_an_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A video encoded before key frames were recorded has them probed from its bytes; one with them is not probed."""
    (tmp_path / "c1.mp4").write_bytes(b"VIDEO")
    probed: list[bytes] = []
    monkeypatch.setattr(S, "probe_keyframes", lambda media: probed.append(media) or [0, 3])
    old = {"frames": 8, "width": 16, "height": 12, "fps": 25.0, "duration": 0.32}
    c = S._sample_members(SampleSource("/in/a.mp4"), {"info": old, "cache": "c1"}, 0, st=ST, modality="video",
                          classes=[], work=tmp_path)
    assert json.loads(c["json"]) == {"source": "/in/a.mp4", **old, "keyframes": [0, 3], "index": 0}
    assert probed == [b"VIDEO"]
    S._sample_members(SampleSource("/in/a.mp4"), {"info": {**old, "keyframes": [0]}, "cache": "c1"}, 0, st=ST,
                      modality="video", classes=[], work=tmp_path)
    assert probed == [b"VIDEO"]


# ------------------------------------------------------------------------------------------- inputs, annotations


def test_parse_label_and_captions() -> None:
    assert S._parse_label(" 12 ") == 12 and S._parse_label(" cat ") == "cat"
    assert S._parse_captions(None, "w") is None and S._parse_captions("a", "w") == ["a"]
    assert S._parse_captions(["a", "b"], "w") == ["a", "b"]
    for bad in (["a", 1], 3):
        with pytest.raises(ValueError, match="w: 'caption' must be a string or a list of strings"):
            S._parse_captions(bad, "w")


def test_parse_qa() -> None:
    assert S._parse_qa({"video": "v"}, 4, "w") is None
    assert S._parse_qa({"question": "q?", "answer": "yes"}, 4, "w") == {"question": "q?", "answer": ["yes"],
                                                                        "question_id": 4}
    assert S._parse_qa({"question": "q?", "answer": ["a", "b"], "question_id": "x7", "answer_type": "what",
                        "question_type": "no"}, 4, "w") == {"question": "q?", "answer": ["a", "b"],
                                                            "question_id": "x7", "type": "what"}
    assert S._parse_qa({"question": "q", "answer": "a", "question_type": 3}, 1, "w")["type"] == "3"
    for bad in ({"question": " ", "answer": "a"}, {"question": "q", "answer": []}, {"question": "q"},
                {"question": "q", "answer": ["a", " "]}, {"question": 3, "answer": "a"},
                {"question": "q", "answer": ["a", 2]}):
        with pytest.raises(ValueError, match="w: a QA row needs"):
            S._parse_qa(bad, 1, "w")


def test_find_media(tmp_path: Path) -> None:
    _mk(tmp_path, "b.mp4", "A.MKV", ".hidden.mp4", "x.txt", "p.jpg", "sub/")
    (tmp_path / "sub" / "c.webm").write_text("x")
    (tmp_path / "dang.mov").symlink_to(tmp_path / "nowhere.mov")
    (tmp_path / "d.avi").mkdir()  # a directory with a video suffix is not a file
    assert [p.relative_to(tmp_path).as_posix() for p in S._find_media(tmp_path)] == [
        "A.MKV", "b.mp4", "dang.mov", "sub/c.webm"]
    assert [p.name for p in S._find_media(tmp_path, "image")] == ["p.jpg"]


def test_read_annotations_csv(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("path,label\nv/x.mp4,3\n\n# note\n/abs/y.mp4 , cat \nz w.mp4 5\n")
    rows, modality = S._read_annotations(tmp_path / "a.csv")
    assert modality == "video"
    assert rows == [(str(tmp_path / "v/x.mp4"), 3, None, "a.csv:2", None),
                    ("/abs/y.mp4", "cat", None, "a.csv:5", None),
                    (str(tmp_path / "z w.mp4"), 5, None, "a.csv:6", None)]
    (tmp_path / "b.txt").write_text("x.mp4 class\n")  # "class" on a later line than 1 is a label; on line 1 a header
    assert S._read_annotations(tmp_path / "b.txt")[0] == []
    (tmp_path / "c.txt").write_text("x.mp4 1\ny.mp4 Label\n")
    assert [r[1] for r in S._read_annotations(tmp_path / "c.txt")[0]] == [1, "Label"]
    (tmp_path / "d.txt").write_text("lonely\n")
    with pytest.raises(ValueError, match="d.txt:1: expected 'path,label' or 'path label'"):
        S._read_annotations(tmp_path / "d.txt")
    (tmp_path / "e.csv").write_text("")
    assert S._read_annotations(tmp_path / "e.csv") == ([], "video")


def test_read_annotations_json(tmp_path: Path) -> None:
    rows = [{"video": "a.mp4", "caption": "c1", "label": "x"}, {"path": "b.mp4", "label": ""},
            {"image": "c.mp4", "caption": ["d", "e"]}, {"image": ["f.webm", "g.mp4"], "caption": "both"}]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + "\n"
                                      + "".join(json.dumps(r) + "\n" for r in rows[2:]))
    got, modality = S._read_annotations(tmp_path / "v.jsonl")
    assert modality == "video"
    p = lambda n: str(tmp_path / n)  # noqa: E731
    assert got == [(p("a.mp4"), "x", ["c1"], "v.jsonl:1", None), (p("b.mp4"), None, None, "v.jsonl:2", None),
                   (p("c.mp4"), None, ["d", "e"], "v.jsonl:4", None), (p("f.webm"), None, ["both"], "v.jsonl:5", None),
                   (p("g.mp4"), None, ["both"], "v.jsonl:5", None)]
    (tmp_path / "i.json").write_text(json.dumps({"videos": [{"image": "x.jpg", "caption": "c"}]}))
    assert S._read_annotations(tmp_path / "i.json") == ([(p("x.jpg"), None, ["c"], "i.json:1", None)], "image")
    (tmp_path / "l.json").write_text(json.dumps([{"video": "q.mp4", "question": "why", "answer": "no"}]))
    assert S._read_annotations(tmp_path / "l.json")[0][0][4] == {"question": "why", "answer": ["no"], "question_id": 1}
    (tmp_path / "mix.jsonl").write_text('{"image": "a.jpg"}\n{"video": "b.mp4"}\n')
    with pytest.raises(ValueError, match="mixes image rows and video rows \\(line 2\\)"):
        S._read_annotations(tmp_path / "mix.jsonl")
    (tmp_path / "bad.jsonl").write_text('[1]\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: expected an object"):
        S._read_annotations(tmp_path / "bad.jsonl")
    for i, obj in enumerate(({"caption": "c"}, {"video": ""}, {"image": []}, {"video": ["a.mp4", 3]})):
        (tmp_path / f"n{i}.jsonl").write_text(json.dumps(obj) + "\n")
        with pytest.raises(ValueError, match="entry has no 'video' or 'image' field"):
            S._read_annotations(tmp_path / f"n{i}.jsonl")


def test_read_annotations_details(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a JSON document over several lines; an object without "videos" holds no rows (and the modality defaults)
    (tmp_path / "multi.json").write_text(json.dumps([{"video": "a.mp4", "caption": "c"}], indent=2))
    assert S._read_annotations(tmp_path / "multi.json") == ([(str(tmp_path / "a.mp4"), None, ["c"], "multi.json:1",
                                                              None)], "video")
    (tmp_path / "meta.json").write_text(json.dumps({"info": "no rows here"}))
    assert S._read_annotations(tmp_path / "meta.json") == ([], "video")
    # "category" is a header word on line 1 too, in any case
    (tmp_path / "h.csv").write_text("path,Category\nx.mp4,2\n")
    assert [r[1] for r in S._read_annotations(tmp_path / "h.csv")[0]] == [2]
    # a bare file name (no directory part) relative to the working directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bare.csv").write_text("x.mp4,1\n")
    assert S._read_annotations("bare.csv")[0] == [(str(tmp_path / "x.mp4"), 1, None, "bare.csv:1", None)]
    # errors in a QA row or a caption name the file and line
    (tmp_path / "qa.jsonl").write_text('{"video": "a.mp4"}\n{"video": "a.mp4", "question": "q"}\n')
    with pytest.raises(ValueError, match=f"^{tmp_path / 'qa.jsonl'}:2: a QA row needs"):
        S._read_annotations(tmp_path / "qa.jsonl")
    (tmp_path / "cap.jsonl").write_text('{"video": "a.mp4", "caption": 5}\n')
    with pytest.raises(ValueError, match=f"^{tmp_path / 'cap.jsonl'}:1: 'caption' must be"):
        S._read_annotations(tmp_path / "cap.jsonl")


def test_remote_annotation_paths_join_the_files_url() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    rows = [{"video": "/Xylophone.mp4"}, {"video": "sub/b.mp4"}, {"video": "s3://other/c.mp4"}]
    with fs.open("/ann_join/set/a.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    got, modality = S._read_annotations("memory://ann_join/set/a.jsonl")
    assert modality == "video" and [r[0] for r in got] == [
        "memory://ann_join/set/Xylophone.mp4", "memory://ann_join/set/sub/b.mp4", "s3://other/c.mp4"]


def test_annotations_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A non-ASCII caption reads the same under the C locale (ASCII, as on many cluster nodes), local and fsspec."""
    import subprocess
    import sys

    rows = [{"video": "a.mp4", "caption": "café au lait, 日本"}]
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    code = (
        "import json, sys, fsspec\n"
        "from umt.data.build import shards as S\n"
        "fs = fsspec.filesystem('memory')\n"
        "with fs.open('/loc/a.jsonl', 'wb') as f:\n"
        "    f.write(open(sys.argv[1], 'rb').read())\n"
        "local = S._read_annotations(sys.argv[1])[0][0][2]\n"
        "remote = S._read_annotations('memory://loc/a.jsonl')[0][0][2]\n"
        "import locale; print(json.dumps([locale.getpreferredencoding(False), local, remote]))\n"
    )
    # in this process too: the same caption (and mutmut learns which functions this test reaches)
    assert S._read_annotations(tmp_path / "a.jsonl")[0][0][2] == ["café au lait, 日本"]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.jsonl")], env=env, capture_output=True,
                         text=True, check=True).stdout
    enc, local, remote = json.loads(out)
    assert enc.lower().replace("-", "").replace("_", "") in ("ansix3.41968", "ascii")  # the test really ran in ASCII
    assert local == remote == ["café au lait, 日本"]


def test_result_from_manifest_full_and_old(tmp_path: Path) -> None:
    full = {"num_samples": 3, "shards": [{"name": "train-000000.tar"}], "skipped": [{"input": "x", "reason": "r"}],
            "classes": ["cat"], "warnings": [{"input": "y", "index": 1, "warning": "w"}], "modality": "image"}
    got = S._result_from_manifest(tmp_path, full)
    assert dataclasses.asdict(got) == {
        "out_dir": tmp_path, "num_samples": 3, "shards": [{"name": "train-000000.tar"}],
        "skipped": [{"input": "x", "reason": "r"}], "classes": ["cat"], "encoded": 0, "seconds": 0.0,
        "warnings": [{"input": "y", "index": 1, "warning": "w"}], "duplicates": [], "added": None,
        "already_built": True, "modality": "image"}
    old = S._result_from_manifest(tmp_path, {"num_samples": 0, "shards": []})  # a manifest from before these fields
    assert (old.skipped, old.classes, old.warnings, old.modality, old.already_built) == ([], [], [], "video", True)


def test_collect_sources(tmp_path: Path) -> None:
    inp = _mk(tmp_path / "in", "a.mp4", "b.mp4", "c.jpg")
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in [
        {"video": "in/a.mp4", "caption": " line\none ", "label": "dog"},
        {"video": "in/a.mp4", "caption": "again", "label": "cat"},
        {"video": "x.mp4", "caption": "  ", "label": 3},
        {"video": "y.mp4", "caption": ["p", "q"], "label": "cat"},
    ]))
    srcs, classes, skipped, modality = S.collect_sources([inp, tmp_path / "gone"], ann)
    a, y = str(inp / "a.mp4"), str(tmp_path / "y.mp4")
    assert modality == "video" and classes == ["cat", "dog"]
    assert [(s.path, s.label, s.caption, s.captions) for s in srcs] == [
        (a, 1, "line one", ["line one", "again"]), (y, 0, "p", ["p", "q"])]
    assert skipped == [{"input": str(tmp_path / "gone"), "reason": "missing file or directory"},
                       {"input": str(tmp_path / "x.mp4"), "reason": "empty caption (ann.jsonl:3)"},
                       {"input": str(inp / "b.mp4"), "reason": "missing caption (not in the annotations)"}]
    para = S.collect_sources([], ann, paragraph=True)[0]
    assert [(s.caption, s.captions) for s in para] == [("line one again", ["line one again"]), ("p q", ["p q"])]
    # integer labels stay as they are; unannotated inputs unlabelled; nothing captioned: nothing skipped
    (tmp_path / "k.csv").write_text("in/b.mp4,7\n")
    srcs, classes, skipped, _ = S.collect_sources([inp / "a.mp4", inp], tmp_path / "k.csv")
    assert classes == [] and skipped == [] and [(Path(s.path).name, s.label, s.origin) for s in srcs] == [
        ("a.mp4", None, "input"), ("b.mp4", 7, "k.csv:1")]
    assert [Path(s.path).name for s in S.collect_sources([inp], modality="image")[0]] == ["c.jpg"]
    with pytest.raises(ValueError, match="modality must be 'video' or 'image'"):
        S.collect_sources([inp], modality="audio")
    with pytest.raises(ValueError, match="holds video rows but the modality asked for is image"):
        S.collect_sources([], tmp_path / "k.csv", modality="image")
    # an annotation file with no rows leaves the modality asked for
    (tmp_path / "none.csv").write_text("")
    assert S.collect_sources([inp], tmp_path / "none.csv", modality="image")[3] == "image"
    (tmp_path / "mixed.csv").write_text("in/a.mp4,cat\nin/b.mp4,4\n")  # any name: every label a class name
    srcs, classes, _, _ = S.collect_sources([], tmp_path / "mixed.csv")
    assert classes == ["4", "cat"] and [s.label for s in srcs] == [1, 0]


def test_urls(tmp_path: Path) -> None:
    assert S._remote_fs("/plain/path") is None and S._remote_fs(f"file://{tmp_path}") is None
    assert S._localize(f"file://{tmp_path}/a.mp4") == f"{tmp_path}/a.mp4"
    assert S._localize(tmp_path) == tmp_path and S._localize("rel/a.mp4") == "rel/a.mp4"
    with pytest.raises(ValueError, match="cannot open nosuchscheme://x"):
        S._remote_fs("nosuchscheme://x")
    fs, path = S._remote_fs("memory://bucket/a.mp4")
    assert type(fs).__name__ == "MemoryFileSystem" and path == "/bucket/a.mp4"
    assert S._origin_path("memory://b/a.csv") == "memory://b/a.csv"
    assert S._origin_path("rel/a.csv") == os.path.abspath("rel/a.csv")


# ------------------------------------------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sets of two 16x16, 8-frame MJPEG clips (``a``, ``b``) and a set of one clip too short to use (``short``)."""
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for tag in range(2):
        d = root / f"in{tag}"
        d.mkdir()
        for i in range(2):
            mjpeg_clip(d / f"c{i}.mp4", [frame_image(k + 5 * i + 11 * tag, 16, 16) for k in range(8)])
        out["ab"[tag]] = d
    short = root / "short"
    short.mkdir()
    mjpeg_clip(short / "s.mp4", [frame_image(k, 16, 16) for k in range(2)])
    out["short"] = short
    return out


def _sources(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/sources.jsonl`` (one per sample, in index order)."""
    return [json.loads(x) for x in (out / "sources.jsonl").read_text().splitlines()]


def _build(inputs: list[Path], out: Path, **kw: Any) -> S.BuildResult:
    kw.setdefault("settings", ST)
    kw.setdefault("samples_per_shard", 1)
    return build_shards(inputs, out, **kw)


def _crash(k: int) -> None:
    raise RuntimeError("killed")


def test_new_build_leaves_only_the_data_set(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _build([clips["a"]], out, split="val", seed=3)
    assert sorted(os.listdir(out)) == ["manifest.json", "sources.jsonl", "val-000000.idx", "val-000000.tar",
                                       "val-000001.idx", "val-000001.tar"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    text = (out / "manifest.json").read_text()
    m = json.loads(text)
    assert text == json.dumps(m, indent=1)  # one byte layout: builds of the same inputs are byte-identical
    assert (res.num_samples, res.encoded, res.added, res.already_built, res.modality) == (2, 2, 2, False, "video")
    assert res.out_dir == out and res.shards == m["shards"] and res.skipped == [] and res.duplicates == []
    assert m["num_samples"] == 2 and m["seed"] == 3 and m["samples_per_shard"] == 1 and m["split"] == "val"
    assert [s["name"] for s in m["shards"]] == ["val-000000.tar", "val-000001.tar"]
    assert all(s["samples"] == 1 and s["bytes"] == (out / s["name"]).stat().st_size
               and s["sha256"] == hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() for s in m["shards"])
    assert m["codecs"] == ["mjpeg"] and m["build"]["inputs"] == [str(clips["a"])] and m["build"]["annotations"] is None
    assert len(m["build"]["key"]) == 32 and "appends" not in m["build"]
    order = sorted((S.order_key(3, str(clips["a"] / f"c{i}.mp4")), str(clips["a"] / f"c{i}.mp4")) for i in range(2))
    rows = _sources(out)
    assert [(r["index"], r["source"]) for r in rows] == [(i, p) for i, (_, p) in enumerate(order)]
    assert all(r["sha256"] == hashlib.sha256(Path(r["source"]).read_bytes()).hexdigest() for r in rows)
    from umt.data.build.info import verify
    assert verify(out) == []
    # the same command again: a no-op, nothing rewritten
    before = _listing(out)
    again = _build([clips["a"]], out, split="val", seed=3)
    assert again.already_built and again.num_samples == 2 and again.shards == m["shards"] and again.added is None
    assert _listing(out) == before
    # other inputs: refused, nothing changed
    with pytest.raises(ShardDirError, match="already holds a data set built from other inputs or settings "
                                            "\\(2 samples\\); pass --overwrite"):
        _build([clips["b"]], out, split="val", seed=3)
    with pytest.raises(ShardDirError):
        _build([clips["a"]], out, split="val", seed=4)
    assert _listing(out) == before


def test_keep_cache_and_samples_per_shard(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _build([clips["a"], clips["b"]], out, samples_per_shard=3, keep_cache=True)
    assert [s["samples"] for s in res.shards] == [3, 1]
    names = sorted(os.listdir(out))
    assert names == [".work", "manifest.json", "sources.jsonl", "train-000000.idx", "train-000000.tar",
                     "train-000001.idx", "train-000001.tar"]
    assert len(list((out / ".work").glob("*.mp4"))) == 4 and len(list((out / ".work").glob("*.json"))) == 4
    # keys, indices and sources rows run on across samples of one shard and into the next
    import numpy as np
    members = []
    for sh in res.shards:
        with tarfile.open(out / sh["name"]) as tf:
            members.append([ti.name for ti in tf])
    assert [sorted({n.split(".")[0] for n in m}) for m in members] == [["00000000", "00000001", "00000002"],
                                                                       ["00000003"]]
    for sh in res.shards:
        with tarfile.open(out / sh["name"]) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                data = tf.extractfile(ti).read()
                if ext == "json":
                    assert json.loads(data)["index"] == int(key)
                elif ext == "meta":
                    assert np.frombuffer(data, "<i4").tolist()[4] == int(key)
    rows = _sources(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]


def test_interrupted_build_resumes_to_the_same_bytes(clips: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _build([clips["a"], clips["b"]], ref, keep_cache=True)
    out = tmp_path / "out"
    shards_done: list[int] = []

    def crash_at_2(k: int) -> None:
        shards_done.append(k)
        if k == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _build([clips["a"], clips["b"]], out, _after_shard=crash_at_2)
    assert shards_done == [0, 1, 2]
    assert S._dir_state(out) == "partial"
    key = json.loads((ref / "manifest.json").read_text())["build"]["key"]
    assert json.loads((out / ".build.json").read_text()) == {"key": key, "append": False}
    prog = json.loads((out / ".progress.json").read_text())
    assert sorted(prog) == [f"train-00000{k}.tar" for k in range(3)]
    assert all(set(r) == {"bytes", "plan", "sha256"} and len(r["plan"]) == 64 for r in prog.values())
    assert prog["train-000000.tar"]["sha256"] == hashlib.sha256((out / "train-000000.tar").read_bytes()).hexdigest()
    assert prog["train-000000.tar"]["bytes"] == (out / "train-000000.tar").stat().st_size
    assert not (out / "manifest.json").exists()
    (out / "leftover.tar.tmp").write_bytes(b"x")  # not ours by name: the directory is the user's now
    with pytest.raises(ShardDirError):
        _build([clips["a"], clips["b"]], out)
    (out / "leftover.tar.tmp").unlink()
    (out / "train-000003.tar.tmp").write_bytes(b"x")  # temporary files of ours are cleaned up
    (out / "train-000007.idx.tmp").write_bytes(b"x")  # (one that no write of this build replaces)
    (out / ".work" / "junk.tmp").write_bytes(b"x")
    (out / "train-000009.tar").write_bytes(b"stale")  # a shard of another plan of ours: deleted
    (out / "train-000009.idx").write_bytes(b"stale")
    (out / "other-000000.tar").write_bytes(b"kept")  # another split's name is not this build's to delete
    with pytest.raises(ShardDirError, match="interrupted build of other inputs"):
        _build([clips["a"]], out)  # another key
    with pytest.raises(RuntimeError, match="killed"):  # resumed and stopped again: the dead temporaries went first
        _build([clips["a"], clips["b"]], out, keep_cache=True, _after_shard=_crash)
    assert not (out / "train-000007.idx.tmp").exists() and not (out / ".work" / "junk.tmp").exists()
    with pytest.raises(ShardDirError, match="holds an interrupted build: finish it"):
        _build([clips["a"], clips["b"]], out, mode="append")
    kept = (out / "train-000000.tar").stat().st_ino  # intact: kept, not rewritten
    t1 = out / "train-000001.tar"  # damaged after it was recorded: rewritten
    t1.write_bytes(b"\0" + t1.read_bytes()[1:])
    (out / "train-000002.idx").unlink()  # its index lost: rewritten
    res = _build([clips["a"], clips["b"]], out, keep_cache=True)
    assert res.encoded == 0 and not res.already_built  # every input from the cache
    assert (out / "train-000000.tar").stat().st_ino == kept
    assert _listing(out) == {**_listing(ref), "other-000000.tar": b"kept"}
    # a record of another plan (or another sha256) for an intact shard: rewritten all the same
    out2 = tmp_path / "out2"
    with pytest.raises(RuntimeError):
        _build([clips["a"], clips["b"]], out2, _after_shard=crash_at_2)
    prog = json.loads((out2 / ".progress.json").read_text())
    prog["train-000000.tar"]["plan"] = "0" * 64
    prog["train-000001.tar"]["sha256"] = "0" * 64
    (out2 / ".progress.json").write_text(json.dumps(prog))
    inodes = [(out2 / f"train-00000{k}.tar").stat().st_ino for k in range(3)]
    _build([clips["a"], clips["b"]], out2, keep_cache=True)
    assert [(out2 / f"train-00000{k}.tar").stat().st_ino == inodes[k] for k in range(3)] == [False, False, True]
    assert _listing(out2) == _listing(ref)


def test_interrupted_after_the_manifest_finishes_the_clean_up(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out, keep_cache=True)
    ref = {k: v for k, v in _listing(out).items() if not k.startswith(".work")}
    key = json.loads((out / "manifest.json").read_text())["build"]["key"]
    (out / ".build.json").write_text(json.dumps({"key": key, "append": False}))
    (out / ".progress.json").write_text("{}")
    res = _build([clips["a"]], out)
    assert res.already_built and _listing(out) == ref  # records and cache removed


def test_interrupted_build_beside_user_files_is_refused_in_every_mode(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        _build([clips["a"]], out, _after_shard=_crash)
    mine = _user_files(out)
    before = _listing(out)
    for mode in ("new", "overwrite", "append"):
        with pytest.raises(ShardDirError, match=f"{out} is not empty and holds no data set of make_shards "
                                                "\\(mine, notes.txt\\); choose a new or empty --out"):
            _build([clips["a"]], out, mode=mode)
        assert _listing(out) == before, mode
    assert {k: before[k] for k in mine} == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory


def test_foreign_message_lists_three_names(clips: dict[str, Path], tmp_path: Path) -> None:
    out = _mk(tmp_path / "out", "d", "c", "b", "a")
    with pytest.raises(ShardDirError, match="\\(a, b, c, ...\\); choose"):
        _build([clips["a"]], out)
    out3 = _mk(tmp_path / "out3", "c", "b", "a")
    with pytest.raises(ShardDirError, match="\\(a, b, c\\); choose"):
        _build([clips["a"]], out3)


def test_overwrite_beside_user_files_keeps_them_and_the_old_set(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out)
    mine = _user_files(out)
    before = _listing(out)
    with pytest.raises(ShardDirError, match="also holds files make_shards did not write \\(mine, notes.txt\\)"):
        _build([clips["b"]], out, mode="overwrite")
    assert _listing(out) == before and {k: before[k] for k in mine} == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_a_finished_or_interrupted_set(clips: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _build([clips["b"]], ref)
    out = tmp_path / "out"
    _build([clips["a"]], out)
    res = _build([clips["b"]], out, mode="overwrite")
    assert res.out_dir == out and res.num_samples == 2 and not res.already_built
    assert _listing(out) == _listing(ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]
    # an interrupted build replaced the same way; a stale staging dir of other inputs and an old swap are cleared
    part = tmp_path / "part"
    with pytest.raises(RuntimeError):
        _build([clips["a"]], part, _after_shard=_crash)
    stage = _mk(tmp_path / ".part.overwrite", ".build.json", "train-000000.tar")
    (stage / ".build.json").write_text('{"key": "other"}')
    _mk(tmp_path / ".part.old", "train-000000.tar")
    res = _build([clips["b"]], part, mode="overwrite")
    assert _listing(part) == _listing(ref) and res.num_samples == 2
    assert not (tmp_path / ".part.overwrite").exists() and not (tmp_path / ".part.old").exists()
    # overwrite of an absent directory is a plain build
    _build([clips["b"]], tmp_path / "fresh", mode="overwrite")
    assert _listing(tmp_path / "fresh") == _listing(ref)


def test_overwrite_resumes_its_own_staging_build(clips: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _build([clips["b"]], ref)
    out = tmp_path / "out"
    _build([clips["a"]], out)
    with pytest.raises(RuntimeError):
        _build([clips["b"]], out, mode="overwrite", _after_shard=_crash)
    stage = tmp_path / ".out.overwrite"
    assert S._dir_state(stage) == "partial" and S._dir_state(out) == "finished"
    res = _build([clips["b"]], out, mode="overwrite")
    assert res.encoded == 0 and _listing(out) == _listing(ref) and not stage.exists()
    (tmp_path / ".out.overwrite").mkdir()
    (tmp_path / ".out.overwrite" / "mine.txt").write_text("x")
    with pytest.raises(ShardDirError, match="the staging directory of --overwrite\\) holds files that are not ours"):
        _build([clips["a"]], out, mode="overwrite")
    assert (tmp_path / ".out.overwrite" / "mine.txt").read_text() == "x"


def test_overwrite_with_nothing_usable_keeps_the_old_set(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out)
    before = _listing(out)
    res = _build([clips["short"]], out, mode="overwrite")
    assert res.num_samples == 0 and res.out_dir == out and _listing(out) == before
    assert not (tmp_path / ".out.overwrite").exists()


def test_nothing_usable_leaves_nothing(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _build([clips["short"]], out)
    assert res.num_samples == 0 and res.added == 0 and len(res.skipped) == 1 and not out.exists()
    kept = _build([clips["short"]], out, keep_cache=True)
    assert kept.num_samples == 0 and sorted(os.listdir(out)) == [".work"]
    pre = _mk(tmp_path / "pre")  # an existing empty directory stays
    _build([clips["short"]], pre)
    assert pre.is_dir() and os.listdir(pre) == []


def test_append(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _build([clips["a"]], out)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "same.mp4").write_bytes((clips["a"] / "c0.mp4").read_bytes())  # same content, other path
    res = _build([clips["a"] / "c1.mp4", clips["b"], copy], out, mode="append")
    assert res.added == 2 and res.num_samples == 4
    assert sorted(d["input"] for d in res.duplicates) == [str(clips["a"] / "c1.mp4"), str(copy / "same.mp4")]
    assert {d["input"]: d["reason"] for d in res.duplicates} == {
        str(clips["a"] / "c1.mp4"): "already in the data set (same path)",
        str(copy / "same.mp4"): "already in the data set (same content)"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["shards"][:2] == first.shards
    assert [s["name"] for s in m["shards"]] == [f"train-{k:06d}.tar" for k in range(4)]
    rows = _sources(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert sorted(r["source"] for r in rows[2:]) == sorted(str(clips["b"] / f"c{i}.mp4") for i in range(2))
    assert m["build"]["key"] == first_key(first, out) and len(m["build"]["appends"]) == 1
    assert m["build"]["appends"][0]["samples"] == 2 and m["build"]["appends"][0]["duplicates"] == 2
    from umt.data.build.info import verify
    assert verify(out) == [] and sorted(os.listdir(out)) == ["manifest.json", "sources.jsonl"] + sorted(
        f"train-{k:06d}.{e}" for k in range(4) for e in ("idx", "tar"))
    before = _listing(out)
    with pytest.raises(ShardDirError, match="--append needs the existing set's encoding and split"):
        _build([clips["short"]], out, mode="append", split="val")
    with pytest.raises(ShardDirError, match="--append needs the existing set's encoding and split"):
        _build([clips["short"]], out, mode="append", settings=EncodeSettings(codec="mjpeg", min_frames=5))
    assert _listing(out) == before  # a refused append writes nothing (no build record, no cache)
    nothing = _build([clips["short"]], out, mode="append")
    assert nothing.added == 0 and nothing.num_samples == 4 and len(nothing.skipped) == 1
    assert {k: v for k, v in _listing(out).items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"}
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["shards"] == m["shards"] and [a["samples"] for a in m2["build"]["appends"]] == [2, 0]
    fresh = tmp_path / "fresh"
    assert _build([clips["a"]], fresh, mode="append").num_samples == 2  # append to nothing: a new set


def first_key(first: S.BuildResult, out: Path) -> str:
    return json.loads((out / "sources.jsonl").parent.joinpath("manifest.json").read_text())["build"]["key"]


def test_append_labels(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "a.csv").write_text(f"{clips['a'] / 'c0.mp4'},dog\n{clips['a'] / 'c1.mp4'},cat\n")
    _build([], out, annotations=tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(f"{clips['b'] / 'c0.mp4'},eel\n{clips['b'] / 'c1.mp4'},cat\n")
    res = _build([], out, annotations=tmp_path / "b.csv", mode="append")
    assert res.classes == ["cat", "dog", "eel"]
    rows = {r["source"]: r["index"] for r in _sources(out)}
    from umt.data.format import ShardIndex, decode_meta, read_manifest
    ix = ShardIndex(out, read_manifest(out)["shards"])
    labels = {src: decode_meta(ix.read(i, "meta"))["label"] for src, i in rows.items()}
    ix.close()
    assert labels == {str(clips["a"] / "c0.mp4"): 1, str(clips["a"] / "c1.mp4"): 0,
                      str(clips["b"] / "c0.mp4"): 2, str(clips["b"] / "c1.mp4"): 0}
    (tmp_path / "c.csv").write_text(f"{clips['short'] / 's.mp4'},4\n")
    with pytest.raises(ShardDirError, match="cannot mix class-name labels with integer labels"):
        _build([], out, annotations=tmp_path / "c.csv", mode="append")


def test_append_to_a_set_from_before_modality_split_and_classes_were_recorded(clips: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """A manifest without ``modality``, ``split`` or ``classes`` is an unlabelled video set of the asked split."""
    out = tmp_path / "out"
    _build([clips["a"]], out, split="val")
    m = json.loads((out / "manifest.json").read_text())
    for k in ("modality", "split", "classes", "warnings", "skipped", "seed"):
        m.pop(k, None)
    (out / "manifest.json").write_text(json.dumps(m))
    res = _build([clips["b"]], out, mode="append", split="val", seed=7)
    assert (res.added, res.num_samples, res.modality) == (2, 4, "video")
    m = json.loads((out / "manifest.json").read_text())
    assert (m["split"], m["seed"], m["warnings"], m["skipped"]) == ("val", 7, [], [])


def test_skips_are_recorded_and_the_inputs_after_them_built(clips: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()  # sources are built in path order: the unusable input comes first
    (tmp_path / "z").mkdir()
    short = tmp_path / "a" / "s.mp4"
    short.write_bytes((clips["short"] / "s.mp4").read_bytes())
    for c in ("c0.mp4", "c1.mp4"):
        (tmp_path / "z" / c).write_bytes((clips["a"] / c).read_bytes())
    res = _build([tmp_path / "z", tmp_path / "a"], tmp_path / "out")
    assert res.skipped == [{"input": str(short), "reason": "too short: 2 frames < 4 needed for sparse sampling"}]
    assert res.num_samples == 2 and res.added == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"] == res.skipped


def test_append_duplicates_by_content_within_and_across(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"] / "c0.mp4"], out)
    new = tmp_path / "new"
    new.mkdir()
    (new / "a_dup.mp4").write_bytes((clips["a"] / "c0.mp4").read_bytes())  # already in the set, by content
    (new / "b_one.mp4").write_bytes((clips["b"] / "c0.mp4").read_bytes())  # new ...
    (new / "c_two.mp4").write_bytes((clips["b"] / "c0.mp4").read_bytes())  # ... and its copy in the same append
    (new / "d_new.mp4").write_bytes((clips["b"] / "c1.mp4").read_bytes())
    res = _build([new], out, mode="append")
    assert res.added == 2 and res.num_samples == 3
    assert {Path(d["input"]).name: d["reason"] for d in res.duplicates} == {
        "a_dup.mp4": "already in the data set (same content)", "c_two.mp4": "already in the data set (same content)"}
    rows = [r["source"] for r in _sources(out)]
    assert sorted(Path(r).name for r in rows[1:]) == ["b_one.mp4", "d_new.mp4"]


def test_append_with_class_names_keeps_unlabelled_inputs_unlabelled(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "a.csv").write_text(f"{clips['a'] / 'c0.mp4'},dog\n")
    _build([], out, annotations=tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(f"{clips['b'] / 'c0.mp4'},cat\n")  # c1 is given as an input, not annotated
    res = _build([clips["b"] / "c1.mp4"], out, annotations=tmp_path / "b.csv", mode="append")
    assert res.classes == ["dog", "cat"] and res.added == 2
    from umt.data.format import ShardIndex, read_manifest
    ix = ShardIndex(out, read_manifest(out)["shards"])
    docs = {Path(d["source"]).parent.name + "/" + Path(d["source"]).name: d
            for d in (json.loads(ix.read(i, "json")) for i in range(3))}
    ix.close()
    assert (docs["in0/c0.mp4"]["label"], docs["in0/c0.mp4"]["class_name"]) == (0, "dog")
    assert (docs["in1/c0.mp4"]["label"], docs["in1/c0.mp4"]["class_name"]) == (1, "cat")  # a class name per sample
    assert "label" not in docs["in1/c1.mp4"] and "class_name" not in docs["in1/c1.mp4"]


def test_append_keeps_the_sets_skips_warnings_and_codecs(clips: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = S._process_one

    def warn(src: SampleSource, st: Any, work: Path) -> dict[str, Any]:  # as a truncated input's encode reports
        r = real(src, st, work)
        if r["ok"]:
            r["info"] = {**r["info"], "warnings": [f"truncated {Path(src.path).parent.name}/{Path(src.path).name}"]}
        return r

    def expected(d: str) -> list[dict[str, Any]]:  # the warnings of directory d's clips, in index order
        idx = {r["source"]: r["index"] for r in _sources(out)}
        return sorted(({"input": str(clips[d] / c), "index": idx[str(clips[d] / c)],
                        "warning": f"truncated {clips[d].name}/{c}"} for c in ("c0.mp4", "c1.mp4")),
                      key=lambda w: w["index"])

    monkeypatch.setattr(S, "_process_one", warn)
    out = tmp_path / "out"
    first = _build([clips["a"], clips["short"]], out, seed=5, samples_per_shard=3)  # both clips in one shard
    assert 0.0 < first.seconds < 600.0  # wall seconds of this build
    w_a = expected("a")
    assert [w["index"] for w in w_a] == [0, 1]
    skip = {"input": str(clips["short"] / "s.mp4"), "reason": "too short: 2 frames < 4 needed for sparse sampling"}
    assert first.warnings == w_a and first.skipped == [skip]
    m = json.loads((out / "manifest.json").read_text())
    assert m["warnings"] == w_a and m["skipped"] == [skip]
    m["codecs"] = ["h264", "mjpeg"]  # a set that already holds another codec keeps it in its record
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    res = _build([clips["b"]], out, mode="append", seed=5, samples_per_shard=3)
    w_b = expected("b")
    assert [w["index"] for w in w_b] == [2, 3]
    assert res.warnings == w_b and res.skipped == [] and 0.0 < res.seconds < 600.0  # this run's
    m = json.loads((out / "manifest.json").read_text())
    assert m["warnings"] == w_a + w_b and m["skipped"] == [skip] and m["codecs"] == ["h264", "mjpeg"]


def test_partitioned_build_not_committed_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    out = _mk(tmp_path / "out", ".parts/")
    with pytest.raises(ShardDirError, match="holds a partitioned build that is not committed"):
        _build([clips["a"]], out)
    (out / "sources.jsonl").write_text("")  # no .build.json either: an interrupted build we cannot identify
    out2 = _mk(tmp_path / "out2", ".progress.json")
    with pytest.raises(ShardDirError, match="interrupted build of other inputs or settings"):
        _build([clips["a"]], out2)


@pytest.mark.parametrize("kw, match", [
    ({"samples_per_shard": 0}, "samples_per_shard and workers must be >= 1"),
    ({"workers": 0}, "samples_per_shard and workers must be >= 1"),
    ({"split": ""}, "bad split name"), ({"split": "a/b"}, "bad split name"), ({"split": "a.b"}, "bad split name"),
    ({"mode": "replace"}, "mode must be 'new', 'overwrite' or 'append'"),
    ({"settings": ImageEncodeSettings()}, "ImageEncodeSettings given for a image data set|given for a"),
    ({"settings": ImageEncodeSettings(), "modality": "video"}, "ImageEncodeSettings given for a video data set"),
])
def test_bad_arguments(clips: dict[str, Path], tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    if kw.get("settings") is not None and "modality" not in kw:
        # image settings alone choose the image modality: no images in the input, so nothing usable
        res = build_shards([clips["a"]], tmp_path / "o", **kw)
        assert res.num_samples == 0 and res.modality == "image"
        return
    with pytest.raises(ValueError, match=match):
        _build([clips["a"]], tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_a_file_as_out(clips: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises((ShardDirError, OSError)):
        _build([clips["a"]], tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_image_build(tmp_path: Path) -> None:
    from PIL import Image

    d = tmp_path / "img"
    d.mkdir()
    for i in range(3):
        Image.fromarray(frame_image(i, 12, 10)).save(d / f"p{i}.png")
    res = build_shards([d], tmp_path / "out", modality="image", samples_per_shard=2)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert res.modality == "image" == m["modality"] and res.num_samples == 3 and m["encoding"]["container"] == "jpeg"
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tf:
        assert [t.name.split(".", 1)[1] for t in tf.getmembers()] == ["jpg", "meta", "json"] * 2
    # more images appended to the image set
    more = tmp_path / "more"
    more.mkdir()
    Image.fromarray(frame_image(7, 12, 10)).save(more / "q.png")
    res = build_shards([more], tmp_path / "out", modality="image", samples_per_shard=2, mode="append")
    assert (res.added, res.num_samples, res.modality) == (1, 4, "image")


def test_captioned_build_records_counts(clips: dict[str, Path], tmp_path: Path) -> None:
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": str(clips["a"] / "c0.mp4"), "caption": ["one", "two"]}) + "\n"
                   + json.dumps({"video": str(clips["a"] / "c1.mp4"), "caption": "three"}) + "\n")
    out = tmp_path / "out"
    _build([], out, annotations=ann)
    m = json.loads((out / "manifest.json").read_text())
    assert m["captions"] == {"captioned": 2, "total": 3, "per_item": {"1": 1, "2": 1}}
    assert m["build"]["annotations"] == str(ann)
    rows = {Path(r["source"]).name: r for r in _sources(out)}
    assert rows["c0.mp4"]["captions"] == 2 and rows["c1.mp4"]["captions"] == 1
    uncaptioned = [json.loads(x) for x in (_build_rows(clips, tmp_path))]
    assert all("captions" not in r for r in uncaptioned)


def _build_rows(clips: dict[str, Path], tmp_path: Path) -> list[str]:
    out = tmp_path / "plain"
    _build([clips["a"]], out)
    return (out / "sources.jsonl").read_text().splitlines()


def test_append_keeps_the_sets_seed_and_shard_size(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out, seed=5)
    called: list[int] = []
    res = _build([clips["b"]], out, mode="append", seed=9, samples_per_shard=2, _after_shard=called.append)
    assert called == [2] and [s["samples"] for s in res.shards] == [1, 1, 2]
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 5 and m["samples_per_shard"] == 1 and m["num_samples"] == 4
    assert m["build"]["appends"] == [{"inputs": [str(clips["b"])], "annotations": None, "samples": 2,
                                      "duplicates": 0}]
    order = sorted(str(clips["b"] / f"c{i}.mp4") for i in range(2))
    order.sort(key=lambda p: S.order_key(9, p))  # the new samples in this run's order
    rows = _sources(out)
    assert [r["source"] for r in rows[2:]] == order
    # a set built before sources.jsonl existed: the sources read from the tars (content duplicates not found)
    (out / "sources.jsonl").unlink()
    again = _build([clips["b"]], out, mode="append")
    assert again.added == 0 and sorted(d["reason"] for d in again.duplicates) == [
        "already in the data set (same path)"] * 2


def test_append_of_other_modality_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "out"
    _build([clips["a"]], out)
    before = _listing(out)
    img = tmp_path / "img"
    img.mkdir()
    Image.fromarray(frame_image(0, 12, 10)).save(img / "p.png")
    with pytest.raises(ShardDirError, match="holds videos; --append cannot add images"):
        build_shards([img], out, modality="image", mode="append")
    assert _listing(out) == before


def test_process_one_caches(clips: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = SampleSource(str(clips["a"] / "c0.mp4"))
    first = S._process_one(src, ST, work)
    name = S._cache_name(src, ST)
    assert first["ok"] and first["encoded"] and first["cache"] == name
    assert first["source_sha256"] == hashlib.sha256(Path(src.path).read_bytes()).hexdigest()
    assert sorted(p.name for p in work.iterdir()) == [f"{name}.json", f"{name}.mp4"]
    again = S._process_one(src, ST, work)
    assert not again["encoded"] and {**again, "encoded": True} == first
    rec = json.loads((work / f"{name}.json").read_text())
    del rec["source_sha256"]  # a cache entry written before the content hash existed
    (work / f"{name}.json").write_text(json.dumps(rec))
    assert S._process_one(src, ST, work)["source_sha256"] == first["source_sha256"]
    (work / f"{name}.json").write_text("{broken")
    assert S._process_one(src, ST, work)["encoded"]
    (work / f"{name}.json").write_text(json.dumps({"cache": name}))  # no "ok": redone
    assert S._process_one(src, ST, work)["encoded"]
    (work / f"{name}.mp4").unlink()  # the record without its media: redone
    assert S._process_one(src, ST, work)["encoded"] and (work / f"{name}.mp4").is_file()
    short = SampleSource(str(clips["short"] / "s.mp4"))
    bad = S._process_one(short, ST, work)
    assert not bad["ok"] and bad["encoded"] and "reason" in bad and "info" not in bad
    assert not (work / f"{S._cache_name(short, ST)}.mp4").exists()
    bad2 = S._process_one(short, ST, work)
    assert not bad2["encoded"] and bad2["reason"] == bad["reason"]  # a rejection is cached too
    gone = S._process_one(SampleSource(str(tmp_path / "gone.mp4")), ST, work)
    assert not gone["ok"] and not list(work.glob("*.tmp"))


def test_process_one_cache_details(clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    mine = tmp_path / "mine.mp4"
    shutil.copy(clips["a"] / "c0.mp4", mine)
    src = SampleSource(str(mine))
    first = S._process_one(src, ST, work)
    name = first["cache"]
    # the cache keeps the hash of what was encoded, even if the file changed since (no rehash on every reuse)
    mine.write_bytes((clips["a"] / "c1.mp4").read_bytes())
    assert S._process_one(src, ST, work)["source_sha256"] == first["source_sha256"]
    # a cache entry from before the content hash, its source gone: no hash
    rec = json.loads((work / f"{name}.json").read_text())
    del rec["source_sha256"]
    (work / f"{name}.json").write_text(json.dumps(rec))
    mine.unlink()
    old = S._process_one(src, ST, work)
    assert old == {**rec, "source_sha256": None, "encoded": False}
    # a cached rejection comes back as it was recorded (no hash added)
    short = SampleSource(str(clips["short"] / "s.mp4"))
    bad = S._process_one(short, ST, work)
    assert S._process_one(short, ST, work) == {**bad, "encoded": False}
    assert set(bad) == {"ok", "cache", "reason", "encoded"}
    # an unexpected error of the encoder is a reported skip, not a crash
    monkeypatch.setattr(S, "encode_video", lambda local, st: (_ for _ in ()).throw(RuntimeError("boom")))
    odd = SampleSource(str(clips["b"] / "c0.mp4"))
    assert S._process_one(odd, ST, work) == {"ok": False, "cache": S._cache_name(odd, ST),
                                             "reason": "unexpected error (RuntimeError: boom)", "encoded": True}


def test_remote_rejection_names_the_url(tmp_path: Path) -> None:
    """The encoder reads a local copy of a remote input; its rejection names the URL, not the copy."""
    import fsspec

    url = f"memory:///rej{os.getpid()}_{tmp_path.name}/g.mp4"
    fsspec.filesystem("memory").pipe(url[len("memory://"):], b"not a video at all")
    work = tmp_path / "work"
    work.mkdir()
    res = S._process_one(SampleSource(url), ST, work)
    assert res["reason"].startswith("not a readable video container (") and res["reason"].endswith(f"'{url}')")
    assert ".source.tmp" not in res["reason"] and not list(work.glob("*.tmp"))


def test_remote_inputs_and_annotations(clips: dict[str, Path], tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/t{os.getpid()}_{tmp_path.name}"
    for i in range(2):
        fs.pipe(f"{root}/v/c{i}.mp4", (clips["a"] / f"c{i}.mp4").read_bytes())
    fs.pipe(f"{root}/v/notes.txt", b"x")
    fs.pipe(f"{root}/a.csv", b"v/c0.mp4,dog\nmemory://elsewhere/x.mp4,cat\n")
    rows, _ = S._read_annotations(f"memory://{root}/a.csv")
    assert [(r[0], r[1]) for r in rows] == [(f"memory://{root}/v/c0.mp4", "dog"), ("memory://elsewhere/x.mp4", "cat")]
    srcs, _, skipped, _ = S.collect_sources([f"memory://{root}/v", f"memory://{root}/v/c1.mp4",
                                             f"memory://{root}/nothing"])
    assert [s.path for s in srcs] == [f"memory://{root}/v/c0.mp4", f"memory://{root}/v/c1.mp4"]
    assert skipped == [{"input": f"memory://{root}/nothing", "reason": "missing file or directory"}]
    out = tmp_path / "out"
    res = _build([f"memory://{root}/v"], out)
    local = tmp_path / "local"
    _build([clips["a"]], local)
    assert res.num_samples == 2 and [s["sha256"] for s in res.shards] != []
    work = tmp_path / "w"
    work.mkdir()
    miss = S._process_one(SampleSource("memory://nowhere/x.mp4", origin="a.csv:2"), ST, work)
    assert miss == {"ok": False, "cache": miss["cache"], "reason": "missing file (annotation a.csv:2)",
                    "encoded": True}
    miss2 = S._process_one(SampleSource("memory://nowhere/y.mp4", origin="input"), ST, work)
    assert miss2["reason"] == "missing file"
    assert not list(work.glob("*.tmp"))


def test_collect_sources_qa_rows_repeats_and_remote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import fsspec

    # QA rows: one item per video, its questions in file order; a captioned repeat adds no question
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"video": "a.mp4", "question": "q1", "answer": "x", "caption": "c"},
        {"video": "b.mp4", "caption": "d"},
        {"video": "a.mp4", "question": "q2", "answer": ["y", "z"], "caption": "c2"},
        {"video": "b.mp4", "caption": "e"},
    ]))
    with caplog.at_level(logging.WARNING, logger="umt.data.build.shards"):
        srcs, _, skipped, _ = S.collect_sources([], tmp_path / "qa.jsonl")
    assert skipped == [] and not caplog.records  # repeats with captions or questions are expected, not warned
    by = {Path(s.path).name: s for s in srcs}
    assert by["a.mp4"].qa == [{"question": "q1", "answer": ["x"], "question_id": 1},
                              {"question": "q2", "answer": ["y", "z"], "question_id": 3}]
    assert by["b.mp4"].qa == [] and by["b.mp4"].captions == ["d", "e"]
    # a repeat that adds nothing, or another label: warned (the first label is kept)
    (tmp_path / "lab.csv").write_text("a.mp4,dog\na.mp4,dog\nb.mp4,cat\nb.mp4,eel\nc.mp4,ant\n")
    with caplog.at_level(logging.WARNING, logger="umt.data.build.shards"):
        srcs, classes, _, _ = S.collect_sources([], tmp_path / "lab.csv")
    assert [r.getMessage() for r in caplog.records] == [
        f"duplicate annotation for {tmp_path / 'a.mp4'} (lab.csv:2); keeping the first label",
        f"duplicate annotation for {tmp_path / 'b.mp4'} (lab.csv:4); keeping the first label"]
    assert classes == ["ant", "cat", "dog"] and [s.label for s in srcs] == [2, 1, 0]
    caplog.clear()
    (tmp_path / "cap.jsonl").write_text('{"video": "a.mp4", "caption": "x", "label": "dog"}\n'
                                        '{"video": "a.mp4", "caption": "y", "label": "dog"}\n'
                                        '{"video": "a.mp4", "caption": "z"}\n')
    with caplog.at_level(logging.WARNING, logger="umt.data.build.shards"):
        S.collect_sources([], tmp_path / "cap.jsonl")
    assert not caplog.records  # same label or none, a caption more: COCO's layout
    (tmp_path / "cap2.jsonl").write_text('{"video": "a.mp4", "caption": "x", "label": "dog"}\n'
                                         '{"video": "a.mp4", "caption": "y", "label": "cat"}\n')
    with caplog.at_level(logging.WARNING, logger="umt.data.build.shards"):
        S.collect_sources([], tmp_path / "cap2.jsonl")
    assert [r.getMessage() for r in caplog.records] == [
        f"duplicate annotation for {tmp_path / 'a.mp4'} (cap2.jsonl:2); keeping the first label"]
    # remote annotations (an fsspec URL is not a local path) and a remote directory of images
    fs = fsspec.filesystem("memory")
    root = f"/cs{os.getpid()}_{tmp_path.name}"
    fs.pipe(f"{root}/ann.csv", b"v/c0.mp4,dog\n")
    srcs, classes, _, modality = S.collect_sources([], f"memory://{root}/ann.csv")
    assert [s.path for s in srcs] == [f"memory://{root}/v/c0.mp4"] and classes == ["dog"] and modality == "video"
    fs.pipe(f"{root}/img/p.jpg", b"x")
    fs.pipe(f"{root}/img/q.mp4", b"x")
    assert [s.path for s in S.collect_sources([f"memory://{root}/img"], modality="image")[0]] == [
        f"memory://{root}/img/p.jpg"]
    assert [s.path for s in S.collect_sources([f"memory://{root}/img"])[0]] == [f"memory://{root}/img/q.mp4"]


def test_collect_sources_missing_inputs_origins_and_reasons(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/cm{os.getpid()}_{tmp_path.name}"
    fs.pipe(f"{root}/r.mp4", b"x")
    (tmp_path / "l.mp4").write_bytes(b"x")
    # a missing input (remote or local) is skipped and the inputs after it are still collected
    srcs, _, skipped, _ = S.collect_sources([f"memory://{root}/gone.mp4", f"memory://{root}/r.mp4",
                                             tmp_path / "gone", tmp_path / "l.mp4"])
    assert [(s.path, s.label, s.caption, s.origin) for s in srcs] == [
        (str(tmp_path / "l.mp4"), None, None, "input"), (f"memory://{root}/r.mp4", None, None, "input")]
    assert [d["input"] for d in skipped] == [f"memory://{root}/gone.mp4", str(tmp_path / "gone")]
    # every row of an item with only empty captions is named in its reason
    (tmp_path / "e.jsonl").write_text('{"video": "a.mp4", "caption": " "}\n{"video": "b.mp4", "caption": "ok"}\n'
                                      '{"video": "a.mp4", "caption": ""}\n')
    _, _, skipped, _ = S.collect_sources([], tmp_path / "e.jsonl")
    assert skipped == [{"input": str(tmp_path / "a.mp4"), "reason": "empty caption (e.jsonl:1, e.jsonl:3)"}]
    # class names with some rows unlabelled: those stay unlabelled
    (tmp_path / "u.jsonl").write_text('{"video": "a.mp4", "label": "dog"}\n{"video": "b.mp4"}\n')
    srcs, classes, _, _ = S.collect_sources([], tmp_path / "u.jsonl")
    assert classes == ["dog"] and [s.label for s in srcs] == [0, None]


def test_progress_bar(clips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one"
    _build([clips["a"]], one, progress=True)
    err = capsys.readouterr().err
    assert "encode: 100%" in err and "2/2" in err and "video/s" in err
    _build([clips["a"]], tmp_path / "two")
    assert capsys.readouterr().err == ""


def test_encode_all_on_a_pool_of_spawned_workers(clips: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers`` > 1 with two or more inputs: a pool of that many spawned processes (threads stand in for them
    here; tests/data/test_shards.py runs real ones), each result under its input's position; one input, or
    ``workers=1``: no pool."""
    from concurrent.futures import ThreadPoolExecutor

    pools: list[tuple[Any, str | None]] = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, max_workers: int | None = None, mp_context: Any = None) -> None:
            pools.append((max_workers, mp_context.get_start_method() if mp_context is not None else None))
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(S, "ProcessPoolExecutor", Pool)
    srcs = [SampleSource(str(p)) for d in ("a", "b") for p in sorted(clips[d].iterdir())]  # 4 clips
    serial = S._encode_all(srcs, ST, tmp_path / "w1", workers=1, progress=False)
    assert pools == [] and sorted(serial) == [0, 1, 2, 3]
    assert len({r["cache"] for r in serial.values()}) == 4
    assert S._encode_all(srcs, ST, tmp_path / "w2", workers=3, progress=False) == serial
    assert pools == [(3, "spawn")]
    assert S._encode_all(srcs[:2], ST, tmp_path / "w3", workers=2, progress=False) == {0: serial[0], 1: serial[1]}
    assert pools == [(3, "spawn"), (2, "spawn")]
    assert S._encode_all(srcs[3:], ST, tmp_path / "w4", workers=2, progress=False) == {0: serial[3]}
    assert len(pools) == 2  # one input: no pool


def test_overwrite_clears_a_staging_dir_of_other_inputs(clips: dict[str, Path], tmp_path: Path) -> None:
    """A staging directory left by an abandoned --overwrite of other inputs (finished or interrupted) is deleted
    before the new staging build: nothing of it (cache entries included) reaches the new set."""
    ref = tmp_path / "ref"
    _build([clips["b"]], ref, keep_cache=True)
    want = _listing(ref)
    for kind in ("finished", "partial", "partial-unkeyed"):
        out = tmp_path / f"out_{kind}"
        _build([clips["a"]], out)
        stage = tmp_path / f".out_{kind}.overwrite"
        if kind == "finished":
            _build([clips["a"]], stage, keep_cache=True)
        else:
            _mk(stage, ".work/", "train-000000.tar")
            if kind == "partial":
                (stage / ".build.json").write_text('{"key": "other"}')
        (stage / ".work" / "zz-other.json").write_text("{}")
        assert S._dir_state(stage) == kind.split("-")[0]
        _build([clips["b"]], out, mode="overwrite", keep_cache=True)
        assert _listing(out) == want, kind
        assert not stage.exists()


def test_overwrite_with_nothing_usable_drops_its_staging_cache(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out)
    before = _listing(out)
    res = _build([clips["short"]], out, mode="overwrite", keep_cache=True)
    assert res.num_samples == 0 and _listing(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_clean_up_finished_after_the_cache_was_gone(clips: dict[str, Path], tmp_path: Path) -> None:
    """Interrupted in the clean-up after ``.work`` was deleted: the re-run removes the records and temporary files
    without tripping over the missing cache."""
    out = tmp_path / "out"
    _build([clips["a"]], out)
    ref = _listing(out)
    key = json.loads((out / "manifest.json").read_text())["build"]["key"]
    (out / ".build.json").write_text(json.dumps({"key": key, "append": False}))
    (out / "sources.jsonl.tmp").write_text("half")
    res = _build([clips["a"]], out)
    assert res.already_built and _listing(out) == ref and sorted(os.listdir(out)) == sorted(ref)


def test_append_records_the_key_of_its_inputs(clips: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _build([clips["b"]], ref)
    key_b = json.loads((ref / "manifest.json").read_text())["build"]["key"]  # the key these inputs build under
    out = tmp_path / "out"
    _build([clips["a"]], out)
    with pytest.raises(RuntimeError):
        _build([clips["b"]], out, mode="append", _after_shard=_crash)
    assert json.loads((out / ".build.json").read_text()) == {"key": key_b, "append": True}
    old = tmp_path / "old"  # a set whose manifest predates the build record
    _build([clips["a"]], old)
    m = json.loads((old / "manifest.json").read_text())
    del m["build"]
    (old / "manifest.json").write_text(json.dumps(m))
    _build([clips["b"]], old, mode="append")
    build = json.loads((old / "manifest.json").read_text())["build"]
    assert build["key"] == key_b and build["inputs"] == [str(clips["b"])] and len(build["appends"]) == 1


def test_no_op_and_finishing_clean_up_details(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out, keep_cache=True)
    key = json.loads((out / "manifest.json").read_text())["build"]["key"]
    (out / ".build.json").write_text(json.dumps({"key": key, "append": False}))
    res = _build([clips["a"]], out, keep_cache=True)  # finishing the clean-up keeps the cache when asked
    assert res.already_built and res.out_dir == out and (out / ".work").is_dir()
    assert not (out / ".build.json").exists()
    assert len(list((out / ".work").glob("*.json"))) == 2
    # a finished set without a build record (built before it existed) is never taken for these inputs
    m = json.loads((out / "manifest.json").read_text())
    del m["build"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardDirError, match="already holds a data set built from other inputs"):
        _build([clips["a"]], out)


def test_defaults(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = build_shards([clips["a"]], out, settings=ST)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["seed"], m["samples_per_shard"], m["split"], m["modality"]) == (0, 256, "train", "video")
    assert [s["name"] for s in res.shards] == ["train-000000.tar"] and res.shards[0]["samples"] == 2


def test_out_under_a_file_is_named_before_any_encoding(clips: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match=f"^\\[Errno 20\\] --out {tmp_path}/f/out: {tmp_path}/f is not a directory$"):
        _build([clips["a"]], tmp_path / "f" / "out")


def test_paragraph_build(clips: dict[str, Path], tmp_path: Path) -> None:
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": str(clips["a"] / "c0.mp4"), "caption": ["one", "two"]}) + "\n")
    _build([], tmp_path / "out", annotations=ann, paragraph=True)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["captions"] == {"captioned": 1, "total": 1, "per_item": {"1": 1}}
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tf:
        assert tf.extractfile("00000000.txt").read() == b"one two"  # type: ignore[union-attr]


def test_key_covers_shard_size_and_split(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([clips["a"]], out, split="val")
    with pytest.raises(ShardDirError, match="already holds a data set built from other inputs"):
        _build([clips["a"]], out, split="val", samples_per_shard=2)
    with pytest.raises(ShardDirError, match="already holds a data set built from other inputs"):
        _build([clips["a"]], out, split="test")


def test_default_settings_of_a_video_build(clips: dict[str, Path], tmp_path: Path) -> None:
    res = build_shards([clips["short"]], tmp_path / "out")  # nothing usable: only the settings chosen matter
    assert res.modality == "video" and res.num_samples == 0 and len(res.skipped) == 1


def test_a_second_builder_is_refused_by_name(clips: dict[str, Path], tmp_path: Path) -> None:
    from umt.fileio import LockedError, exclusive_lock

    out = tmp_path / "out"
    with exclusive_lock(tmp_path / ".out.lock", "the test"):
        with pytest.raises(LockedError, match=f"shard directory {out}"):
            _build([clips["a"]], out)
    assert not out.exists()
