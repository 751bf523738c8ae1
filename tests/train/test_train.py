"""Trainer: LR schedule, param groups, non-finite skipping, checkpoints, exact resume, export, the demo recipe."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
from pathlib import Path

import pytest
import timm
import torch

from tests.train_utils import TINY, TRAIN_RUN, cli_sets, logged_losses, read_metrics, tiny_cfg
from umt.config import apply_overrides
from umt.train.export import export_checkpoint
from umt.train.recipes import get_recipe
from umt.train.step import lr_multiplier, param_groups
from umt.train.trainer import NonFiniteError, Trainer

_tiny = functools.partial(tiny_cfg, *TRAIN_RUN)


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
    ref = logged_losses(tmp_path / "full")

    part = Trainer(_tiny("optim.max_steps=3", "checkpoint.every_steps=2", "checkpoint.keep_last=1"), tmp_path / "r")
    part.fit()
    part.close()
    ckpts = sorted((tmp_path / "r" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000003.pt", "step_00000003.sha256"]  # keep_last=1, no .tmp left
    resumed = Trainer(_tiny("optim.max_steps=6"), tmp_path / "r", resume="auto")
    assert resumed.step == 3 and (resumed.epoch, resumed.batch_in_epoch) == (0, 3)
    resumed.fit()
    resumed.close()
    got = logged_losses(tmp_path / "r")
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):
        assert got[s] == ref[s], (s, got[s], ref[s])  # bit-identical on CPU

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["teacher_random_init"] is True and cfg["steps_per_epoch"] == 4
    row = read_metrics(tmp_path / "r")[-1]
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
    # Our own modules: a renamed API or a broken import fails here, it never turns into a skip.
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


class _NoSyncRecorder(torch.nn.Module):
    """Stands in for DDP: counts ``no_sync`` entries (the gradient all-reduce DDP would skip)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.no_sync_calls = inner, 0

    def forward(self, *a):  # type: ignore[override]
        return self.inner(*a)

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_calls += 1
        yield


def test_accumulation_4x2_equals_one_batch_of_8() -> None:
    """One optimizer step over 4 micro-batches of 2 equals one step over the batch of 8 (fp32, CPU,
    no drop path, and the same per-sample masks: those the 4 micro-batch seeds draw)."""
    from umt.train.distill.step import StageOneStep, build_models
    from umt.train.step import build_optimizer

    cfg = _tiny("model.drop_path=0.0", "optim.global_batch=8")
    torch.manual_seed(0)
    model_a, teacher = build_models(cfg, torch.device("cpu"))
    model_b = copy.deepcopy(model_a)
    init = [p.detach().clone() for p in model_a.parameters()]

    def stepper(model: torch.nn.Module) -> StageOneStep:
        opt = build_optimizer(model, cfg.optim, 1e-3, torch.device("cpu"))
        for g in opt.param_groups:  # Adam's first step is ~lr·sign(g): a larger eps keeps |g| ~ 1e-8 entries from
            g["eps"] = 1e-6  # turning fp32 summation-order noise into lr-sized differences
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # constant lr: no warm-up zero
        return StageOneStep(model, teacher, opt, sched, cfg, torch.device("cpu"), None)

    rec = _NoSyncRecorder(model_a)
    step_a, step_b = stepper(rec), stepper(model_b)
    video = torch.randn(8, 3, 2, 32, 32, generator=torch.Generator().manual_seed(1))  # [B, 3, T, H, W]
    micro, seeds = list(video.split(2)), [11, 12, 13, 14]
    idx = torch.cat([step_a.make_mask(step_a.teacher_forward(v), v, s) for v, s in zip(micro, seeds)])  # [8, T·K]

    grads: dict[str, dict[int, torch.Tensor]] = {}

    def capture(step: StageOneStep, key: str) -> None:  # the gradients AdamW steps with (accumulated, clipped)
        step.optimizer.register_step_pre_hook(lambda opt, args, kw: grads.__setitem__(
            key, {id(p): p.grad.clone() for g in opt.param_groups for p in g["params"]}))

    capture(step_a, "a")
    capture(step_b, "b")
    loss_a, ok_a = step_a(micro, seeds)
    loss_b = step_b.micro_step(video, 0, idx=idx)
    ok_b = step_b.optimizer_step()
    assert bool(ok_a) and bool(ok_b) and rec.no_sync_calls == 3  # all-reduce only on the last micro-batch
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    # fp32 summation order: an entry sums about n = clips × tokens × width products, so two orders can differ by up
    # to n · eps · max|g| (a 1/4-scaling or dropped micro-batch bug is off by >= 25 %)
    n = 8 * cfg.data.num_frames * (cfg.data.input_size // 16) ** 2 * model_a.student.embed_dim
    eps = torch.finfo(torch.float32).eps
    pa_list, pb_list = list(model_a.parameters()), list(model_b.parameters())
    for pa, pb in zip(pa_list, pb_list):  # the gradient of the mean loss over all 8 clips (1/4 scaling)
        ga, gb = grads["a"][id(pa)], grads["b"][id(pb)]
        torch.testing.assert_close(ga, gb, rtol=0, atol=n * eps * float(gb.abs().max()))
    # Each model took AdamW's first step from its own gradients: p0 (1 - lr wd) - lr g / (|g| + eps_adam) (the bias
    # corrections cancel on step 1). Comparing the two models' weights instead would turn summation noise on
    # |g| ~ eps_adam entries into lr-sized differences; this is exact up to a few fp32 roundings of each term.
    start = {id(p): p0 for p, p0 in zip(pa_list, init)} | {id(p): p0 for p, p0 in zip(pb_list, init)}
    moved = 0
    for step, key in ((step_a, "a"), (step_b, "b")):
        for group in step.optimizer.param_groups:
            lr, wd, eps_adam = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                g, p0 = grads[key][id(p)], start[id(p)]
                want = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps_adam)
                torch.testing.assert_close(p.detach(), want, rtol=4 * eps, atol=8 * eps * lr)
                moved += int(not torch.equal(p0, p))
    assert moved == 2 * len(init)  # every parameter took the step


def test_global_batch_sets_accumulation_lr_and_logs_it(tmp_path: Path) -> None:
    from umt.config import ConfigError

    tr = Trainer(_tiny("optim.global_batch=4", "optim.max_steps=3"), tmp_path / "acc")  # batch 2 × 1 rank × 2
    try:
        assert tr.accum == 2 and tr.steps_per_epoch == 2  # 8 clips / 4 per optimizer step
        assert tr.lr == pytest.approx(3e-2 * 4 / 256)  # scaled by the global batch, not the per-rank batch
        tr.fit()
    finally:
        tr.close()
    rows = read_metrics(tmp_path / "acc")
    assert [r["accum_steps"] for r in rows] == [2, 2, 2] and [r["epoch"] for r in rows] == [0.5, 1.0, 1.5]
    info = json.loads((tmp_path / "acc" / "config.json").read_text())
    assert info["accum_steps"] == 2 and info["global_batch"] == 4
    with pytest.raises(ConfigError, match="multiple"):
        Trainer(_tiny("optim.global_batch=5"), tmp_path / "bad")


def test_teacher_precision_setting() -> None:
    from umt.config import ConfigError
    from umt.train.distill.step import StageOneStep, build_models, teacher_autocast_dtype
    from umt.train.step import build_optimizer

    assert teacher_autocast_dtype("bf16", torch.bfloat16) == torch.bfloat16  # the default
    assert teacher_autocast_dtype("fp16", torch.bfloat16) == torch.float16
    assert teacher_autocast_dtype("fp32", torch.bfloat16) is None
    assert teacher_autocast_dtype("fp16", None) is None  # an fp32 run stays fp32
    assert get_recipe("umt_b16_k710").model.teacher_precision == "bf16"
    with pytest.raises(ConfigError):
        _tiny("model.teacher_precision=fp8")
    cfg = _tiny("model.teacher_precision=fp32")
    model, teacher = build_models(cfg, torch.device("cpu"))
    opt = build_optimizer(model, cfg.optim, 1e-3, torch.device("cpu"))
    step = StageOneStep(model, teacher, opt, None, cfg, torch.device("cpu"), torch.bfloat16)  # bf16 student
    video = torch.randn(1, 3, 2, 32, 32)
    got = step.teacher_forward(video)
    assert got.targets.dtype == torch.float32
    torch.testing.assert_close(got.targets, teacher(video).targets, rtol=0, atol=0)  # fp32 teacher, bit-exact


def test_resume_auto_skips_unreadable_checkpoints(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated newest checkpoint is skipped (warning names it) and training continues from the
    newest readable one; an explicit unreadable --resume PATH is a one-line error naming the file."""
    from umt.train.__main__ import main

    run = tmp_path / "r"
    tr = Trainer(_tiny("optim.max_steps=3", "checkpoint.every_steps=1", "checkpoint.keep_last=3"), run)
    tr.fit()
    tr.close()
    newest = run / "checkpoints" / "step_00000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated: torch's "failed reading zip archive"
    with caplog.at_level("WARNING"):
        resumed = Trainer(_tiny("optim.max_steps=4", "checkpoint.keep_last=1"), run, resume="auto")
    assert resumed.step == 2 and resumed.resumed_from == run / "checkpoints" / "step_00000002.pt"
    assert "step_00000003.pt" in caplog.text
    resumed.fit()
    resumed.close()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_00000003.pt.unreadable", "step_00000004.pt", "step_00000004.sha256"]  # kept aside

    bad = run / "checkpoints" / "step_00000003.pt.unreadable"
    args = ["--recipe", "demo", "--run-dir", str(tmp_path / "x"), "--resume", str(bad), *cli_sets(
            [*TINY, *TRAIN_RUN, "optim.max_steps=1"])]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "unreadable" in err
    assert "Traceback" not in err
