"""Trainer: LR schedule, param groups, non-finite skipping, checkpoints, exact resume, export, the demo recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch

from umt.train.config import apply_overrides
from umt.train.export import export_checkpoint
from umt.train.recipes import get_recipe
from umt.train.step import lr_multiplier, param_groups
from umt.train.trainer import NonFiniteError, Trainer

TINY = ["synthetic_data=true", "synthetic_samples=8", "data.batch_size=2", "data.num_frames=2",
        "data.input_size=32", "model.teacher_image_size=32", "log.every_steps=1", "log.tensorboard=false",
        "log.progress=false", "optim.epochs=4", "optim.warmup_epochs=1", "model.drop_path=0.1"]


def _tiny(*extra: str):
    return apply_overrides(get_recipe("demo"), [*TINY, *extra])


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_lr_schedule() -> None:
    assert lr_multiplier(0, 10, 100, 0.1) == 0.0
    assert lr_multiplier(5, 10, 100, 0.1) == pytest.approx(0.5)
    assert lr_multiplier(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_multiplier(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_and_1d() -> None:
    m = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32)
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert any(p is m.blocks[0].attn.q_bias for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_resume_reproduces_losses_and_export(tmp_path: Path) -> None:
    full = Trainer(_tiny("optim.max_steps=6"), tmp_path / "full")
    summary = full.fit()
    full.close()
    assert summary["steps"] == 6
    ref = _losses(tmp_path / "full")

    part = Trainer(_tiny("optim.max_steps=3", "checkpoint.every_steps=2", "checkpoint.keep_last=1"), tmp_path / "r")
    part.fit()
    part.close()
    ckpts = sorted((tmp_path / "r" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000003.pt"]  # keep_last=1, no .tmp left behind
    resumed = Trainer(_tiny("optim.max_steps=6"), tmp_path / "r", resume="auto")
    assert resumed.step == 3 and (resumed.epoch, resumed.batch_in_epoch) == (0, 3)
    resumed.fit()
    resumed.close()
    got = _losses(tmp_path / "r")
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):
        assert got[s] == ref[s], (s, got[s], ref[s])  # bit-identical on CPU

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["teacher_random_init"] is True and cfg["steps_per_epoch"] == 4
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "epoch", "loss", "lr", "clips_per_s", "data_wait_frac", "mfu", "peak_mem"} <= set(row)

    out = export_checkpoint(tmp_path / "r" / "checkpoints" / "step_00000006.pt", tmp_path / "s.safetensors")
    m = timm.create_model("umt_vit_pico_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(out)},
                          num_frames=2, img_size=32)
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight, resumed.model.student.blocks[0].attn.qkv.weight)


def test_nonfinite_steps_are_skipped_then_stop(tmp_path: Path) -> None:
    tr = Trainer(_tiny("optim.max_steps=8", "optim.max_nonfinite=3"), tmp_path / "nan")
    with torch.no_grad():
        tr.model.heads.proj[0].bias.fill_(float("nan"))  # every step now has a NaN loss and NaN gradients
    before = tr.model.student.blocks[0].attn.qkv.weight.detach().clone()
    with pytest.raises(NonFiniteError, match="consecutive"):
        tr.fit()
    tr.close()
    assert tr.step == 3 and int(tr.step_fn.skipped) == 3
    assert torch.equal(before, tr.model.student.blocks[0].attn.qkv.weight)  # no update was applied


def test_demo_recipe_on_real_sample_shards(tmp_path: Path) -> None:
    # Our own modules: a renamed API or a broken import fails here (issue 16), it never turns into a skip.
    from umt.data import ensure_sample_shards
    from umt.data import loader  # noqa: F401

    shards = ensure_sample_shards(tmp_path / "sample")
    cfg = apply_overrides(get_recipe("demo"), [f"data.shards={shards}", "optim.max_steps=3", "log.every_steps=1",
                                               "log.progress=false", "data.num_workers=1"])
    tr = Trainer(cfg, tmp_path / "demo")
    try:
        summary = tr.fit()
    finally:
        tr.close()
    assert summary["steps"] == 3 and all(math.isfinite(r["loss"]) for r in tr.logged)
