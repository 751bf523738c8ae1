"""One DALI pipeline streams epoch after epoch: the source's position arithmetic worked by hand, the same batches
as the reset-per-epoch baseline (indices and pixels), no ``reset()`` and one pipeline over several epochs, a resumed
first epoch, and the pair loader's epochs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from umt.data import DataConfig
from umt.data.clips import ClipSource, epoch_order
from umt.data.format import ShardIndex, read_manifest
from umt.data.loader import VideoLoader


def _source(shards: Path, *, first_epoch: int, start_batch: int, seamless: bool) -> ClipSource:
    cfg = DataConfig(batch_size=2, input_size=32)
    ix = ShardIndex(shards, read_manifest(shards)["shards"])  # 4 samples: 2 batches of 2 per epoch
    src = ClipSource(ix, cfg, rank=0, world_size=1, first_epoch=first_epoch, start_batch=start_batch)
    src.seamless = seamless
    return src


def test_seamless_position_by_hand(pattern_shards: Path) -> None:
    src = _source(pattern_shards, first_epoch=3, start_batch=1, seamless=True)
    assert len(src.order(3)) == 4
    # start = 1 batch × 2 = 2: the resumed first epoch has entries 2, 3; then whole epochs 4, 5, ...
    want = {0: (3, 2), 1: (3, 3), 2: (4, 0), 3: (4, 1), 5: (4, 3), 6: (5, 0), 13: (6, 3)}
    for i, pos in want.items():
        assert src.position(SimpleNamespace(idx_in_epoch=i, epoch_idx=0)) == pos, i
    src.index.close()


def test_reset_per_epoch_position_by_hand(pattern_shards: Path) -> None:
    src = _source(pattern_shards, first_epoch=3, start_batch=1, seamless=False)
    assert src.position(SimpleNamespace(idx_in_epoch=1, epoch_idx=0)) == (3, 3)
    with pytest.raises(StopIteration):
        src.position(SimpleNamespace(idx_in_epoch=2, epoch_idx=0))  # past the resumed epoch's end
    assert src.position(SimpleNamespace(idx_in_epoch=0, epoch_idx=1)) == (4, 0)  # after reset(): whole epochs
    assert src.position(SimpleNamespace(idx_in_epoch=3, epoch_idx=2)) == (5, 3)
    with pytest.raises(StopIteration):
        src.position(SimpleNamespace(idx_in_epoch=4, epoch_idx=1))
    src.index.close()


def _epochs(shards: Path, seamless: bool, epochs: range, start_batch: int = 0) -> tuple[list, list, int]:
    cfg = DataConfig(shards=str(shards), backend="dali", batch_size=2, num_workers=1, input_size=32, seed=5)
    L = VideoLoader(cfg)
    L.seamless_epochs = seamless
    idx, pix = [], []
    try:
        for e in epochs:
            for b in L.epoch_iter(e, start_batch if e == epochs[0] else 0):
                idx.append((e, b["index"].tolist()))
                pix.append(b["video"].clone())
        return idx, pix, L.pipeline_builds
    finally:
        L.close()


@pytest.mark.dali
def test_seamless_epochs_equal_the_reset_baseline_without_reset(pattern_shards: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base_idx, base_pix, _ = _epochs(pattern_shards, False, range(3))
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    def no_reset(self: object) -> None:
        raise AssertionError("reset() called between seamless epochs")

    monkeypatch.setattr(DALIGenericIterator, "reset", no_reset)
    idx, pix, builds = _epochs(pattern_shards, True, range(3))
    assert builds == 1
    assert idx == base_idx
    for e in range(3):  # each epoch in its own order
        got = [i for ep, b in idx if ep == e for i in b]
        assert got == epoch_order(4, seed=5, epoch=e, rank=0, world_size=1, batch_size=2).tolist()
    assert len(pix) == len(base_pix) == 6
    for a, b in zip(pix, base_pix):  # the same clips, pixel for pixel
        assert torch.equal(a, b)


@pytest.mark.dali
def test_seamless_resumed_first_epoch_then_whole_epochs(pattern_shards: Path) -> None:
    idx, _, builds = _epochs(pattern_shards, True, range(2, 5), start_batch=1)
    assert builds == 1
    want = [(2, epoch_order(4, seed=5, epoch=2, rank=0, world_size=1, batch_size=2)[2:].tolist())]
    for e in (3, 4):
        o = epoch_order(4, seed=5, epoch=e, rank=0, world_size=1, batch_size=2).tolist()
        want += [(e, o[:2]), (e, o[2:])]
    assert idx == want


@pytest.mark.dali
def test_skipping_an_epoch_number_rebuilds(pattern_shards: Path) -> None:
    """The stream is at the next epoch's start only: asking for another epoch builds a pipeline there."""
    cfg = DataConfig(shards=str(pattern_shards), backend="dali", batch_size=2, num_workers=0, input_size=32)
    L = VideoLoader(cfg)
    try:
        list(L.epoch_iter(0))
        got = torch.cat([b["index"] for b in L.epoch_iter(2)]).tolist()
        assert L.pipeline_builds == 2
        assert got == epoch_order(4, seed=0, epoch=2, rank=0, world_size=1, batch_size=2).tolist()
    finally:
        L.close()


def test_seamless_position_draws_each_epoch_order_once(pattern_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the first epoch the stream must not redraw the first epoch's order per sample (the order cache holds one
    epoch): one draw per epoch entered."""
    import umt.data.clips as clips

    src = _source(pattern_shards, first_epoch=0, start_batch=0, seamless=True)
    draws: list[int] = []
    real = clips.epoch_order
    monkeypatch.setattr(clips, "epoch_order", lambda n, **kw: draws.append(kw["epoch"]) or real(n, **kw))
    for i in range(12):  # 3 epochs of 4 entries
        epoch, _ = src.position(SimpleNamespace(idx_in_epoch=i, epoch_idx=0))
        src.order(epoch)
    assert draws == [0, 1, 2]
    src.index.close()
