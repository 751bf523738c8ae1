"""Shard-directory safety at the CLI (``tools/make_shards.py`` = :func:`umt.data.build.cli.main`): a directory that
holds an interrupted build *and* the user's own files is refused in every mode with nothing of the user's touched;
``--overwrite`` of a finished set whose directory also holds user files deletes none of them; ``python -m
umt.data.build.info --verify`` names a missing shard in a clear message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_utils import dir_listing as _listing, frame_image, mjpeg_clip, user_files as _user_files
from umt.data.build.cli import main as make_shards
from umt.data.build.shards import EncodeSettings, build_shards

MIN = ["--codec", "mjpeg", "--min-frames", "4", "--samples-per-shard", "1", "--quiet"]


def _clips(root: Path, tag: int) -> Path:
    d = root / f"in{tag}"
    d.mkdir(parents=True)
    for i in range(2):
        mjpeg_clip(d / f"c{i}.mp4", [frame_image(k + 5 * i + 11 * tag, 16, 16) for k in range(6)])
    return d


def test_interrupted_build_beside_user_files_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    a = _clips(tmp_path, 0)
    out = tmp_path / "out"

    def crash(k: int) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_shards([a], out, settings=EncodeSettings(codec="mjpeg", min_frames=4), samples_per_shard=1,
                     _after_shard=crash)
    assert (out / ".build.json").is_file()  # an interrupted build of ours
    mine = _user_files(out)
    before = _listing(out)
    for extra in ([], ["--overwrite"], ["--append"]):
        assert make_shards([str(a), "--out", str(out), *MIN, *extra]) == 2, extra
        assert _listing(out) == before, extra  # not resumed, not replaced, nothing deleted
    assert {k: v for k, v in _listing(out).items() if k in mine} == mine
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # no staging directory left behind


def test_overwrite_of_a_finished_set_beside_user_files_deletes_none_of_them(tmp_path: Path) -> None:
    a, b = _clips(tmp_path, 0), _clips(tmp_path, 1)
    out = tmp_path / "out"
    assert make_shards([str(a), "--out", str(out), *MIN]) == 0
    mine = _user_files(out)
    code = make_shards([str(b), "--out", str(out), *MIN, "--overwrite"])
    after = _listing(out)
    assert {k: after.get(k) for k in mine} == mine  # the user's files are all still there, unchanged
    if code == 0:  # replacing is allowed only if the user's files survive (checked above)
        return
    assert code == 2 and (out / "manifest.json").is_file()  # refused: the old set is intact


def test_verify_names_a_missing_shard_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from umt.data.build.info import main as info  # ``python -m umt.data.build.info`` in-process: an exception = a traceback

    a = _clips(tmp_path, 0)
    out = tmp_path / "out"
    assert make_shards([str(a), "--out", str(out), *MIN]) == 0
    capsys.readouterr()
    gone = sorted(out.glob("*.tar"))[0]
    gone.unlink()
    assert info([str(out), "--verify"]) == 1
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert gone.name in text and "missing" in text
