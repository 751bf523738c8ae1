"""Partitioned builds (``make_shards --part I/N``, ``--commit``, ``--distributor ray``): a 4-part build run as Slurm
array tasks commits to a data set the loaders read, sample for sample the bytes of a single-machine build; a missing
part is named and nothing is committed; a part killed at any rename and re-run, or a commit killed and re-run, ends
in the same committed set; a Ray build with a worker lost mid-part commits the same."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.crash import count_replaces, run_killed
from tests.data_utils import make_clip, make_good_set
from umt.data.build.cli import main as make_shards
from umt.data.build.parts import build_part, commit_parts, parse_part, slurm_part
from umt.data.build.shards import EncodeSettings, ShardDirError, build_shards, part_of
from umt.data.format import ShardIndex, decode_meta, read_manifest

N_PARTS = 4
OPTS = ["--codec", "mjpeg", "--short-side", "48", "--samples-per-shard", "2", "--quiet"]
ST = EncodeSettings(codec="mjpeg", short_side=48)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 good clips plus two bad inputs (an empty file, a clip too short), so skips shift indices across parts."""
    src = tmp_path_factory.mktemp("src")
    _, ann = make_good_set(src, 8)
    (src / "empty.mp4").write_bytes(b"")
    make_clip(src / "short.mp4", n_frames=4)
    rows = [{"video": "empty.mp4", "label": "cat", "caption": "nothing"},
            {"video": "short.mp4", "label": "dog", "caption": "too short"}]
    ann.write_text(ann.read_text() + "".join(json.dumps(r) + "\n" for r in rows))
    return ann


@pytest.fixture(scope="module")
def single(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "set"
    assert make_shards(["--annotations", str(inputs), "--out", str(out), *OPTS]) == 0
    return out


def _samples(d: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a committed set: ``{key: {member ext: bytes}}``."""
    out: dict[str, dict[str, bytes]] = {}
    for sh in read_manifest(d)["shards"]:
        with tarfile.open(d / sh["name"]) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                out.setdefault(key, {})[ext] = tf.extractfile(ti).read()  # type: ignore[union-attr]
    return out


def _assert_same_set(d: Path, ref: Path) -> None:
    """``d`` is ``ref`` sample for sample; only the tars that hold the samples (and the build record) differ."""
    assert _samples(d) == _samples(ref)
    assert (d / "sources.jsonl").read_bytes() == (ref / "sources.jsonl").read_bytes()
    m, r = read_manifest(d), read_manifest(ref)
    assert {k for k in m if m[k] != r[k]} <= {"shards", "build"}
    assert m["build"]["parts"] == N_PARTS and m["build"]["key"] == r["build"]["key"]
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []  # .parts removed, no temporaries
    index = ShardIndex(d, m["shards"])  # the loaders' random access: position in manifest order = sample index
    try:
        assert [decode_meta(index.read(i, "meta"))["index"] for i in range(len(index))] == list(range(m["num_samples"]))
    finally:
        index.close()


def _slurm(monkeypatch: pytest.MonkeyPatch, task: int, lo: int = 1) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(lo + task))
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", str(lo))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(N_PARTS))


def test_slurm_array_parts_commit_to_the_single_machine_set(inputs, single, tmp_path, monkeypatch, capsys):
    out = tmp_path / "set"
    args = ["--annotations", str(inputs), "--out", str(out), *OPTS]
    for task in (3, 1, 0, 2):  # any order: parts that encode before the parts ahead of them pack later
        _slurm(monkeypatch, task)
        assert make_shards(args) == 0
        assert not (out / "manifest.json").exists()  # invisible to loaders until committed
    said = capsys.readouterr().out
    assert f"part 3/{N_PARTS}" in said and "not packed yet" in said and "packed" in said
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert make_shards(["--out", str(out), "--commit", "--quiet"]) == 0
    _assert_same_set(out, single)
    m = read_manifest(out)
    assert all(re.fullmatch(rf"train-p00[0-3]of{N_PARTS:03d}-\d{{6}}\.tar", sh["name"]) for sh in m["shards"])
    assert [s["input"].rsplit("/", 1)[1] for s in m["skipped"]] == ["empty.mp4", "short.mp4"]
    assert make_shards(["--out", str(out), "--commit", "--quiet"]) == 0  # committed: a no-op
    _slurm(monkeypatch, 2)
    assert make_shards(args) == 0 and "already holds this data set" in capsys.readouterr().out


def test_parts_split_the_inputs_by_hash_whatever_the_listing_order(inputs):
    paths = [f"/data/v{i}.mp4" for i in range(1000)]
    counts = [0] * N_PARTS
    for p in paths:
        counts[part_of(0, p, N_PARTS)] += 1
    assert sum(counts) == 1000 and min(counts) > 200  # every input in exactly one part, evenly
    assert [part_of(0, p, N_PARTS) for p in reversed(paths)] == [part_of(0, p, N_PARTS) for p in paths][::-1]
    assert parse_part("3/16") == (3, 16)
    for bad in ("4/4", "1", "-1/3"):
        with pytest.raises(ValueError):
            parse_part(bad)
    assert slurm_part({}) is None
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert slurm_part(env) == (2, 4)
    with pytest.raises(ValueError, match="contiguous"):
        slurm_part({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_missing_part_is_named_and_nothing_is_committed(inputs, tmp_path, capsys):
    out = tmp_path / "set"
    for i in (0, 1, 3):
        assert make_shards(["--annotations", str(inputs), "--out", str(out), "--part", f"{i}/{N_PARTS}", *OPTS]) == 0
    capsys.readouterr()
    assert make_shards(["--out", str(out), "--commit", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"part 2/{N_PARTS} has not finished" in err and "\n" not in err.strip()
    assert not (out / "manifest.json").exists()
    # another part count, or a whole build, into the same directory is refused; the parts are left as they were
    with pytest.raises(ShardDirError, match="other inputs, settings or part count"):
        build_part([], out, 0, 2, annotations=inputs, settings=ST, samples_per_shard=2)
    with pytest.raises(ShardDirError, match="partitioned build that is not committed"):
        build_shards([], out, annotations=inputs, settings=ST, samples_per_shard=2)


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def staged(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, int]:
    """``(base, ready, k, renames)``: every part but ``k`` (the smallest holding a usable clip: which part an input
    falls in depends on its path, so on the temporary directory) has run; parts after ``k`` wait for it, so the
    commit packs them. ``ready`` is ``base`` after part ``k`` (it packs at once), which made ``renames`` renames."""
    from umt.data.build.shards import collect_sources

    sources = collect_sources([], inputs)[0]
    good = [sum(part_of(0, s.path, N_PARTS) == i and "clip" in s.path for s in sources) for i in range(N_PARTS)]
    k = min((i for i in range(N_PARTS) if good[i]), key=lambda i: good[i])  # the smallest part with a sample: fast
    root = tmp_path_factory.mktemp("staged")
    base, ready = root / "base", root / "ready"
    for i in range(N_PARTS):
        if i != k:
            _part(base, i, inputs)
    shutil.copytree(base, ready)
    return base, ready, k, count_replaces(lambda: _part(ready, k, inputs))


def _part(out: Path, i: int, ann: Path) -> None:
    build_part([], out, i, N_PARTS, annotations=ann, settings=ST, samples_per_shard=2)


@pytest.mark.parametrize("when", ["before", "after"])
def test_part_killed_at_every_rename_then_rerun_is_identical(inputs, staged, tmp_path, when):
    """A part (it packs at once) killed before/after each of its renames, then re-run: as if never interrupted."""
    base, ready, k, renames = staged
    assert renames >= 5
    want = _tree(ready)
    for at in range(1, renames + 1):
        out = tmp_path / f"p{at}"
        shutil.copytree(base, out)
        assert run_killed(lambda: _part(out, k, inputs), at=at, when=when)
        _part(out, k, inputs)  # the same command again
        assert _tree(out) == want, f"part killed {when} rename {at}"


def test_commit_killed_then_rerun_commits_the_single_machine_set(inputs, single, staged, tmp_path):
    """The commit (packing the parts that waited, then sources and manifest) killed at its first, middle
    and last renames, then re-run: the single-machine set."""
    _, ready, _, _ = staged
    ref = tmp_path / "ref"
    shutil.copytree(ready, ref)
    renames = count_replaces(lambda: commit_parts(ref))
    assert renames >= 2  # sources.jsonl, manifest.json (and the packing of parts that waited)
    _assert_same_set(ref, single)
    want = _tree(ref)
    points = {(1, "before"), (max(1, renames // 2), "after"), (renames - 1, "after"), (renames, "before"),
              (renames, "after")}
    for at, when in sorted(points):
        out = tmp_path / f"c{when}{at}"
        shutil.copytree(ready, out)
        assert run_killed(lambda: commit_parts(out), at=at, when=when)
        assert (out / "manifest.json").exists() == (at == renames and when == "after")  # visible only when whole
        commit_parts(out)
        assert _tree(out) == want, f"commit killed {when} rename {at}"


def test_fsspec_inputs_file_url_and_remote_build_the_same_samples(inputs, single, tmp_path):
    """``file://`` URLs build exactly the set of the plain paths; a non-local fsspec file system (``memory://``, as
    S3 or GCS would be) is listed and read through fsspec, each input fetched into the cache before encoding."""
    fsspec = pytest.importorskip("fsspec")
    by_url = tmp_path / "url"
    build_shards([], by_url, annotations=inputs.as_uri(), settings=ST, samples_per_shard=2)
    assert _samples(by_url) == _samples(single)
    assert (by_url / "sources.jsonl").read_bytes() == (single / "sources.jsonl").read_bytes()

    mem = fsspec.filesystem("memory")
    for f in sorted(inputs.parent.iterdir()):
        mem.pipe(f"/umt-test-parts/{f.name}", f.read_bytes())
    try:
        out = tmp_path / "remote"
        for i in range(N_PARTS):  # partitioned too: every part reads the annotations through fsspec
            build_part([], out, i, N_PARTS, annotations="memory://umt-test-parts/annotations.jsonl", settings=ST,
                       samples_per_shard=2)
        res = commit_parts(out)
        by_dir = build_shards(["memory://umt-test-parts"], tmp_path / "dir", settings=ST, samples_per_shard=2)
    finally:
        mem.rm("/umt-test-parts", recursive=True)
    rows = [json.loads(r) for r in (out / "sources.jsonl").read_text().splitlines()]
    assert all(r["source"].startswith("memory://umt-test-parts/") for r in rows)
    assert res.num_samples == read_manifest(single)["num_samples"]
    assert [s["reason"].split(" (")[0] for s in res.skipped] == [s["reason"].split(" (")[0] for s in
                                                                 read_manifest(single)["skipped"]]
    assert by_dir.num_samples == res.num_samples  # a directory URL, searched for videos (unlabelled)
    ref = _samples(single)  # the media bytes are the same as from the local files; only the recorded source differs
    assert sorted(m["mp4"] for m in _samples(out).values()) == sorted(m["mp4"] for m in ref.values())


def test_ray_distributor_without_ray_is_a_one_line_error(inputs, tmp_path, capsys):
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ray is installed (the ray test covers it)")
    out = tmp_path / "set"
    assert make_shards(["--annotations", str(inputs), "--out", str(out), "--distributor", "ray", *OPTS]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install" in err and "ray" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.ray
def test_ray_build_with_a_lost_worker_commits_the_same(inputs, single, tmp_path):
    ray = pytest.importorskip("ray")
    from umt.data.build.distribute import build_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "set"
        marker = tmp_path / "lost-once"
        res = build_with_ray([], out, parts=N_PARTS, annotations=inputs, settings=ST, samples_per_shard=2,
                             _exit_after_encode={1: str(marker)})
        assert marker.exists()  # part 1's first worker died after encoding; Ray ran the part again
    finally:
        ray.shutdown()
    assert res.num_samples == read_manifest(single)["num_samples"]
    _assert_same_set(out, single)


def test_slurm_example_submits_array_second_pass_and_commit(tmp_path):
    """``examples/slurm/make_shards_array.sbatch submit``: an array of N parts, the same array again after it (parts
    that waited pack), then the commit after that; a task runs make_shards with the part left to the Slurm variables."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "make_shards_array.sbatch"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text('#!/bin/bash\necho "$*" >> "$FAKE_SBATCH_LOG"; echo $((100 + $(wc -l < "$FAKE_SBATCH_LOG")))\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(log)}
    run = subprocess.run(["bash", str(script), "submit", "4", "/data/out", "--annotations", "a.csv"], env=env,
                         capture_output=True, text=True, check=True)
    assert "commit 103" in run.stdout
    calls = log.read_text().splitlines()
    assert calls[0].startswith("--parsable --array=0-3 ") and calls[0].endswith("part /data/out --annotations a.csv")
    assert "--dependency=afterok:101" in calls[1] and calls[1].endswith("part /data/out --annotations a.csv")
    assert "--dependency=afterok:102" in calls[2] and calls[2].endswith("commit /data/out")
    task = subprocess.run(["bash", str(script), "part", "/data/out", "x.mp4"], capture_output=True, text=True,
                          env={**env, "SLURM_ARRAY_TASK_ID": "3", "UMT_SLURM_DRY_RUN": "print"}, check=True)
    assert task.stdout.split() == ["python", "-m", "umt.data.build.cli", "--out", "/data/out", "--quiet", "x.mp4"]
