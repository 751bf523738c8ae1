"""The report's arithmetic: FLOP model against hand-computed values, the projection formula, units, the stage-2 FLOP
model, the all-reduce model and the budget check. Pure arithmetic, no timing: runs in well under a second."""

from __future__ import annotations

import math

import pytest

from benchmarks import budget, scaling
from umt.flops import UMT_SPECS, mfu, student_forward_flops, teacher_forward_flops, train_flops_per_clip


def test_flops_vit_b16_by_hand() -> None:
    # Student ViT-B/16: d = 768, 12 blocks, 8 frames × 14² = 1568 tokens, 8 × 40 = 320 visible.
    d, visible, total = 768, 320, 1568
    patch = 2 * total * (3 * 16 * 16) * d  # Conv3d (1, 16, 16) as a matmul over every token: 1,849,688,064
    block = 24 * visible * d**2 + 4 * visible**2 * d  # 4,529,848,320 + 314,572,800
    heads = 6 * 2 * visible * d * 512  # 6 × Linear(768 → 512): 1,509,949,440
    student = patch + 12 * block + heads
    assert block == 4_844_421_120
    assert student_forward_flops(UMT_SPECS["umt_b16"]) == pytest.approx(student, rel=1e-12)
    # Teacher CLIP-B/16 at 224: per frame 196 patches + CLS, 12 blocks, proj 768 → 512 of 6 layers' patch tokens.
    t_block = 24 * 197 * d**2 + 4 * 197**2 * d  # 2,788,687,872 + 119,224,512
    per_frame = 2 * 196 * 768 * d + 12 * t_block + 6 * 2 * 196 * d * 512
    assert teacher_forward_flops(UMT_SPECS["umt_b16"]) == pytest.approx(8 * per_frame, rel=1e-12)
    total_flops = 3 * student + 8 * per_frame
    assert train_flops_per_clip(UMT_SPECS["umt_b16"]) == pytest.approx(total_flops, rel=1e-12)
    assert total_flops / 1e9 == pytest.approx(472.9, abs=0.05)  # docs/design.md, "FLOPs and MFU": ~473 GFLOP
    assert 8 * per_frame / total_flops == pytest.approx(0.61, abs=0.01)  # teacher ~61 %


def test_flops_vit_l16_by_hand() -> None:
    # Student ViT-L/16: d = 1024, 24 blocks, 320 visible of 1568 tokens; heads 1024 → 768.
    d, visible, total = 1024, 320, 1568
    student = 2 * total * 768 * d + 24 * (24 * visible * d**2 + 4 * visible**2 * d) + 6 * 2 * visible * d * 768
    # Teacher CLIP-L/14 at 196: 14² = 196 patches of 14×14×3 = 588 values, 197 tokens, 24 blocks, proj 1024 → 768.
    per_frame = 2 * 196 * 588 * d + 24 * (24 * 197 * d**2 + 4 * 197**2 * d) + 6 * 2 * 196 * d * 768
    total_flops = 3 * student + 8 * per_frame
    assert train_flops_per_clip(UMT_SPECS["umt_l16"]) == pytest.approx(total_flops, rel=1e-12)
    assert total_flops / 1e9 == pytest.approx(1625.6, abs=0.05)  # docs/design.md, "FLOPs and MFU": ~1,626 GFLOP


def test_paper_rate_and_mfu() -> None:
    # 131.6 M clips in 104 h on 32 A100 = 10.98 clips/s per GPU, 5.7 % MFU for UMT-L (docs/design.md, "FLOPs and MFU").
    assert budget.STAGE1_CLIPS == 131_600_000
    assert budget.PAPER_STAGE1_L_CLIPS_PER_S == pytest.approx(131.6e6 / (104 * 3600 * 32))
    assert budget.PAPER_STAGE1_L_CLIPS_PER_S == pytest.approx(11.0, abs=0.05)
    flops = train_flops_per_clip(UMT_SPECS["umt_l16"])
    assert mfu(budget.PAPER_STAGE1_L_CLIPS_PER_S, flops, 312.0) == pytest.approx(0.057, abs=0.001)


def test_projection_formula_and_units() -> None:
    # 10 clips/s on each of 32 GPUs is 320 clips/s: 320 × 3600 clips take exactly one hour (not 3600 "hours").
    assert budget.wall_clock_hours(320 * 3600, 10.0, 32) == pytest.approx(1.0)
    # Half the GPUs or half the efficiency doubles the time; the rate is per GPU, not per job.
    assert budget.wall_clock_hours(320 * 3600, 10.0, 16) == pytest.approx(2.0)
    assert budget.wall_clock_hours(320 * 3600, 10.0, 32, efficiency=0.5) == pytest.approx(2.0)
    # The paper's rate reproduces its 104 h, and the inverse round-trips.
    assert budget.wall_clock_hours(budget.STAGE1_CLIPS, budget.PAPER_STAGE1_L_CLIPS_PER_S) == pytest.approx(104.0)
    assert budget.clips_per_s_from_hours(budget.STAGE1_CLIPS, 104.0) == pytest.approx(budget.PAPER_STAGE1_L_CLIPS_PER_S)
    assert budget.wall_clock_hours(1e6, 0.0) == math.inf
    with pytest.raises(ValueError):
        budget.wall_clock_hours(1e6, 1.0, efficiency=1.5)
    with pytest.raises(ValueError):
        budget.wall_clock_hours(1e6, -1.0)


def test_a100_equivalent_same_mfu() -> None:
    flops = train_flops_per_clip(UMT_SPECS["umt_l16"])
    # 40 % MFU on an H100 (989 TFLOP/s) → 40 % of 312 TFLOP/s on an A100: 312e12 × 0.4 / 1625.6e9 = 76.8 clips/s.
    h100_rate = 0.4 * 989e12 / flops
    a100 = budget.a100_equivalent_rate(mfu(h100_rate, flops, 989.0), flops)
    assert a100 == pytest.approx(0.4 * 312e12 / flops)
    assert a100 == pytest.approx(76.8, abs=0.1)


def test_device_peaks() -> None:
    assert budget.device_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert budget.device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert budget.device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert budget.device_peak_tflops("NVIDIA H200") == 989.0
    assert budget.device_peak_tflops("Tesla T4") is None
    assert budget.device_peak_tflops(None) is None


def test_stage2_flops_by_hand() -> None:
    # UMT-B, all-video corpus: 4 frames × 40 visible = 160 tokens, 6 UMA heads (clip_return_layer=6 in the official
    # b16_25m.py), vision_proj to 512; BERT-base, 9 text + 3 fusion layers, 32 tokens, vocabulary 30522.
    parts = budget.stage2_flops_per_pair("umt_b16", video_fraction=1.0)
    d, nv, L, D = 768, 160, 32, 512
    student = 2 * 784 * 768 * d + 12 * (24 * nv * d**2 + 4 * nv**2 * d) + 6 * 2 * nv * d * 512 + 2 * d * D
    assert parts["vision"] == pytest.approx(3 * student, rel=1e-12)
    t_block = 24 * 197 * d**2 + 4 * 197**2 * d
    assert parts["teacher"] == pytest.approx(4 * (2 * 196 * 768 * d + 12 * t_block + 6 * 2 * 196 * d * 512),
                                             rel=1e-12)
    text_layer = 24 * L * d**2 + 4 * L**2 * d
    assert parts["text_vtc"] == pytest.approx(3 * (9 * text_layer + 2 * d * D), rel=1e-12)
    cross = 4 * L * d**2 + 4 * nv * d * d + 4 * L * nv * d  # q, out; k, v of the video tokens; q·kᵀ and attn·v
    fusion = 3 * (text_layer + cross)
    assert parts["vtm"] == pytest.approx(3 * 3 * (fusion + 2 * d * 2), rel=1e-12)
    mlm_head = 2 * L * d * d + 2 * L * d * 30522
    assert parts["mlm"] == pytest.approx(3 * (9 * text_layer + fusion + mlm_head), rel=1e-12)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert parts["total"] / 1e9 == pytest.approx(296.2, abs=0.1)


def test_stage2_mix_images_cheaper() -> None:
    video = budget.stage2_flops_per_pair("umt_l16", video_fraction=1.0)["total"]
    image = budget.stage2_flops_per_pair("umt_l16", video_fraction=0.0)["total"]
    mixed = budget.stage2_flops_per_pair("umt_l16")["total"]  # default 0.4
    assert image < mixed < video
    assert mixed == pytest.approx(0.4 * video + 0.6 * image)
    # L costs more than B per pair; stage 2 costs less per pair than stage 1 per clip (4 frames vs 8).
    assert budget.stage2_flops_per_pair("umt_b16")["total"] < mixed < train_flops_per_clip(UMT_SPECS["umt_l16"])
    with pytest.raises(ValueError):
        budget.stage2_flops_per_pair("umt_b16", video_fraction=1.5)


def _project(step: dict[str, float], data: float | None = None, gpu: str = "NVIDIA A100-SXM4-80GB", applicable: bool = True):
    return budget.project(step, data, peak_tflops=budget.device_peak_tflops(gpu), gpu_name=gpu, applicable=applicable)


def test_project_uses_slower_of_data_and_step() -> None:
    res = _project({"umt_l16": 100.0}, data=50.0)
    s1 = [r for r in res.rows if r["stage"] == 1 and r["32 GPUs"] != "A100-eq"][0]
    assert s1["clips/s per GPU"] == 50.0 and "data-bound" in s1["note"]
    assert s1["hours"] == pytest.approx(budget.STAGE1_CLIPS / (50.0 * 32) / 3600)
    # On an A100 the A100-equivalent rows equal the measured ones.
    eq = [r for r in res.rows if r["stage"] == 1 and r["32 GPUs"] == "A100-eq"][0]
    assert eq["hours"] == pytest.approx(s1["hours"])
    assert eq["speed-up"] == pytest.approx(104.0 / s1["hours"])


def test_project_h100_a100_equivalent() -> None:
    flops = train_flops_per_clip(UMT_SPECS["umt_l16"])
    rate = 0.5 * 989e12 / flops  # 50 % MFU on an H100: 304 clips/s (docs/design.md, "FLOPs and MFU")
    assert rate == pytest.approx(304, abs=1)
    res = _project({"umt_l16": rate}, gpu="NVIDIA H100 80GB HBM3")
    eq = [r for r in res.rows if r["stage"] == 1 and r["32 GPUs"] == "A100-eq"][0]
    assert eq["MFU"] == pytest.approx(0.5)
    assert eq["clips/s per GPU"] == pytest.approx(0.5 * 312e12 / flops)
    assert res.extra["totals"]["umt_l16"]["A100-eq"] > res.extra["totals"]["umt_l16"]["measured"]


def test_check_failures() -> None:
    # At the paper's own stage-1 rate (5.7 % MFU), stage 1 takes 104 h, but stage 2 at that MFU (the FLOP model
    # gives ~84 h) takes longer than the paper's 40 h, and 1+2 > 144 h: the check must fail and say why.
    slow = _project({"umt_l16": budget.PAPER_STAGE1_L_CLIPS_PER_S})
    fails = budget.check_failures(slow)
    assert any("stage 2" in f and "paper 40 h" in f for f in fails)
    assert any("stages 1+2" in f and "> 144 h" in f for f in fails)
    assert not any("stage 1 " in f for f in fails)  # stage 1 takes exactly the paper's time: not a failure
    # At 40 % MFU everything holds.
    flops = train_flops_per_clip(UMT_SPECS["umt_l16"])
    assert budget.check_failures(_project({"umt_l16": 0.4 * 312e12 / flops, "umt_b16": 300.0})) == []
    # A data pipeline slower than needed breaks it: 5 clips/s → 228 h for stage 1 alone.
    assert budget.check_failures(_project({"umt_l16": 0.4 * 312e12 / flops}, data=5.0))
    # On CPU the check must not pass or fail.
    with pytest.raises(ValueError):
        budget.check_failures(_project({"umt_b16": 1.0}, gpu="CPU", applicable=False))


def test_budget_cli_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert budget.main(["--step-rate", "umt_l16=11", "--check"]) == 1
    assert budget.main(["--step-rate", "umt_l16=100", "--step-rate", "umt_b16=400", "--check"]) == 0
    assert "holds" in capsys.readouterr().out


def test_trainable_params_by_hand() -> None:
    d = 768  # ViT-B/16 student + 6 heads 768 → 512 (Linear + LayerNorm)
    expected = (3 * 256 * d + d) + 12 * (12 * d * d + 12 * d) + 2 * d + 6 * (d * 512 + 512 + 2 * 512)
    assert scaling.trainable_params(UMT_SPECS["umt_b16"]) == expected
    assert 85e6 < expected < 90e6  # ViT-B is ~86 M plus ~2.4 M of heads


def test_allreduce_model() -> None:
    g = 1e9  # bytes of gradients
    assert scaling.allreduce_bytes_per_gpu(g, 1) == 0.0
    assert scaling.allreduce_bytes_per_gpu(g, 2) == pytest.approx(g)  # 2·1/2
    assert scaling.allreduce_bytes_per_gpu(g, 32) == pytest.approx(2 * 31 / 32 * g)
    # 1.9375 GB at 25 GB/s = 77.5 ms (seconds, GB = 1e9 bytes).
    assert scaling.allreduce_seconds(g, 32, 25.0) == pytest.approx(0.0775)
    step = scaling.model_step("umt_l16", 100.0, 32, 25.0)
    assert step["step_s"] == pytest.approx(0.64)  # 64 clips / 100 clips/s
    assert step["grad_mb"] == pytest.approx(scaling.trainable_params(UMT_SPECS["umt_l16"]) * 4 / 1e6)
    assert 0 < step["share_no_overlap"] < 1 and 0 < step["efficiency"] <= 1
    # A slow link leaves the all-reduce exposed past the backward: efficiency drops below 1.
    slow = scaling.model_step("umt_l16", 300.0, 32, 1.0)
    assert slow["exposed_s"] > 0 and slow["efficiency"] < 0.5


@pytest.mark.parametrize("model,arch", [("umt_b16", "umt_vit_base_patch16_224"), ("umt_l16", "umt_vit_large_patch16_224")])
def test_trainable_params_match_the_model(model: str, arch: str) -> None:
    """The all-reduce model's parameter count equals the trainer's student + UMA heads (built on the meta device)."""
    import timm  # a hard dependency: a failed import must fail this test, not skip it
    import torch

    import umt.model as umt_model

    spec = UMT_SPECS[model]
    with torch.device("meta"):
        student = timm.create_model(arch, num_classes=0)
        heads = umt_model.UMAHeads(spec.student.width, spec.teacher_dim, spec.align_layers)
    n = sum(p.numel() for m in (student, heads) for p in m.parameters() if p.requires_grad)
    assert scaling.trainable_params(spec) == n


def test_reference_rows_ignored_by_check() -> None:
    refs = budget.reference_rows(["umt_l16"])
    s1 = [r for r in refs if r["stage"] == 1 and r["32 GPUs"].startswith("A100 @5.7%")][0]
    assert s1["hours"] == pytest.approx(104.0, rel=0.01)  # 5.7 % MFU is the paper's own stage-1 rate
    fast = [r for r in refs if r["stage"] == 1 and r["32 GPUs"].startswith("A100 @50.0%")][0]
    assert fast["hours"] == pytest.approx(s1["hours"] * 0.057 / 0.5)
    flops = train_flops_per_clip(UMT_SPECS["umt_l16"])
    res = _project({"umt_l16": 0.4 * 312e12 / flops})
    res.rows += refs  # the slow reference rows must not fail a passing measurement
    assert budget.check_failures(res) == []


def test_stage2_pair_rate_mixes_modalities_by_time() -> None:
    # 40 % video pairs at 10/s and 60 % image pairs at 30/s: 0.4/10 + 0.6/30 = 0.06 s per pair
    assert budget.stage2_pair_rate({"video": 10.0, "image": 30.0}) == pytest.approx(1 / 0.06)
    assert budget.stage2_pair_rate({"video": 10.0, "image": 30.0}, video_fraction=1.0) == pytest.approx(10.0)
    assert budget.stage2_pair_rate({"video": 10.0}) is None and budget.stage2_pair_rate({}) is None


def test_project_uses_the_measured_stage2_rate() -> None:
    gpu = "NVIDIA A100-SXM4-80GB"
    est = _project({"umt_b16": 100.0}, gpu=gpu)
    res = budget.project({"umt_b16": 100.0}, None, peak_tflops=312.0, gpu_name=gpu,
                         stage2_rates={"umt_b16": {"video": 10.0, "image": 30.0}})
    s2 = [r for r in res.rows if str(r["stage"]).startswith("2") and r["32 GPUs"] != "A100-eq"][0]
    s2_est = [r for r in est.rows if str(r["stage"]).startswith("2") and r["32 GPUs"] != "A100-eq"][0]
    assert s2["stage"] == 2 and s2_est["stage"] == "2 (estimate)"  # measured: no longer marked as an estimate
    assert s2["clips/s per GPU"] == pytest.approx(1 / 0.06) and "measured stage-2 step" in s2["note"]
    assert s2["hours"] == pytest.approx(budget.STAGE2_PAIRS / (32 / 0.06) / 3600)
    flops2 = budget.stage2_flops_per_pair("umt_b16")["total"]
    assert s2["MFU"] == pytest.approx((1 / 0.06) * flops2 / 312e12)
    eq = [r for r in res.rows if str(r["stage"]).startswith("2") and r["32 GPUs"] == "A100-eq"][0]
    assert eq["hours"] == pytest.approx(s2["hours"])  # on an A100 the A100-equivalent equals the measurement


def test_suite_reads_stage2_rows() -> None:
    import benchmarks.__main__ as suite
    from benchmarks.common import BenchResult

    res = BenchResult("step", rows=[{"model": "umt_b16_vt", "modality": "video", "samples_per_s": 12.0},
                                    {"model": "umt_b16_vt", "modality": "image", "samples_per_s": 30.0},
                                    {"model": "umt_b16", "clips_per_s": 50.0},
                                    {"model": "umt_l16_vt", "modality": "video", "samples_per_s": 4.0}])
    assert suite.stage2_rates_from(res, ["umt_b16", "umt_l16"]) == {"umt_b16": {"video": 12.0, "image": 30.0},
                                                                     "umt_l16": {"video": 4.0}}
    assert suite.step_rates_from(res, ["umt_b16"]) == {"umt_b16": 50.0}  # stage-2 rows are not stage-1 rates
