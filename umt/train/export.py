"""Export the pre-trained student backbone to safetensors for downstream fine-tuning.

The file holds the student's state dict (no UMA heads, no teacher; the fixed position table is rebuilt from the size
arguments) and metadata naming the timm architecture and sizes. Load it with (``import umt.model`` first: it
registers the ``umt_vit_*`` names)::

    timm.create_model("umt_vit_base_patch16_224", pretrained=True,
                      pretrained_cfg_overlay={"file": "student.safetensors"}, num_frames=8)

CLI: ``python -m umt.train.export CHECKPOINT OUT.safetensors`` (or ``umt-train ... --export OUT``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from umt.fileio import atomic_path, check_writable

__all__ = ["export_student", "export_checkpoint", "main"]


def export_student(student: torch.nn.Module, out: str | Path, metadata: dict[str, str] | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``student.state_dict()`` (contiguous CPU tensors) to ``out`` atomically.

    Returns:
        ``out`` as a Path.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False (an export never silently replaces a file).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output path or pass overwrite (--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in student.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export the student backbone of a trainer checkpoint (``step_*.pt``, ``best.pt``) or an official UMT checkpoint
    (:mod:`umt.model.official`) to safetensors; a fine-tuned classifier keeps its ``fc_norm``/``head``.

    Raises:
        umt.model.load.BackboneLoadError: no student backbone in the file, or an official file with unmapped keys.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    from umt.model.load import read_backbone

    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output path or pass --overwrite")
    check_writable(Path(out).parent, "output")
    st = read_backbone(checkpoint)
    sd = st.state_dict
    meta = {k: str(v) for k, v in (("arch", st.arch), ("num_frames", st.num_frames), ("img_size", st.img_size),
                                     ("pretrain_num_frames", st.pretrain_num_frames),
                                     ("pretrain_img_size", st.pretrain_img_size)) if v is not None}
    if st.kind.startswith("official-"):
        meta["official_kind"] = st.kind[len("official-"):]
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        meta.update(step=str(state.get("step")), config=json.dumps(state.get("config") or {}))

    class _Holder(torch.nn.Module):
        def state_dict(self, *a, **k):  # type: ignore[override]
            return sd

    return export_student(_Holder(), out, meta, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """``python -m umt.train.export CHECKPOINT OUT [--overwrite]``; returns the exit status (2: OUT exists)."""
    p = argparse.ArgumentParser(prog="python -m umt.train.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="trainer checkpoint (run_dir/checkpoints/step_*.pt) or official UMT .pth")
    p.add_argument("out", help="output .safetensors path (refused when it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    a = p.parse_args(argv)
    from umt.model.load import BackboneLoadError

    try:
        path = export_checkpoint(a.checkpoint, a.out, overwrite=a.overwrite)
    except FileExistsError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    except (BackboneLoadError, OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported student backbone to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
