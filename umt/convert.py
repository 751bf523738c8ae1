"""``python -m umt.convert SRC DST [--to ours|official] [--overwrite]``: official UMT checkpoints ⇄ ours.

``--to ours`` (default): SRC is an official ``.pth`` of any released kind (:mod:`umt.model.official`: stage-1
pre-training, fine-tuned classifier, stage 2). DST ending in ``.safetensors`` gets the backbone (a classifier's with
``fc_norm``/``head``) with the metadata :mod:`umt.train.export` writes, loadable by
``timm.create_model("umt_vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": DST}, ...)``; the UMA
heads of a pre-training file are left out (say ``.pt`` to keep them) and a stage-2 file is refused (it needs the text
side). Any other DST gets our checkpoint layout (``model``, ``task``, ``config``, ``student``; what
:func:`umt.model.load.read_backbone`, ``umt.eval`` and ``model.init_from`` read), with the official tensors that have
no place in our model (the stage-2 ``clip_teacher.*``, BERT's ``position_ids``, a fine-tuned ``pos_embed``) under
``official.extra``, so the way back is exact.

``--to official``: SRC is ours (a trainer checkpoint or ``best.pt`` of task ``distill``, ``finetune`` or
``video_text``, or a classifier export); DST is ``{"model": state_dict}`` in the official layout, as the official
``save_model`` writes it, loadable with ``strict=True`` by ``PretrainVisionTransformer``
(``single_modality/models/modeling_pretrain_umt.py``), ``VisionTransformer`` (``modeling_finetune.py``) or ``UMT``
(``multi_modality/models/umt.py``; its ``clip_teacher.*`` come back only from a file first converted from the official
one, our trainer does not store the teacher).

Tensors are renamed, never cast or copied: official → ours → official is bit-exact. DST is written atomically and an
existing DST is refused (exit status 2) unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from umt.fileio import atomic_path
from umt.model import official

__all__ = ["ConvertError", "to_ours", "to_official", "main"]


class ConvertError(ValueError):
    """A source that cannot be converted the way asked (one-line message)."""


def _config(off: official.OfficialState) -> dict[str, Any]:
    """Our run configuration (:func:`umt.config.config_to_dict`) of the sizes an official file implies."""
    from umt.config import config_from_dict, config_to_dict

    return config_to_dict(config_from_dict(official.config_overrides(off)))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return {"safetensors": load_file(str(path)), "metadata": meta}
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds alike
        raise ConvertError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def _refuse_existing(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; choose another output path or pass --overwrite")


def to_ours(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> official.OfficialState:
    """Convert an official checkpoint to ours (see the module docstring for the two DST layouts).

    Returns:
        the mapped :class:`~umt.model.official.OfficialState`.

    Raises:
        FileExistsError: DST exists and ``overwrite`` is False.
        ConvertError: SRC unreadable or not official; a stage-2 file asked for as safetensors.
        umt.model.official.OfficialFormatError: keys no rule maps (named).
    """
    src, dst = Path(src), Path(dst)
    _refuse_existing(dst, overwrite)
    state = _load(src)
    if not official.is_official(state):
        raise ConvertError(f"{src}: not an official UMT checkpoint (already ours? use --to official for the other "
                           "way)")
    off = official.from_official(state, str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        if off.kind == "stage2":
            raise ConvertError(f"{src}: a stage-2 model (text side, projections) does not fit a backbone "
                               "safetensors file; give DST a .pt name for our checkpoint layout")
        from safetensors.torch import save_file

        sd = {k[len("student."):] if k.startswith("student.") else k: v.contiguous()
              for k, v in off.model.items() if not k.startswith("heads.")}
        meta = {"format": "pt", "official_kind": off.kind, "source": src.name}
        for k in ("arch", "num_frames", "img_size", "pretrain_num_frames", "pretrain_img_size"):
            if off.meta.get(k) is not None:
                meta[k] = str(off.meta[k])
        with atomic_path(dst) as tmp:
            save_file(sd, str(tmp), metadata=meta)
        return off
    if off.meta["arch"] is None:
        raise ConvertError(f"{src}: width {off.meta['width']}, depth {off.meta['depth']} is no registered umt_vit_* "
                           "student; our checkpoint layout names one (a .safetensors DST does not)")
    payload = {"model": off.model, "task": official.TASK_OF_KIND[off.kind], "student": off.meta["arch"], "step": 0,
               "config": _config(off), "official": {"kind": off.kind, "source": str(src), "extra": off.extra}}
    with atomic_path(dst) as tmp:
        torch.save(payload, tmp)
    return off


def to_official(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> str:
    """Convert one of our files to the official layout, saved as ``{"model": state_dict}``.

    Returns:
        the official kind written (``pretrain``, ``finetune`` or ``stage2``).

    Raises:
        FileExistsError: DST exists and ``overwrite`` is False.
        ConvertError: SRC is not ours, or has no official counterpart (a backbone export without a head).
        umt.model.official.OfficialFormatError: keys no rule maps (named).
    """
    src, dst = Path(src), Path(dst)
    _refuse_existing(dst, overwrite)
    state = _load(src)
    extra: dict[str, torch.Tensor] = {}
    if "safetensors" in state:
        model, meta = state["safetensors"], state["metadata"]
        if "head.weight" not in model:
            raise ConvertError(f"{src}: a backbone export without its UMA heads or a classifier head has no official "
                               "layout; convert the stage-1 trainer checkpoint (heads included) instead")
        kind, frames, size = "finetune", int(meta.get("num_frames", 8)), int(meta.get("img_size", 224))
    else:
        if official.is_official(state) or not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ConvertError(f"{src}: not a checkpoint of ours (already official? use --to ours for the other way)")
        task = str(state.get("task") or "distill")
        kinds = {v: k for k, v in official.TASK_OF_KIND.items()}
        if task not in kinds:
            raise ConvertError(f"{src}: task {task!r} has no official layout")
        kind, model = kinds[task], state["model"]
        data = (state.get("config") or {}).get("data") or {}
        frames, size = int(data.get("num_frames", 8)), int(data.get("input_size", 224))
        extra = dict((state.get("official") or {}).get("extra") or {})
    sd = official.to_official(kind, model, extra, num_frames=frames, img_size=size)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        torch.save({"model": sd}, tmp)
    return kind


def main(argv: list[str] | None = None) -> int:
    """CLI; returns 0, 1 when SRC cannot be converted, 2 when DST exists (without ``--overwrite``)."""
    p = argparse.ArgumentParser(prog="python -m umt.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="official .pth (--to ours) or our checkpoint / classifier export (--to official)")
    p.add_argument("dst", help="output: .safetensors (backbone/classifier) or .pt (our checkpoint layout); with "
                               "--to official a .pth")
    p.add_argument("--to", choices=("ours", "official"), default="ours", help="direction (default: ours)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    a = p.parse_args(argv)
    try:
        if a.to == "ours":
            off = to_ours(a.src, a.dst, overwrite=a.overwrite)
            m = off.meta
            note = " (UMA heads left out: use a .pt DST to keep them)" if (
                off.kind == "pretrain" and str(a.dst).endswith(".safetensors")) else ""
            print(f"official {off.kind} checkpoint ({m['arch']}, {m['num_frames']} frames × {m['img_size']} px, "
                  f"{len(off.model)} tensors, {len(off.extra)} kept aside) → {a.dst}{note}")
        else:
            kind = to_official(a.src, a.dst, overwrite=a.overwrite)
            print(f"{a.src} → official {kind} layout {a.dst}")
    except FileExistsError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    except (ConvertError, official.OfficialFormatError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
