"""Train-step throughput: clips/s, MFU, and peak memory of the stage-1 step (with its time split into data wait,
teacher forward, masking, student forward+backward and optimizer) and of the fine-tuning step.

Builds the run with the trainer's own builders and drives the trainer's own step classes
(:class:`umt.train.distill.step.StageOneStep`, :class:`umt.train.finetune.step.FinetuneStep`): same models, teacher,
masks, loss and optimizer step; the phase split calls the steps' own phase methods. Protocol (:func:`benchmarks.common.measure`): warm-up steps, then timed whole steps with no sync
inside a step (clips/s, MFU); the phase split comes from a second timed loop with a device sync between phases
(so its sum is a little above the whole step).

On a GPU: the paper configs (8 × 224², batch 64, bf16 autocast). On CPU: the real B/L architectures at a reduced
size (2 frames × 112², batch 1, teacher at 112/98 px) so the numbers exist in minutes; MFU is then not defined
(no bf16 peak) and GFLOP/s is reported instead.

Fine-tuning rows (model ``umt_b16_ft``/``umt_l16_ft``, task ``finetune``): the classifier step of
:class:`umt.train.finetune.step.FinetuneStep` built by the task itself (layer-decay groups, mixup/CutMix, soft-target
cross-entropy, every token, no teacher); GPU: 8 × 224², 16 videos × 2 repeated views = 32 clips per step, bf16
autocast; CPU: 2 frames × 112², 1 video × 2 views. FLOPs from :func:`umt.flops.classifier_train_flops_per_clip`.
The phase split of those rows is mixup (``mask_ms``) / forward+backward / optimizer.

Stage-2 rows (model ``umt_b16_vt``/``umt_l16_vt``, task ``video_text``, one per modality): see
:mod:`benchmarks.bench_step_vt`.

Usage: ``python -m benchmarks.bench_step [--quick] [--models umt_b16,umt_l16] [--tasks distill,finetune,video_text]
[--batch-size N] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import umt  # noqa: F401 - torchvision shim
from benchmarks.bench_step_vt import bench_stage2
from benchmarks.common import BenchResult, Stats, format_table, measure, write_report
from benchmarks.step_setup import bench_config, cycle, peak_mem_bytes, peak_tflops, sync
from umt.data.synthetic import SyntheticVideoLoader
from umt.flops import classifier_train_flops_per_clip, train_flops_per_clip
from umt.train.distill.step import StageOneStep, build_models, umt_spec
from umt.train.finetune.task import FinetuneTask
from umt.train.runtime import Runtime
from umt.train.step import build_optimizer, build_scheduler

__all__ = ["run", "main"]

_RECIPE = {"umt_b16": "umt_b16_k710", "umt_l16": "umt_l16_k710"}
_FT_RECIPE = {"umt_b16": "umt_b16_k710_ft", "umt_l16": "umt_l16_k710_ft"}


def _bench_one(model: str, device: torch.device, *, quick: bool, batch_size: int | None, kernels: str,
               compile: bool) -> dict[str, Any]:
    cfg = bench_config(_RECIPE[model], model, device, batch_size, kernels=kernels, compile=compile)
    torch.manual_seed(0)
    net, teacher = build_models(cfg, device)
    if compile:
        net = torch.compile(net)
    opt = build_optimizer(net, cfg.optim, 1e-4, device)
    sched = build_scheduler(opt, cfg, 100, 1e-4, 1e-5)
    amp = torch.bfloat16 if device.type == "cuda" else None
    step = StageOneStep(net, teacher, opt, sched, cfg, device, amp)
    loader = SyntheticVideoLoader(cfg.data, device=device, num_samples=cfg.synthetic_samples)
    state = {"seed": 0}
    next_batch = cycle(loader)

    def whole() -> None:
        batch = next_batch()
        state["seed"] += 1
        step(batch["video"], state["seed"])  # StageOneStep.__call__: one whole optimizer step

    warmup, repeat = (1, 2) if quick else (3, 10)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = measure(whole, warmup=warmup, repeat=repeat, device=device)

    phases: dict[str, list[float]] = {k: [] for k in ("data", "teacher", "mask", "student_fwd_bwd", "optimizer")}
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        batch = next_batch()
        sync(device)
        t1 = time.perf_counter()
        tout = step.teacher_forward(batch["video"])
        sync(device)
        t2 = time.perf_counter()
        idx = step.make_mask(tout, batch["video"], 12345)
        sync(device)
        t3 = time.perf_counter()
        step.forward_backward(batch["video"], idx, tout)
        sync(device)
        t4 = time.perf_counter()
        step.optimizer_step()
        sync(device)
        t5 = time.perf_counter()
        for k, a, b in zip(phases, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            phases[k].append(b - a)
    med = {k: Stats.of(v).median for k, v in phases.items()}
    clips = loader.batch_size
    cps = clips / total.median
    flops = train_flops_per_clip(umt_spec(cfg, net if not compile else net._orig_mod, teacher))
    peak = peak_tflops(device)
    return {
        "model": model, "device": device.type,
        "frames x px": f"{cfg.data.num_frames}x{cfg.data.input_size}", "batch": clips,
        "step_s": total.median, "step_p10_s": total.p10, "step_p90_s": total.p90,
        "clips_per_s": cps, "gflop_per_clip": flops / 1e9, "achieved_tflops": cps * flops / 1e12,
        "mfu": cps * flops / (peak * 1e12) if peak else None,
        **{f"{k}_ms": v * 1e3 for k, v in med.items()},
        "peak_mem_gib": peak_mem_bytes(device) / 2**30, "kernels": kernels,
    }


def _bench_ft(model: str, device: torch.device, *, quick: bool, batch_size: int | None, kernels: str,
              compile: bool) -> dict[str, Any]:
    """The fine-tuning step of ``model`` (the task's own model, groups, step), timed as :func:`_bench_one`: whole
    steps (:meth:`umt.train.step.TrainStep.run_step`), then the step's own phases (:meth:`FinetuneStep.mix`,
    :meth:`FinetuneStep.forward_backward`, the optimizer step) with a sync between them."""
    cfg = bench_config(_FT_RECIPE[model], model, device, batch_size, kernels=kernels, compile=compile)
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    task = FinetuneTask(cfg, Runtime(0, 1, 0, device, amp))
    net = torch.compile(task.model) if compile else task.model
    opt = build_optimizer(task.model, cfg.optim, 1e-4, device, groups=task.param_groups(cfg.optim.weight_decay))
    sched = build_scheduler(opt, cfg, 100, 1e-4, 1e-6)
    step = task.make_step(net, opt, sched)
    loader = task.build_loader()
    state = {"seed": 0}
    next_batch = cycle(loader)

    def whole() -> None:
        state["seed"] += 1
        step.run_step([next_batch()], [state["seed"]])

    warmup, repeat = (1, 2) if quick else (3, 10)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = measure(whole, warmup=warmup, repeat=repeat, device=device)
    phases: dict[str, list[float]] = {k: [] for k in ("data", "mask", "student_fwd_bwd", "optimizer")}
    for i in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        batch = next_batch()
        sync(device)
        t1 = time.perf_counter()
        video, target = step.mix(batch["video"], batch["label"], 1000 + i)
        sync(device)
        t2 = time.perf_counter()
        step.forward_backward(video, target)
        sync(device)
        t3 = time.perf_counter()
        step.optimizer_step()
        sync(device)
        t4 = time.perf_counter()
        for k, a, b in zip(phases, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            phases[k].append(b - a)
    med = {k: Stats.of(v).median for k, v in phases.items()}
    clips = loader.batch_size
    cps = clips / total.median
    flops = classifier_train_flops_per_clip(task.spec)
    peak = peak_tflops(device)
    return {
        "model": f"{model}_ft", "task": "finetune", "device": device.type,
        "frames x px": f"{cfg.data.num_frames}x{cfg.data.input_size}", "batch": clips,
        "step_s": total.median, "step_p10_s": total.p10, "step_p90_s": total.p90,
        "clips_per_s": cps, "gflop_per_clip": flops / 1e9, "achieved_tflops": cps * flops / 1e12,
        "mfu": cps * flops / (peak * 1e12) if peak else None,
        **{f"{k}_ms": v * 1e3 for k, v in med.items()},
        "peak_mem_gib": peak_mem_bytes(device) / 2**30, "kernels": kernels,
    }


def run(*, quick: bool = False, models: tuple[str, ...] | list[str] = ("umt_b16", "umt_l16"),
        device: str | None = None, batch_size: int | None = None, kernels: str = "torch", compile: bool = False,
        tasks: tuple[str, ...] | list[str] = ("distill", "finetune", "video_text"), **_ignored: Any) -> BenchResult:
    """Benchmark the train steps of ``tasks`` for each of ``models`` (keys of :data:`umt.flops.UMT_SPECS`): stage 1
    (``distill``), fine-tuning (``finetune``, rows ``<model>_ft``) and stage 2 (``video_text``, rows ``<model>_vt``
    per modality, :mod:`benchmarks.bench_step_vt`).

    Args:
        quick: 1 warm-up + 2 timed steps instead of 3 + 10.
        device: ``"cuda"``/``"cpu"``; None → CUDA when available.
        batch_size: clips per step (default 64 on GPU as the recipe, 1 on CPU).
        kernels: ``umt.ops`` backend.
        compile: ``torch.compile`` the student.

    Returns:
        :class:`BenchResult` with one row per model (times in seconds/milliseconds, memory in GiB).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unknown = sorted(set(tasks) - {"distill", "finetune", "video_text"})
    if unknown:
        raise ValueError(f"unknown tasks {unknown}: bench_step measures distill, finetune and video_text")
    rows = []
    if "distill" in tasks:
        rows += [{**_bench_one(m, dev, quick=quick, batch_size=batch_size, kernels=kernels, compile=compile),
                  "task": "distill"} for m in models]
    if "finetune" in tasks:
        # --batch-size is the stage-1 batch; the fine-tuning rows keep their recipe's 16 videos × 2 views on a GPU
        rows += [_bench_ft(m, dev, quick=quick, batch_size=None, kernels=kernels, compile=compile) for m in models]
    if "video_text" in tasks:
        # stage 2 keeps its recipe's 128 per modality on a GPU; rows <model>_vt, one per modality
        rows += [{**r, "model": f"{m}_vt", "task": "video_text"} for m in models
                 for r in bench_stage2(m, dev, quick=quick)]
    notes = [
        "clips/s and MFU from whole steps without syncs inside; the phase split (ms) from separate steps with a "
        "device sync between phases.",
        "FLOPs per clip from umt.flops at the sizes actually run.",
        "data_ms is the synthetic loader (random videos generated on the host), not the shard decoder.",
        "finetune rows (umt_*_ft): the classifier over all tokens, 16 videos × 2 repeated views per step on a GPU; "
        "FLOPs 3 × forward (umt.flops.classifier_train_flops_per_clip); mask_ms is mixup/CutMix there.",
        "video_text rows (umt_*_vt): the stage-2 step (teacher, mask, VTC + VTM + MLM + UTA, AdamW) on video-text and "
        "image-text batches separately, samples/s; FLOPs per sample from umt.flops.stage2_flops_per_sample.",
    ]
    if dev.type == "cpu":
        notes.append("CPU: real B/L architectures at 2 frames × 112² (teacher 112 px for B, 98 px for L), batch 1, "
                     "fp32; MFU undefined without a bf16 peak. Two shared cores: indicative only.")
        notes.append("CPU finetune rows: 2 frames × 112², 1 video × 2 views, fp32: they do not speak to GPU "
                     "figures.")
    return BenchResult(name="bench_step", rows=rows, notes=notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_step", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="umt_b16,umt_l16")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--kernels", default="torch", choices=["torch", "triton"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tasks", default="distill,finetune,video_text",
                   help="distill (stage 1), finetune and/or video_text (stage 2)")
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)
    res = run(quick=a.quick, models=tuple(a.models.split(",")), device=a.device, batch_size=a.batch_size,
              kernels=a.kernels, compile=a.compile, tasks=tuple(a.tasks.split(",")))
    print(format_table(res.rows))
    if not a.no_write:
        for path in write_report(res):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
