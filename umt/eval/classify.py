"""``python -m umt.eval classify``: multi-view action classification of a fine-tuned checkpoint (docs/evaluation.md).

Protocol (official ``engines/engine_for_finetuning.py``, ``final_test`` + ``merge``): every view of a video (T
temporal clips at segment offsets ``(clip_idx + 1)/(T + 1)`` × S spatial crops after resizing the short side to the
input size; 4×3 on Kinetics, 2×3 on SSv2) goes through the classifier; each view's logits become a softmax; the
softmax scores of a video's views are averaged; top-1/top-5 and the mean per-class accuracy are taken over the
videos. Distributed: each rank scores its share; per-sample sums and per-(sample, view) counts are all-reduced once
at the end, and every sample must be counted exactly once per view (padding rows ``index = -1`` never count; the
official merge dropped duplicated views by their (chunk, split) id instead).

Usage::

    python -m umt.eval classify --checkpoint run/best.pt --shards shards/k400_val --views 4x3 --out eval/k400
    torchrun --nproc-per-node 8 -m umt.eval classify --checkpoint ... --shards ... --out ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from umt.eval.common import (DistContext, IndexAccumulator, autocast, broadcast_flag, close_distributed,
                             dist_info, eval_data_config, init_distributed, loader_num_views, model_inputs,
                             parse_views)
from umt.eval.metrics import check_labels, classification_summary

__all__ = ["evaluate_classification", "build_classifier", "main"]

log = logging.getLogger(__name__)


def evaluate_classification(model: nn.Module, loader: Any, *, num_classes: int, device: torch.device | str,
                            amp_dtype: torch.dtype | None = None, class_names: list[str] | None = None,
                            out_dir: str | Path | None = None, num_views: int | None = None,
                            name: str = "classify", meta: dict[str, Any] | None = None,
                            overwrite: bool | None = None) -> dict[str, float]:
    """Multi-view classification of every sample of ``loader``'s data set (see the module docstring).

    Call on every rank of the default process group (or in a single process); ranks may deliver different numbers
    of batches. ``model`` is put in eval mode for the pass and given back in its previous mode.

    Args:
        model: ``video [R, 3, T, H, W] → logits [R, num_classes]``.
        loader: evaluation batches (``video``, ``label``, ``index`` with -1 on padding rows, optional ``view``),
            with ``num_samples`` (N, the whole data set) and ``epoch_iter(0)`` or ``__iter__``.
        num_classes: C.
        amp_dtype: autocast dtype (bf16 on GPU) or None for fp32; softmax is taken in fp32 either way.
        class_names: C names for the report (e.g. the manifest's ``classes``).
        out_dir: rank 0 writes ``NAME.json``, ``NAME.md``, ``NAME_confusion.png`` there
            (:func:`umt.eval.report.write_classification_report`).
        num_views: V, views per sample; default :func:`umt.eval.common.loader_num_views`.
        meta: recorded in the report (checkpoint, shards, ...).
        overwrite: ``None`` (default, for the trainer's ``Task.evaluate``): replace an earlier report of
            :mod:`umt.eval` in ``out_dir`` (a run's periodic and final evaluations, also after a resume), refuse
            anyone else's files; ``False``: refuse any existing report (the CLI without ``--overwrite``); ``True``:
            replace. A refusal comes before any work, on every rank.

    Returns:
        ``{"top1", "top5", "mean_class_acc"}`` in percent and ``num_samples`` (N), ``num_views`` (V): the same on
        every rank.

    Raises:
        umt.eval.common.CountError: a sample not counted exactly once per view (a loader dropping or repeating
            samples), or rows of one sample with different labels.
        ValueError: logits of another width than ``num_classes``, or unlabelled samples (label -1).
        FileExistsError: ``out_dir`` holds report files that ``overwrite`` does not allow to replace.
    """
    device = torch.device(device)
    rank, _ = dist_info()
    v = int(num_views or loader_num_views(loader))
    n = int(loader.num_samples)
    if out_dir is not None:
        from umt.eval.report import report_paths

        _refuse_existing(out_dir, name, overwrite, device)
    acc = IndexAccumulator(n, num_classes, v, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for video, batch in model_inputs(loader, device, amp_dtype):
                with autocast(device, amp_dtype):
                    logits = model(video)  # [R, C]
                if logits.ndim != 2 or logits.shape[1] != num_classes:
                    raise ValueError(f"the model gives logits {tuple(logits.shape)}, expected [R, {num_classes}]")
                acc.add(logits.float().softmax(-1), batch["index"], batch["label"], batch.get("view"))
    finally:
        model.train(was_training)
    acc.reduce()
    acc.check()
    sums, labels = acc.totals()
    scores = (sums / v).cpu().numpy()  # [N, C] mean softmax over the views
    labels_np = check_labels(labels.cpu().numpy(), num_classes)
    summary = classification_summary(scores, labels_np, ks=(1, 5))
    summary["num_views"] = v
    if out_dir is not None and rank == 0:
        from umt.eval.report import write_classification_report

        paths = write_classification_report(out_dir, summary, class_names=class_names,
                                            meta={**(meta or {}), "num_views": v}, name=name, overwrite=overwrite)
        log.info("classification report: %s", ", ".join(str(p) for p in paths.values()))
    return {"top1": summary["top1"], "top5": summary["top5"], "mean_class_acc": summary["mean_class_acc"],
            "num_samples": n, "num_views": v}


def _refuse_existing(out_dir: str | Path, name: str, overwrite: bool | None, device: torch.device) -> None:
    """Raise FileExistsError on every rank when rank 0 finds files the report may not replace
    (:func:`umt.eval.report.report_conflicts`)."""
    from umt.eval.report import report_conflicts

    rank, _ = dist_info()
    conflicts = report_conflicts(out_dir, name, overwrite) if rank == 0 else []
    if broadcast_flag(bool(conflicts), device):  # every rank refuses, before any collective of the pass
        what = conflicts[0].name if conflicts else f"{name}.json"
        raise FileExistsError(f"{out_dir} already holds a {name} report ({what}, ...): choose another --out or "
                              "pass --overwrite")


def build_classifier(checkpoint: str | Path, *, num_frames: int | None = None,
                     input_size: int | None = None) -> tuple[nn.Module, Any]:
    """A :class:`~umt.model.student.UMTStudent` classifier with the fine-tuned weights of ``checkpoint`` (a
    fine-tuning trainer checkpoint, ``best.pt`` or an export that holds ``head.*``): architecture, number of classes
    (``head.weight``'s rows), frames and input size from the file unless given.

    Returns:
        ``(model, BackboneState)`` (the state has the file's config, e.g. its normalisation).

    Raises:
        umt.model.load.BackboneLoadError: no such file, no classifier head in it, an architecture or size the file
            does not record, or weights that do not fit.
    """
    import timm

    import umt.model  # noqa: F401 - registers umt_vit_* in timm
    from umt.model.load import BackboneLoadError, load_backbone, read_backbone

    st = read_backbone(checkpoint)
    head = st.state_dict.get("head.weight")
    if head is None:
        raise BackboneLoadError(f"{checkpoint}: no classification head (head.weight): not a fine-tuned checkpoint; "
                                "for a pre-trained backbone use the probes (python -m umt.eval features/knn/linear)")
    frames, size = num_frames or st.num_frames, input_size or st.img_size
    if not st.arch or not frames or not size:
        raise BackboneLoadError(f"{checkpoint} does not record its architecture/frames/size "
                                f"(arch {st.arch}, frames {st.num_frames}, size {st.img_size}): pass --num-frames "
                                "and --input-size, or use a trainer checkpoint")
    if (st.num_frames and frames != st.num_frames) or (st.img_size and size != st.img_size):
        log.warning("evaluating at %d frames × %d px; %s was trained at %s × %s", frames, size, checkpoint,
                    st.num_frames, st.img_size)
    # the position table exactly as in fine-tuning: built at the pre-training size the file records, interpolated
    model = timm.create_model(st.arch, num_classes=int(head.shape[0]), num_frames=frames, img_size=size,
                              pretrain_num_frames=st.pretrain_num_frames or st.num_frames,
                              pretrain_img_size=st.pretrain_img_size or st.img_size)
    load_backbone(model, st, head=True)
    return model, st


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m umt.eval classify", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint (step_*.pt, best.pt or an export)")
    p.add_argument("--shards", required=True, help="labelled evaluation shard directory (manifest.json)")
    p.add_argument("--views", default="4x3", help="TEMPORALxSPATIAL views (official: 4x3 Kinetics, 2x3 SSv2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per rank per batch")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the checkpoint's)")
    p.add_argument("--num-workers", type=int, default=4, help="loader threads/workers")
    p.add_argument("--backend", default="auto", choices=("auto", "dali", "reference"), help="loader backend")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--out", default=None, help="report directory (classify.json/.md, classify_confusion.png)")
    p.add_argument("--name", default="classify", help="report file stem")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0, or 2 on a bad argument, an unusable checkpoint or an existing report."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from umt.data import build_loader
    from umt.data.format import read_manifest
    from umt.model.load import BackboneLoadError

    ctx: DistContext | None = None
    try:
        views = parse_views(args.views)
        ctx = init_distributed(args.device)
        if args.out:
            _refuse_existing(args.out, args.name, args.overwrite, ctx.device)
        model, st = build_classifier(args.checkpoint, num_frames=args.num_frames, input_size=args.input_size)
        data = st.config.get("data") or {}
        extra = {k: tuple(data[k]) for k in ("mean", "std") if k in data}
        cfg = eval_data_config(args.shards, batch_size=args.batch_size, num_frames=model.num_frames,
                               input_size=model.grid[1] * model.patch_size, views=views,
                               num_workers=args.num_workers, backend=args.backend, **extra)
        classes = list(read_manifest(args.shards).get("classes") or [])
        num_classes = int(model.num_classes)
        if classes and len(classes) != num_classes:
            log.warning("the shards name %d classes, the checkpoint's head has %d", len(classes), num_classes)
        loader = build_loader(cfg, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
        amp = (torch.bfloat16 if args.precision == "bf16" or (args.precision == "auto" and ctx.device.type == "cuda")
               else None)
        from umt.fileio import sha256_file

        meta = {"checkpoint": str(args.checkpoint), "sha256": sha256_file(args.checkpoint), "arch": st.arch,
                "num_frames": model.num_frames, "input_size": cfg.input_size, "shards": str(args.shards),
                "views": f"{views[0]}x{views[1]}", "world_size": ctx.world_size, "precision": str(amp or "fp32")}
        try:
            res = evaluate_classification(model.to(ctx.device), loader, num_classes=num_classes, device=ctx.device,
                                          amp_dtype=amp, class_names=classes if len(classes) == num_classes
                                          else None, out_dir=args.out, num_views=views[0] * views[1],
                                          name=args.name, meta=meta, overwrite=args.overwrite)
        finally:
            loader.close()
    except (FileExistsError, FileNotFoundError, ValueError, BackboneLoadError) as e:
        print(f"umt.eval classify: error: {e}", file=sys.stderr)
        if ctx is not None and ctx.owns_group and dist_info()[1] > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
        return 2
    if ctx.rank == 0:
        print(f"{args.checkpoint} on {args.shards} ({res['num_samples']} videos × {res['num_views']} views): "
              f"top-1 {res['top1']:.2f} %, top-5 {res['top5']:.2f} %, mean class {res['mean_class_acc']:.2f} %")
        print(json.dumps(res))
    close_distributed(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
