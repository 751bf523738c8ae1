"""The video_qa task: the recipes carry the official settings (values written down from the official
exp/finetuning/qa_* configs, not read from the recipes' own table), and a short CPU run trains and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umt.config import apply_overrides
from umt.train.recipes import DEMOS, RECIPES, get_recipe
from umt.train.task import task_class

#: recipe → (lr, epochs, drop path, BERT, fusion layer), from multi_modality/exp/finetuning/qa_*/*.py (25M; the
#: B/16 MSRVTT file holds the L model, see umt/train/video_qa/recipes.py: B keeps the b16_5m/17m values)
OFFICIAL_25M = {
    "qa_msrvtt_b16_25m": (2e-5, 8, 0.2, "bert-base-uncased", 9),
    "qa_msrvtt_l16_25m": (4e-5, 5, 0.4, "bert-large-uncased", 19),
    "qa_msvd_b16_25m": (6e-5, 6, 0.2, "bert-base-uncased", 9),
    "qa_msvd_l16_25m": (6e-5, 6, 0.4, "bert-large-uncased", 19),
    "qa_anet_b16_25m": (4e-5, 12, 0.2, "bert-base-uncased", 9),
    "qa_anet_l16_25m": (4e-5, 10, 0.3, "bert-large-uncased", 19),
    "qa_msrvtt_l16_17m": (2e-5, 6, 0.4, "bert-large-uncased", 19),
    "qa_msvd_b16_5m": (2e-5, 15, 0.2, "bert-base-uncased", 9),
    "qa_anet_l16_17m": (4e-5, 12, 0.3, "bert-large-uncased", 19),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_25M))
def test_recipes_official_settings(name: str) -> None:
    lr, epochs, dp, bert, fusion = OFFICIAL_25M[name]
    cfg = get_recipe(name)
    assert cfg.task == "video_qa" and task_class(cfg.task).name == "video_qa"
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.model.drop_path) == (lr, epochs, dp)
    assert (cfg.text.encoder, cfg.text.fusion_layer) == (bert, fusion)
    assert (cfg.data.num_frames, cfg.data.input_size, cfg.data.batch_size, cfg.optim.global_batch) == (12, 224, 32, 256)
    assert (cfg.qa.max_question_len, cfg.qa.max_answer_len, cfg.qa.k_test) == (25, 5, 128)
    assert cfg.optim.min_lr == pytest.approx(0.01 * lr) and cfg.optim.weight_decay == 0.02
    assert (cfg.optim.warmup_epochs, cfg.optim.clip_grad, cfg.optim.betas) == (1, 0.0, (0.9, 0.999))
    assert (cfg.data.sampling, cfg.data.crop, cfg.data.rrc_scale, cfg.data.eval_crop) == \
        ("rand_middle", "rrc", (0.5, 1.0), "resize")


def test_every_qa_recipe_is_registered() -> None:
    names = {f"qa_{d}_{s}_{c}" for d in ("msrvtt", "msvd", "anet") for s in ("b16", "l16")
             for c in ("5m", "17m", "25m")}
    assert names <= set(RECIPES) and "demo_qa" in RECIPES and "demo_qa" in DEMOS


def _short_run(tmp_path: Path) -> tuple[Path, Path]:
    """Two steps on tiny QA shards with a 3-layer BERT and the pico student (the final evaluation included):
    ``(shards, run dir)``."""
    from tests.data.test_qa_shards import qa_shards
    from tests.data_utils import tiny_bert
    from umt.train.trainer import Trainer

    shards = qa_shards(tmp_path / "data")
    bert = tiny_bert(tmp_path / "bert")
    cfg = apply_overrides(get_recipe("demo_qa"), [
        f"data.shards={shards}", f"eval.shards={shards}", f"text.encoder={bert}", "text.fusion_layer=2",
        "model.init_from=", "data.batch_size=2", "data.num_frames=2", "data.input_size=32", "data.num_workers=0",
        "eval.batch_size=2", "optim.max_steps=2", "log.tensorboard=false", "log.progress=false",
        "log.every_steps=1", "qa.k_test=2"])
    tr = Trainer(cfg, tmp_path / "run")
    try:
        tr.fit()
    finally:
        tr.close()
    return shards, tmp_path / "run"


@pytest.mark.slow
def test_short_qa_run_trains_and_reports(tmp_path: Path) -> None:
    """Two steps, then the final evaluation's report, and the same evaluation from the command line."""
    shards, _ = _short_run(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(r["loss"] > 0 for r in rows if "loss" in r)
    report = json.loads((tmp_path / "run" / "qa.json").read_text())
    assert report["metrics"]["questions"] == 3 and len(report["predictions"]) == 3
    assert set(report["metrics"]["per_type"]) == {"what", "who", "yes_no"}
    # the same evaluation from the command line, on the last checkpoint
    from umt.eval.qa import main

    ckpt = max((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert main(["--checkpoint", str(ckpt), "--shards", str(shards), "--out", str(tmp_path / "ev"), "--k", "2",
                 "--device", "cpu", "--batch-size", "2"]) == 0
    cli = json.loads((tmp_path / "ev" / "qa.json").read_text())
    assert cli["metrics"]["accuracy"] == report["metrics"]["accuracy"]
    assert [p["prediction"] for p in cli["predictions"]] == [p["prediction"] for p in report["predictions"]]
    assert (tmp_path / "ev" / "qa.md").read_text().startswith("# Video QA")
    assert main(["--checkpoint", str(tmp_path / "run" / "config.json"), "--shards", str(shards)]) == 2


def test_qa_flops_hand_worked() -> None:
    """ViT width 4, depth 1, patch 2 on 1 frame of 4² → N = 4 tokens: patch embedding 2·4·(3·2²)·4 = 384, block
    24·4·4² + 4·4²·4 = 1792 → vision 2176. BERT width 2, FFN 4, 2 layers (1 fusion), L_q = 3: a layer
    2·3·(4·2² + 2·2·4) + 4·3²·2 = 264; cross-attention to 4 tokens of width 4: 4·3·2² + 4·4·4·2 + 4·3·4·2 = 272 →
    question 264 + 264 + 272 = 800. Decoder (1 layer) per answer of L_a = 2: layer 2·2·32 + 4·2²·2 = 160, cross-
    attention to 3 question states of width 2: 4·2·2² + 4·3·2·2 + 4·2·3·2 = 128, LM head 2·2·2² + 2·2·2·10 = 96 →
    384. One question, two answers, ×3: 3·(2176 + 800 + 2·384) = 11232."""
    from umt.flops import TextSpec, ViTSpec, qa_train_flops

    f = qa_train_flops(ViTSpec(4, 1, 2), 1, 4, TextSpec(2, 2, 1, vocab=10, ffn=4), 1, 3, 2, 2)
    assert f == {"vision": 3 * 2176.0, "question": 3 * 800.0, "decoder": 3 * 2 * 384.0, "total": 11232.0}


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_answer_what_one_process_answers(tmp_path: Path) -> None:
    """``umt.eval qa`` under torchrun with 2 gloo ranks (3 questions: one rank answers 2, the other 1) gathers every
    prediction once and writes what one process writes."""
    from tests.train_utils import torchrun
    from umt.eval.qa import main

    shards, run = _short_run(tmp_path)
    ckpt = max((run / "checkpoints").glob("step_*.pt"))
    args = ["--checkpoint", str(ckpt), "--shards", str(shards), "--k", "2", "--device", "cpu", "--batch-size", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    res = torchrun(["-m", "umt.eval", "qa", *args, "--out", str(tmp_path / "two")], timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "qa.json").read_text()) for d in ("one", "two"))
    assert two["metrics"] == one["metrics"] and two["predictions"] == one["predictions"]
