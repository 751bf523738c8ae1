"""Resume with repeated augmentation (``num_sample=2``) on the reference backend: the start-batch slice
counts videos, not clips, so the resumed tail is exactly the rest of the epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train_utils import read_metrics
from tests.data_utils import good_shards
from umt.data import DataConfig, build_loader
from umt.config import apply_overrides
from umt.train.recipes import get_recipe
from umt.train.trainer import Trainer


def test_loader_tail_with_two_clips_per_video(good_shard_set: Path) -> None:
    d = good_shard_set  # 8 videos
    cfg = DataConfig(shards=str(d), backend="reference", batch_size=2, num_sample=2, num_workers=0, num_frames=2,
                     input_size=32)
    loader = build_loader(cfg)
    try:
        assert len(loader) == 4 and loader.batch_size == 4  # 8 videos / 2 per batch; 2 clips each
        full = list(loader.epoch_iter(0))
        videos = [b["index"][0::2] for b in full]
        for b in full:
            assert b["video"].shape[0] == 4 and torch.equal(b["index"][0::2], b["index"][1::2])
        assert sorted(torch.cat(videos).tolist()) == list(range(8))  # every video once per epoch
        for start in (1, 3, 4):
            tail = list(loader.epoch_iter(0, start_batch=start))
            assert len(tail) == 4 - start
            for got, want in zip(tail, full[start:]):
                assert torch.equal(got["index"], want["index"])
                assert torch.equal(got["video"], want["video"])
    finally:
        loader.close()


def _losses(run_dir: Path) -> dict[int, float]:
    rows = read_metrics(run_dir)
    return {r["step"]: r["loss"] for r in rows}


def _record_indices(tr: Trainer) -> list[list[int]]:
    seen: list[list[int]] = []
    inner = tr.loader.epoch_iter

    def epoch_iter(epoch: int, start_batch: int = 0):
        for b in inner(epoch, start_batch):
            seen.append(b["index"].tolist())
            yield b

    tr.loader.epoch_iter = epoch_iter  # type: ignore[method-assign]
    return seen


def test_trainer_resume_tail_with_num_sample_2(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    d = good_shards(tmp_path_factory)
    base = ["data.backend=reference", f"data.shards={d}", "data.batch_size=2", "data.num_sample=2",
            "data.num_workers=0", "data.num_frames=2", "data.input_size=32", "model.teacher_image_size=32",
            "log.every_steps=1", "log.tensorboard=false", "log.progress=false", "optim.epochs=2",
            "optim.warmup_epochs=1", "model.drop_path=0.1"]

    def tiny(*extra: str):
        return apply_overrides(get_recipe("demo"), [*base, *extra])

    full = Trainer(tiny("optim.max_steps=4"), tmp_path / "full")
    full_seen = _record_indices(full)
    full.fit()
    full.close()
    part = Trainer(tiny("optim.max_steps=1", "checkpoint.every_steps=1"), tmp_path / "r")
    part_seen = _record_indices(part)
    part.fit()
    part.close()
    resumed = Trainer(tiny("optim.max_steps=4"), tmp_path / "r", resume="auto")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (1, 0, 1)
    resumed_seen = _record_indices(resumed)
    resumed.fit()
    resumed.close()
    # The epoch is 4 batches of 2 videos × 2 clips: the resumed run sees batches 1, 2, 3 of the full run's order.
    assert len(part_seen) == 1 and len(resumed_seen) == 3 and full_seen == part_seen + resumed_seen
    videos = [i for b in part_seen + resumed_seen for i in b[0::2]]
    assert sorted(videos) == list(range(8))  # each video once in the epoch, across the resume
    assert all(b[0::2] == b[1::2] for b in resumed_seen)
    ref, got = _losses(tmp_path / "full"), _losses(tmp_path / "r")
    assert sorted(got) == [1, 2, 3, 4]
    assert all(got[s] == ref[s] for s in got), (got, ref)  # bit-identical tail
