"""Stage-2 train-step throughput: video-text and image-text batches measured separately, in
samples/s, MFU against the stage-2 FLOP model (:func:`umt.flops.stage2_flops_per_sample`) and peak memory.

Builds the step the trainer runs (:class:`umt.train.video_text.step.VideoTextStep` over
:class:`umt.model.vision_text.UMTVisionText`: teacher → semantic mask at the modality's ratio → VTC + VTM + MLM +
UTA → backward → AdamW) with the recipe's sizes (``umt_b16_25m``: ViT-B/16 + CLIP ViT-B/16 + BERT-base fusing from
layer 9; ``umt_l16_25m``: ViT-L/16 + CLIP ViT-L/14 at 196 + BERT-large from 19), the BERT at random init from its
configuration (the step's cost does not depend on the weights; no BERT directory is needed) and captions of the full
32 tokens. Protocol as :mod:`benchmarks.bench_step`: warm-up steps, then timed whole steps without a sync inside a
step.

On a GPU: the recipe's batch (128 per modality), bf16 autocast. On CPU: the real architectures at 2 frames × 112²
(teacher 112/98 px), batch 1, fp32, so the numbers exist in minutes; MFU is then undefined.
"""

from __future__ import annotations

from typing import Any

import torch

import umt  # noqa: F401 - torchvision shim
from benchmarks.common import BenchResult, measure
from benchmarks.step_setup import bench_config, peak_mem_bytes, peak_tflops
from umt.flops import TextSpec, VideoTextSpec, stage2_flops_per_sample
from umt.model.text import BertTextEncoder
from umt.model.vision_text import UMTVisionText
from umt.train.distill.step import build_models, umt_spec
from umt.train.step import build_optimizer, build_scheduler
from umt.train.video_text.step import VideoTextStep

__all__ = ["STAGE2_RECIPE", "bench_stage2", "run"]

#: bench model key → stage-2 recipe
STAGE2_RECIPE = {"umt_b16": "umt_b16_25m", "umt_l16": "umt_l16_25m"}
#: bert-base-uncased's special token ids (the vocabulary every official BERT shares)
_SPECIAL = {"cls": 101, "sep": 102, "pad": 0, "mask": 103}
#: (width, layers, heads, FFN) of BERT-base / BERT-large (Devlin et al. 2019)
_BERT = {"umt_b16": (768, 12, 12, 3072), "umt_l16": (1024, 24, 16, 4096)}


def _config(model: str, device: torch.device, batch_size: int | None) -> Any:
    extra = ["text.vtc_local_grad=false"]
    if device.type == "cpu":
        extra += [f"data.image_batch_size={batch_size or 1}", "text.grad_checkpointing=false"]
    elif batch_size:
        extra.append(f"data.image_batch_size={batch_size}")
    return bench_config(STAGE2_RECIPE[model], model, device, batch_size, *extra)


def _build(cfg: Any, model: str, device: torch.device) -> tuple[Any, Any, VideoTextSpec]:
    from transformers import BertConfig  # optional, heavy: only the stage-2 rows need it

    torch.manual_seed(0)
    pre, teacher = build_models(cfg, device)
    width, layers, heads, ffn = _BERT[model]
    bert = BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                      vocab_size=30522, attn_implementation="sdpa")
    t = cfg.text
    text = BertTextEncoder(bert, t.fusion_layer, pre.student.embed_dim, _SPECIAL, t.grad_checkpointing)
    net = UMTVisionText(pre.student, pre.heads, text, t.embed_dim, t.temp, t.mlm_prob, t.vtm_hard_negatives,
                        t.vtc_local_grad).to(device)
    opt = build_optimizer(net, cfg.optim, cfg.optim.lr, device)
    sched = build_scheduler(opt, cfg, 100, cfg.optim.lr, cfg.optim.min_lr)
    amp = torch.bfloat16 if device.type == "cuda" else None
    step = VideoTextStep(net, teacher, opt, sched, cfg, device, amp)
    spec = VideoTextSpec(umt_spec(cfg, pre, teacher), TextSpec(width, layers, layers - t.fusion_layer, 30522, ffn),
                         t.embed_dim, cfg.mask.image_ratio, t.max_len)
    return step, net, spec


def _batch(cfg: Any, modality: str, device: torch.device, seed: int) -> dict[str, Any]:
    """A full-length (``text.max_len`` tokens) batch of the stage-2 contract."""
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    b = d.batch_size if modality == "video" else (d.image_batch_size or d.batch_size)
    t = d.num_frames if modality == "video" else 1
    L = cfg.text.max_len
    ids = torch.randint(1000, 30522, (b, L), generator=g)
    ids[:, 0], ids[:, -1] = _SPECIAL["cls"], _SPECIAL["sep"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"modality": modality, "video": torch.randn(b, 3, t, d.input_size, d.input_size, generator=g).to(device, dtype),
            "text_ids": ids.to(device), "text_mask": torch.ones_like(ids).to(device),
            "index": torch.arange(b, device=device), "dataset": 0 if modality == "video" else 1}


def bench_stage2(model: str, device: torch.device, *, quick: bool, batch_size: int | None = None) -> list[dict]:
    """One row per modality (video, image) for ``model``."""
    cfg = _config(model, device, batch_size)
    step, net, spec = _build(cfg, model, device)
    peak = peak_tflops(device)
    warmup, repeat = (1, 2) if quick else (3, 10)
    rows = []
    for modality in ("video", "image"):
        batch = _batch(cfg, modality, device, 0)
        state = {"seed": 0}

        def whole() -> None:
            state["seed"] += 1
            step.run_step([batch], [state["seed"]])

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        total = measure(whole, warmup=warmup, repeat=repeat, device=device)
        n = int(batch["index"].shape[0])
        flops = stage2_flops_per_sample(spec, modality, cfg.text.max_len)["total"]
        sps = n / total.median
        rows.append({
            "model": model, "stage": 2, "modality": modality, "device": device.type,
            "frames x px": f"{batch['video'].shape[2]}x{cfg.data.input_size}", "batch": n,
            "text tokens": cfg.text.max_len, "step_s": total.median, "step_p10_s": total.p10,
            "step_p90_s": total.p90, "samples_per_s": sps, "gflop_per_sample": flops / 1e9,
            "achieved_tflops": sps * flops / 1e12, "mfu": sps * flops / (peak * 1e12) if peak else None,
            "peak_mem_gib": peak_mem_bytes(device) / 2**30,
        })
    return rows


def run(*, quick: bool = False, models: tuple[str, ...] | list[str] = ("umt_b16", "umt_l16"),
        device: str | None = None, batch_size: int | None = None, **_ignored: Any) -> BenchResult:
    """The stage-2 step for each of ``models`` (keys of :data:`STAGE2_RECIPE`), video and image batches."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [r for m in models for r in bench_stage2(m, dev, quick=quick, batch_size=batch_size)]
    notes = ["Stage 2 (task video_text): samples/s of whole steps (teacher, mask, VTC + VTM + MLM + UTA, backward, "
             "AdamW) on video-text and image-text batches separately; FLOPs per sample from "
             "umt.flops.stage2_flops_per_sample at the sizes run (captions at the full 32 tokens)."]
    if dev.type == "cpu":
        notes.append("CPU: real B/L architectures (BERT-base/large at random init) at 2 frames × 112², batch 1, fp32; "
                     "MFU undefined. Indicative only.")
    return BenchResult(name="bench_step_vt", rows=rows, notes=notes)
