"""``umt.data.pairs`` on hand-made inputs: the evaluation order by hand, :class:`PairSource` over an in-memory
index of tiny JPEGs (orders written out, rows of ``"each"``, captions drawn or first, the tokenizer fed
``pre_text``, every output's value and dtype), :func:`check_jpeg`'s refusals, :class:`PairDataset`'s image items
against the normalisation formula, and the video outputs of one tiny MJPEG clip (built once for the module)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.data import DataConfig
from umt.data.captions import caption_choice, pre_text
from umt.data.format import FORMAT_VERSION, decode_captions, encode_captions, encode_meta
from umt.data.pairs import PairDataset, PairSource, check_jpeg, eval_order

# -- eval_order --------------------------------------------------------------------------------------------------


def test_eval_order_by_hand() -> None:
    o, n = eval_order(7, rank=0, world_size=2, batch_size=3)  # blocks of ceil(7/2) = 4: 0..3 | 4..6
    assert o.tolist() == [0, 1, 2, 3, 3, 3] and n == 4 and o.dtype == np.int64
    o, n = eval_order(7, rank=1, world_size=2, batch_size=3)
    assert o.tolist() == [4, 5, 6] and n == 3
    o, n = eval_order(7, rank=2, world_size=3, batch_size=3)  # blocks of 3: the last holds 6 only
    assert o.tolist() == [6, 6, 6] and n == 1
    o, n = eval_order(4, rank=2, world_size=3, batch_size=2)  # blocks of 2: rank 2 starts at 4, past the end
    assert o.tolist() == [] and n == 0 and o.dtype == np.int64
    o, n = eval_order(5, rank=0, world_size=1, batch_size=5)
    assert o.tolist() == [0, 1, 2, 3, 4] and n == 5
    o, n = eval_order(5, rank=0, world_size=1, batch_size=1)
    assert o.tolist() == [0, 1, 2, 3, 4] and n == 5


# -- an in-memory image index --------------------------------------------------------------------------------------

COLOURS = [(200, 100, 50), (30, 160, 90), (120, 40, 220), (60, 60, 60), (250, 10, 130)]
SIZES = [(16, 12), (24, 16), (8, 8), (16, 16), (12, 20)]  # (w, h)
CAPTIONS = [["A Dog, Running!", "second: cat"], ["Only one"], ["x-y/z", "B", "C?"], ["Four"], ["Five", "5"]]


def _jpeg(w: int, h: int, rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), rgb, np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


class FakeIndex:
    """What :class:`PairSource` reads of a ShardIndex: ``len``, ``read(i, ext)``, ``name(i)``."""

    def __init__(self) -> None:
        self.items = [
            {"jpg": _jpeg(w, h, c), "meta": encode_meta(width=w, height=h, index=100 + i, frames=1, label=7 + i),
             "txt": encode_captions(caps)}
            for i, ((w, h), c, caps) in enumerate(zip(SIZES, COLOURS, CAPTIONS))
        ]  # fmt: skip
        self.reads: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int, ext: str) -> bytes:
        self.reads.append((i, ext))
        return self.items[i][ext]

    def name(self, i: int) -> str:
        return f"item{i}"


class FakeTok:
    """ids = the text's code points, zero-padded to 40, int32; records what it was given."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        self.texts.append(text)
        ids = np.zeros(40, np.int32)
        ids[: len(text)] = [ord(c) for c in text]
        return ids, len(text)


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text] + [0] * (40 - len(text))


def _cfg(**kw) -> DataConfig:  # noqa: ANN003
    base = dict(batch_size=2, num_frames=1, input_size=8, crop="rrc", rrc_scale=(0.5, 1.0), seed=3,
                sampling="rand_middle", interp="bilinear")  # fmt: skip
    return DataConfig(**{**base, **kw})


def _src(cfg: DataConfig, **kw) -> PairSource:  # noqa: ANN003
    base = dict(modality="image", tokenizer=FakeTok(), rank=0, world_size=1, first_epoch=0, start_batch=0)
    return PairSource(FakeIndex(), cfg, **{**base, **kw})  # type: ignore[arg-type]


def test_source_refuses_several_views_and_other_modalities() -> None:
    with pytest.raises(ValueError, match="num_sample"):
        _src(_cfg(num_sample=2))
    with pytest.raises(ValueError, match="modality"):
        _src(_cfg(), modality="audio")
    s = _src(_cfg(), modality="video")
    assert s.modality == "video" and s.num_real == 0 and s.rows is None and s.decode is True
    assert s.rank == 0 and s.world_size == 1 and s.meta_position() == 1


def test_training_order_written_out() -> None:
    # 5 items over 2 ranks: blocks of 5 // 2 = 2 of the permutation of (seed, epoch), whole batches of 2
    for rank in (0, 1):
        s = _src(_cfg(), rank=rank, world_size=2)
        for epoch in (0, 4):
            perm = np.random.default_rng([3, epoch]).permutation(5)
            assert s.order(epoch).tolist() == perm[2 * rank : 2 * rank + 2].tolist()
        assert s.num_rows == 5
    # rows of "each": 9 (item, caption) pairs permuted, batch 2: 8 rows for one rank
    rows = (np.array([0, 0, 1, 2, 2, 2, 3, 4, 4]), np.array([0, 1, 0, 0, 1, 2, 0, 0, 1]))
    s = _src(_cfg(), rows=rows)
    assert s.num_rows == 9 and s.rows is rows
    assert s.order(2).tolist() == np.random.default_rng([3, 2]).permutation(9)[:8].tolist()
    assert s.order(2) is s.order(2)
    assert s.row_at(2, 7) == int(s.order(2)[7])
    with pytest.raises(IndexError):
        s.row_at(2, 8)
    assert [s.sample_at(np.array([3, 8, 0]), j) for j in range(3)] == [2, 4, 0]
    assert [_src(_cfg()).sample_at(np.array([3, 1, 4]), j) for j in range(3)] == [3, 1, 4]


def test_evaluation_order_and_real_count() -> None:
    s = _src(_cfg(train=False, batch_size=3), rank=1, world_size=2, rows=(np.array([0]), np.array([0])))
    assert s.rows is None and s.num_rows == 5  # evaluation reads items, not rows
    assert s.order(0).tolist() == [3, 4, 4] and s.num_real == 2  # blocks of 3: 3, 4 and a repeat
    assert s.order(1).tolist() == [3, 4, 4]
    with pytest.raises(IndexError):
        s.row_at(0, 3)
    assert s.row_at(0, 2) == 4


def test_resolve_and_text() -> None:
    cfg = _cfg()
    s = _src(cfg)
    for epoch in range(4):
        for i in range(5):
            k = caption_choice(3, epoch, i, len(CAPTIONS[i]))
            assert s.resolve(epoch, i) == (i, CAPTIONS[i][k])
    assert len({s.resolve(e, 2)[1] for e in range(12)}) > 1  # drawn per epoch
    ev = _src(_cfg(train=False))
    assert [ev.resolve(5, i) for i in range(5)] == [(i, CAPTIONS[i][0]) for i in range(5)]  # the first caption
    rows = (np.array([2, 0, 2, 2]), np.array([2, 1, 1, 0]))
    e = _src(cfg, rows=rows)
    for epoch in range(6):  # a row's own caption, never a drawn one (caption 0 included)
        assert [e.resolve(epoch, r) for r in range(4)] == [(2, "C?"), (0, "second: cat"), (2, "B"), (2, "x-y/z")]
    ids, n = s.text("A Dog, Running!")
    assert n == 13 and ids.tolist() == _ids("a dog running") and s.tokenizer.texts == ["a dog running"]


def test_window_in_evaluation() -> None:
    s = _src(_cfg(train=False, eval_crop="resize"))
    meta, win = s.window(0, 1, 1)
    assert meta["width"] == 24 and meta["height"] == 16 and meta["index"] == 101
    assert win == (0, 0, 24, 16, False)
    s = _src(_cfg(train=False, eval_crop="center"))
    assert s.window(0, 1, 1)[1] == (4, 0, 16, 16, False)  # the centred 16 x 16 square of 24 x 16
    assert s.window(0, 4, 4)[1] == (0, 4, 12, 12, False)  # of 12 x 20


def test_read_at_image_outputs() -> None:
    s = _src(_cfg(train=False, eval_crop="center"))
    order = np.array([4, 1, 0])
    out = s.read_at(0, order, 1)  # item 1: 24 x 16, caption "Only one"
    assert len(out) == 7
    jpeg, meta, anchor, shape, flip, ids, n = out
    assert jpeg.dtype == np.uint8 and jpeg.tobytes() == s.index.items[1]["jpg"]
    assert meta.dtype == np.int32 and meta.tolist() == [1, 24, 16, 8, 101, 0, 0, FORMAT_VERSION, 0]  # + skipped 0
    assert anchor.dtype == np.int32 and anchor.tolist() == [4, 0]
    assert shape.dtype == np.int32 and shape.tolist() == [16, 16]
    assert flip.dtype == np.int32 and flip.shape == () and int(flip) == 0
    assert ids.tolist() == _ids("only one") and n.dtype == np.int32 and n.shape == () and int(n) == 8
    # training: the window drawn for the row, a flip as an int32 0/1
    t = _src(_cfg())
    flips = set()
    for epoch in range(8):
        for j, r in enumerate(t.order(epoch)):
            _, m, a, sh, f, _, _ = t.read_at(epoch, t.order(epoch), j)
            meta_, (x, y, w, h, fl) = t.window(epoch, int(r), int(r))
            assert a.tolist() == [x, y] and sh.tolist() == [w, h] and int(f) == int(fl)
            w0, h0 = SIZES[int(r)]
            assert 0 <= x and x + w <= w0 and 0 <= y and y + h <= h0 and w * h >= 0.5 * w0 * h0 * 0.9
            flips.add(int(f))
    assert flips == {0, 1}


def test_read_at_image_refuses_a_bad_jpeg() -> None:
    s = _src(_cfg(train=False))
    s.index.items[0]["meta"] = encode_meta(width=17, height=12, index=100)
    with pytest.raises(ValueError):
        s.read_at(0, np.array([0]), 0)
    s.index.items[1]["jpg"] = s.index.items[1]["jpg"][:-300]
    with pytest.raises(OSError):
        s.read_at(0, np.array([1]), 0)


def test_check_jpeg() -> None:
    good = _jpeg(24, 16, (10, 20, 30))
    check_jpeg(good, {"width": 24, "height": 16})
    check_jpeg(_jpeg(3, 5, (10, 20, 30)), {"width": 3, "height": 5})  # smaller than 8: drafted at 1 x 1
    with pytest.raises(ValueError, match="24x16"):
        check_jpeg(good, {"width": 16, "height": 24})
    with pytest.raises(ValueError):
        check_jpeg(good, {"width": 24, "height": 17})
    with pytest.raises(OSError):
        check_jpeg(b"not a jpeg", {"width": 24, "height": 16})
    big = _jpeg(64, 48, (10, 200, 30))
    with pytest.raises(OSError):
        check_jpeg(big[: len(big) // 2], {"width": 64, "height": 48})


def test_pair_dataset_image_items() -> None:
    """A flat-coloured JPEG resized to 8 x 8: every pixel is ``(c / 255 - mean) / std`` (JPEG's error on a flat
    colour: a level or two)."""
    cfg = _cfg(train=False, eval_crop="resize")
    s = _src(cfg)
    ds = PairDataset(s)
    assert len(ds) == 6  # 5 items padded to whole batches of 2 with item 4
    mean, std = np.array(cfg.mean), np.array(cfg.std)
    for j in range(6):
        item = ds[j]
        i = min(j, 4)
        v = item["video"]
        assert v.shape == (3, 1, 8, 8) and v.dtype == torch.float32
        want = (np.array(COLOURS[i]) / 255 - mean) / std
        got = v.mean(dim=(1, 2, 3)).numpy()
        assert np.abs(got - want).max() < 3 / 255 / min(std), (i, got, want)
        assert item["index"].dtype == torch.int64 and int(item["index"]) == 100 + i
        assert item["text_ids"].dtype == torch.int32 and item["text_len"].dtype == torch.int32
        cap = pre_text(CAPTIONS[i][0])
        assert item["text_ids"].tolist() == _ids(cap) and int(item["text_len"]) == len(cap)
        assert int(item["skipped"]) == 0
    s.index.items[2]["meta"] = encode_meta(width=9, height=8, index=102)  # refused as the DALI source refuses it
    with pytest.raises(ValueError):
        ds.read_at(2)


def test_pair_dataset_uses_the_drawn_window_and_each_rows() -> None:
    """Item 0 is 16 x 12, left half red, right half blue: the drawn window and flip decide the mean colour of the
    left and right output columns."""
    from PIL import Image

    img = np.zeros((12, 16, 3), np.uint8)
    img[:, :8] = (255, 0, 0)
    img[:, 8:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=100, subsampling=0)
    rows = (np.array([0, 0, 0, 0, 0, 0]), np.array([0, 1, 0, 1, 0, 1]))
    cfg = _cfg(rrc_scale=(0.6, 1.0), batch_size=1)
    seen = set()
    for epoch in range(6):
        s = _src(cfg, rows=rows, first_epoch=epoch)
        s.index.items[0]["jpg"] = buf.getvalue()
        ds = PairDataset(s)
        for j in range(6):
            item = ds[j]
            r = int(s.order(epoch)[j])
            _, (x, y, w, h, flip) = s.window(epoch, r, 0)
            red = (item["video"][0, 0] * cfg.std[0] + cfg.mean[0]) * 255  # [8, 8]
            left, right = float(red[:, 0].mean()), float(red[:, -1].mean())
            if x < 8 <= x + w - 1:  # the window spans both halves: the red side follows the flip
                assert (left > right) != flip, (epoch, j, x, w, flip)
                seen.add(flip)
            assert item["text_ids"].tolist() == _ids(["a dog running", "second cat"][int(rows[1][r])])
    assert seen == {False, True}


# -- video -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_index(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from tests.data_utils import captioned_clip_shards
    from umt.data.format import ShardIndex, read_manifest

    d = captioned_clip_shards(tmp_path_factory.mktemp("pairs_video"), [["Clip Zero!"], ["one", "two"]], n_frames=8,
                              width=32, height=24)  # fmt: skip
    return ShardIndex(d, read_manifest(d)["shards"])


def test_read_at_video_outputs(video_index) -> None:  # noqa: ANN001
    from umt.data.clips import draw_params, read_clip

    cfg = _cfg(num_frames=4, crop="rrc", rrc_scale=(0.3, 0.6))
    src = PairSource(video_index, cfg, modality="video", tokenizer=FakeTok(), rank=0, world_size=1, first_epoch=0,
                     start_batch=0)  # fmt: skip
    order = src.order(0)
    for j in range(len(order)):
        r = int(order[j])
        clip = read_clip(video_index, r, cfg, draw_params(cfg, 3, 0, r))
        x, y, w, h, flip = clip.windows[0]
        out = src.read_at(0, order, j)
        assert len(out) == 7
        media, meta, anchor, shape, fl, ids, n = out
        assert media.shape == (4, h, w, 3) and media.flags["C_CONTIGUOUS"]
        assert np.array_equal(media, clip.frames[:, y : y + h, x : x + w])
        assert (w, h) != (32, 24)  # a real cut (scale <= 0.6)
        assert anchor.tolist() == [0, 0] and shape.tolist() == [w, h] and int(fl) == int(flip)
        assert meta.tolist()[:3] == [8, 32, 24] and meta[-1] == 0 and meta.dtype == np.int32
        assert anchor.dtype == np.int32 and shape.dtype == np.int32 and fl.dtype == np.int32
        assert int(n) == len(src.tokenizer.texts[-1])
    enc = PairSource(video_index, cfg, modality="video", tokenizer=FakeTok(), rank=0, world_size=1, first_epoch=0,
                     start_batch=0, decode=False)  # fmt: skip
    for j in range(len(order)):
        r = int(order[j])
        clip = read_clip(video_index, r, cfg, draw_params(cfg, 3, 0, r), decode=False)
        x, y, w, h, flip = clip.windows[0]
        out = enc.read_at(0, order, j)
        assert len(out) == 8
        media, meta, anchor, shape, fl, ind, ids, n = out
        assert media.dtype == np.uint8 and media.tobytes() == video_index.read(r, "mp4")
        assert anchor.tolist() == [x, y] and shape.tolist() == [w, h] and int(fl) == int(flip)
        assert ind.dtype == np.int32 and ind.tolist() == clip.indices.tolist()
        caps = [pre_text(c) for c in decode_captions(video_index.read(r, "txt"))]
        assert ids.tolist() == _ids(caps[caption_choice(3, 0, r, len(caps))]) and int(n) == len(enc.tokenizer.texts[-1])


def test_pair_dataset_video_items(video_index) -> None:  # noqa: ANN001
    cfg = _cfg(num_frames=4, train=False, eval_crop="resize", sampling="rand_middle")
    src = PairSource(video_index, cfg, modality="video", tokenizer=FakeTok(), rank=0, world_size=1, first_epoch=0,
                     start_batch=0)  # fmt: skip
    ds = PairDataset(src)
    assert len(ds) == 2
    for j in range(2):
        item = ds[j]
        assert item["video"].shape == (3, 4, 8, 8) and item["index"].dtype == torch.int64
        assert int(item["index"]) == j  # evaluation: index order
        cap = pre_text(decode_captions(video_index.read(j, "txt"))[0])  # the first stored caption
        assert item["text_ids"].tolist() == _ids(cap) and int(item["text_len"]) == len(cap)


def test_pair_dataset_starts_at_the_start_batch() -> None:
    cfg = _cfg(train=False, eval_crop="resize")
    s = _src(cfg, start_batch=1)  # evaluation order 0 1 2 3 4 4, batches of 2: from item 2 on
    ds = PairDataset(s)
    assert len(ds) == 4
    assert [int(ds[j]["index"]) for j in range(4)] == [102, 103, 104, 104]


def test_pair_dataset_draws_the_caption_of_its_epoch() -> None:
    """Training with ``caption_sampling="draw"``: item i's caption is ``caption_choice(seed, epoch, i)``."""
    for epoch in (2, 3):
        s = _src(_cfg(batch_size=1), first_epoch=epoch)
        ds = PairDataset(s)
        for j in range(len(ds)):
            item = ds[j]
            i = int(item["index"]) - 100
            cap = pre_text(CAPTIONS[i][caption_choice(3, epoch, i, len(CAPTIONS[i]))])
            assert item["text_ids"].tolist() == _ids(cap)


def test_pair_dataset_video_training_uses_the_rows_draws(video_index) -> None:  # noqa: ANN001
    """Training: the frames and window of row r are those drawn for ``(seed, epoch, r)``, cut and resized."""
    from umt.data.clips import draw_params, read_clip
    from umt.data.reference import augment_clip

    cfg = _cfg(num_frames=4, batch_size=1, rrc_scale=(0.3, 0.6))
    for epoch in (1, 2):
        src = PairSource(video_index, cfg, modality="video", tokenizer=FakeTok(), rank=0, world_size=1,
                         first_epoch=epoch, start_batch=0)  # fmt: skip
        ds = PairDataset(src)
        for j in range(len(ds)):
            r = int(src.order(epoch)[j])
            clip = read_clip(video_index, r, cfg, draw_params(cfg, 3, epoch, r))
            want = augment_clip(clip.frames, cfg, clip.windows[0])
            assert torch.equal(ds[j]["video"], want), (epoch, j)


def test_check_jpeg_decodes_at_an_eighth(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check asks PIL's draft mode for RGB at ``(max(1, W // 8), max(1, H // 8))``: the cheap 1/8-scale decode."""
    from PIL import JpegImagePlugin

    calls = []
    orig = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # noqa: ANN001, ANN202
        calls.append((mode, tuple(size)))
        return orig(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    for (w, h), want in (((64, 48), (8, 6)), ((3, 5), (1, 1)), ((20, 9), (2, 1)), ((9, 20), (1, 2)),
                         ((80, 17), (10, 2))):  # fmt: skip
        calls.clear()
        check_jpeg(_jpeg(w, h, (1, 2, 3)), {"width": w, "height": h})
        assert calls == [("RGB", want)] and all(type(v) is int for v in calls[0][1]), (w, h, calls)
