"""A short training run on shards with a corrupt sample: it trains every step, counts the sample once per epoch in
``metrics.jsonl`` and the summary, names it in the log, and a resumed run keeps the count and the losses."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.data_utils import flip_member
from tests.train_utils import QUIET_LOG, TINY_SHAPES, read_metrics, tiny_cfg
from umt.train.trainer import Trainer

#: 8 samples, 2 per batch: 4 steps per epoch, 2 epochs.
RUN = [*TINY_SHAPES, *QUIET_LOG, "optim.epochs=2", "optim.warmup_epochs=1", "data.num_workers=1"]


def _run(cfg, run_dir: Path, resume: str | None = None) -> dict:  # noqa: ANN001
    tr = Trainer(cfg, run_dir, resume=resume)
    try:
        return tr.fit()
    finally:
        tr.close()


def test_training_counts_skipped_samples_in_metrics_and_summary(good_shard_set: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "shards"
    shutil.copytree(good_shard_set, d)
    flip_member(d, 5, "mp4")
    cfg = tiny_cfg(f"data.shards={d}", "data.backend=reference", base=RUN)
    with caplog.at_level(logging.WARNING, logger="umt.data.loader"):
        summary = _run(cfg, tmp_path / "run")
    assert summary["steps"] == 8
    assert summary["skipped_samples"] == 2 and summary["skipped_samples_per_epoch"] == {0: 1, 1: 1}
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[3]["skipped_samples"] == 1 and rows[3]["skipped_samples_epoch"] == 1  # end of epoch 0
    assert rows[-1]["skipped_samples"] == 2 and rows[-1]["skipped_samples_epoch"] == 1
    assert all(r["skipped_samples"] in (0, 1, 2) for r in rows)
    named = [r.getMessage() for r in caplog.records if "corrupt sample" in r.getMessage()]
    assert len(named) == 1 and "train-000001.tar key 00000005" in named[0]

    # resumed mid-epoch from a checkpoint: the same losses, and the count carried over
    part = tiny_cfg(f"data.shards={d}", "data.backend=reference", "optim.max_steps=6", "checkpoint.every_steps=3",
                    base=RUN)
    _run(part, tmp_path / "resumed")
    resumed = _run(cfg, tmp_path / "resumed", resume="auto")
    assert resumed["skipped_samples"] == 2 and resumed["skipped_samples_per_epoch"] == {0: 1, 1: 1}
    got = {r["step"]: r for r in read_metrics(tmp_path / "resumed")}
    for r in rows:
        assert got[r["step"]]["loss"] == r["loss"]
        assert got[r["step"]]["skipped_samples"] == r["skipped_samples"], r["step"]
