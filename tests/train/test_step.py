"""``umt.train.step`` and ``umt.train.distill.step`` piece by piece, on a tiny model, against values written down by hand: the schedule
``build_scheduler`` builds, the LR scaling, the optimizer variants, clipping, the mask kinds the step draws, the loss
it returns and the update it applies. Fast (no trainer, no files): these are also the mutation tests of both step.py files."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.train_utils import tiny_cfg
from umt.flops import ViTSpec
from umt.train.distill.step import StageOneStep, build_models, umt_spec
from umt.train.step import autocast_context, build_optimizer, build_scheduler, lr_multiplier, param_groups, peak_lr

CPU = torch.device("cpu")
_cfg = functools.partial(tiny_cfg, "model.drop_path=0.0", "optim.epochs=4", "optim.warmup_epochs=1", "mask.ratio=0.5")


def _step(*extra: str, steps_per_epoch: int = 4) -> StageOneStep:
    cfg = _cfg(*extra)
    torch.manual_seed(0)
    model, teacher = build_models(cfg, CPU)
    lr, min_lr = peak_lr(cfg, 1)
    opt = build_optimizer(model, cfg.optim, lr, CPU)
    sched = build_scheduler(opt, cfg, steps_per_epoch, lr, min_lr)
    return StageOneStep(model, teacher, opt, sched, cfg, CPU, None)


def _video(seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 2, 32, 32, generator=torch.Generator().manual_seed(seed))


def _grad_norm(params: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))


# ------------------------------------------------------------------------------------------------ numbers


def test_build_scheduler_matches_a_table() -> None:
    """1.5 warm-up epochs × 4 steps = 6 warm-up *steps*; 4 epochs = 16 steps; floor 1e-4 / 1e-3 = 0.1."""
    cfg = _cfg("optim.warmup_epochs=1.5")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = build_scheduler(opt, cfg, 4, 1e-3, 1e-4)
    table = {0: 0.0, 1: 1 / 6, 3: 0.5, 6: 1.0, 11: 0.55, 16: 0.1, 18: 0.1}  # 11: cos(π · 5/10) = 0
    for s in range(19):
        if s in table:
            assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * table[s], rel=1e-9, abs=1e-15), s
        opt.step()
        sched.step()
    assert lr_multiplier(8, 6, 16, 0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.2)))
    assert lr_multiplier(0, 0, 10, 0.2) == pytest.approx(1.0)  # no warm-up: the peak at step 0


def test_peak_lr_scales_with_global_batch_in_clips() -> None:
    cfg = _cfg("data.num_sample=2", "optim.lr=1e-3", "optim.min_lr=1e-4")
    lr, min_lr = peak_lr(cfg, world_size=4)  # 2 videos × 2 clips × 4 ranks = 16 clips
    assert lr == pytest.approx(1e-3 * 16 / 256) and min_lr == pytest.approx(1e-4 * 16 / 256)


@pytest.mark.parametrize("impl,fused,foreach", [("auto", True, None), ("fused", True, None), ("foreach", False, True)])
def test_build_optimizer_variants(impl: str, fused: bool, foreach: bool | None) -> None:
    cfg = _cfg(f"optim.impl={impl}", "optim.betas=0.8,0.9", "optim.weight_decay=0.07")
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    m[1].weight.requires_grad_(False)  # frozen parameters are left out
    opt = build_optimizer(m, cfg.optim, 0.5, CPU)
    assert isinstance(opt, torch.optim.AdamW)
    assert bool(opt.defaults["fused"]) == fused and opt.defaults["foreach"] == foreach
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["lr"] == 0.5
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.07 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [m[0].weight] and no_decay["params"] == [m[0].bias, m[1].bias]
    assert param_groups(m, 0.07)[0]["params"] == [m[0].weight]


def test_umt_spec_names_the_run_sizes() -> None:
    s = _step()
    spec = umt_spec(s.cfg, s.model, s.teacher)
    assert spec.student == ViTSpec(96, 4, 16) and spec.teacher == ViTSpec(64, 4, 16)
    assert (spec.teacher_dim, spec.teacher_size, spec.num_frames, spec.input_size) == (64, 32, 2, 32)
    assert spec.mask_ratio == 0.5 and spec.align_layers == 2


def test_autocast_context() -> None:
    lin = torch.nn.Linear(4, 4)
    with autocast_context(CPU, torch.bfloat16):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast_context(CPU, None):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


# --------------------------------------------------------------------------------------------------- phases


def test_keep_count_and_mask_kinds() -> None:
    for kind in ("semantic", "tube", "random"):
        s = _step(f"mask.kind={kind}")
        assert s.tokens_per_frame == 4 and s.keep == 2  # 32 px / 16 = 2×2 tokens, ratio 0.5
        video = _video()
        tout = s.teacher_forward(video)
        idx = s.make_mask(tout, video, seed=3)  # [B, T·K]
        assert idx.shape == (2, 4) and idx.dtype == torch.int64 and (idx[:, 1:] > idx[:, :-1]).all()
        if kind == "tube":
            assert torch.equal(idx[:, 2:] - 4, idx[:, :2])  # the same spatial set in both frames
        if kind == "semantic":
            assert torch.equal(idx // 4, torch.tensor([[0, 0, 1, 1]] * 2))  # K per frame
        assert torch.equal(idx, s.make_mask(tout, video, seed=3))
    # random: over seeds, some clip keeps 3 tokens of one frame (impossible for semantic/tube)
    s = _step("mask.kind=random")
    tout = s.teacher_forward(_video())
    per_frame = [(s.make_mask(tout, _video(), seed) // 4).eq(0).sum(1) for seed in range(20)]
    assert any(bool((c != 2).any()) for c in per_frame)


def test_teacher_forward_is_frozen_and_loss_is_the_hand_uma() -> None:
    s = _step()
    video = _video(1)
    tout = s.teacher_forward(video)
    assert not tout.targets.requires_grad and tout.targets.shape == (2, 2, 8, 64)
    idx = s.make_mask(tout, video, seed=5)
    with torch.no_grad():
        pred = s.model(video, idx)  # [L, B, K, C]
    target = torch.stack([tout.targets[:, b, idx[b]] for b in range(2)], dim=1)  # [L, B, K, C], gathered by hand
    want = (2 - 2 * (F.normalize(pred, dim=-1) * target).sum(-1)).mean()
    loss = s.forward_backward(video, idx, tout)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in s.params) and _grad_norm(s.params) > 0


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_clip_grad_bounds_the_norm_the_optimizer_sees(clip: float) -> None:
    s = _step(f"optim.clip_grad={clip}", "optim.impl=foreach")
    video = _video(2)
    tout = s.teacher_forward(video)
    s.forward_backward(video, s.make_mask(tout, video, seed=1), tout)
    raw = _grad_norm(s.params)
    seen: list[float] = []
    inner = s.optimizer.step
    s.optimizer.step = lambda *a, **k: (seen.append(_grad_norm(s.params)), inner(*a, **k))[1]  # type: ignore
    assert bool(s.optimizer_step())
    assert raw > 10 * 1e-3
    if clip:
        assert seen[0] == pytest.approx(clip, rel=1e-4)  # clipped to exactly the bound
    else:
        assert seen[0] == pytest.approx(raw, rel=1e-6)  # untouched
    assert all(p.grad is None for p in s.params)  # zeroed (set to None) for the next step


def test_full_step_updates_schedules_and_counts() -> None:
    s = _step("optim.warmup_epochs=0")
    before = [p.detach().clone() for p in s.params]
    lr0 = s.optimizer.param_groups[0]["lr"]
    loss, ok = s(_video(3), seed=9)
    assert bool(ok) and math.isfinite(float(loss))
    assert int(s.skipped) == 0 and int(s.consecutive) == 0
    assert s.optimizer.param_groups[0]["lr"] < lr0  # one cosine step taken
    assert all(not torch.equal(p, q) for p, q in zip(s.params, before) if p.ndim > 1)
    # Two bad steps in a row, then a good one: counters 1, 2, then the run resets.
    for expect in (1, 2):
        video = _video(4)
        tout = s.teacher_forward(video)
        s.forward_backward(video, s.make_mask(tout, video, seed=1), tout)
        s.params[0].grad.fill_(float("inf"))
        assert not bool(s.optimizer_step())
        assert int(s.skipped) == expect and int(s.consecutive) == expect
    _, ok = s(_video(5), seed=2)
    assert bool(ok) and int(s.skipped) == 2 and int(s.consecutive) == 0


# ------------------------------------------------------------------------------------------------- builders


def test_build_models_maps_every_field(tmp_path) -> None:  # noqa: ANN001
    from open_clip.transformer import QuickGELU

    from umt.model import build_clip

    clip = build_clip("umt-tiny-clip", image_size=32, quick_gelu=True)
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict": clip.state_dict()}, weights)
    cfg = _cfg("model.drop_path=0.3", "model.align_layers=3", "model.teacher_quick_gelu=true",
               "model.teacher_input_norm=clip", f"model.teacher_weights={weights}", "data.mean=0.5,0.5,0.5",
               "data.std=0.25,0.25,0.25")
    model, teacher = build_models(cfg, torch.device("meta"))
    s = model.student
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(p.device.type == "meta" for p in teacher.parameters())
    assert s.grid == (2, 2, 2) and s.align_layers == 3 and len(model.heads.proj) == 3
    assert s.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)  # the ramp ends at model.drop_path
    assert model.heads.proj[0].out_features == 64  # teacher output dim
    assert teacher.align_layers == 3 and teacher.image_size == 32 and teacher.input_norm == "clip"
    assert not teacher.random_init and teacher.name == "umt-tiny-clip"
    assert isinstance(teacher.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    # The teacher renormalises from the video's normalisation (data.mean/std) to CLIP's: x·a + b.
    _, cpu_teacher = build_models(cfg, CPU)
    from umt.model.teacher import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    a = torch.tensor([0.25 / c for c in OPENAI_CLIP_STD]).view(1, 3, 1, 1)
    b = torch.tensor([(0.5 - m) / c for m, c in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]).view(1, 3, 1, 1)
    torch.testing.assert_close(cpu_teacher.norm_a, a)
    torch.testing.assert_close(cpu_teacher.norm_b, b)
    torch.testing.assert_close(cpu_teacher.visual.conv1.weight, clip.visual.conv1.weight)


def test_build_models_rejects_a_grid_mismatch() -> None:
    from umt.config import ConfigError

    cfg = _cfg("data.input_size=32", "model.teacher_image_size=32")
    cfg.model.teacher_image_size = 48  # past the config check: 3×3 teacher grid vs the student's 2×2
    with pytest.raises(ConfigError, match="grid"):
        build_models(cfg, torch.device("meta"))
    # 34 px at patch 16 is still a 2×2 grid (the patch conv floors): accepted, the grids are compared in patches.
    _, teacher = build_models(_cfg("model.teacher_image_size=34"), torch.device("meta"))
    assert teacher.image_size == 34


def test_scheduler_rounding_and_all_warmup_edges() -> None:
    cfg = _cfg("optim.warmup_epochs=0.4")  # 0.4 × 4 = 1.6 → 2 warm-up steps (rounded, not floored)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, cfg, 4, 1.0, 0.1)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    # Warm-up spanning the whole run: at its end the LR is the floor, not a half-way cosine.
    assert lr_multiplier(11, 10, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(10, 10, 10, 0.1) == pytest.approx(1.0)


def test_apex_optimizer_is_built_with_adamw_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[tuple] = []
    fake = types.ModuleType("apex.optimizers")
    fake.FusedAdam = lambda groups, **kw: calls.append((groups, kw)) or "fused-adam"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "apex", types.ModuleType("apex"))
    monkeypatch.setitem(sys.modules, "apex.optimizers", fake)
    cfg = _cfg("optim.impl=apex", "optim.betas=0.8,0.9", "optim.weight_decay=0.07")
    m = torch.nn.Linear(3, 4)
    assert build_optimizer(m, cfg.optim, 0.5, CPU) == "fused-adam"
    (groups, kw), = calls
    assert kw == {"lr": 0.5, "betas": (0.8, 0.9), "adam_w_mode": True}
    assert groups[0]["params"] == [m.weight] and groups[0]["weight_decay"] == 0.07
    assert groups[1]["params"] == [m.bias] and groups[1]["weight_decay"] == 0.0


def test_step_wiring_fused_vs_foreach_and_bf16() -> None:
    fused = _step("optim.impl=fused")
    assert fused.skip_native and not _step("optim.impl=foreach").skip_native
    assert fused.params == [p for p in fused.model.parameters()]
    cfg = _cfg()
    torch.manual_seed(0)
    model, teacher = build_models(cfg, CPU)
    opt = build_optimizer(model, cfg.optim, 1e-3, CPU)
    s = StageOneStep(model, teacher, opt, build_scheduler(opt, cfg, 4, 1e-3, 1e-4), cfg, CPU, torch.bfloat16)
    video = _video(6)
    tout = s.teacher_forward(video)
    assert tout.targets.dtype == torch.bfloat16  # the teacher ran under bf16 autocast
    dtypes: list[torch.dtype] = []
    model.heads.proj[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    loss = s.forward_backward(video, s.make_mask(tout, video, 1), tout)
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_skipped_step_leaves_weights_unchanged(impl: str) -> None:
    """After good steps (non-zero moments and LR), a step with an inf gradient moves no weight on either path."""
    s = _step(f"optim.impl={impl}", "optim.warmup_epochs=0")
    for seed in range(2):
        assert bool(s(_video(seed), seed=seed)[1])
    video = _video(7)
    tout = s.teacher_forward(video)
    s.forward_backward(video, s.make_mask(tout, video, seed=1), tout)
    s.params[-1].grad.view(-1)[0] = float("inf")
    before = [p.detach().clone() for p in s.params]
    assert not bool(s.optimizer_step())
    assert all(torch.equal(p, q) for p, q in zip(s.params, before))
    assert bool(s(_video(8), seed=3)[1]) and all(torch.isfinite(p).all() for p in s.params)


def test_counters_and_masks_live_on_the_step_device() -> None:
    """The meta device stands in for a GPU: counters and tube/random masks are made there, not on the host."""
    from types import SimpleNamespace

    cfg = _cfg("mask.kind=tube")
    model, teacher = build_models(cfg, torch.device("meta"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    meta = torch.device("meta")
    s = StageOneStep(model, teacher, opt, None, cfg, meta, None)
    for c in (s.skipped, s.consecutive):
        assert c.device.type == "meta" and c.dtype == torch.int64 and c.shape == ()
    idx = s.make_mask(SimpleNamespace(q_cls=None, k=None), torch.empty(2, 3, 2, 32, 32, device=meta), seed=1)
    assert idx.device.type == "meta" and idx.shape == (2, 4)
    cpu = _step()
    assert cpu.skipped.dtype == torch.int64 and cpu.consecutive.dtype == torch.int64


def test_autocast_context_uses_the_given_dtype() -> None:
    lin = torch.nn.Linear(4, 4)
    with autocast_context(CPU, torch.float16):  # not the CPU default (bf16): the dtype must be passed through
        assert lin(torch.randn(2, 4)).dtype == torch.float16
