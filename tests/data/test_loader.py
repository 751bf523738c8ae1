"""Loader: sampling functions, the batch contract, determinism, resume, rank split, DALI vs reference equality.

Training-mode loader checks against independent expected values.

The test clip's pixels encode their own coordinates: red = 2·x, green = 40 + 2·y, blue = 20 + 8·frame. A clip's
output therefore tells which frames, which window and which flip the backend applied, and each is compared with the
value written out here from the formulas (TSN: ``floor((t + u_t) · N / T)``; window from the drawn pair and offset;
horizontal flip reverses red only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_utils import PATTERN_FRAMES, PATTERN_H, PATTERN_W, good_shards
from umt.data import DataConfig, build_loader
from umt.data.clips import draw_params, epoch_order
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
def test_batch_contract(good_shard_set: Path, backend: str) -> None:
    d = good_shard_set
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
def test_eval_frames_are_tsn_centres(good_shard_set: Path, backend: str) -> None:
    """Grey level encodes the frame number: the loader must deliver the TSN centre frames, normalised."""
    from umt.data.format import decode_meta
    from umt.data.format import ShardIndex
    from umt.data.format import read_manifest

    d = good_shard_set
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
def test_epoch_determinism_and_start_batch_tail(good_shard_set: Path, backend: str) -> None:
    d = good_shard_set
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
def test_ranks_are_disjoint_and_cover(good_shard_set: Path, backend: str) -> None:
    d = good_shard_set
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
def test_dali_cpu_matches_reference(good_shard_set: Path, mode: str) -> None:
    """Same frames, same crop: DALI's CPU path and the PyAV reference agree.

    Both decode with the same seeking PyAV decoder (bit-identical frames); only the crop + bilinear antialiased
    resize + normalisation differ (DALI vs torch), measured at mean < 0.1 and max ~1 in 0..255 pixel units. A wrong
    frame index or a crop off by a few pixels gives mean differences of 4-100.
    """
    d = good_shard_set
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


def test_missing_manifest_and_too_few_samples(tmp_path: Path, good_shard_set: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make_shards"):
        build_loader(_cfg(tmp_path, "reference"))
    with pytest.raises(ValueError, match="no full batch"):
        build_loader(_cfg(good_shard_set, "reference", batch_size=5), world_size=2)


def test_loader_bounds_iteration_and_release(good_shard_set: Path) -> None:
    """Rank bounds, the end-of-epoch resume point, ``iter()`` = epoch 0, and ``close()`` releasing its resources."""
    d = good_shard_set
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
def test_dali_pipeline_rebuilds_only_after_an_abandoned_epoch(good_shard_set: Path) -> None:
    d = good_shard_set
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


def test_backend_choice_without_dali_or_codecs(tmp_path_factory: pytest.TempPathFactory, good_shard_set: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU pipelines decode any codec (PyAV inside the source); shards that record no codec, or a missing DALI,
    mean the reference backend."""
    import json
    import shutil
    import sys

    from umt.data.loader import choose_backend, dali_available

    d = good_shard_set
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


# ------------------------------------------------------------------ training mode against independent expected values
W0, H0, N_FRAMES = PATTERN_W, PATTERN_H, PATTERN_FRAMES


def _expected_window(pair: int, off: int, size: int, w0: int = W0, h0: int = H0) -> tuple[int, int, int, int]:
    """The official multi-scale crop, written out: scales (1, .875, .75, .66) of the short side (128x96 frames:
    sides 96, 84, 72, 63, none within 3 px of the test's `size`, 48; 64x104: 64, 56, 48, 42 against size 32)."""
    short = min(w0, h0)
    sides = [int(short * s) for s in (1, 0.875, 0.75, 0.66)]
    assert all(abs(sd - size) > 3 for sd in sides)  # no snapping to the input size in these tests
    pairs = [(i, j) for i in range(4) for j in range(4) if abs(i - j) <= 1]  # (height index, width index)
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    ch, cw = sides[pairs[pair][0]], sides[pairs[pair][1]]
    mw, mh = grid[off]
    return mw * ((w0 - cw) // 4), mh * ((h0 - ch) // 4), cw, ch


def _check_training_draws(shards: Path, backend: str, size: int, w0: int, h0: int) -> None:
    T = 8
    cfg = DataConfig(shards=str(shards), backend=backend, batch_size=2, num_workers=0, input_size=size, num_sample=2)
    # in-process: DataLoader without workers, DALI's source without worker processes (the parallel path is tested
    # by the tests below)
    L = VideoLoader(cfg)
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    seen_flip = set()
    try:
        for epoch in range(3):
            for b in L.epoch_iter(epoch):
                for row in range(b["video"].shape[0]):
                    i, j = int(b["index"][row]), row % 2
                    p = draw_params(cfg, cfg.seed, epoch, i)
                    pix = b["video"][row] * std + mean  # [3, T, S, S] pixel units
                    # frames: blue level = 20 + 8 * index, index from the TSN formula in float32
                    want_t = [
                        min(int((np.float32(t) + p.u[t]) * np.float32(N_FRAMES) / np.float32(T)), N_FRAMES - 1)
                        for t in range(T)
                    ]
                    blue = pix[2].mean(dim=(1, 2))  # [T]
                    assert torch.allclose(blue, torch.tensor([20.0 + 8 * k for k in want_t]), atol=3), (i, blue)
                    # window: a linear ramp averages to its value at the window's centre
                    pair, off, flip = p.crops[j]
                    x, y, cw, ch = _expected_window(pair, off, size, w0, h0)
                    assert abs(pix[0].mean() - 2 * (x + (cw - 1) / 2)) < 3, (i, j, "x")
                    assert abs(pix[1].mean() - (40 + 2 * (y + (ch - 1) / 2))) < 3, (i, j, "y")
                    # flip: red decreases left to right exactly when flipped; green always grows downwards
                    left, right = pix[0, :, :, : size // 4].mean(), pix[0, :, :, -size // 4 :].mean()
                    assert (left > right) == flip, (i, j, "flip")
                    assert pix[1, :, : size // 4].mean() < pix[1, :, -size // 4 :].mean()
                    seen_flip.add(flip)
    finally:
        L.close()
    assert seen_flip == {False, True}


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_draws_reach_the_pixels(pattern_shards: Path, backend: str) -> None:
    _check_training_draws(pattern_shards, backend, 48, W0, H0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_portrait_training_draws_reach_the_pixels(portrait_shards: Path, backend: str) -> None:
    """Portrait frames: windows far down the frame (y offset > crop width) arrive whole (the DALI source hands over
    the union of the windows)."""
    _check_training_draws(portrait_shards, backend, 32, 64, 104)
    # and the deepest window deterministically (the test hook fixes pair 9 = (.66, .66) and offset 3 = (4, 4)):
    # x = 4·((64 − 42) // 4) = 20, y = 4·((104 − 42) // 4) = 60, 42×42, so y + h = 102 > w + h = 84
    cfg = DataConfig(shards=str(portrait_shards), backend=backend, batch_size=2, num_workers=0, input_size=32)
    L = VideoLoader(cfg, _fixed_crop=(9, 3))
    try:
        b = next(iter(L.epoch_iter(0)))
    finally:
        L.close()
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    for v in b["video"]:
        pix = v * std + mean
        assert abs(pix[0].mean() - 2 * (20 + 41 / 2)) < 3 and abs(pix[1].mean() - (40 + 2 * (60 + 41 / 2))) < 3
        assert pix[0, :, :, :8].mean() < pix[0, :, :, -8:].mean()  # the fixed crop is never flipped


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_reads_in_order_and_never_flips(pattern_shards: Path, backend: str) -> None:
    cfg = DataConfig(shards=str(pattern_shards), backend=backend, batch_size=2, num_workers=0, input_size=48,
                     train=False)
    L = VideoLoader(cfg)
    try:
        batches = list(L.epoch_iter(3))
    finally:
        L.close()
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]  # manifest order, whatever the epoch
    std = torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    for b in batches:
        for v in b["video"]:
            red = (v * std)[0]  # [T, S, S]: red grows left to right unless flipped
            assert red[:, :, :12].mean() < red[:, :, -12:].mean()


@pytest.mark.dali
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dali_matches_reference_in_training_mode(good_shard_set: Path, seed: int) -> None:
    """Random frames, crops and flips: both backends share the draws and the decoder, so only DALI's and torch's
    bilinear antialiased resize can differ (measured: mean |diff| < 0.1, max ~1 in 0..255 pixel units)."""
    d = good_shard_set
    out = {}
    for backend in ("dali", "reference"):
        cfg = DataConfig(shards=str(d), backend=backend, batch_size=4, num_workers=1, input_size=40, seed=seed)
        L = VideoLoader(cfg)
        out[backend] = [(b["index"], b["video"]) for e in (0, 1) for b in L.epoch_iter(e)]
        L.close()
    std = torch.tensor(DataConfig().std).view(1, 3, 1, 1, 1) * 255
    for (ia, va), (ib, vb) in zip(out["dali"], out["reference"]):
        assert torch.equal(ia, ib)
        diff = ((va - vb) * std).abs()
        assert diff.mean() < 0.5 and diff.max() < 4, diff.max()


def test_epoch_order_is_a_fresh_global_permutation() -> None:
    """The overlap of a global batch's sample set between two epochs is what independent random
    batches give (about (W*B)^2 / N), not most of the batch as with a fixed shard order read through a small buffer."""
    N, W, B = 4096, 32, 4
    def global_batch(epoch: int, k: int) -> set[int]:
        rows = [epoch_order(N, seed=7, epoch=epoch, rank=r, world_size=W, batch_size=B) for r in range(W)]
        return {int(x) for o in rows for x in o[k * B : (k + 1) * B]}

    overlaps = [len(global_batch(0, k) & global_batch(1, k)) for k in range(0, 32, 4)]
    assert np.mean(overlaps) < 3 * (W * B) ** 2 / N  # expectation 4 of 128
    e0 = [epoch_order(N, seed=7, epoch=0, rank=r, world_size=W, batch_size=B) for r in range(W)]
    flat = np.concatenate(e0)
    assert len(set(flat.tolist())) == len(flat) == N  # ranks disjoint and covering
    assert not np.array_equal(e0[0], epoch_order(N, seed=7, epoch=1, rank=0, world_size=W, batch_size=B))


@pytest.mark.parametrize("backend", BACKENDS)
def test_loaders_follow_the_epoch_order(good_shard_set: Path, backend: str) -> None:
    d = good_shard_set
    for rank in range(2):
        cfg = DataConfig(shards=str(d), backend=backend, batch_size=2, num_workers=1, input_size=32, seed=3)
        L = VideoLoader(cfg, rank=rank, world_size=2)
        for epoch in (0, 1, 2):
            got = torch.cat([b["index"] for b in L.epoch_iter(epoch)]).tolist()
            assert got == epoch_order(8, seed=3, epoch=epoch, rank=rank, world_size=2, batch_size=2).tolist()
        if backend == "dali":
            assert L.pipeline_builds == 1  # one pipeline across epochs
        L.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_tail_with_repeated_augmentation(good_shard_set: Path, backend: str) -> None:
    """``num_sample=2``: the start-batch offset counts videos (batch_size), not clips (batch_size * num_sample)."""
    d = good_shard_set
    cfg = DataConfig(shards=str(d), backend=backend, batch_size=2, num_workers=0, input_size=32, num_sample=2)
    L = VideoLoader(cfg)
    full = list(L.epoch_iter(5))
    tail = list(L.epoch_iter(5, start_batch=1))
    L.close()
    assert len(full) == 4 and len(tail) == 3
    want = epoch_order(8, seed=0, epoch=5, rank=0, world_size=1, batch_size=2)[2:]
    assert torch.cat([b["index"][0::2] for b in tail]).tolist() == want.tolist()
    for a, b in zip(full[1:], tail):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_manifest_records_keyframes_json_is_valid(pattern_shards: Path) -> None:
    from umt.data.format import read_manifest
    from umt.data.format import ShardIndex

    ix = ShardIndex(pattern_shards, read_manifest(pattern_shards)["shards"])
    kf = json.loads(ix.read(0, "json"))["keyframes"]
    assert [k for k, _ in kf] == list(range(N_FRAMES))  # MJPEG: every frame is a key frame


def test_eval_order_and_draws_follow_their_definitions() -> None:
    """Evaluation reads manifest order in rank blocks; training draws come from the documented generator."""
    assert epoch_order(10, seed=1, epoch=3, rank=1, world_size=2, batch_size=2, train=False).tolist() == [5, 6, 7, 8]
    assert epoch_order(10, seed=1, epoch=3, rank=0, world_size=3, batch_size=3, train=True).shape == (3,)
    cfg = DataConfig(num_frames=8, num_sample=2)
    p = draw_params(cfg, 4, 2, 9)
    rng = np.random.default_rng([4, 2, 9])
    u = rng.random(8, dtype=np.float32)
    assert p.u.dtype == np.float32 and np.array_equal(p.u, u)
    assert p.crops[0] == (int(rng.integers(10)), int(rng.integers(13)), bool(rng.random() < 0.5))
    assert len(p.crops) == 2 and draw_params(DataConfig(train=False), 4, 2, 9) == draw_params(DataConfig(train=False), 0, 0, 0)
    assert draw_params(DataConfig(train=False), 4, 2, 9).crops == ()


def test_shard_index_pickles_without_files_and_reads_the_same(pattern_shards: Path) -> None:
    """DALI's spawned workers (GPU pipelines) receive the index by pickle: entries travel, open files do not."""
    import pickle

    from umt.data.format import read_manifest
    from umt.data.format import ShardIndex

    ix = ShardIndex(pattern_shards, read_manifest(pattern_shards)["shards"])
    before = ix.read(3, "mp4")
    copy = pickle.loads(pickle.dumps(ix))
    assert copy._files == {} and copy.entries == ix.entries and copy.read(3, "mp4") == before
    ix.close()
    copy.close()


def test_read_clip_uses_the_recorded_key_frames(pattern_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards record each sample's key frames: reading a clip never probes the video, and reports its decode work."""
    import umt.data.decode as video
    from umt.data.format import read_manifest
    from umt.data.clips import read_clip
    from umt.data.format import ShardIndex

    def no_probe(*a: object, **k: object) -> None:
        raise AssertionError("probed a sample whose key frames the shard records")

    monkeypatch.setattr(video, "probe_keyframes", no_probe)
    ix = ShardIndex(pattern_shards, read_manifest(pattern_shards)["shards"])
    cfg = DataConfig(num_frames=8, input_size=48)
    clip = read_clip(ix, 1, cfg, draw_params(cfg, 0, 0, 1))
    ix.close()
    assert clip.frames.shape == (8, H0, W0, 3)
    assert clip.stats.seeks == len(set(clip.indices.tolist())) and clip.stats.decoded == clip.stats.seeks  # all-intra


def test_gpu_source_hands_over_encoded_bytes_and_indices(pattern_shards: Path) -> None:
    """``decode=False`` (GPU pipelines, checked here on CPU): the encoded video, windows in stored-frame pixels,
    and the sampled indices for the mixed decoder's ``frames``."""
    from types import SimpleNamespace

    from umt.data.sampling import tsn_indices
    from umt.data.format import read_manifest
    from umt.data.clips import ClipSource
    from umt.data.format import ShardIndex

    ix = ShardIndex(pattern_shards, read_manifest(pattern_shards)["shards"])
    cfg = DataConfig(num_frames=8, input_size=48, num_sample=2, batch_size=2)
    src = ClipSource(ix, cfg, rank=0, world_size=1, first_epoch=2, start_batch=0, decode=False)
    out = src(SimpleNamespace(epoch_idx=0, idx_in_epoch=1))
    i = int(epoch_order(4, seed=0, epoch=2, rank=0, world_size=1, batch_size=2)[1])
    p = draw_params(cfg, 0, 2, i)
    assert len(out) == 2 + 3 * 2 + 1
    assert out[0].dtype == np.uint8 and out[0].tobytes() == ix.read(i, "mp4")
    assert int(out[1][4]) == i  # meta: the sample index
    for j, (pair, off, flip) in enumerate(p.crops):
        x, y, cw, ch = _expected_window(pair, off, 48)
        assert out[2 + 3 * j].tolist() == [x, y] and out[3 + 3 * j].tolist() == [cw, ch]
        assert int(out[4 + 3 * j]) == int(flip)
    assert out[-1].dtype == np.int32 and out[-1].tolist() == tsn_indices(N_FRAMES, 8, p.u).tolist()
    ix.close()


@pytest.mark.dali
def test_dali_resumed_epoch_then_full_epochs(pattern_shards: Path) -> None:
    """Resuming at batch 1 offsets only the first epoch; the pipeline's next epoch is whole."""
    cfg = DataConfig(shards=str(pattern_shards), backend="dali", batch_size=1, num_workers=0, input_size=48)
    L = VideoLoader(cfg)
    try:
        tail = [b["index"].item() for b in L.epoch_iter(0, start_batch=1)]
        nxt = [b["index"].item() for b in L.epoch_iter(1)]
        assert L.pipeline_builds == 1
    finally:
        L.close()
    assert tail == epoch_order(4, seed=0, epoch=0, rank=0, world_size=1, batch_size=1)[1:].tolist()
    assert nxt == epoch_order(4, seed=0, epoch=1, rank=0, world_size=1, batch_size=1).tolist()


def test_shards_without_key_frame_records_are_probed_not_decoded_whole(pattern_shards: Path) -> None:
    """Older shards (no ``KEY.json``): the clip's key frames are probed (demux only) and decoding still seeks."""
    from umt.data.format import read_manifest
    from umt.data.clips import read_clip
    from umt.data.format import ShardIndex

    ix = ShardIndex(pattern_shards, read_manifest(pattern_shards)["shards"])
    ix.entries[2][1].pop("json")
    cfg = DataConfig(num_frames=8, input_size=48)
    clip = read_clip(ix, 2, cfg, draw_params(cfg, 0, 0, 2))
    ix.close()
    assert not clip.stats.fallback and clip.stats.seeks >= 1 and clip.stats.decoded < N_FRAMES
