"""Loader: sampling functions, the batch contract, determinism, resume, rank split, DALI vs reference equality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_utils import good_shards
from umt.data import DataConfig, build_loader
from umt.data.loader import VideoLoader
from umt.data.sampling import FIX_OFFSETS_13, crop_pairs, eval_crop, multiscale_crop, tsn_indices

BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]


def _cfg(d: Path, backend: str, **kw: object) -> DataConfig:
    base = dict(shards=str(d), backend=backend, batch_size=2, num_workers=1, input_size=32)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


# -- pure sampling functions ----------------------------------------------------------------------------------


def test_tsn_indices_one_per_segment() -> None:
    rng = np.random.default_rng(0)
    for n in (8, 9, 37, 300):
        for _ in range(20):
            idx = tsn_indices(n, 8, rng.random(8, dtype=np.float32))
            seg = np.arange(8)
            assert np.all(idx >= np.floor(seg * n / 8)) and np.all(idx < np.ceil((seg + 1) * n / 8))  # in its segment
        assert tsn_indices(n, 8).tolist() == [int((i + 0.5) * n / 8) for i in range(8)]  # centres
    assert tsn_indices(120, 8).tolist() == [7, 22, 37, 52, 67, 82, 97, 112]
    assert tsn_indices(3, 8).max() == 2  # short video: clamped, repeats allowed
    with pytest.raises(ValueError):
        tsn_indices(0, 8)


def test_multiscale_crop_matches_official_grid() -> None:
    assert len(crop_pairs(4)) == 10 and len(FIX_OFFSETS_13) == 13
    sizes = set()
    for p in range(10):
        for o in range(13):
            x, y, cw, ch = multiscale_crop(320, 240, 224, (1.0, 0.875, 0.75, 0.66), p, o)
            assert 0 <= x and x + cw <= 320 and 0 <= y and y + ch <= 240
            sizes.add((cw, ch))
    # short side 240: 240, 210, 180, int(240 * .66) = 158; 224 is not within 3 px of any
    allowed = {240, 210, 180, 158}
    assert all(w in allowed and h in allowed for w, h in sizes) and len(sizes) == 10
    assert multiscale_crop(320, 240, 224, (1.0, 0.875, 0.75, 0.66), 0, 3) == (80, 0, 240, 240)  # lower right
    assert multiscale_crop(256, 256, 224, (0.875,), 0, 0)[2:] == (224, 224)  # 224 exactly: snap keeps it
    assert multiscale_crop(258, 258, 224, (0.875,), 0, 0)[2:] == (224, 224)  # int(225.75) = 225 snaps to 224
    assert eval_crop(320, 240) == (40, 0, 240, 240)


# -- the batch contract ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_contract(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    d = good_shards(tmp_path_factory)
    L = build_loader(_cfg(d, backend, num_sample=2, batch_size=3))
    try:
        assert L.backend == backend and L.num_samples == 8 and L.batch_size == 6 and len(L) == 2
        batches = list(L.epoch_iter(0))
        assert len(batches) == 2
        for b in batches:
            assert b["video"].shape == (6, 3, 8, 32, 32) and b["video"].dtype == torch.float32
            assert b["label"].dtype == torch.int64 and b["index"].dtype == torch.int64
            assert torch.equal(b["index"][0::2], b["index"][1::2])  # k clips of a video are adjacent
            assert not torch.equal(b["video"][0], b["video"][1])  # ...and independently augmented
            assert set(b["label"].tolist()) <= {0, 1, 2}
            assert torch.isfinite(b["video"]).all()
        idx = torch.cat([b["index"][0::2] for b in batches])
        assert len(set(idx.tolist())) == 6  # 8 samples, batch 3: 2 full batches, remainder dropped
    finally:
        L.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_frames_are_tsn_centres(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    """Grey level encodes the frame number: the loader must deliver the TSN centre frames, normalised."""
    from umt.data.format import decode_meta
    from umt.data.format import ShardIndex
    from umt.data.format import read_manifest

    d = good_shards(tmp_path_factory)
    ix = ShardIndex(d, read_manifest(d)["shards"])
    cfg = _cfg(d, backend, train=False, batch_size=4)
    L = build_loader(cfg)
    mean = torch.tensor(cfg.mean).view(3, 1)
    std = torch.tensor(cfg.std).view(3, 1)
    try:
        for b in L.epoch_iter(0):
            for v, i in zip(b["video"], b["index"].tolist()):
                n = decode_meta(ix.read(i, "meta"))["frames"]
                want = torch.tensor([(16 + 10 * k) % 224 for k in tsn_indices(n, 8)], dtype=torch.float32)  # [T]
                pix = (v.flatten(2).median(dim=2).values * std + mean) * 255  # [3, T] back to pixel values
                assert (pix - want).abs().max() < 6, (i, pix[0], want)
    finally:
        L.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_determinism_and_start_batch_tail(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    d = good_shards(tmp_path_factory)
    L = build_loader(_cfg(d, backend, batch_size=2))
    try:
        full = list(L.epoch_iter(3))
        again = list(L.epoch_iter(3))
        tail = list(L.epoch_iter(3, start_batch=2))
        other = list(L.epoch_iter(4))
        assert len(full) == 4 and len(tail) == 2
        for a, b in zip(full, again):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
        for a, b in zip(full[2:], tail):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
        order = lambda bs: torch.cat([b["index"] for b in bs]).tolist()  # noqa: E731
        assert sorted(order(full)) == list(range(8))
        assert order(full) != order(other) or not torch.equal(full[0]["video"], other[0]["video"])
        with pytest.raises(ValueError):
            L.epoch_iter(0, start_batch=5)
    finally:
        L.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_are_disjoint_and_cover(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    d = good_shards(tmp_path_factory)
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            L = build_loader(_cfg(d, backend, batch_size=2), rank=rank, world_size=2)
            assert len(L) == 2
            seen.append(set(torch.cat([b["index"] for b in L.epoch_iter(epoch)]).tolist()))
            L.close()
        assert not (seen[0] & seen[1]) and seen[0] | seen[1] == set(range(8))


@pytest.mark.dali
@pytest.mark.parametrize("mode", ["eval", "fixed_crop"])
def test_dali_cpu_matches_reference(tmp_path_factory: pytest.TempPathFactory, mode: str) -> None:
    """Same frames, same crop: DALI's CPU path and the PyAV reference agree.

    Both decode with the same seeking PyAV decoder (bit-identical frames); only the crop + bilinear antialiased
    resize + normalisation differ (DALI vs torch), measured at mean < 0.1 and max ~1 in 0..255 pixel units. A wrong
    frame index or a crop off by a few pixels gives mean differences of 4-100.
    """
    d = good_shards(tmp_path_factory)
    kw = dict(train=False) if mode == "eval" else dict(train=True)
    fixed = None if mode == "eval" else (4, 9)  # pair (1, 2): scales .875 x .75; offset (1, 1)
    out = {}
    for backend in ("dali", "reference"):
        L = VideoLoader(_cfg(d, backend, batch_size=4, input_size=40, **kw), _fixed_crop=fixed)
        out[backend] = {i: v for b in L.epoch_iter(0) for i, v in zip(b["index"].tolist(), b["video"])}
        L.close()
    assert out["dali"].keys() == out["reference"].keys() and len(out["dali"]) == 8
    std = torch.tensor(DataConfig().std).view(3, 1, 1, 1) * 255
    for i in out["dali"]:
        diff = ((out["dali"][i] - out["reference"][i]) * std).abs()  # [3, T, H, W] pixel units
        assert diff.mean() <= 0.5 and diff.max() < 4, (i, diff.mean())


@pytest.mark.dali
@pytest.mark.slow
def test_real_sample_clips_through_dali_and_reference(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The embedded real clips: build, load through both backends (eval), compare; labels match the annotations."""
    import json

    from umt.data import ensure_sample_shards
    from umt.data.build.samples import SAMPLES_DIR

    d = ensure_sample_shards(tmp_path_factory.mktemp("sample"))
    rows = [json.loads(x) for x in (SAMPLES_DIR / "annotations.jsonl").read_text().splitlines()]
    classes = sorted({r["label"] for r in rows})
    out = {}
    for backend in ("dali", "reference"):
        L = build_loader(_cfg(d, backend, train=False, batch_size=5, input_size=64, num_workers=2))
        assert L.num_samples == 20 and len(L) == 4
        out[backend] = {
            i: (v, lab)
            for b in L.epoch_iter(0)
            for i, v, lab in zip(b["index"].tolist(), b["video"], b["label"].tolist())
        }
        L.close()
    assert sorted(out["dali"]) == list(range(20))
    labels = sorted(classes[lab] for _, lab in out["dali"].values())
    assert labels == sorted(r["label"] for r in rows)
    std = torch.tensor(DataConfig().std).view(3, 1, 1, 1) * 255
    for i, (v, lab) in out["dali"].items():
        diff = ((v - out["reference"][i][0]) * std).abs()
        assert lab == out["reference"][i][1]
        assert diff.mean() <= 2.0 and torch.quantile(diff.flatten(), 0.99) <= 8.0, (i, diff.mean())


def test_backend_choice_by_device_and_codec(tmp_path_factory: pytest.TempPathFactory) -> None:
    """CPU: the DALI path decodes any codec (PyAV seeks inside its source), H.264 included; GPU: DALI's mixed
    decoder's codecs only, else the reference backend (auto) or a clear error (dali)."""
    from umt.data.loader import choose_backend

    d = good_shards(tmp_path_factory, codec="h264", samples_per_shard=8)
    L = build_loader(_cfg(d, "reference"))
    assert L.backend == "reference" and len(list(L.epoch_iter(0))) == 4
    L.close()
    cuda = torch.device("cuda")
    assert choose_backend(_cfg(d, "reference"), ["h264"], cuda) == "reference"
    if not _dali():
        assert choose_backend(_cfg(d, "auto"), ["h264"], torch.device("cpu")) == "reference"
        return
    assert choose_backend(_cfg(d, "auto"), ["h264"], torch.device("cpu")) == "dali"
    assert choose_backend(_cfg(d, "auto"), ["wmv2"], cuda) == "reference"
    with pytest.raises(RuntimeError, match="cannot decode"):
        choose_backend(_cfg(d, "dali"), ["wmv2"], cuda)
    L = build_loader(_cfg(d, "auto"))
    assert L.backend == "dali" and len(list(L.epoch_iter(0))) == 4
    L.close()


def _dali() -> bool:
    from umt.data.loader import dali_available

    return dali_available()


def test_missing_manifest_and_too_few_samples(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(FileNotFoundError, match="make_shards"):
        build_loader(_cfg(tmp_path, "reference"))
    with pytest.raises(ValueError, match="no full batch"):
        build_loader(_cfg(good_shards(tmp_path_factory), "reference", batch_size=5), world_size=2)


def test_loader_bounds_iteration_and_release(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rank bounds, the end-of-epoch resume point, ``iter()`` = epoch 0, and ``close()`` releasing its resources."""
    d = good_shards(tmp_path_factory)
    with pytest.raises(ValueError, match="rank"):
        build_loader(_cfg(d, "reference"), rank=2, world_size=2)
    L = build_loader(_cfg(d, "reference", num_workers=0))
    assert list(L.epoch_iter(0, start_batch=len(L))) == []  # resuming exactly at an epoch's end: nothing left
    with pytest.raises(ValueError, match="start_batch"):
        L.epoch_iter(0, start_batch=len(L) + 1)
    assert [b["index"].tolist() for b in L] == [b["index"].tolist() for b in L.epoch_iter(0)]
    L.close()
    assert all(f.closed for f in L._index._files.values())


@pytest.mark.dali
def test_dali_pipeline_rebuilds_only_after_an_abandoned_epoch(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = good_shards(tmp_path_factory)
    L = build_loader(_cfg(d, "dali", num_workers=0))
    full = [b["index"].tolist() for b in L.epoch_iter(0)]
    assert L.pipeline_builds == 1
    it = L.epoch_iter(1)
    next(it)  # abandon epoch 1 part-way
    it.close()
    assert [b["index"].tolist() for b in L.epoch_iter(0)] == full  # a fresh pipeline at the right place
    assert L.pipeline_builds == 2
    L.close()
    assert L._pipe is None


def test_backend_choice_without_dali_or_codecs(tmp_path_factory: pytest.TempPathFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU pipelines decode any codec (PyAV inside the source); shards that record no codec, or a missing DALI,
    mean the reference backend."""
    import json
    import shutil
    import sys

    from umt.data.loader import choose_backend, dali_available

    d = good_shards(tmp_path_factory)
    if dali_available():
        assert choose_backend(_cfg(d, "auto"), ["wmv2"], torch.device("cpu")) == "dali"
    assert choose_backend(_cfg(d, "auto"), [], torch.device("cpu")) == "reference"
    old = tmp_path_factory.mktemp("nocodecs") / "shards"
    shutil.copytree(d, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["codecs"]  # a manifest from before codecs were recorded
    (old / "manifest.json").write_text(json.dumps(m))
    L = build_loader(_cfg(old, "auto"))
    assert L.backend == "reference"
    L.close()
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    assert not dali_available()
    assert choose_backend(_cfg(d, "auto"), ["vp9"], torch.device("cpu")) == "reference"
