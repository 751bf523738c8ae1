"""The 6-day / 32-A100 budget check: project the paper's pre-training recipes from measured per-GPU rates.

Sources of the numbers (docs/design.md, "FLOPs and MFU"; UMT, Li et al., ICCV 2023, arXiv 2303.16058):

- Stage 1: Kinetics-710, about 658 k videos × 200 epochs = 131.6 M clips (the paper's 131.6 M clips in 104 h on
  32 A100 is 11.0 clips/s per A100 for UMT-L).
- Stage 2: a 25 M video/image-text corpus × 10 epochs = 250 M pairs; the paper reports about 40 h (UMT-L) and
  24 h (UMT-B) on 32 A100.
- Budget: 6 days = 144 h on 32 A100 for stage 1 + stage 2.

Projection (``wall_clock_hours``)::

    hours = total_clips / (per_gpu_clips_per_s × gpus × scaling_efficiency) / 3600

where the per-GPU rate is the slower of the measured train step and the measured data pipeline. The
"A100-equivalent" projection assumes the **same MFU** on an A100's 312 TFLOP/s dense bf16 peak::

    a100_rate = mfu × 312e12 / flops_per_clip,   mfu = effective_rate × flops_per_clip / measured_peak

Stage 2's rate comes from the stage-2 FLOP model at the measured stage-1 MFU (no stage-2 step rate is measured here),
and every stage-2 figure is marked as an estimate.

Stage-2 FLOP model (:func:`stage2_flops_per_pair`): :func:`umt.flops.stage2_flops_per_sample`, the one model the
trainer's MFU uses too (its docstring derives it from the official forward), for the official configurations
(:data:`umt.flops.STAGE2_SPECS`: 4 frames, mask 0.8 (video, 160 visible tokens) / 0.5 (image, 98), **6 aligned
layers** (``clip_return_layer = 6`` in ``exp/pretraining/{b16,l16}_25m.py``; this module's first estimate assumed 1),
BERT-base fusion 9–11 / BERT-large fusion 19–23, embed 512 / 768, captions padded to 32 tokens), averaged over the
corpus: the default video share is 0.4 (WebVid-10M of 25 M pairs); ``video_fraction=1.0`` gives the conservative
all-video bound.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.common import BenchResult, format_table
from umt.flops import (
    PEAK_BF16_TFLOPS,
    STAGE2_SPECS,
    TEXT_SPECS,
    UMT_SPECS,
    TextSpec,
    peak_bf16_tflops,
    stage2_flops_per_sample,
    train_flops_per_clip,
)

__all__ = [
    "A100_PEAK_TFLOPS",
    "BUDGET_HOURS",
    "GPUS",
    "PAPER_HOURS",
    "PAPER_STAGE1_L_CLIPS_PER_S",
    "STAGE1_CLIPS",
    "STAGE2_PAIRS",
    "BudgetRow",
    "TextSpec",
    "TEXT_SPECS",
    "a100_equivalent_rate",
    "check_failures",
    "clips_per_s_from_hours",
    "device_peak_tflops",
    "project",
    "reference_rows",
    "stage2_flops_per_pair",
    "stage2_pair_rate",
    "wall_clock_hours",
    "main",
]

log = logging.getLogger(__name__)

#: K710 videos (131.6 M clips / 200 epochs, the paper's stage 1) and stage-1 epochs.
K710_VIDEOS = 658_000
STAGE1_EPOCHS = 200
STAGE1_CLIPS = K710_VIDEOS * STAGE1_EPOCHS  # 131.6 M
#: Stage-2 corpus (25 M pairs) × 10 epochs.
STAGE2_CORPUS = 25_000_000
STAGE2_EPOCHS = 10
STAGE2_PAIRS = STAGE2_CORPUS * STAGE2_EPOCHS  # 250 M
#: Share of video-text pairs in the 25 M corpus: WebVid-10M; the rest are image-text (CC3M, CC12M, COCO, VG, SBU).
STAGE2_VIDEO_FRACTION = 0.4
#: The paper's machine: 32 A100 (SXM, 312 TFLOP/s dense bf16).
GPUS = 32
A100_PEAK_TFLOPS = PEAK_BF16_TFLOPS["A100"]
#: 6 days on 32 A100 for both stages.
BUDGET_HOURS = 6 * 24.0
#: Wall-clock hours the paper reports per (model, stage) on 32 A100; None where it gives no figure.
PAPER_HOURS: dict[tuple[str, int], float | None] = {
    ("umt_b16", 1): None,
    ("umt_l16", 1): 104.0,
    ("umt_b16", 2): 24.0,
    ("umt_l16", 2): 40.0,
}
#: The released code's stage-1 UMT-L rate per A100: 131.6 M clips / (104 h × 32).
PAPER_STAGE1_L_CLIPS_PER_S = STAGE1_CLIPS / (104.0 * 3600 * GPUS)

def device_peak_tflops(name: str | None) -> float | None:
    """Dense bf16 peak in TFLOP/s of a GPU named like ``torch.cuda.get_device_name()``; see
    :func:`umt.flops.peak_bf16_tflops`, the one table every report uses."""
    return peak_bf16_tflops(name)


def stage2_flops_per_pair(
    model: str,
    *,
    video_fraction: float = STAGE2_VIDEO_FRACTION,
    text_tokens: int = 32,
    num_frames: int = 4,
    video_mask_ratio: float = 0.8,
    image_mask_ratio: float = 0.5,
) -> dict[str, float]:
    """FLOPs of one stage-2 training pair (mean over the corpus), split by pass; see the module docstring.

    Args:
        model: ``"umt_b16"`` or ``"umt_l16"``.
        video_fraction: share of video-text pairs in the corpus (0.4 = WebVid-10M in 25 M; 1.0 = all videos,
            the conservative upper bound); the rest are image-text pairs (1 frame at ``image_mask_ratio``).
        text_tokens: caption length in tokens (the official ``max_txt_l`` is 32).
        num_frames: frames per video (4 in stage 2).
        video_mask_ratio, image_mask_ratio: mask ratios (0.8 and 0.5).

    Returns:
        ``{"vision", "teacher", "text_vtc", "vtm", "mlm", "total"}`` in FLOPs per pair.

    Raises:
        KeyError: unknown model.
        ValueError: ``video_fraction`` outside [0, 1].
    """
    if not 0.0 <= video_fraction <= 1.0:
        raise ValueError("video_fraction must be in [0, 1]")
    base = STAGE2_SPECS[model]
    spec = replace(base, vision=replace(base.vision, num_frames=num_frames, mask_ratio=video_mask_ratio),
                   image_mask_ratio=image_mask_ratio, text_tokens=text_tokens)
    video = stage2_flops_per_sample(spec, "video")
    image = stage2_flops_per_sample(spec, "image")
    return {k: video_fraction * video[k] + (1.0 - video_fraction) * image[k] for k in video}


def stage2_pair_rate(rates: dict[str, float], video_fraction: float = STAGE2_VIDEO_FRACTION) -> float | None:
    """Stage-2 pairs/s per GPU from measured video and image samples/s: the corpus mixes ``video_fraction`` video
    pairs with image pairs, so a pair takes ``f / video + (1 − f) / image`` seconds on average.

    Returns:
        pairs/s, or None unless both modalities were measured (positive rates).
    """
    v, i = rates.get("video"), rates.get("image")
    if not v or not i or v <= 0 or i <= 0:
        return None
    return 1.0 / (video_fraction / v + (1.0 - video_fraction) / i)


def wall_clock_hours(total_clips: float, per_gpu_clips_per_s: float, gpus: int = GPUS, efficiency: float = 1.0) -> float:
    """Hours to process ``total_clips`` at ``per_gpu_clips_per_s`` on ``gpus`` GPUs with the given scaling efficiency.

    ``hours = total_clips / (rate × gpus × efficiency) / 3600``. Returns ``inf`` for a zero rate.

    Raises:
        ValueError: negative rate, ``gpus < 1`` or efficiency outside (0, 1].
    """
    if per_gpu_clips_per_s < 0:
        raise ValueError("per_gpu_clips_per_s must be >= 0")
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    if not 0 < efficiency <= 1:
        raise ValueError("efficiency must be in (0, 1]")
    if per_gpu_clips_per_s == 0:
        return math.inf
    return total_clips / (per_gpu_clips_per_s * gpus * efficiency) / 3600.0


def clips_per_s_from_hours(total_clips: float, hours: float, gpus: int = GPUS) -> float:
    """Inverse of :func:`wall_clock_hours` at efficiency 1: the per-GPU clips/s that finishes in ``hours``."""
    return total_clips / (hours * 3600.0 * gpus)


def a100_equivalent_rate(mfu_fraction: float, flops_per_clip: float, peak_tflops: float = A100_PEAK_TFLOPS) -> float:
    """Per-GPU clips/s on an A100 running at the same MFU: ``mfu × peak × 1e12 / flops_per_clip``."""
    return mfu_fraction * peak_tflops * 1e12 / flops_per_clip


@dataclass
class BudgetRow:
    """One projected stage for one model on 32 GPUs."""

    model: str
    stage: int
    hardware: str  # "measured" (32 GPUs of the measured kind) or "A100-eq" (same MFU at 312 TFLOP/s)
    clips_per_s: float | None  # per-GPU rate used, clips (stage 1) or pairs (stage 2) per second
    mfu: float | None
    hours: float | None
    paper_hours: float | None
    speedup: float | None  # paper_hours / hours
    estimate: bool  # stage 2: FLOP model at the measured stage-1 MFU
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage": self.stage if not self.estimate else f"{self.stage} (estimate)",
            "32 GPUs": self.hardware,
            "clips/s per GPU": self.clips_per_s,
            "MFU": self.mfu,
            "hours": self.hours,
            "paper h": self.paper_hours,
            "speed-up": self.speedup,
            "note": self.note,
        }


def project(
    step_rates: dict[str, float],
    data_rate: float | None,
    *,
    peak_tflops: float | None,
    gpu_name: str,
    applicable: bool = True,
    efficiency: float = 1.0,
    stage2_rates: dict[str, dict[str, float]] | None = None,
) -> BenchResult:
    """Project stages 1 and 2 for every model in ``step_rates`` on 32 GPUs, measured kind and A100-equivalent.

    Args:
        step_rates: measured per-GPU train-step clips/s per model (``{"umt_l16": 120.0}``).
        data_rate: measured per-GPU data-pipeline clips/s (8×224² clips), or None when not measured.
        peak_tflops: the measured device's dense bf16 peak (TFLOP/s); None → no MFU, no A100-equivalent.
        gpu_name: label of the measured device.
        applicable: False on CPU: the rows are still computed, but marked as not speaking to the budget.
        efficiency: assumed multi-GPU scaling efficiency in (0, 1] (1 = linear).
        stage2_rates: measured stage-2 step samples/s per GPU per model and modality (``{"umt_b16": {"video": 40.0,
            "image": 90.0}}``, :mod:`benchmarks.bench_step_vt`); where a model has both, stage 2 uses them
            (:func:`stage2_pair_rate`) instead of the estimate at the stage-1 MFU.

    Returns:
        A :class:`BenchResult` named ``"budget"`` whose ``extra`` holds ``totals`` (hours of stage 1 + 2 per model
        and hardware), ``budget_hours`` and ``applicable``.
    """
    rows: list[BudgetRow] = []
    notes = [
        f"Stage 1: {STAGE1_CLIPS / 1e6:.1f} M clips (K710 {K710_VIDEOS / 1e3:.0f} k videos × {STAGE1_EPOCHS} epochs); "
        f"stage 2: {STAGE2_PAIRS / 1e6:.0f} M pairs ({STAGE2_CORPUS / 1e6:.0f} M × {STAGE2_EPOCHS} epochs); "
        f"{GPUS} GPUs, scaling efficiency {efficiency:g}; budget {BUDGET_HOURS:.0f} h (6 days).",
        "Per-GPU rate = the slower of the measured train step and the measured data pipeline.",
        "A100-eq: the same MFU on an A100's 312 TFLOP/s dense bf16 peak (an assumption: a slower GPU may reach a "
        "different MFU, and the data pipeline's host is not modelled).",
        "Stage 2: the measured stage-2 step (video and image batches, mixed as the corpus mixes them) where measured; "
        "otherwise an estimate: the stage-2 FLOP model (umt.flops.stage2_flops_per_sample) at the measured stage-1 "
        "MFU. The stage-2 data pipeline is not in this projection.",
        f"Paper reference: stage 1 UMT-L 104 h = {PAPER_STAGE1_L_CLIPS_PER_S:.1f} clips/s per A100.",
    ]
    if not applicable:
        notes.insert(0, f"NOT APPLICABLE: measured on {gpu_name} at tiny sizes; these figures do not speak to the budget.")
    totals: dict[str, dict[str, float | None]] = {}
    for model, step_rate in step_rates.items():
        flops1 = train_flops_per_clip(UMT_SPECS[model])
        flops2 = stage2_flops_per_pair(model)["total"]
        rate = step_rate if data_rate is None else min(step_rate, data_rate)
        bound = "data-bound" if data_rate is not None and data_rate < step_rate else "step-bound"
        if data_rate is None:
            bound += ", data not measured"
        mfu = rate * flops1 / (peak_tflops * 1e12) if peak_tflops else None
        hw_rates: dict[str, tuple[float | None, float | None]] = {"measured": (rate, mfu)}
        if mfu is not None:
            hw_rates["A100-eq"] = (a100_equivalent_rate(mfu, flops1), mfu)
        measured2 = stage2_pair_rate((stage2_rates or {}).get(model, {}))
        mfu2 = measured2 * flops2 / (peak_tflops * 1e12) if (measured2 and peak_tflops) else None
        for hw, (r1, m) in hw_rates.items():
            if measured2 is None:
                r2 = r1 * flops1 / flops2 if r1 else None  # same MFU on the stage-2 FLOPs per pair
            elif hw == "measured":
                r2 = measured2
            else:
                r2 = a100_equivalent_rate(mfu2, flops2) if mfu2 is not None else None
            total = 0.0
            for stage, r, clips in ((1, r1, STAGE1_CLIPS), (2, r2, STAGE2_PAIRS)):
                h = wall_clock_hours(clips, r, GPUS, efficiency) if r is not None else None
                paper = PAPER_HOURS[(model, stage)]
                rows.append(
                    BudgetRow(
                        model,
                        stage,
                        hw if hw == "A100-eq" else gpu_name,
                        r,
                        m if stage == 1 or measured2 is None else mfu2,
                        h,
                        paper,
                        paper / h if (paper and h) else None,
                        estimate=stage == 2 and measured2 is None,
                        note=bound if stage == 1 else ("measured stage-2 step" if measured2 else ""),
                    )
                )
                total = total + h if (h is not None and total is not None) else None
            totals.setdefault(model, {})[hw] = total
    return BenchResult(
        name="budget",
        rows=[r.as_row() for r in rows],
        notes=notes,
        extra={"totals": totals, "budget_hours": BUDGET_HOURS, "applicable": applicable, "gpu": gpu_name},
    )


#: Reference MFUs on A100 for :func:`reference_rows`: the released code's 5.7 % (docs/design.md) and a 50 % target.
REFERENCE_MFUS = (0.057, 0.5)


def reference_rows(models: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """Budget rows for 32 A100 at the reference MFUs (not measurements): what the budget looks like at the paper
    code's efficiency and at 50 % MFU. Labelled ``"A100 @x% MFU (reference)"``; :func:`check_failures` ignores them."""
    out: list[dict[str, Any]] = []
    for m_fu in REFERENCE_MFUS:
        rates = {m: a100_equivalent_rate(m_fu, train_flops_per_clip(UMT_SPECS[m])) for m in models}
        res = project(rates, None, peak_tflops=A100_PEAK_TFLOPS, gpu_name=f"A100 @{m_fu:.1%} MFU (reference)")
        for row in res.rows:
            if row["32 GPUs"] != "A100-eq":
                out.append({**row, "note": "reference, not measured"})
    return out


def check_failures(result: BenchResult) -> list[str]:
    """Budget violations in a :func:`project` result; empty when every projection holds.

    A projection fails when (a) an A100-equivalent stage takes longer than the paper's hours for it, or (b) a
    model's stage 1 + stage 2 exceeds 144 h, on 32 GPUs of the measured kind or as A100-equivalents.
    Callers must not call this on a non-applicable (CPU) result; it raises there.

    Raises:
        ValueError: ``result.extra["applicable"]`` is False.
    """
    if not result.extra.get("applicable", False):
        raise ValueError("the budget check does not apply to these figures (CPU / tiny sizes)")
    fails: list[str] = []
    for row in result.rows:
        if row["32 GPUs"] == "A100-eq" and row["paper h"] and row["hours"] is not None and row["hours"] > row["paper h"]:
            fails.append(f"{row['model']} stage {row['stage']} A100-eq {row['hours']:.1f} h > paper {row['paper h']:.0f} h")
    budget = result.extra["budget_hours"]
    for model, per_hw in result.extra["totals"].items():
        for hw, total in per_hw.items():
            if total is not None and total > budget:
                fails.append(f"{model} stages 1+2 on 32 × {hw}: {total:.1f} h > {budget:.0f} h")
    return fails


def _parse_rates(items: list[str]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for item in items:
        model, _, value = item.partition("=")
        if model not in UMT_SPECS or not value:
            raise argparse.ArgumentTypeError(f"expected MODEL=CLIPS_PER_S with MODEL in {sorted(UMT_SPECS)}, got {item!r}")
        rates[model] = float(value)
    return rates


def main(argv: list[str] | None = None) -> int:
    """Project the budget from given rates (no measurement): ``python -m benchmarks.budget --step-rate umt_l16=120
    [--data-rate 500] --gpu "NVIDIA H100 80GB HBM3" [--check]``. Exit status 1 when ``--check`` finds a violation."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=main.__doc__)
    p.add_argument("--step-rate", action="append", default=[], help="MODEL=CLIPS_PER_S per GPU (repeatable)")
    p.add_argument("--data-rate", type=float, default=None, help="data pipeline clips/s per GPU")
    p.add_argument("--gpu", default="NVIDIA A100-SXM4-80GB", help="GPU name (sets the peak)")
    p.add_argument("--peak", type=float, default=None, help="dense bf16 peak TFLOP/s (overrides --gpu)")
    p.add_argument("--efficiency", type=float, default=1.0, help="multi-GPU scaling efficiency (0, 1]")
    p.add_argument("--check", action="store_true", help="exit 1 when a projection exceeds the budget")
    args = p.parse_args(argv)
    rates = _parse_rates(args.step_rate) or {"umt_l16": PAPER_STAGE1_L_CLIPS_PER_S}
    peak = args.peak or device_peak_tflops(args.gpu)
    result = project(rates, args.data_rate, peak_tflops=peak, gpu_name=args.gpu, efficiency=args.efficiency)
    print(format_table(result.rows))
    for n in result.notes:
        print(f"- {n}")
    if args.check:
        fails = check_failures(result)
        print("budget: " + ("FAIL: " + "; ".join(fails) if fails else "holds"))
        return 1 if fails else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
