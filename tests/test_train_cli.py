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
