"""Read a pre-trained backbone from any file this project writes, and load it into a student.

Accepted files (the format is detected from the contents, not the name):

=====================================  =============================================================================
trainer checkpoint, stage 1            ``run/checkpoints/step_*.pt`` of task ``distill``: ``model`` keys ``student.*``
                                       (backbone) and ``heads.*`` (UMA heads)
trainer checkpoint, stage 2            task ``video_text``: ``student.*``, ``heads.*`` and the text side
trainer checkpoint, fine-tuning        task ``finetune``: the classifier's keys, unprefixed (backbone, ``fc_norm``,
                                       ``head``)
``best.pt``                            the trainer's best weights (``model``, ``task``, ``config``), same key layout
safetensors export                     :mod:`umt.train.export`: the student's keys, unprefixed; metadata ``arch``,
                                       ``num_frames``, ``img_size``
official checkpoint (``.pth``)         any released kind of the official code (stage-1 pre-training, fine-tuned
                                       classifier, stage 2), mapped by :mod:`umt.model.official`; ``kind`` is
                                       ``official-pretrain``, ``official-finetune`` or ``official-stage2``
=====================================  =============================================================================

:func:`read_backbone` splits a file into the backbone's state dict (:class:`~umt.model.student.UMTStudent` keys, no
prefix), the rest of its model keys and the sizes it was trained at; :func:`load_backbone` loads the backbone into a
model strictly (every backbone key must exist with the same shape, none may be missing) and reports what it dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from umt.model import official

__all__ = ["BackboneLoadError", "BackboneState", "LoadReport", "read_backbone", "load_backbone", "HEAD_KEYS",
           "FINAL_NORM_KEYS"]

log = logging.getLogger(__name__)

#: keys of the classification head: never part of a pre-trained backbone, dropped unless asked for
HEAD_KEYS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
#: the pre-training student's final LayerNorm over the tokens; the classifier has none (official
#: ``modeling_finetune.py``, ``use_mean_pooling``: ``norm = Identity``), so loading a pre-trained file into a
#: classifier drops these (reported)
FINAL_NORM_KEYS = ("norm.weight", "norm.bias")


class BackboneLoadError(ValueError):
    """A file that holds no backbone, or a backbone that does not fit the model; the one-line message names the file
    and the mismatched keys."""


@dataclass
class BackboneState:
    """A backbone read from a file (:func:`read_backbone`)."""

    path: str
    kind: str
    """``export`` (safetensors) or the trainer task that wrote it (``distill``, ``video_text``, ``finetune``)."""
    state_dict: dict[str, torch.Tensor]
    """The student's keys without prefix (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ...), plus the
    classifier's ``fc_norm.*``/``head.*`` for a fine-tuned file."""
    rest: dict[str, torch.Tensor] = field(default_factory=dict)
    """The file's other model keys, with their prefix (``heads.*`` UMA heads, ``text.*``, ...)."""
    arch: str | None = None
    """timm name of the student it was trained as (``umt_vit_base_patch16_224``), when recorded."""
    num_frames: int | None = None
    """Frames it was trained on (the position table's T), when recorded."""
    img_size: int | None = None
    """Input side it was trained on, when recorded."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's resolved config (trainer files), else empty."""
    pretrain_num_frames: int | None = None
    """A fine-tuned file: the frame count its position table was built at before interpolation (the backbone's
    pre-training size; ``finetune.pretrain_num_frames`` of its config, ``pretrain_num_frames`` of an export's
    metadata), when recorded. Rebuild its classifier with ``UMTStudent(pretrain_num_frames=...)``."""
    pretrain_img_size: int | None = None
    """A fine-tuned file: the input side its position table was built at before interpolation, when recorded."""

    def arch_summary(self) -> str:
        """``width W, depth D, patch P`` read off the tensors (for error messages)."""
        sd = self.state_dict
        w = sd.get("patch_embed.proj.weight")
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        if w is None:
            return f"depth {depth}"
        return f"width {w.shape[0]}, depth {depth}, patch {w.shape[-1]}"


@dataclass
class LoadReport:
    """What :func:`load_backbone` did."""

    loaded: list[str]
    dropped: list[str]
    """Keys of the file not loaded (e.g. a fine-tuned head when ``head=False``)."""
    missing: list[str]
    """Model keys the file did not set (only the classifier's ``fc_norm``/``head``, or the final ``norm`` from a
    fine-tuned classifier file: anything else is an error)."""

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.dropped)} not part of the backbone"
                f"{' (' + ', '.join(self.dropped[:6]) + (', ...' if len(self.dropped) > 6 else '') + ')' if self.dropped else ''}, "
                f"{len(self.missing)} left at init{' (' + ', '.join(self.missing) + ')' if self.missing else ''}")


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def read_backbone(path: str | Path) -> BackboneState:
    """Split ``path`` (a trainer checkpoint, ``best.pt``, a safetensors export or an official checkpoint) into
    backbone and the rest.

    Raises:
        BackboneLoadError: the file is missing, unreadable, holds no student backbone, or is an official checkpoint
            with keys no rule maps (:class:`umt.model.official.OfficialFormatError`, named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneLoadError(f"{path}: no such file (model.init_from / --checkpoint names a checkpoint or export)")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:2] == b"PK" or magic[:1] == b"\x80":  # torch.save zip archive or a legacy pickle
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - torch.load raises many kinds alike
            raise BackboneLoadError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        bare = official.unwrap(state) if isinstance(state, dict) and "task" not in state else None
        if bare is not None and official.detect_kind(bare) is not None and not any(k.startswith("student.")
                                                                                    for k in bare):
            # not written by our trainer (no task, no student.*) and keyed as an official kind
            return _from_official(state, path)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise BackboneLoadError(f"{path}: not a checkpoint of this project (no 'model' state dict)")
        model = state["model"]
        task = str(state.get("task") or "distill")
        cfg = state.get("config") or {}
        if any(k.startswith("student.") for k in model):
            sd = {k[len("student."):]: v for k, v in model.items() if k.startswith("student.")}
            rest = {k: v for k, v in model.items() if not k.startswith("student.")}
        else:
            sd = dict(model)
            rest = {}
        arch = state.get("student") or (cfg.get("model") or {}).get("student")
        data = cfg.get("data") or {}
        ft = cfg.get("finetune") or {}
        out = BackboneState(str(path), task, sd, rest, arch, _int(data.get("num_frames")),
                            _int(data.get("input_size")), cfg,
                            pretrain_num_frames=_int(ft.get("pretrain_num_frames")) or None,
                            pretrain_img_size=_int(ft.get("pretrain_img_size")) or None)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            sd = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise BackboneLoadError(f"{path}: neither a torch checkpoint nor a safetensors file ({e})") from e
        cfg = {}
        if "config" in meta:
            try:
                cfg = json.loads(meta["config"])
            except ValueError:
                cfg = {}
        out = BackboneState(str(path), "export", sd, {}, meta.get("arch"), _int(meta.get("num_frames")),
                            _int(meta.get("img_size")), cfg,
                            pretrain_num_frames=_int(meta.get("pretrain_num_frames")) or None,
                            pretrain_img_size=_int(meta.get("pretrain_img_size")) or None)
    if "patch_embed.proj.weight" not in out.state_dict:
        keys = sorted(out.state_dict)
        raise BackboneLoadError(f"{path}: holds no student backbone (no patch_embed.proj.weight among "
                                f"{len(keys)} keys: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}); "
                                "neither ours nor an official UMT checkpoint")
    return out


def _from_official(state: Any, path: Path) -> BackboneState:
    """An official checkpoint (:mod:`umt.model.official`) as a :class:`BackboneState`: the student's keys unprefixed
    (plus ``fc_norm``/``head`` of a classifier), the rest (``heads.*``, the stage-2 text side, ...) in ``rest``."""
    try:
        off = official.from_official(state, str(path))
    except official.OfficialFormatError as e:
        raise BackboneLoadError(str(e)) from e
    m = off.meta
    if off.kind == "finetune":
        sd, rest = dict(off.model), {}
    else:
        sd = {k[len("student."):]: v for k, v in off.model.items() if k.startswith("student.")}
        rest = {k: v for k, v in off.model.items() if not k.startswith("student.")}
    return BackboneState(str(path), f"official-{off.kind}", sd, rest, m["arch"], m.get("num_frames"),
                         m.get("img_size"), {}, pretrain_num_frames=m.get("pretrain_num_frames"),
                         pretrain_img_size=m.get("pretrain_img_size"))


def load_backbone(model: nn.Module, source: str | Path | BackboneState, *, head: bool = False) -> LoadReport:
    """Load a backbone into ``model`` (a :class:`~umt.model.student.UMTStudent`, with or without a classifier),
    strictly: every backbone key of the file must exist in the model with the same shape and every backbone key of
    the model must be in the file. ``head=True`` also loads ``fc_norm``/``head`` when the file has them (resuming a
    fine-tuned classifier; the shapes must match); otherwise they are dropped and reported, and the model keeps its
    own (fresh) classifier. A pre-trained file's final ``norm`` is dropped (reported) when the model is a classifier
    without one (:data:`FINAL_NORM_KEYS`, as the official fine-tuning loads stage-1 weights). The other way round, a
    fine-tuned classifier file (``fc_norm``/``head``, no final ``norm``) loaded into a pre-training-layout student
    (e.g. to extract features) leaves that ``norm`` at its init (unit weight, zero bias), reported in ``missing``.

    Raises:
        BackboneLoadError: another architecture (the message names the mismatched keys and both sizes) or a file
            without a backbone.
    """
    st = source if isinstance(source, BackboneState) else read_backbone(source)
    own = model.state_dict()
    file_sd = dict(st.state_dict)
    dropped = []
    if not head:
        for k in HEAD_KEYS:
            if k in file_sd:
                dropped.append(k)
                del file_sd[k]
    if "head.weight" in own and not any(k in own for k in FINAL_NORM_KEYS):
        for k in FINAL_NORM_KEYS:
            if k in file_sd:
                dropped.append(k)
                del file_sd[k]
    unexpected = sorted(k for k in file_sd if k not in own)
    shape = sorted(k for k in file_sd if k in own and tuple(file_sd[k].shape) != tuple(own[k].shape))
    missing = sorted(k for k in own if k not in file_sd)
    classifier_file = any(k in st.state_dict for k in HEAD_KEYS)
    may_miss = HEAD_KEYS + (FINAL_NORM_KEYS if classifier_file else ())
    bad_missing = [k for k in missing if k not in may_miss]
    if unexpected or shape or bad_missing:
        w = own.get("patch_embed.proj.weight")
        depth = len({k.split(".")[1] for k in own if k.startswith("blocks.")})
        mine = f"width {w.shape[0]}, depth {depth}, patch {w.shape[-1]}" if w is not None else f"depth {depth}"
        parts = []
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches ({k}: file {tuple(file_sd[k].shape)} vs model "
                         f"{tuple(own[k].shape)}{', ...' if len(shape) > 1 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} keys not in the model ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        if bad_missing:
            parts.append(f"{len(bad_missing)} model keys not in the file ({', '.join(bad_missing[:3])}"
                         f"{', ...' if len(bad_missing) > 3 else ''})")
        raise BackboneLoadError(f"{st.path} is another architecture ({st.arch or 'unnamed'}: {st.arch_summary()}) "
                                f"than the model ({mine}): {'; '.join(parts)}")
    model.load_state_dict(file_sd, strict=False)
    report = LoadReport(sorted(file_sd), dropped + sorted(st.rest), missing)
    log.info("backbone from %s (%s): %s", st.path, st.kind, report.summary())
    return report
