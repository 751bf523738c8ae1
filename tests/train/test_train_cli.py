"""Run-directory rules of ``python -m umt.train``: a fresh run never mixes into an earlier run's directory."""

from __future__ import annotations

from pathlib import Path

from umt.train.__main__ import default_run_dir, main


def _checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000001.pt").touch()


def test_default_run_dir_is_fresh_for_new_runs_and_newest_for_resume(tmp_path: Path) -> None:
    assert default_run_dir("demo", None, tmp_path) == tmp_path / "demo"
    _checkpoint(tmp_path / "demo")
    assert default_run_dir("demo", None, tmp_path) == tmp_path / "demo-1"
    assert default_run_dir("demo", "auto", tmp_path) == tmp_path / "demo"
    for n in (1, 2, 10):
        _checkpoint(tmp_path / f"demo-{n}")
    assert default_run_dir("demo", None, tmp_path) == tmp_path / "demo-3"
    assert default_run_dir("demo", "auto", tmp_path) == tmp_path / "demo-10"  # numeric, not lexical, order


def test_fresh_run_into_a_used_run_dir_is_refused(tmp_path: Path, capsys) -> None:
    _checkpoint(tmp_path / "run")
    code = main(["--recipe", "demo", "--run-dir", str(tmp_path / "run"), "--set", "synthetic_data=true"])
    assert code == 2
    assert "--resume auto" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]  # nothing written


def test_several_processes_need_an_explicit_run_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--recipe", "demo", "--set", "synthetic_data=true"]) == 2
    assert "--run-dir" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any rank could create a default directory


def test_demo_never_writes_into_a_user_shard_dir(tmp_path: Path, tmp_path_factory, monkeypatch, capsys) -> None:
    """``--recipe demo --set data.shards=DIR`` trains on DIR read-only; the sample is only ever built
    into its own default location."""
    import hashlib
    import shutil

    import pytest

    import umt.train.trainer as trainer_mod
    from tests.data_utils import good_shards
    from umt.data.build.samples import ensure_sample_shards
    from umt.data.build.shards import ShardDirError

    user = tmp_path / "mine"
    shutil.copytree(good_shards(tmp_path_factory), user)  # the user's own 8-sample data set

    def digest() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(user.iterdir())}

    before = digest()
    seen = {}

    class Stop(Exception):
        pass

    class FakeTrainer:  # stop right where training would start: what matters is what was written before it
        def __init__(self, cfg, run_dir, resume=None, recipe=""):
            seen["shards"] = cfg.data.shards
            raise Stop

    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    monkeypatch.chdir(tmp_path)  # the default sample location is relative: keep it inside tmp_path
    with pytest.raises(Stop):
        main(["--recipe", "demo", "--set", f"data.shards={user}", "--run-dir", str(tmp_path / "run")])
    assert seen["shards"] == str(user) and digest() == before
    assert not (tmp_path / "shards").exists()  # and nothing was built anywhere else either
    with pytest.raises(ShardDirError, match="another data set"):
        ensure_sample_shards(user)
    assert digest() == before
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["--recipe", "demo", "--set", f"data.shards={empty}", "--run-dir", str(tmp_path / "run")]) == 2
    assert "no shards" in capsys.readouterr().err and list(empty.iterdir()) == []


def test_writers_never_clobber(tmp_path: Path, capsys) -> None:
    """A fresh run never mixes into a directory holding metrics/config only; exports refuse an
    existing file without the explicit flag; benchmark reports of the same day get new names."""
    import pytest
    import torch

    from benchmarks.common import BenchResult, hardware_info, write_report
    from umt.train.export import export_student

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')  # a run that died before its first checkpoint
    assert main(["--recipe", "demo", "--run-dir", str(tmp_path / "run"), "--set", "synthetic_data=true"]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert default_run_dir("demo", None, tmp_path) == tmp_path / "demo"
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    assert default_run_dir("demo", None, tmp_path) == tmp_path / "demo-1"

    out = tmp_path / "student.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        export_student(torch.nn.Linear(2, 2), out)
    assert out.read_bytes() == b"precious"
    assert main(["--recipe", "demo", "--run-dir", str(tmp_path / "r2"), "--export", str(out),
                 "--set", "synthetic_data=true"]) == 2
    assert "--export-overwrite" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    export_student(torch.nn.Linear(2, 2), out, overwrite=True)
    assert out.read_bytes() != b"precious"

    info = hardware_info()
    paths = [write_report(BenchResult(name="twice", rows=[{"run": i}]), tmp_path / "rep", info=info) for i in (1, 2)]
    (j1, m1), (j2, m2) = paths
    assert len({j1, m1, j2, m2}) == 4 and j2.stem == j1.stem + "-2" and m2.stem == m1.stem + "-2"
    import json

    assert [json.loads(j.read_text())["rows"] for j in (j1, j2)] == [[{"run": 1}], [{"run": 2}]]


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    """``--resume auto`` on a run whose final checkpoint is written (e.g. killed on its way out) trains nothing and
    says so, instead of failing to format the losses it did not log."""
    from tests.train_utils import TINY, cli_sets
    from umt.train.__main__ import main

    args = ["--recipe", "demo", "--run-dir", str(tmp_path / "run"),
            *cli_sets([*TINY, "optim.max_steps=2", "checkpoint.every_steps=2"])]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "auto"]) == 0
    assert "already complete at step 2; nothing to train" in capsys.readouterr().out


def test_disk_full_while_checkpointing_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing the step-4 checkpoint: exit 1 with one line naming the file and the bytes written, the
    step-2 checkpoint intact, no temporary file; after space is freed, --resume auto finishes the run."""
    import errno

    import umt.fileio
    from tests.train_utils import TINY, cli_sets, logged_losses
    from umt.train.__main__ import main
    from umt.train.checkpoint import load_checkpoint

    real = umt.fileio.fsync_file

    def full(path):
        if "step_00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    run = tmp_path / "run"
    args = ["--recipe", "demo", "--run-dir", str(run),
            *cli_sets([*TINY, "optim.max_steps=4", "checkpoint.every_steps=2"])]
    monkeypatch.setattr(umt.fileio, "fsync_file", full)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device of" in err[0] and "step_00000004" in err[0], err
    ck = run / "checkpoints"
    assert load_checkpoint(ck / "step_00000002.pt")["step"] == 2 and not list(run.rglob("*.tmp"))
    monkeypatch.setattr(umt.fileio, "fsync_file", real)
    assert main([*args, "--resume", "auto"]) == 0
    assert sorted(logged_losses(run)) == [1, 2, 3, 4] and load_checkpoint(ck / "step_00000004.pt")["step"] == 4
