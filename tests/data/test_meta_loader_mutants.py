"""``MetaLoader`` and the stage-2 loader builders on fake sub-loaders (no shards, no tokenizer): the batch sizes
per modality, the mix order written out (data set d ``len(loader_d)`` times, permuted by
``default_rng([seed, epoch, 0x4D455441])``), resume counts handed to each sub-loader, the end-of-epoch check, the
directory list and the data sets of a mix read from hand-written manifests, and the arguments each builder passes
on (seed stride 1 000 003 per data set, evaluation settings, the tokenizer once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import umt.data.meta_loader as ml
from umt.data import DataConfig
from umt.data.meta_loader import MetaLoader, data_sets, shard_dirs


class FakeLoader:
    """``n`` batches per epoch; batch k of epoch e is ``{"tag": (name, e, k)}``; records its calls."""

    def __init__(self, name: str, n: int, batch_size: int = 2, modality: str | None = "video", extra: int = 0):
        self.name, self.n, self.batch_size, self.extra = name, n, batch_size, extra
        if modality is not None:
            self.modality = modality
        self.calls: list[tuple[int, int]] = []
        self.finished: list[int] = []
        self.closed = 0

    def __len__(self) -> int:
        return self.n

    def epoch_iter(self, epoch: int, start: int = 0):  # noqa: ANN201
        self.calls.append((epoch, start))
        for k in range(start, self.n + self.extra):
            yield {"tag": (self.name, epoch, k)}
        self.finished.append(epoch)

    def close(self) -> None:
        self.closed += 1


def _order(seed: int, epoch: int, lens: list[int]) -> list[int]:
    ids = np.repeat(np.arange(len(lens)), lens)
    return ids[np.random.default_rng([seed, epoch, 0x4D455441]).permutation(len(ids))].tolist()


def test_empty_and_batch_sizes() -> None:
    with pytest.raises(ValueError):
        MetaLoader([], seed=0)
    M = MetaLoader([FakeLoader("a", 2, 5, "image"), FakeLoader("b", 3, 7, "image"), FakeLoader("c", 1, 3, None)],
                   seed=0)  # fmt: skip
    assert M.batch_sizes == {"image": 5, "video": 3}  # the first loader of each modality; none given: video
    assert M.batch_size == 3 and len(M) == 6
    M = MetaLoader([FakeLoader("a", 2, 5, "image"), FakeLoader("b", 3, 7, "image")], seed=0)
    assert M.batch_sizes == {"image": 5} and M.batch_size == 5  # no video: the first modality's
    M = MetaLoader([FakeLoader("a", 2, 5, "image"), FakeLoader("v", 3, 9, "video")], seed=0)
    assert M.batch_size == 9
    assert M.seed == 0 and len(M.loaders) == 2


def test_order_written_out() -> None:
    M = MetaLoader([FakeLoader("a", 3), FakeLoader("b", 1), FakeLoader("c", 4)], seed=17)
    for epoch in (0, 1, 5):
        o = M.order(epoch)
        assert o.dtype == np.int64 and o.tolist() == _order(17, epoch, [3, 1, 4])
    assert sorted(M.order(2).tolist()) == [0, 0, 0, 1, 2, 2, 2, 2]
    assert M.order(0).tolist() != M.order(1).tolist()


def test_epoch_iter_full_and_resumed() -> None:
    a, b = FakeLoader("a", 3), FakeLoader("b", 2)
    M = MetaLoader([a, b], seed=4)
    order = _order(4, 1, [3, 2])
    got = list(M.epoch_iter(1))
    want_tags, seen = [], [0, 0]
    for d in order:
        want_tags.append(("ab"[d], 1, seen[d]))
        seen[d] += 1
    assert [g["tag"] for g in got] == want_tags
    assert [g["dataset"] for g in got] == order and all(type(g["dataset"]) is int for g in got)
    assert a.calls == [(1, 0)] and b.calls == [(1, 0)] and a.finished == [1] and b.finished == [1]
    for start in range(0, 6):
        a.calls.clear(), b.calls.clear()
        tail = list(M.epoch_iter(1, start))
        assert [g["tag"] for g in tail] == want_tags[start:]
        done = [order[:start].count(0), order[:start].count(1)]
        assert a.calls == [(1, done[0])] and b.calls == [(1, done[1])]
    assert [g["tag"] for g in M] == [g["tag"] for g in M.epoch_iter(0)]  # iter: epoch 0
    for bad in (-1, 6):
        with pytest.raises(ValueError):
            M.epoch_iter(1, bad)


def test_epoch_iter_runs_every_loader_to_its_end_and_checks_the_length() -> None:
    a, b = FakeLoader("a", 2), FakeLoader("b", 1)
    M = MetaLoader([a, b], seed=0)
    list(M.epoch_iter(3, 3))  # nothing left to deliver: both still run to their end
    assert a.finished == [3] and b.finished == [3] and a.calls == [(3, 2)] and b.calls == [(3, 1)]
    M = MetaLoader([FakeLoader("a", 2), FakeLoader("b", 1, extra=1)], seed=0)
    with pytest.raises(RuntimeError):
        list(M.epoch_iter(0))


def test_close_closes_every_loader() -> None:
    ls = [FakeLoader("a", 1), FakeLoader("b", 1), FakeLoader("c", 1)]
    MetaLoader(ls, seed=0).close()
    assert [L.closed for L in ls] == [1, 1, 1]


def test_shard_dirs() -> None:
    assert shard_dirs(" a , ,b,") == ["a", "b"]
    assert shard_dirs("x") == ["x"]
    for bad in ("", " , ,", " "):
        with pytest.raises(ValueError):
            shard_dirs(bad)


def test_tokenizer_dir_once() -> None:
    assert ml._tokenizer_dir("t", None) == "t" and ml._tokenizer_dir(None, "u") == "u"
    for a, b in ((None, None), ("t", "u")):
        with pytest.raises(TypeError):
            ml._tokenizer_dir(a, b)


def _dirs(tmp_path: Path, mods: list[str | None]) -> list[str]:
    out = []
    for k, m in enumerate(mods):
        d = tmp_path / f"d{k}"
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({} if m is None else {"modality": m}))
        out.append(str(d))
    return out


def test_data_sets_by_modality_and_directory(tmp_path: Path) -> None:
    d = _dirs(tmp_path, ["image", "video", None, "image"])
    cfg = DataConfig(shards=",".join(d))
    assert data_sets(cfg) == [[d[0], d[3]], [d[1], d[2]]]  # first named first; no modality: video
    assert data_sets(DataConfig(shards=",".join(d), mix="directory")) == [[x] for x in d]
    with pytest.raises(FileNotFoundError):
        data_sets(DataConfig(shards=f"{d[0]},{tmp_path / 'missing'}"))
    with pytest.raises(ValueError):
        data_sets(DataConfig(shards=" , "))


class FakePair:
    made: list[dict[str, Any]] = []
    fail_at: int | None = None

    def __init__(self, cfg: DataConfig, paths: Any, **kw: Any) -> None:
        if FakePair.fail_at is not None and len(FakePair.made) == FakePair.fail_at:
            raise OSError("bad directory")
        self.cfg, self.paths, self.kw, self.closed = cfg, paths, kw, 0
        self.batch_size, self.modality = cfg.batch_size, "video"
        FakePair.made.append({"cfg": cfg, "paths": paths, **kw, "obj": self})

    def __len__(self) -> int:
        return 2

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list:
    toks: list = []

    class Tok:
        def __init__(self, path: Any, max_len: int) -> None:
            toks.append((path, max_len))

    FakePair.made, FakePair.fail_at = [], None
    monkeypatch.setattr(ml, "PairLoader", FakePair)
    monkeypatch.setattr(ml, "CaptionTokenizer", Tok)
    return toks


def test_build_video_text_loader_arguments(tmp_path: Path, fakes: list) -> None:
    d = _dirs(tmp_path, ["video", "image", "image"])
    cfg = DataConfig(shards=",".join(d), seed=5, batch_size=3)
    M = ml.build_video_text_loader(cfg, tokenizer_dir="tokdir", max_len=17, rank=1, world_size=3, device="dev")
    assert fakes == [("tokdir", 17)]  # one tokenizer for all
    made = FakePair.made
    assert [m["paths"] for m in made] == [[d[0]], [d[1], d[2]]]
    assert [m["cfg"].seed for m in made] == [5, 5 + 1_000_003]
    assert all(m["cfg"].shards == cfg.shards and m["cfg"].batch_size == 3 for m in made)
    assert [m["dataset_id"] for m in made] == [0, 1]
    assert all((m["rank"], m["world_size"], m["device"]) == (1, 3, "dev") for m in made)
    assert made[0]["tokenizer"] is made[1]["tokenizer"] and made[0]["tokenizer"] is not None
    assert isinstance(M, MetaLoader) and M.seed == 5 and [L for L in M.loaders] == [m["obj"] for m in made]
    FakePair.made = []
    ml.build_video_text_loader(cfg, tokenizer="alias", max_len=9)
    assert fakes[-1] == ("alias", 9)
    assert all((m["rank"], m["world_size"], m["device"]) == (0, 1, "cpu") for m in FakePair.made)


def test_build_video_text_loader_closes_what_it_built_on_error(tmp_path: Path, fakes: list) -> None:
    d = _dirs(tmp_path, ["video", "image", "text"])
    FakePair.fail_at = 2
    with pytest.raises(OSError):
        ml.build_video_text_loader(DataConfig(shards=",".join(d)), tokenizer_dir="t", max_len=8)
    assert [m["obj"].closed for m in FakePair.made] == [1, 1]


def test_build_video_text_eval_loader_arguments(tmp_path: Path, fakes: list) -> None:
    cfg = DataConfig(shards="elsewhere", seed=5, train=True)
    L = ml.build_video_text_eval_loader(cfg, tmp_path / "ev", tokenizer_dir="t", max_len=12, rank=2, world_size=4,
                                        device="dev")  # fmt: skip
    (m,) = FakePair.made
    assert L is m["obj"] and m["paths"] == tmp_path / "ev"
    assert m["cfg"].train is False and m["cfg"].shards == str(tmp_path / "ev") and m["cfg"].seed == 5
    assert (m["rank"], m["world_size"], m["device"]) == (2, 4, "dev") and fakes == [("t", 12)]
    assert "dataset_id" not in m
    FakePair.made = []
    ml.build_video_text_eval_loader(cfg, "ev2", tokenizer="a", max_len=3)
    (m,) = FakePair.made
    assert (m["rank"], m["world_size"], m["device"]) == (0, 1, "cpu") and fakes[-1] == ("a", 3)
