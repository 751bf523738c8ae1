"""Trainer checkpoints (umt.train.checkpoint): the functions the mutation run found without a fast test
(``run_dir_in_use``, the RNG state round trip, ``latest_checkpoint``) and the survivors of the rest. Expected
values are written out in the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.train.checkpoint import (CheckpointError, drop_metrics_after, latest_checkpoint, load_checkpoint,
                                  load_latest_checkpoint, rng_state, run_dir_in_use, save_checkpoint, set_rng_state)


def test_run_dir_in_use(tmp_path: Path) -> None:
    assert not run_dir_in_use(tmp_path / "absent")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert not run_dir_in_use(run)
    (run / "checkpoints" / "step_00000001.pt.tmp").write_bytes(b"x")  # a partial write is not a checkpoint
    (run / "other.txt").write_text("x")
    assert not run_dir_in_use(run)
    for name in ("checkpoints/step_00000001.pt", "metrics.jsonl", "config.json"):
        fresh = tmp_path / name.replace("/", "_")
        (fresh / "checkpoints").mkdir(parents=True)
        (fresh / name).write_text("{}")
        assert run_dir_in_use(fresh), name
        assert run_dir_in_use(str(fresh)), name


def test_rng_state_round_trip_of_every_generator() -> None:
    state = rng_state()
    assert set(state) == {"python", "numpy", "torch"}  # no CUDA generator on a CPU-only process
    first = (random.random(), np.random.random_sample(), torch.rand(3))
    random.random(), np.random.random_sample(), torch.rand(5)  # move every generator on
    set_rng_state(state)
    again = (random.random(), np.random.random_sample(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_latest_checkpoint_takes_the_highest_complete_step(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("step_00000002.pt", "step_00000010.pt", "step_00000003.pt", "step_00000099.pt.tmp", "step_7.pt",
                 "step_00000050.sha256", "step_00000060.pt.unreadable"):
        (tmp_path / name).write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000010.pt"
    assert latest_checkpoint(str(tmp_path)) == tmp_path / "step_00000010.pt"


def _payload(step: int) -> dict:
    return {"model": {"w": torch.tensor([float(step)])}, "optimizer": {}, "scheduler": {}, "rng": {}, "step": step}


def test_rotation_keeps_the_newest_and_their_checksums(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        path = save_checkpoint(tmp_path, step, _payload(step), keep_last=2)
        assert path == tmp_path / f"step_{step:08d}.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003.pt", "step_00000003.sha256",
                                                         "step_00000004.pt", "step_00000004.sha256"]
    got = load_latest_checkpoint(tmp_path)
    assert got is not None and got[0] == tmp_path / "step_00000004.pt" and got[1]["step"] == 4


def test_unreadable_newest_is_set_aside_only_with_rename(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _payload(1), keep_last=5)
    save_checkpoint(tmp_path, 2, _payload(2), keep_last=5)
    (tmp_path / "step_00000002.pt").write_bytes(b"not a zip")
    got = load_latest_checkpoint(tmp_path, rename=False)
    assert got is not None and got[1]["step"] == 1
    assert (tmp_path / "step_00000002.pt").exists() and not (tmp_path / "step_00000002.pt.unreadable").exists()
    got = load_latest_checkpoint(tmp_path)
    assert got is not None and got[1]["step"] == 1
    assert not (tmp_path / "step_00000002.pt").exists() and (tmp_path / "step_00000002.pt.unreadable").exists()
    assert load_latest_checkpoint(tmp_path / "absent") is None
    # the next save prunes the checksum of the checkpoint set aside
    save_checkpoint(tmp_path, 3, _payload(3), keep_last=5)
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["step_00000001.sha256", "step_00000003.sha256"]


def test_drop_metrics_after_keeps_rows_up_to_the_step(tmp_path: Path) -> None:
    m = tmp_path / "metrics.jsonl"
    rows = [{"step": 1}, {"step": 3}, {"note": "no step"}, {"step": 3, "eval": 1}, {"step": 4}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    # dropped: the row without a step, step 4, and a line that is JSON but not an object → 3
    assert drop_metrics_after(m, 3) == 3
    assert [json.loads(x) for x in m.read_text().splitlines()] == [{"step": 1}, {"step": 3}, {"step": 3, "eval": 1}]
    assert drop_metrics_after(str(m), 3) == 0


def test_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "checkpoints"
    assert save_checkpoint(deep, 5, _payload(5), keep_last=1) == deep / "step_00000005.pt"
    assert load_latest_checkpoint(deep)[1]["step"] == 5


def test_a_dict_without_the_trainer_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "step_00000001.pt"
    payload = _payload(1)
    del payload["rng"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"not a trainer checkpoint \(missing \['rng'\]\)"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=r"missing \['model', 'optimizer', 'scheduler', 'rng', 'step'\]"):
        load_checkpoint(path)


@pytest.mark.parametrize("error, shown", [(RuntimeError("first line\nsecond line"), "RuntimeError: first line"),
                                          (EOFError(), "EOFError: EOFError"),
                                          (ValueError("  \n"), "ValueError: ValueError")])
def test_unreadable_message_is_the_first_line_or_the_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           error: Exception, shown: str) -> None:
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(b"x")

    def fail(*args: object, **kw: object) -> None:
        raise error

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint {path} is unreadable ({shown})"
