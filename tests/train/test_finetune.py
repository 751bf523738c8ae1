"""Fine-tuning: layer-decay groups against a hand-written table, the position-table interpolation (exact at
the same size, hand-computed otherwise), seeded video mixup/CutMix equal to timm's, head re-mapping, the classifier
loading a backbone, a clear error for another architecture, and exact stop/resume through the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from tests.train_utils import read_metrics
import umt.model  # noqa: F401 - registers the umt_vit_* names
from umt.model import UMTPretrain
from umt.model.label_map import LabelMapError, read_label_map, remap_head
from umt.model.student import interpolate_pos_table, pos_table, sincos_pos_table
from umt.config import ConfigError, TrainConfig, apply_overrides
from umt.train.finetune.mixup import VideoMixup
from umt.train.finetune.step import FinetuneStep
from umt.train.finetune.task import build_classifier, layer_decay_groups
from umt.train.step import build_optimizer
from umt.train.task import check_config
from umt.train.trainer import Trainer

PICO = "umt_vit_pico_patch16_224"  # width 96, depth 4, 3 heads


def _clf(**kw):  # noqa: ANN202
    return timm.create_model(PICO, num_frames=2, img_size=32, **kw)


# ------------------------------------------------------------------------------------------------- layer-wise lr decay
def test_layer_decay_groups_match_the_hand_table() -> None:
    model = _clf(num_classes=3)
    groups = layer_decay_groups(model, 0.05, 0.75, skip=set(model.no_weight_decay()))
    # ld^(depth + 1 - layer) for depth 4, ld 0.75, written out
    scale = {0: 0.2373046875, 1: 0.31640625, 2: 0.421875, 3: 0.5625, 4: 0.75, 5: 1.0}
    block_decay = {"attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"}
    block_no_decay = {"norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.proj.bias", "norm2.weight",
                      "norm2.bias", "mlp.fc1.bias", "mlp.fc2.bias"}
    want: dict[str, tuple[str, float, float]] = {
        "patch_embed.proj.weight": ("layer_0_decay", 0.05, scale[0]),
        "patch_embed.proj.bias": ("layer_0_no_decay", 0.0, scale[0]),
        "fc_norm.weight": ("layer_5_no_decay", 0.0, 1.0),
        "fc_norm.bias": ("layer_5_no_decay", 0.0, 1.0),
        "head.weight": ("layer_5_decay", 0.05, 1.0),
        "head.bias": ("layer_5_no_decay", 0.0, 1.0),
    }
    for i in range(4):
        for n in block_decay:
            want[f"blocks.{i}.{n}"] = (f"layer_{i + 1}_decay", 0.05, scale[i + 1])
        for n in block_no_decay:
            want[f"blocks.{i}.{n}"] = (f"layer_{i + 1}_no_decay", 0.0, scale[i + 1])
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)]: (g["name"], g["weight_decay"], g["lr_scale"]) for g in groups for p in g["params"]}
    assert set(got) == set(want) == set(names.values())  # every parameter once (no final norm in the classifier)
    for n, (gname, wd, sc) in want.items():
        assert got[n][0] == gname and got[n][1] == wd and got[n][2] == pytest.approx(sc, rel=1e-12), n
    assert groups[0]["name"] == "layer_5_decay"  # the head first: the trainer's logged lr is the peak schedule
    opt = build_optimizer(model, TrainConfig().optim, 1e-3, torch.device("cpu"), groups=groups)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])


# --------------------------------------------------------------------------------------------------- position table
def test_position_table_is_exact_at_the_pretraining_size() -> None:
    m = timm.create_model(PICO, num_frames=2, img_size=32, num_classes=3, pretrain_num_frames=2, pretrain_img_size=32)
    assert torch.equal(m.pos_embed, sincos_pos_table(2 * 2 * 2, 96))
    assert torch.equal(_clf().pos_embed, sincos_pos_table(8, 96))
    t = sincos_pos_table(8, 96)
    assert interpolate_pos_table(t, (2, 2, 2), (2, 2, 2)) is t


def test_position_table_interpolation_hand_computed() -> None:
    c = 5
    table = torch.randn(2 * 2 * 2, c, dtype=torch.float32)  # T-major [T0=2, 2, 2, C]
    # time only, 2 → 4 frames, linear with align_corners=False: source t = (t' + 0.5)/2 − 0.5, clamped
    out = interpolate_pos_table(table, (2, 2, 2), (4, 2, 2)).view(4, 4, c)
    x0, x1 = table.view(2, 4, c)
    for t, want in enumerate((x0, 0.75 * x0 + 0.25 * x1, 0.25 * x0 + 0.75 * x1, x1)):
        torch.testing.assert_close(out[t], want, rtol=0, atol=1e-6)
    # space only, 2×2 → 3×3 bicubic: torch's own F.interpolate on each frame's [C, 2, 2] grid
    out = interpolate_pos_table(table, (2, 2, 2), (2, 3, 3)).view(2, 3, 3, c)
    for t in range(2):
        frame = table.view(2, 2, 2, c)[t].permute(2, 0, 1)[None]  # [1, C, 2, 2]
        want = F.interpolate(frame, size=(3, 3), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
        torch.testing.assert_close(out[t], want, rtol=0, atol=0)
    # both (space first, then time, as official): each 3×3 position follows the linear rule over time
    both = interpolate_pos_table(table, (2, 2, 2), (4, 3, 3)).view(4, 9, c)
    sp = interpolate_pos_table(table, (2, 2, 2), (2, 3, 3)).view(2, 9, c)
    torch.testing.assert_close(both[1], 0.75 * sp[0] + 0.25 * sp[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[3], sp[1], rtol=0, atol=1e-6)
    # the model builds its table at the pre-training size, then interpolates: 16 frames × 384 px from 8 × 224
    m = timm.create_model(PICO, num_frames=4, img_size=48, num_classes=3, pretrain_num_frames=2, pretrain_img_size=32)
    assert torch.equal(m.pos_embed, interpolate_pos_table(sincos_pos_table(8, 96), (2, 2, 2), (4, 3, 3)))
    big = pos_table((16, 24, 24), 96, (8, 14, 14))
    assert big.shape == (16 * 24 * 24, 96) and torch.isfinite(big).all()


# ----------------------------------------------------------------------------------------------------- mixup/cutmix
def _video(b: int = 4, t: int = 3, s: int = 16) -> torch.Tensor:
    # clip i, channel c, frame f: the constant 100·i + 10·c + f, so a pasted pixel shows where it came from
    v = torch.zeros(b, 3, t, s, s)
    for i in range(b):
        for c in range(3):
            for f in range(t):
                v[i, c, f] = 100 * i + 10 * c + f
    return v


def test_cutmix_puts_one_box_in_every_frame_and_targets_sum_to_one() -> None:
    mix = VideoMixup(5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    label = torch.tensor([0, 1, 2, 3])
    before = np.random.get_state()[1].copy()
    for seed in range(6):
        src = _video()
        out, target = mix(src.clone(), label, seed)
        pasted = out != src  # [B, 3, T, H, W]
        if not pasted.any():
            continue  # λ = 1 after clipping: nothing pasted
        ref = pasted[:, 0, 0]  # [B, H, W]
        assert torch.equal(pasted, ref[:, None, None].expand_as(pasted))  # the same box in every channel and frame
        rows, cols = ref[0].any(1).nonzero().flatten(), ref[0].any(0).nonzero().flatten()
        assert ref[0][rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
        # pasted pixels come from the mirrored clip (row 0 ← row 3), frame for frame
        torch.testing.assert_close(out[0][pasted[0]], src[3][pasted[0]])
        lam = 1.0 - ref[0].float().mean().item()  # timm's λ corrected for the clipped box
        y = F.one_hot(label, 5).float() * 0.9 + 0.1 / 5
        torch.testing.assert_close(target, lam * y + (1 - lam) * y.flip(0))
    assert torch.equal(torch.from_numpy(np.random.get_state()[1]), torch.from_numpy(before))  # global RNG untouched
    _, t1 = mix(_video(), label, 3)
    torch.testing.assert_close(t1.sum(1), torch.ones(4))
    _, t2 = mix(_video(), label, 3)
    assert torch.equal(t1, t2)  # a pure function of the seed


def test_step_loss_equals_timm_soft_target_cross_entropy() -> None:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    cfg = apply_overrides(TrainConfig(task="finetune", device="cpu", synthetic_data=True),
                          ["finetune.num_classes=4", "data.batch_size=2", "data.num_sample=2", "data.num_frames=2",
                           "data.input_size=32", "synthetic_samples=4"])
    torch.manual_seed(0)
    model = _clf(num_classes=4)
    opt = build_optimizer(model, cfg.optim, 1e-3, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = FinetuneStep(model, opt, sched, cfg, torch.device("cpu"), None, 4)
    video = torch.randn(4, 3, 2, 32, 32)
    label = torch.tensor([0, 0, 3, 3])
    for seed in (1, 2, 7):
        out = step.train_batch({"video": video.clone(), "label": label}, seed)
        opt.zero_grad()
        # timm on its own: the same Mixup settings on the folded [B, 3·T, H, W] batch, NumPy seeded alike
        ref_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                        label_smoothing=0.1, num_classes=4)
        state = np.random.get_state()
        np.random.seed(seed)
        folded, target = ref_mix(video.clone().view(4, 6, 32, 32), label)
        np.random.set_state(state)
        torch.testing.assert_close(target.sum(1), torch.ones(4))
        with torch.no_grad():
            want = SoftTargetCrossEntropy()(model(folded.view(4, 3, 2, 32, 32)), target)
        torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- head re-map
def test_head_remap_keeps_the_mapped_rows(tmp_path: Path) -> None:
    w, b = torch.randn(7, 6), torch.randn(7)
    (tmp_path / "map.json").write_text(json.dumps([6, 0, 3]))
    (tmp_path / "map.txt").write_text("# K710 index per class\n6\n0\n\n3  # third\n")
    for m in (tmp_path / "map.json", tmp_path / "map.txt", [6, 0, 3]):
        w2, b2 = remap_head(w, b, 3, m)
        assert torch.equal(w2, w[[6, 0, 3]]) and torch.equal(b2, b[[6, 0, 3]])
    w2, b2 = remap_head(w, b, 4, "first")
    assert torch.equal(w2, w[:4]) and torch.equal(b2, b[:4])
    with pytest.raises(LabelMapError, match="3 entries for 4 target classes"):
        remap_head(w, b, 4, tmp_path / "map.json")
    with pytest.raises(LabelMapError, match="source index 9 outside the 7-class head"):
        remap_head(w, b, 2, [1, 9])
    with pytest.raises(LabelMapError, match="first 8 rows of a 7-class head"):
        remap_head(w, b, 8, "first")
    (tmp_path / "bad.txt").write_text("1\ntwo\n")
    with pytest.raises(LabelMapError, match=r"bad.txt:2: expected one integer"):
        read_label_map(tmp_path / "bad.txt")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(LabelMapError, match="JSON list of integers"):
        read_label_map(tmp_path / "bad.json")
    with pytest.raises(LabelMapError, match="no such file"):
        read_label_map(tmp_path / "absent.json")


def _cfg(*extra: str) -> TrainConfig:
    return apply_overrides(TrainConfig(task="finetune", device="cpu", synthetic_data=True), [
        "synthetic_samples=8", "data.batch_size=2", "data.num_sample=2", "data.num_frames=2", "data.input_size=32",
        f"model.student={PICO}", "model.drop_path=0.1", "finetune.num_classes=4", "optim.lr=1e-2",
        "optim.min_lr=1e-4", "optim.epochs=2", "optim.warmup_epochs=1", "optim.betas=0.9,0.999", "log.every_steps=1",
        "log.tensorboard=false", "log.progress=false", "checkpoint.every_steps=0", *extra])


def _stage1_file(path: Path, name: str = PICO, frames: int = 2, size: int = 32) -> UMTPretrain:
    torch.manual_seed(5)
    pre = UMTPretrain(timm.create_model(name, num_frames=frames, img_size=size, align_layers=2), teacher_dim=16)
    torch.save({"model": pre.state_dict(), "task": "distill", "student": name,
                "config": {"data": {"num_frames": frames, "input_size": size}}}, path)
    return pre


def test_classifier_loads_the_backbone_and_remaps_a_finetuned_head(tmp_path: Path) -> None:
    pre = _stage1_file(tmp_path / "s1.pt")
    cfg = _cfg(f"model.init_from={tmp_path / 's1.pt'}", "data.num_frames=4", "data.input_size=48")
    from umt.model.load import read_backbone

    model, report = build_classifier(cfg, 4, read_backbone(tmp_path / "s1.pt"))
    sd, src = model.state_dict(), pre.student.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in sd if k.startswith(("blocks.", "patch_embed.")))
    assert {"norm.weight", "norm.bias"} <= set(report.dropped) and set(report.missing) == {
        "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert model.pretrain_grid == (2, 2, 2)  # recorded by the file; the run is 4 × 48²
    assert torch.equal(model.pos_embed, interpolate_pos_table(sincos_pos_table(8, 96), (2, 2, 2), (4, 3, 3)))
    # a fresh head: truncated normal std 0.02 (384 draws: the sample std within 20 %) × init_scale 0.001, zero bias
    assert 0.8 * 2e-5 < model.head.weight.std().item() < 1.2 * 2e-5 and torch.equal(model.head.bias, torch.zeros(4))
    # a fine-tuned 7-class classifier → 4 classes: the first 4 rows (K710 → K400), fc_norm kept
    ft = _clf(num_classes=7)
    torch.nn.init.normal_(ft.head.bias)
    torch.save({"model": ft.state_dict(), "task": "finetune"}, tmp_path / "best.pt")
    with pytest.raises(ConfigError, match="7-class head, this run 4 classes: set finetune.label_map"):
        build_classifier(_cfg(), 4, read_backbone(tmp_path / "best.pt"))
    m2, _ = build_classifier(_cfg("finetune.label_map=first"), 4, read_backbone(tmp_path / "best.pt"))
    assert torch.equal(m2.head.weight, ft.head.weight[:4]) and torch.equal(m2.head.bias, ft.head.bias[:4])
    assert torch.equal(m2.fc_norm.weight, ft.fc_norm.weight)
    with pytest.raises(ConfigError, match="finetune.label_map: .*2 entries for 4 target classes"):
        (tmp_path / "m.json").write_text("[1, 2]")
        build_classifier(_cfg(f"finetune.label_map={tmp_path / 'm.json'}"), 4, read_backbone(tmp_path / "best.pt"))


def test_a_finetuned_file_records_the_size_its_table_was_interpolated_from(tmp_path: Path) -> None:
    """4 frames × 48² fine-tuned from a 2 × 32² backbone: the run's files record 2 × 32, so the next fine-tuning (or
    an evaluation) from them rebuilds the same interpolated table, not a table made directly at 4 × 48."""
    from umt.model.load import read_backbone

    _stage1_file(tmp_path / "s1.pt")
    sizes = ("data.num_frames=4", "data.input_size=48", "synthetic_samples=4")
    tr = Trainer(_cfg(f"model.init_from={tmp_path / 's1.pt'}", *sizes, "optim.max_steps=1"), tmp_path / "a")
    try:
        tr.fit()
        table = tr.model.pos_embed.clone()
    finally:
        tr.close()
    st = read_backbone(next((tmp_path / "a" / "checkpoints").glob("*.pt")))
    assert (st.kind, st.num_frames, st.img_size, st.pretrain_num_frames, st.pretrain_img_size) == (
        "finetune", 4, 48, 2, 32)
    again, _ = build_classifier(_cfg(*sizes), 4, st)
    assert torch.equal(again.pos_embed, table) and not torch.equal(table, sincos_pos_table(4 * 9, 96))


def test_another_architecture_is_a_clear_error_through_the_task(tmp_path: Path) -> None:
    _stage1_file(tmp_path / "tiny.pt", name="umt_vit_tiny_patch16_224")  # width 192, depth 12
    with pytest.raises(ConfigError, match=r"model.init_from: .*another architecture.*width 192, depth 12.*model "
                                          r"\(width 96, depth 4.*shape mismatches \(\S+: file"):
        Trainer(_cfg(f"model.init_from={tmp_path / 'tiny.pt'}"), tmp_path / "run")
    with pytest.raises(ConfigError, match="model.init_from: .*no such file"):
        Trainer(_cfg(f"model.init_from={tmp_path / 'absent.pt'}"), tmp_path / "run2")


# ----------------------------------------------------------------------------------------------------- exact resume
def _rows(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["top1"]) for r in read_metrics(run_dir)}


def test_finetuning_stops_and_resumes_exactly(tmp_path: Path) -> None:
    _stage1_file(tmp_path / "s1.pt")
    init = f"model.init_from={tmp_path / 's1.pt'}"
    four = "synthetic_samples=4"  # 2 steps per epoch
    full = Trainer(_cfg(init, four, "optim.max_steps=4"), tmp_path / "full")
    try:
        full.fit()
    finally:
        full.close()
    part = Trainer(_cfg(init, four, "optim.max_steps=3"), tmp_path / "part")  # stops mid-epoch 1
    try:
        part.fit()
    finally:
        part.close()
    rest = Trainer(_cfg(init, four, "optim.max_steps=4"), tmp_path / "part", resume="auto")
    try:
        assert (rest.step, rest.epoch, rest.batch_in_epoch) == (3, 1, 1)
        rest.fit()
    finally:
        rest.close()
    want, got = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert sorted(want) == list(range(1, 5)) and got == want  # bit-identical per-step losses (mixup, drop path)
    assert len({v[0] for v in want.values()}) == 4
    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    assert cfg["task"] == "finetune" and cfg["num_classes"] == 4 and cfg["pretrain_grid"] == [2, 2, 2]
    # resuming with another class count is refused
    with pytest.raises(ConfigError, match="num_classes 4, this run has 5"):
        Trainer(_cfg(init, four, "finetune.num_classes=5"), tmp_path / "part", resume="auto")


# ---------------------------------------------------------------------------------------------------------- recipes
#: the official scripts (single_modality/exp/finetuning/{k710,k400,ssv2}/*.sh): epochs, warm-up, lr, layer decay,
#: drop path, classes, test views, flip
OFFICIAL = {
    "umt_b16_k710_ft": (35, 2, 2e-4, 0.75, 0.1, 710, "4x3", True),
    "umt_b16_k400_ft": (5, 1, 2e-5, 0.75, 0.1, 400, "4x3", True),
    "umt_l16_k710_ft": (20, 2, 1e-4, 0.85, 0.2, 710, "4x3", True),
    "umt_l16_k400_ft": (5, 1, 1e-5, 0.85, 0.2, 400, "4x3", True),
    "umt_b16_ssv2_ft": (30, 5, 2e-4, 0.75, 0.1, 174, "2x3", False),
    "umt_l16_ssv2_ft": (14, 4, 4e-4, 0.85, 0.2, 174, "2x3", False),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipes_carry_the_official_numbers(name: str) -> None:
    from umt.train.recipes import get_recipe
    from umt.train.step import peak_lr

    cfg = get_recipe(name)
    epochs, warmup, lr, ld, dp, k, views, flip = OFFICIAL[name]
    o, f, d = cfg.optim, cfg.finetune, cfg.data
    assert (cfg.task, o.epochs, o.warmup_epochs, o.lr, o.min_lr, f.layer_decay, cfg.model.drop_path) == (
        "finetune", epochs, warmup, lr, 1e-6, ld, dp)
    assert (f.num_classes, cfg.eval.views, d.flip, f.head_init_scale) == (k, views, flip, 0.001)
    assert (o.betas, o.weight_decay, f.mixup, f.cutmix, f.mixup_switch_prob, f.label_smoothing) == (
        (0.9, 0.999), 0.05, 0.8, 1.0, 0.5, 0.1)
    assert (d.batch_size, d.num_sample, o.global_batch, d.num_frames, d.input_size) == (16, 2, 256, 8, 224)
    assert f.label_map == ("first" if "k400" in name else "")
    # lr × 256 videos × 2 views / 256, the same on 16 GPUs or on 4 that accumulate 4 micro-batches
    assert peak_lr(cfg, 16) == pytest.approx((2 * lr, 2e-6)) and peak_lr(cfg, 4) == pytest.approx((2 * lr, 2e-6))


def test_finetune_config_checks() -> None:
    with pytest.raises(ConfigError, match="finetune.layer_decay must be in"):
        apply_overrides(TrainConfig(task="finetune"), ["finetune.layer_decay=0", "synthetic_data=true"])
    with pytest.raises(ConfigError, match="must be even, got 3 × 1"):  # the task's own check
        check_config(apply_overrides(TrainConfig(task="finetune"), ["data.batch_size=3", "data.num_sample=1",
                                                                    "synthetic_data=true"]))
    ok = apply_overrides(TrainConfig(task="finetune"), ["data.batch_size=3", "data.num_sample=1", "finetune.mixup=0",
                                                        "finetune.cutmix=0", "synthetic_data=true"])
    assert not ok.finetune.mixup_active
    check_config(ok)
