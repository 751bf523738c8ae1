"""``python -m umt.data.build.info`` on hand-made shard directories (tars of a few bytes, hand-written manifests, no
video encoded): the summary as a whole dict worked out by hand (histogram edges and counts, per-class names with
out-of-range and negative labels, caption counts and lengths, manifest fields absent), the printed report line by
line, the JSON output, and ``--verify``'s one line per problem for a missing, truncated, unreadable or miscounted
shard (the report also comes out when a truncated shard cannot be read)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from umt.data.build.info import histogram, main, summarize, verify
from umt.data.format import encode_meta, index_text

ENC = {"codec": "mjpeg", "short_side": 320, "gop": 8, "container": "mp4"}
SKIPPED = [{"input": "/x/a.mp4", "reason": "too short (3 frames)"},
           {"input": "/x/b.mp4", "reason": "too short: 2 frames"},
           {"input": "/x/c.mp4", "reason": "unreadable"},
           {"reason": "odd"}]


def _meta(frames: int, w: int, h: int, label: int, dur_ms: int, index: int) -> bytes:
    return encode_meta(frames=frames, width=w, height=h, label=label, index=index, duration_ms=dur_ms)


def _tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[int, str, int]:
    """Write a plain USTAR tar and its ``.idx``; returns (bytes, sha256, samples)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, comps in samples:
            for ext, data in comps.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    with tarfile.open(path) as tf:
        members = [(t.name, t.offset_data, t.size) for t in tf.getmembers()]
    path.with_suffix(".idx").write_text(index_text(members))
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest(), len(samples)


def _write(d: Path, shards: list[list[tuple[str, dict[str, bytes]]]], **manifest: Any) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    rec = []
    for k, samples in enumerate(shards):
        name = f"val-{k:06d}.tar"
        nbytes, sha, n = _tar(d / name, samples)
        rec.append({"name": name, "samples": n, "bytes": nbytes, "sha256": sha})
    m = {"format": "umt-webdataset", "num_samples": sum(r["samples"] for r in rec), "shards": rec, **manifest}
    (d / "manifest.json").write_text(json.dumps(m))
    return m


# s0: 4 frames 32x16, label 0 (cat), 60000 s, captions "a b" / "c"; s1: 12 frames 10x20, label 2 (no such name),
# 120000 s, no caption; s2: 12 frames 30x24, unlabelled, 180000 s, caption "one two three"
SAMPLES = [
    ("00000000", {"meta": _meta(4, 32, 16, 0, 60_000_000, 0), "txt": b"a b\nc"}),
    ("00000001", {"meta": _meta(12, 10, 20, 2, 120_000_000, 1)}),
    ("00000002", {"meta": _meta(12, 30, 24, -1, 180_000_000, 2), "txt": b"one two three"}),
]


def _video_set(d: Path, big_bytes: bool = True) -> dict[str, Any]:
    m = _write(d, [SAMPLES[:2], SAMPLES[2:]], split="val", modality="video", encoding=ENC, codecs=["mjpeg"],
               classes=["cat", "dog"], skipped=SKIPPED, warnings=["w1"])
    if big_bytes:  # the summary reads the sizes from the manifest: 3 MiB + 0.5 MiB
        m["shards"][0]["bytes"], m["shards"][1]["bytes"] = 3 * 2**20, 2**19
        (d / "manifest.json").write_text(json.dumps(m))
    return m


def _bins(lo: float, step: float, counts: list[int]) -> list[dict[str, float]]:
    return [{"lo": lo + i * step, "hi": lo + (i + 1) * step, "count": c} for i, c in enumerate(counts)]


def test_histogram_edges_and_counts() -> None:
    assert histogram([]) == []
    assert histogram([1.0, 2.0, 3.0, 4.0], bins=2) == [{"lo": 1.0, "hi": 2.5, "count": 2},
                                                        {"lo": 2.5, "hi": 4.0, "count": 2}]
    h = histogram([0, 8, 8, 2])  # 8 bins of width 1 by default
    assert h == _bins(0.0, 1.0, [1, 0, 1, 0, 0, 0, 0, 2])
    assert all(type(b["lo"]) is float and type(b["count"]) is int for b in h)


def test_summary_of_a_hand_made_set(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _video_set(d)
    s = summarize(d)
    assert s == {
        "dir": str(d), "split": "val", "modality": "video", "samples": 3, "shards": 2, "bytes": 3 * 2**20 + 2**19,
        "encoding": ENC, "codecs": ["mjpeg"],
        "frames": {"min": 4, "max": 12, "histogram": _bins(4.0, 1.0, [1, 0, 0, 0, 0, 0, 0, 2])},
        "duration_s": {"min": 60000.0, "max": 180000.0, "total": 360000.0,
                       "histogram": _bins(60000.0, 15000.0, [1, 0, 0, 0, 1, 0, 0, 1])},
        "classes": {"cat": 1, "2": 1},  # label 2 has no name (2 names); the unlabelled sample is not a class
        "short_side": {"min": 10, "max": 24, "histogram": _bins(10.0, 1.75, [1, 0, 0, 1, 0, 0, 0, 1])},
        "captions": {"items": 2, "total": 3, "per_item": {"1": 1, "2": 1}},
        "caption_words": {"captioned": 2, "histogram": _bins(1.0, 0.25, [1, 0, 0, 0, 1, 0, 0, 1])},
        "skipped": {"count": 4, "reasons": {"too short": 2, "unreadable": 1, "odd": 1}, "inputs": SKIPPED},
        "warnings": ["w1"],
    }
    assert type(s["duration_s"]["total"]) is float


def test_summary_of_a_bare_manifest(tmp_path: Path) -> None:
    """A manifest with only shards and counts (older or hand-written): the documented defaults."""
    d = tmp_path / "s"
    m = _write(d, [[("00000000", {"meta": _meta(5, 7, 9, 1, 2500, 0)})]])
    m["shards"][0]["bytes"] = 2048
    (d / "manifest.json").write_text(json.dumps(m))
    s = summarize(d)
    assert s["split"] is None and s["modality"] == "video" and s["encoding"] == {} and s["codecs"] == []
    assert s["classes"] == {"1": 1}  # no class names: the label itself
    assert s["skipped"] == {"count": 0, "reasons": {}, "inputs": []} and s["warnings"] == []
    assert s["captions"] == {"items": 0, "total": 0, "per_item": {}}
    assert s["caption_words"] == {"captioned": 0, "histogram": []}
    assert s["duration_s"]["total"] == 2.5 and s["short_side"]["min"] == 7
    assert main([str(d)]) == 0


def test_summary_of_an_empty_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    _write(d, [], modality="video")
    s = summarize(d)
    assert s["samples"] == 0 and s["shards"] == 0 and s["bytes"] == 0
    assert s["frames"] == {"min": 0, "max": 0, "histogram": []}
    assert s["duration_s"] == {"min": 0, "max": 0, "total": 0.0, "histogram": []}
    assert s["short_side"] == {"min": 0, "max": 0, "histogram": []}
    assert s["classes"] == {}
    assert main([str(d)]) == 0
    assert capsys.readouterr().out == (
        f"{d}: 0 videos (split None) in 0 shards, 0.0 MiB (0.0 KiB each)\n"
        "encoding: codec None, GOP None, short side None, container None; codecs seen []\n"
        "duration: 0.00 h in all, 0.00–0.00 s per sample; frames 0–0\n"
        "skipped inputs: 0\n")


def test_printed_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    _video_set(d)
    assert main([str(d)]) == 0
    z = "  " + " " * 5 + "0  "  # a bin with no samples: count 0, no bar
    bar30, bar15 = "#" * 30, "#" * 15
    expected = [
        f"{d}: 3 videos (split val) in 2 shards, 3.5 MiB (1194.7 KiB each)",
        "encoding: codec mjpeg, GOP 8, short side 320, container mp4; codecs seen ['mjpeg']",
        "duration: 100.00 h in all, 60000.00–180000.00 s per sample; frames 4–12",
        "duration (s):",
        f"   60000.00 –  75000.00       1  {bar30}",
        f"   75000.00 –  90000.00{z}",
        f"   90000.00 – 105000.00{z}",
        f"  105000.00 – 120000.00{z}",
        f"  120000.00 – 135000.00       1  {bar30}",
        f"  135000.00 – 150000.00{z}",
        f"  150000.00 – 165000.00{z}",
        f"  165000.00 – 180000.00       1  {bar30}",
        "frames:",
        f"       4.00 –      5.00       1  {bar15}",
        f"       5.00 –      6.00{z}",
        f"       6.00 –      7.00{z}",
        f"       7.00 –      8.00{z}",
        f"       8.00 –      9.00{z}",
        f"       9.00 –     10.00{z}",
        f"      10.00 –     11.00{z}",
        f"      11.00 –     12.00       2  {bar30}",
        "classes:",
        "       1  cat",
        "       1  2",
        "captions: 3 on 2 of 3 videos (1 with 1, 1 with 2)",
        "caption length (words):",
        f"       1.00 –      1.25       1  {bar30}",
        f"       1.25 –      1.50{z}",
        f"       1.50 –      1.75{z}",
        f"       1.75 –      2.00{z}",
        f"       2.00 –      2.25       1  {bar30}",
        f"       2.25 –      2.50{z}",
        f"       2.50 –      2.75{z}",
        f"       2.75 –      3.00       1  {bar30}",
        "skipped inputs: 4 (too short: 2, unreadable: 1, odd: 1)",
        "  /x/a.mp4: too short (3 frames)",
        "  /x/b.mp4: too short: 2 frames",
        "  /x/c.mp4: unreadable",
        "  ?: odd",
        "warning: w1",
    ]
    assert capsys.readouterr().out.split("\n") == expected + [""]


def test_printed_report_of_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    m = _write(d, [[("00000000", {"meta": _meta(1, 40, 30, -1, 0, 0)}),
                    ("00000001", {"meta": _meta(1, 20, 50, -1, 0, 1)})]],
               split="train", modality="image", encoding={"quality": 90, "short_side": 256, "container": "jpeg"})
    m["shards"][0]["bytes"] = 2**20
    (d / "manifest.json").write_text(json.dumps(m))
    assert main([str(d)]) == 0
    z = "  " + " " * 5 + "0  "
    assert capsys.readouterr().out.split("\n") == [
        f"{d}: 2 images (split train) in 1 shards, 1.0 MiB (512.0 KiB each)",
        "encoding: JPEG quality 90, short side at most 256 px; stored short side 20–30 px",
        "short side (px):",
        f"      20.00 –     21.25       1  {'#' * 30}",
        *[f"      {20 + 1.25 * i:5.2f} –     {21.25 + 1.25 * i:5.2f}{z}" for i in range(1, 7)],
        f"      28.75 –     30.00       1  {'#' * 30}",
        "skipped inputs: 0",
        "",
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    _video_set(d, big_bytes=False)
    assert main([str(d), "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text)
    assert out["verify"] is None and out["samples"] == 3 and out["classes"] == {"cat": 1, "2": 1}
    assert '\n  "dir": ' in text and '\n   "' not in text.split('"encoding"')[0]  # indented by 2
    assert main([str(d), "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["verify"] == []
    assert main([str(d), "--verify"]) == 0
    assert capsys.readouterr().out.endswith("\nverify: OK, every shard and index matches the manifest\n")


def test_no_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").mkdir()  # a directory by that name is not a manifest either
    assert main([str(tmp_path), "--verify"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == (f"error: {tmp_path} holds no manifest.json (not a shard directory written by "
                                         "tools/make_shards.py)\n")


def test_verify_intact(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _video_set(d, big_bytes=False)
    assert verify(d) == []
    assert (d / "val-000000.idx").read_text() == (  # the fixture's index, by hand: 512-byte headers and blocks
        "v1.2 2\nmeta 512 32 00000000.meta txt 1536 5 00000000.txt\nmeta 2560 32 00000001.meta\n")


def test_verify_missing_shard_one_line_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    _video_set(d, big_bytes=False)
    (d / "val-000000.tar").unlink()
    (d / "val-000000.idx").unlink()
    assert verify(d) == ["val-000000.tar: missing"]
    assert main([str(d), "--verify"]) == 1
    cap = capsys.readouterr()
    assert cap.out == "verify: FAILED\n  val-000000.tar: missing\n"
    assert cap.err.startswith("error: cannot read the samples: ") and "\n" == cap.err[-1] and cap.err.count("\n") == 1
    assert main([str(d)]) == 1  # without --verify: the error alone
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: cannot read the samples: ")


def test_verify_truncated_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Shard 1 cut after its first member (meta: header + one block): size, hash and index are named; the sample
    count (one) still agrees. The report must not end in a traceback although its caption can no longer be read."""
    d = tmp_path / "s"
    _video_set(d, big_bytes=False)
    tar = d / "val-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1024])
    problems = [
        "val-000001.tar: 1024 bytes, the manifest says 10240",
        "val-000001.tar: sha256 differs from the manifest (the shard changed or is corrupt)",
        "val-000001.idx: does not match val-000001.tar's members",
    ]
    assert verify(d) == problems
    assert main([str(d), "--verify"]) == 1
    cap = capsys.readouterr()
    assert cap.out == "verify: FAILED\n" + "".join(f"  {p}\n" for p in problems)
    assert cap.err.startswith("error: cannot read the samples: ") and cap.err.count("\n") == 1
    assert main([str(d), "--verify", "--json"]) == 1


def test_verify_names_each_shard_in_order(tmp_path: Path) -> None:
    """Shard 0 unreadable (its index kept), shard 1 without its index, shard 2 intact but the manifest's sample count
    wrong, shard 3 missing, shard 4 cut at a member boundary (one sample of two left)."""
    d = tmp_path / "s"
    one = [("00000000", {"meta": _meta(4, 8, 8, 0, 100, 0)})]
    two = one + [("00000001", {"meta": _meta(4, 8, 8, 0, 100, 1)})]
    m = _write(d, [one, one, one, one, two])
    (d / "val-000000.tar").write_bytes(b"\x07" * 10240)
    (d / "val-000001.idx").unlink()
    m["shards"][2]["samples"] = 3
    (d / "val-000003.tar").unlink()
    (d / "manifest.json").write_text(json.dumps(m))
    t4 = d / "val-000004.tar"
    t4.write_bytes(t4.read_bytes()[:1024])  # the first sample's header and meta block
    got = verify(d)
    assert got[0] == "val-000000.tar: sha256 differs from the manifest (the shard changed or is corrupt)"
    assert got[1].startswith("val-000000.tar: not a readable tar (") and got[1].endswith(")")
    assert got[2:] == [
        "val-000001.idx: missing (rebuild the index or the shards)",
        "val-000002.tar: 1 samples, the manifest says 3",
        "val-000003.tar: missing",
        "val-000004.tar: 1024 bytes, the manifest says 10240",
        "val-000004.tar: sha256 differs from the manifest (the shard changed or is corrupt)",
        "val-000004.idx: does not match val-000004.tar's members",
        "val-000004.tar: 1 samples, the manifest says 2",
    ]


def test_repeated_labels_and_caption_counts_add_up(tmp_path: Path) -> None:
    """Two samples of class 1 with one caption each, one of class 0 with one caption that is not valid UTF-8 (read
    with replacement characters, never an error)."""
    d = tmp_path / "s"
    _write(d, [[("00000000", {"meta": _meta(4, 8, 8, 1, 100, 0), "txt": b"a"}),
                ("00000001", {"meta": _meta(4, 8, 8, 1, 100, 1), "txt": b"b c"}),
                ("00000002", {"meta": _meta(4, 8, 8, 0, 100, 2), "txt": b"caf\xe9 au lait"})]],
               classes=["zero", "one"])
    s = summarize(d)
    assert s["classes"] == {"zero": 1, "one": 2}
    assert s["captions"] == {"items": 3, "total": 3, "per_item": {"1": 3}}
    assert s["caption_words"]["histogram"] == _bins(1.0, 0.25, [1, 0, 0, 0, 1, 0, 0, 1])  # 1, 2 and 3 words


def test_report_then_verify_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Readable samples but a manifest whose counts disagree with two shards: the report, then each problem."""
    d = tmp_path / "s"
    m = _video_set(d, big_bytes=False)
    m["shards"][0]["samples"], m["shards"][1]["samples"] = 5, 4
    (d / "manifest.json").write_text(json.dumps(m))
    assert main([str(d)]) == 0  # without --verify nothing is checked
    plain = capsys.readouterr().out
    assert main([str(d), "--verify"]) == 1
    assert capsys.readouterr().out == plain + (
        "verify: FAILED\n  val-000000.tar: 2 samples, the manifest says 5\n"
        "  val-000001.tar: 1 samples, the manifest says 4\n")
