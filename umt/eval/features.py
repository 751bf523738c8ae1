"""``python -m umt.eval features``: pooled features of a frozen backbone, once, to a file for the probes
(docs/evaluation.md).

Pooling: the mean over all tokens of the last block's output **after the final LayerNorm** (``norm``), as
:meth:`~umt.model.student.UMTStudent.forward_features` returns them. Why this and not the fine-tuning head's input:
the official fine-tuning model (``modeling_finetune.py``, ``use_mean_pooling``) makes ``norm`` an identity and
feeds ``fc_norm(mean(tokens))`` to the head, but ``fc_norm`` is created at fine-tuning and trained with the head;
a pre-trained backbone has no trained ``fc_norm``. The final ``norm``, in contrast, is trained in stage 1 (the UMA
heads read the student's outputs through it), so ``mean(norm(tokens))`` is the pre-trained representation. The
official code has no probe; the linear probe standardises these features (the role of MAE's ``BatchNorm1d`` without
affine before its linear-probe head), and the k-NN probe L2-normalises them (cosine similarity).

One view per sample (the segment centres, centre crop: ``DataConfig(train=False)``), every sample exactly once, in
index (manifest) order, gathered on every rank.

Usage::

    python -m umt.eval features --checkpoint run/checkpoints/step_00001000.pt --shards shards/k400_train \\
        --out feats/train.safetensors
    python -m umt.eval features --random umt_vit_base_patch16_224 --shards ... --out feats/random_train.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from umt.eval.common import (CountError, DistContext, IndexAccumulator, autocast,
                             close_distributed, dist_info, eval_data_config, init_distributed, model_inputs)
from umt.fileio import atomic_write

__all__ = ["extract_features", "FeatureSet", "save_features", "load_features", "build_backbone", "features_for",
           "main"]

log = logging.getLogger(__name__)


def extract_features(backbone: nn.Module, loader: Any, *, device: torch.device | str,
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features of every sample of ``loader``'s data set (see the module docstring for the pooling).

    Call on every rank of the default process group (or in one process); each rank embeds its share, the rows are
    summed into an ``[N, C]`` table by sample index and all-reduced once (ranks may run different numbers of
    batches). ``backbone`` is in eval mode for the pass and given back in its previous mode.

    Args:
        backbone: a :class:`~umt.model.student.UMTStudent` (``forward_features: [R, 3, T, H, W] → [R, K, C]``,
            ``num_features`` = C).
        loader: one view per sample; batches with ``video``, ``label``, ``index`` (-1: padding row), and
            ``num_samples`` (N).
        amp_dtype: autocast dtype or None (fp32); the pooled mean is taken in fp32.

    Returns:
        ``(feats float32 [N, C], labels int64 [N], index int64 [N] = 0..N-1)`` on the CPU, in index order, the same
        on every rank.

    Raises:
        umt.eval.common.CountError: a sample missing or seen twice (a loader dropping the remainder, or several
            views per sample).
    """
    device = torch.device(device)
    n = int(loader.num_samples)
    acc = IndexAccumulator(n, int(backbone.num_features), 1, device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for video, batch in model_inputs(loader, device, amp_dtype):
                with autocast(device, amp_dtype):
                    tokens = backbone.forward_features(video)  # [R, K, C]
                # views are not averaged here: a second row of a sample (any view) is a count error
                acc.add(tokens.float().mean(1), batch["index"], batch["label"])  # [R, C] pooled
    finally:
        backbone.train(was_training)
    acc.reduce()
    acc.check()
    feats, labels = acc.totals()
    return feats.cpu(), labels.cpu(), torch.arange(n, dtype=torch.int64)


@dataclass
class FeatureSet:
    """Features read from a file (:func:`load_features`)."""

    feats: np.ndarray
    """float32 ``[N, C]``."""
    labels: np.ndarray
    """int64 ``[N]`` (-1: unlabelled)."""
    index: np.ndarray
    """int64 ``[N]``, the samples' manifest indices."""
    metadata: dict[str, str] = field(default_factory=dict)
    """checkpoint, sha256, arch, num_frames, input_size, shards, classes (JSON), ..."""
    path: str = ""


def save_features(path: str | Path, feats: Any, labels: Any, index: Any, metadata: dict[str, Any],
                  overwrite: bool = False) -> Path:
    """Write a feature file, atomically: ``.safetensors`` (metadata in its header) or ``.npz`` (metadata as a JSON
    string array ``metadata``). Arrays ``feats`` float32 [N, C], ``labels`` int64 [N], ``index`` int64 [N].

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: another suffix, or arrays of inconsistent lengths.
    """
    import io

    path = Path(path)
    if path.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"{path}: feature files end in .safetensors or .npz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another --out or pass --overwrite")
    f = np.ascontiguousarray(np.asarray(feats, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    i = np.ascontiguousarray(np.asarray(index, dtype=np.int64))
    if f.ndim != 2 or y.shape != (f.shape[0],) or i.shape != (f.shape[0],):
        raise ValueError(f"feats [N, C], labels [N], index [N] expected; got {f.shape}, {y.shape}, {i.shape}")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save

        data = save({"feats": f, "labels": y, "index": i}, metadata=meta)
    else:
        buf = io.BytesIO()
        np.savez(buf, feats=f, labels=y, index=i, metadata=np.array(json.dumps(meta)))
        data = buf.getvalue()
    return atomic_write(path, data)


def load_features(path: str | Path) -> FeatureSet:
    """Read a file written by :func:`save_features`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a feature file (missing arrays, another suffix).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such feature file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                arrays = {k: f.get_tensor(k) for k in f.keys()}
                meta = dict(f.metadata() or {})
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("metadata"))) if "metadata" in arrays else {}
        else:
            raise ValueError(f"{path}: feature files end in .safetensors or .npz")
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: not a feature file ({e})") from e
    missing = {"feats", "labels", "index"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: not a feature file (no {', '.join(sorted(missing))})")
    return FeatureSet(arrays["feats"].astype(np.float32), arrays["labels"].astype(np.int64),
                      arrays["index"].astype(np.int64), meta, str(path))


def build_backbone(checkpoint: str | Path | None, *, arch: str | None = None, num_frames: int | None = None,
                   input_size: int | None = None, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen backbone to embed with: the student of ``checkpoint`` (any file :func:`umt.model.load.read_backbone`
    reads; a classifier head is dropped), or with ``checkpoint=None`` a randomly initialised ``arch`` (seeded).

    Returns:
        ``(UMTStudent without head, record)``; ``record`` has checkpoint, sha256, arch, num_frames, input_size and
        the checkpoint's data normalisation (``mean``/``std``, when recorded).

    Raises:
        umt.model.load.BackboneLoadError: unreadable checkpoint, weights that do not fit, or sizes the file does
            not record and the caller did not give.
        ValueError: ``checkpoint=None`` without ``arch``, or an unknown ``arch``.
    """
    import timm

    import umt.model  # noqa: F401 - registers umt_vit_* in timm
    from umt.model import STUDENT_ARCHS
    from umt.model.load import BackboneLoadError, load_backbone, read_backbone

    record: dict[str, Any] = {}
    if checkpoint is None:
        if not arch:
            raise ValueError("a random backbone needs its architecture (--random ARCH)")
        if arch not in STUDENT_ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; known: {sorted(STUDENT_ARCHS)}")
        frames, size = num_frames or 8, input_size or 224
        torch.manual_seed(seed)
        model = timm.create_model(arch, num_frames=frames, img_size=size)
        record.update(checkpoint="random", sha256="", seed=seed)
    else:
        from umt.fileio import sha256_file

        st = read_backbone(checkpoint)
        arch = arch or st.arch
        frames, size = num_frames or st.num_frames, input_size or st.img_size
        if not arch or not frames or not size:
            raise BackboneLoadError(f"{checkpoint} does not record its architecture/frames/size (arch {st.arch}, "
                                    f"frames {st.num_frames}, size {st.img_size}): pass them")
        model = timm.create_model(arch, num_frames=frames, img_size=size)
        load_backbone(model, st, head=False)
        data = st.config.get("data") or {}
        record.update(checkpoint=str(checkpoint), sha256=sha256_file(checkpoint),
                      **{k: list(data[k]) for k in ("mean", "std") if k in data})
    record.update(arch=arch, num_frames=frames, input_size=size)
    return model, record


def features_for(backbone: nn.Module, shards: str | Path, *, batch_size: int, device: torch.device | str,
                 amp_dtype: torch.dtype | None = None, base: Any = None,
                 **data_overrides: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_features` of ``backbone`` over the evaluation loader of ``shards`` (1 view, every sample),
    split over the ranks of the default process group. Frames and input size are the backbone's; normalisation,
    backend and workers from ``base`` (a DataConfig) or ``data_overrides``."""
    from umt.data import build_loader

    rank, world = dist_info()
    size = backbone.grid[1] * backbone.patch_size
    cfg = eval_data_config(shards, batch_size=batch_size, num_frames=backbone.num_frames, input_size=size,
                           base=base, **data_overrides)
    loader = build_loader(cfg, rank=rank, world_size=world, device=device)
    try:
        return extract_features(backbone, loader, device=device, amp_dtype=amp_dtype)
    finally:
        loader.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m umt.eval features", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="any trainer checkpoint, best.pt or safetensors export")
    src.add_argument("--random", metavar="ARCH", help="a randomly initialised backbone (baseline), e.g. "
                                                      "umt_vit_base_patch16_224")
    p.add_argument("--shards", required=True, help="labelled shard directory (manifest.json)")
    p.add_argument("--out", required=True, help="output file, .safetensors or .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-frames", type=int, default=None, help="default: the checkpoint's (8 for --random)")
    p.add_argument("--input-size", type=int, default=None, help="default: the checkpoint's (224 for --random)")
    p.add_argument("--seed", type=int, default=0, help="init seed of --random")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--backend", default="auto", choices=("auto", "dali", "reference"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0, or 2 on bad input or an existing ``--out``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from umt.data.format import read_manifest
    from umt.model.load import BackboneLoadError

    out = Path(args.out)
    ctx: DistContext | None = None
    try:
        if out.suffix not in (".safetensors", ".npz"):
            raise ValueError(f"--out {out}: use a .safetensors or .npz file")
        if out.exists() and not args.overwrite:  # before any work (every rank sees the same file system)
            raise FileExistsError(f"{out} already exists: choose another --out or pass --overwrite")
        ctx = init_distributed(args.device)
        model, record = build_backbone(args.checkpoint, arch=args.random, num_frames=args.num_frames,
                                       input_size=args.input_size, seed=args.seed)
        model = model.to(ctx.device)
        amp = (torch.bfloat16 if args.precision == "bf16" or (args.precision == "auto" and ctx.device.type == "cuda")
               else None)
        norm = {k: tuple(record[k]) for k in ("mean", "std") if k in record}
        feats, labels, index = features_for(model, args.shards, batch_size=args.batch_size, device=ctx.device,
                                            amp_dtype=amp, num_workers=args.num_workers, backend=args.backend,
                                            **norm)
        if ctx.rank == 0:
            manifest = read_manifest(args.shards)
            meta = {**record, "shards": str(Path(args.shards).resolve()), "num_samples": int(feats.shape[0]),
                    "dim": int(feats.shape[1]), "classes": list(manifest.get("classes") or []),
                    "pooling": "mean of the last block's tokens after the final norm", "precision": str(amp or "fp32")}
            save_features(out, feats.numpy(), labels.numpy(), index.numpy(), meta, overwrite=args.overwrite)
            print(f"wrote {out}: {feats.shape[0]} samples × {feats.shape[1]} features ({record['arch']}, "
                  f"{record['checkpoint']})")
    except (FileExistsError, FileNotFoundError, ValueError, BackboneLoadError, CountError) as e:
        print(f"umt.eval features: error: {e}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            close_distributed(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
