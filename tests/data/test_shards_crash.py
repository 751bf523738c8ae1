"""``make_shards`` survives ``SIGKILL`` at every rename: re-running the same build ends byte-identical to an
uninterrupted one, a reader never sees a partial data set, and no temporary file is left.

Every durable write renames through :mod:`umt.fileio`, so killing the writer right before and right after each
``os.replace`` covers each instant at which a file becomes visible; random instants cover the writes in between.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tests.crash import count_replaces, run_killed
from tests.data_utils import make_good_set
from umt.data.build.shards import EncodeSettings, build_shards
from umt.fileio import sha256_file

N_CLIPS = 3


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _reader_view(d: Path) -> str:
    """What a loader sees: ``absent`` (no manifest: not a data set yet) or ``complete`` (every listed shard and its
    index present with the recorded size and sha256). Anything else fails the test."""
    m = d / "manifest.json"
    if not m.is_file():
        return "absent"
    man = json.loads(m.read_text())
    for sh in man["shards"]:
        tar = d / sh["name"]
        assert tar.is_file() and tar.with_suffix(".idx").is_file(), f"{tar} listed but missing"
        assert tar.stat().st_size == sh["bytes"] and sha256_file(tar) == sh["sha256"], f"{tar} is not the listed one"
    return "complete"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    _, ann = make_good_set(src, N_CLIPS)
    st = EncodeSettings(codec="mjpeg", short_side=48)

    def build(out: Path) -> None:
        build_shards([], out, annotations=ann, settings=st, samples_per_shard=1)

    ref = tmp_path_factory.mktemp("ref") / "set"
    renames = count_replaces(lambda: build(ref))
    build.annotations = ann
    return build, _tree(ref), renames


def _kill_and_resume(build, ref_tree, out: Path, **kill) -> bool:
    killed = run_killed(lambda: build(out), **kill)
    _reader_view(out)  # right after the crash: no data set, or a whole one (killed during the clean-up)
    build(out)  # the same command again
    assert _reader_view(out) == "complete"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert _tree(out) == ref_tree
    return killed


def test_reference_build_renames_enough(reference):
    _, tree, renames = reference
    # per clip: encode cache + its record; per shard: tar + index + progress record; then build key, sources, manifest
    assert renames >= 2 * N_CLIPS + 3 * N_CLIPS + 3
    assert "manifest.json" in tree


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_every_rename_then_rerun_is_identical(reference, tmp_path, when):
    build, ref_tree, renames = reference
    killed = 0
    for at in range(1, renames + 1):
        out = tmp_path / f"{when}{at}"
        killed += _kill_and_resume(build, ref_tree, out, at=at, when=when)
        shutil.rmtree(out)
    assert killed == renames  # every point was reached (the build is deterministic)


def test_kill_at_random_instants_then_rerun_is_identical(reference, tmp_path):
    build, ref_tree, _ = reference
    rng = random.Random(0)
    for k in range(4):
        out = tmp_path / f"t{k}"
        _kill_and_resume(build, ref_tree, out, after_s=rng.uniform(0.05, 1.0))


@pytest.mark.parametrize("at", [1, 5, 9])
def test_disk_full_is_one_line_error_and_rerun_is_identical(reference, tmp_path, monkeypatch, capsys, at):
    """ENOSPC (injected at the ``at``-th fsync) ends the CLI with exit 1 and one line naming the file and bytes;
    what finished before stays intact, and the same command after space is freed ends byte-identical."""
    import errno

    import umt.fileio
    from umt.data.build import cli

    build, ref_tree, _ = reference
    real, n = umt.fileio.fsync_file, [0]

    def full(path):
        n[0] += 1
        if n[0] == at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(umt.fileio, "fsync_file", full)
    out = tmp_path / "set"
    args = ["--annotations", str(build.annotations), "--out", str(out), "--codec", "mjpeg", "--short-side", "48",
            "--samples-per-shard", "1", "--quiet"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no space left on the device of" in err and "bytes written" in err, err
    assert _reader_view(out) == "absent" and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(umt.fileio, "fsync_file", real)
    assert cli.main(args) == 0
    assert _tree(out) == ref_tree
