"""The official Unmasked Teacher checkpoints (github.com/OpenGVLab/unmasked_teacher, ``MODEL_ZOO.md`` of
``single_modality/`` and ``multi_modality/``) in this project's key layout, and back.

Every official file is a ``torch.save`` of a dict holding the model's ``state_dict()`` under ``"model"`` (``utils.py``
``save_model``, ``multi_modality/tasks/pretrain.py``) or ``"module"`` (DeepSpeed), or the bare state dict. Three kinds
are released; the kind is read off the keys (:func:`detect_kind`), never the file name:

===========  ==============================================  ====================================================
kind         official keys (source)                          our keys
===========  ==============================================  ====================================================
``pretrain`` ``encoder.*`` (the student, ``head`` Identity),  ``student.*``; ``heads.proj.j.*`` / ``heads.norm.j.*``
             ``clip_decoder.j.head.*``/``.norm.*``           (UMA head j aligns the j-th of the last 6 blocks, in
             (``single_modality/models/                      block order, as ``return_index`` + ``torch.stack``)
             modeling_pretrain_umt.py``)
``finetune`` ``patch_embed.*``, ``blocks.*``, ``fc_norm.*``,  the same names (a :class:`~umt.model.student.UMTStudent`
             ``head.*``; ``pos_embed [1, N, C]`` only when     classifier); ``pos_embed`` is not stored by us: it is
             interpolated (16 frames or 384 px, an           checked against our table (:func:`~umt.model.student.
             ``nn.Parameter``; ``modeling_finetune.py``)     pos_table`, built at 8 × 224 and interpolated)
``stage2``   ``vision_encoder.encoder.*``,                   ``student.*``, ``heads.*``, ``pool_norm.*``,
             ``vision_encoder.clip_decoder.j.*``,            ``text.embeddings.*``, ``text.layers.i.*``,
             ``vision_encoder.pool_norm.*``,                 ``text.mlm_head.*``, the same four names; the
             ``text_encoder.bert.{embeddings,encoder.layer.i}``  ``clip_teacher.*`` (the frozen CLIP teacher,
             ``.*``, ``text_encoder.cls.*`` (MLM head),      ``multi_modality/MODEL_ZOO.md``) and BERT's
             ``vision_proj``, ``text_proj``, ``temp``,        ``position_ids`` buffer have no place in our model:
             ``itm_head``, ``clip_teacher.*``                 kept verbatim as *extra* tensors
             (``multi_modality/models/umt.py``,
             ``backbones/vit/vit.py``, ``backbones/bert/xbert.py``)
===========  ==============================================  ====================================================

The sizes the official files do not record are those of the official recipes: stage 1 at 8 frames × 224 px
(``exp/pretraining/*_ptk710_f8_res224.sh``), stage 2 at 4 frames × 224 px (``multi_modality/exp/pretraining/*.py``),
fine-tuning pre-trained at 8 × 224 (``get_sinusoid_encoding_table`` hard-codes ``T = 8, P = 14``); a fine-tuned file's
own frames and size are read off its ``pos_embed`` (absent: 8 × 224).

The mapping is pure renaming: every tensor keeps its dtype, shape and bytes, so official → ours → official is bit-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OfficialFormatError", "OfficialState", "KINDS", "unwrap", "detect_kind", "is_official", "from_official",
           "to_official", "official_pos_embed", "config_overrides", "arch_for", "TASK_OF_KIND"]

#: the released kinds, in the order :func:`detect_kind` tries them
KINDS = ("stage2", "pretrain", "finetune")
#: the trainer task whose checkpoint layout each kind maps to
TASK_OF_KIND = {"pretrain": "distill", "finetune": "finetune", "stage2": "video_text"}
#: the official fine-tuning code builds every table at 8 frames × 14 × 14 patches, then interpolates
#: (``single_modality/models/modeling_finetune.py``, ``get_sinusoid_encoding_table``: ``T = 8``, ``P = 14``)
OFFICIAL_PRETRAIN_FRAMES, OFFICIAL_PRETRAIN_SIZE = 8, 224
#: stage-2 recipes: 4 frames at 224 px (``multi_modality/exp/pretraining/*.py``, ``num_frames = 4``)
OFFICIAL_STAGE2_FRAMES = 4
#: a fine-tuned ``pos_embed`` must equal our table within this (it is built the same way, bit for bit in tests;
#: a file written by another numpy may differ in the last bits)
_POS_TOL = 1e-5

_BACKBONE = re.compile(r"(patch_embed\.proj\.(weight|bias)|blocks\.\d+\.(norm1|norm2)\.(weight|bias)"
                       r"|blocks\.\d+\.attn\.(qkv\.weight|q_bias|v_bias|proj\.(weight|bias))"
                       r"|blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias))")
_NORM = re.compile(r"norm\.(weight|bias)")
_HEAD = re.compile(r"(fc_norm|head)\.(weight|bias)")
_DECODER = re.compile(r"clip_decoder\.(\d+)\.(head|norm)\.(weight|bias)")
_BERT_LAYER = re.compile(r"text_encoder\.bert\.encoder\.layer\.(\d+)\.(.+)")
_OUR_LAYER = re.compile(r"text\.layers\.(\d+)\.(.+)")
_SAME_STAGE2 = ("vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp",
                "itm_head.weight", "itm_head.bias")


class OfficialFormatError(ValueError):
    """A file that is not one of the official kinds, or holds keys no rule maps; the one-line message names them."""


@dataclass
class OfficialState:
    """An official checkpoint in our key layout (:func:`from_official`)."""

    kind: str
    """``pretrain``, ``finetune`` or ``stage2``."""
    model: dict[str, torch.Tensor]
    """Our model keys: ``student.*`` + ``heads.*`` (pretrain), the classifier's unprefixed keys (finetune), or the
    :class:`~umt.model.vision_text.UMTVisionText` keys (stage2)."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Official tensors with no place in our model, under their official names (``clip_teacher.*``, BERT's
    ``position_ids``, a fine-tuned ``pos_embed``): kept so that :func:`to_official` restores the file exactly."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Sizes read off the tensors or fixed by the official recipes: ``arch``, ``num_frames``, ``img_size``,
    ``pretrain_num_frames``, ``pretrain_img_size``, and per kind ``teacher_dim``, ``num_classes``, ``embed_dim``,
    ``fusion_layer``, ``text_width``, ``text_depth``."""


def unwrap(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of an official file's contents: ``obj["model"]``, ``obj["module"]`` (the official
    ``--model_key model|module``), or ``obj`` itself when every value is a tensor; None otherwise."""
    if not isinstance(obj, dict):
        return None
    for key in ("model", "module"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    return None


def detect_kind(sd: dict[str, torch.Tensor]) -> str | None:
    """``stage2`` / ``pretrain`` / ``finetune`` from the keys (the table in the module docstring), or None."""
    if "vision_encoder.encoder.patch_embed.proj.weight" in sd:
        return "stage2"
    if "encoder.patch_embed.proj.weight" in sd and any(k.startswith("clip_decoder.") for k in sd):
        return "pretrain"
    if "patch_embed.proj.weight" in sd and "head.weight" in sd and "fc_norm.weight" in sd:
        return "finetune"
    return None


def is_official(obj: Any) -> bool:
    """True when ``obj`` (a loaded file) is an official checkpoint of a known kind, not one of ours (ours carry
    ``task``/``student.*`` keys and are read by :mod:`umt.model.load` directly)."""
    if isinstance(obj, dict) and "task" in obj:
        return False
    sd = unwrap(obj)
    return sd is not None and detect_kind(sd) is not None


def arch_for(width: int, depth: int) -> str | None:
    """The registered ``umt_vit_*`` name of a width × depth student, or None."""
    from umt.model.student import STUDENT_ARCHS

    for name, (w, d, _) in STUDENT_ARCHS.items():
        if (w, d) == (width, depth):
            return name
    return None


def _unmatched(path: str, kind: str, keys: list[str]) -> OfficialFormatError:
    keys = sorted(keys)
    return OfficialFormatError(f"{path}: official {kind} checkpoint with {len(keys)} keys no rule maps "
                               f"({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")


def _backbone_meta(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    w = sd[prefix + "patch_embed.proj.weight"]  # [C, 3, tubelet, P, P]
    if w.dim() != 5:
        raise OfficialFormatError(f"{prefix}patch_embed.proj.weight has shape {tuple(w.shape)}, not a Conv3d "
                                  "[C, 3, tubelet, P, P]")
    depth = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "blocks.")})
    return {"arch": arch_for(int(w.shape[0]), depth), "width": int(w.shape[0]), "depth": depth,
            "patch": int(w.shape[-1]), "tubelet": int(w.shape[2])}


def _grid_of(n: int, tubelet: int) -> tuple[int, int] | None:
    """(frames, grid side) of an official interpolated table of ``n`` rows: 8 frames first (384 px), then 16."""
    for t in (8, 16, 32, 4, 2, 1):
        if n % t == 0:
            side = round((n // t) ** 0.5)
            if side * side * t == n:
                return t * tubelet, side
    return None


def config_overrides(off: OfficialState) -> dict[str, Any]:
    """The fields of our run configuration (``umt.config.config_from_dict`` input, plain dicts) that an official
    file implies: task, student, aligned layers, frames and size, a classifier's classes and pre-training size, the
    stage-2 text encoder (the official ``bert-base-uncased`` / ``bert-large-uncased``, ``multi_modality/configs/
    model.py``: a local copy is named at evaluation), its fusion layer and contrastive width."""
    m = off.meta
    d: dict[str, Any] = {"task": TASK_OF_KIND[off.kind], "model": {"student": m["arch"]},
                         "data": {"num_frames": m["num_frames"], "input_size": m["img_size"]}}
    if off.kind in ("pretrain", "stage2"):
        d["model"]["align_layers"] = m["align_layers"]
    if off.kind == "finetune":
        d["finetune"] = {"num_classes": m["num_classes"], "pretrain_num_frames": m["pretrain_num_frames"],
                         "pretrain_img_size": m["pretrain_img_size"]}
    if off.kind == "stage2":
        d["text"] = {"encoder": "bert-large-uncased" if m["text_width"] == 1024 else "bert-base-uncased",
                     "fusion_layer": m["fusion_layer"], "embed_dim": m["embed_dim"]}
    return d


def official_pos_embed(num_frames: int, img_size: int, dim: int, patch: int = 16, tubelet: int = 1) -> torch.Tensor:
    """The ``pos_embed`` parameter the official fine-tuning model saves at ``num_frames × img_size``: our table
    (:func:`~umt.model.student.pos_table`, built at 8 × 224 and interpolated; equal bit for bit to the official
    ``get_sinusoid_encoding_table``) as ``[1, N, C]`` float32."""
    from umt.model.student import pos_table

    g = img_size // patch
    pre = (OFFICIAL_PRETRAIN_FRAMES // tubelet, OFFICIAL_PRETRAIN_SIZE // patch, OFFICIAL_PRETRAIN_SIZE // patch)
    return pos_table((num_frames // tubelet, g, g), dim, pre).unsqueeze(0)


def from_official(obj: Any, path: str = "<official>") -> OfficialState:
    """Map an official checkpoint (a loaded file: wrapper dict or bare state dict) to our keys.

    Tensors are not copied (the same objects), so the mapping is exact.

    Raises:
        OfficialFormatError: not an official kind, keys that no rule maps (named), or a fine-tuned ``pos_embed``
            that is not the official interpolated sin-cos table. (A width × depth with no registered ``umt_vit_*``
            name maps too, with ``meta["arch"]`` None.)
    """
    sd = unwrap(obj)
    kind = detect_kind(sd) if sd is not None else None
    if kind is None:
        keys = sorted(sd)[:4] if sd else []
        raise OfficialFormatError(f"{path}: not an official UMT checkpoint (no stage-2 vision_encoder.*, stage-1 "
                                  f"encoder.* + clip_decoder.*, or fine-tuned patch_embed/fc_norm/head keys; "
                                  f"first keys: {', '.join(keys) or 'none'})")
    model: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    left: list[str] = []
    if kind == "pretrain":
        meta = _backbone_meta(sd, "encoder.")
        for k, v in sd.items():
            m = _DECODER.fullmatch(k)
            if k.startswith("encoder.") and (_BACKBONE.fullmatch(k[8:]) or _NORM.fullmatch(k[8:])):
                model["student." + k[8:]] = v
            elif m:
                model[f"heads.{'proj' if m[2] == 'head' else 'norm'}.{m[1]}.{m[3]}"] = v
            else:
                left.append(k)
        meta.update(teacher_dim=int(sd["clip_decoder.0.head.weight"].shape[0]), num_frames=OFFICIAL_PRETRAIN_FRAMES,
                    img_size=OFFICIAL_PRETRAIN_SIZE,
                    align_layers=len({k.split(".")[1] for k in sd if k.startswith("clip_decoder.")}))
    elif kind == "finetune":
        meta = _backbone_meta(sd, "")
        for k, v in sd.items():
            if _BACKBONE.fullmatch(k) or _HEAD.fullmatch(k):
                model[k] = v
            elif k == "pos_embed":
                extra[k] = v
            else:
                left.append(k)
        frames, size = OFFICIAL_PRETRAIN_FRAMES, OFFICIAL_PRETRAIN_SIZE
        if "pos_embed" in sd:
            pe = sd["pos_embed"]  # [1, N, C]
            grid = _grid_of(int(pe.shape[1]), meta["tubelet"]) if pe.dim() == 3 else None
            if grid is None:
                raise OfficialFormatError(f"{path}: pos_embed of shape {tuple(pe.shape)} is no T × h × w grid")
            frames, size = grid[0], grid[1] * meta["patch"]
            if not pe.is_meta:
                ref = official_pos_embed(frames, size, int(pe.shape[2]), meta["patch"], meta["tubelet"])
                diff = (pe.float() - ref).abs().max().item()
                if diff > _POS_TOL:
                    raise OfficialFormatError(f"{path}: pos_embed differs from the sin-cos table interpolated from "
                                              f"8 × 224 to {frames} × {size} (max |diff| {diff:.3g}): a learned table "
                                              "is not supported")
        meta.update(num_frames=frames, img_size=size, pretrain_num_frames=OFFICIAL_PRETRAIN_FRAMES,
                    pretrain_img_size=OFFICIAL_PRETRAIN_SIZE, num_classes=int(sd["head.weight"].shape[0]))
    else:
        meta = _backbone_meta(sd, "vision_encoder.encoder.")
        fusion = []
        for k, v in sd.items():
            if k.startswith("vision_encoder.encoder.") and (_BACKBONE.fullmatch(k[23:]) or _NORM.fullmatch(k[23:])):
                model["student." + k[23:]] = v
            elif (m := _DECODER.fullmatch(k[15:])) and k.startswith("vision_encoder."):
                model[f"heads.{'proj' if m[2] == 'head' else 'norm'}.{m[1]}.{m[3]}"] = v
            elif k.startswith("vision_encoder.pool_norm."):
                model[k[15:]] = v
            elif k == "text_encoder.bert.embeddings.position_ids" or k.startswith("clip_teacher."):
                extra[k] = v
            elif k.startswith("text_encoder.bert.embeddings."):
                model["text.embeddings." + k[29:]] = v
            elif m := _BERT_LAYER.fullmatch(k):
                model[f"text.layers.{m[1]}.{m[2]}"] = v
                if m[2].startswith("crossattention."):
                    fusion.append(int(m[1]))
            elif k.startswith("text_encoder.cls."):
                model["text.mlm_head." + k[17:]] = v
            elif k in _SAME_STAGE2:
                model[k] = v
            else:
                left.append(k)
        if not fusion:
            left.append("text_encoder.bert.encoder.layer.*.crossattention (none: no fusion layers)")
        text_w = sd.get("text_encoder.bert.embeddings.word_embeddings.weight")
        meta.update(num_frames=OFFICIAL_STAGE2_FRAMES, img_size=OFFICIAL_PRETRAIN_SIZE,
                    teacher_dim=int(sd["vision_encoder.clip_decoder.0.head.weight"].shape[0]),
                    align_layers=len({k.split(".")[2] for k in sd if k.startswith("vision_encoder.clip_decoder.")}),
                    embed_dim=int(sd["vision_proj.weight"].shape[0]) if "vision_proj.weight" in sd else None,
                    fusion_layer=min(fusion) if fusion else None,
                    text_width=int(text_w.shape[1]) if text_w is not None else None,
                    text_depth=len({k.split(".")[4] for k in sd if k.startswith("text_encoder.bert.encoder.layer.")}))
    if left:
        raise _unmatched(path, kind, left)
    return OfficialState(kind, model, extra, meta)


def _vision_to_official(k: str, prefix: str) -> str | None:
    """The official name of our student or UMA-head key ``k`` under ``prefix`` (``""`` in pre-training files,
    ``"vision_encoder."`` in stage-2 ones: ``modeling_pretrain_umt.py`` / ``multi_modality/models/umt.py``), or
    None when ``k`` is neither."""
    if k.startswith("student.") and (_BACKBONE.fullmatch(k[8:]) or _NORM.fullmatch(k[8:])):
        return f"{prefix}encoder.{k[8:]}"
    m = re.fullmatch(r"heads\.(proj|norm)\.(\d+)\.(weight|bias)", k)
    if m:
        return f"{prefix}clip_decoder.{m[2]}.{'head' if m[1] == 'proj' else 'norm'}.{m[3]}"
    return None


def to_official(kind: str, model: dict[str, torch.Tensor], extra: dict[str, torch.Tensor] | None = None, *,
                num_frames: int | None = None, img_size: int | None = None,
                max_text_positions: int | None = None) -> dict[str, torch.Tensor]:
    """Our keys → the official state dict of ``kind`` (wrap it as ``{"model": ...}`` to save).

    Args:
        kind: ``pretrain`` (``model``: ``student.*`` + ``heads.*``), ``finetune`` (the classifier's keys) or
            ``stage2`` (the :class:`~umt.model.vision_text.UMTVisionText` keys).
        extra: official tensors kept by :func:`from_official` (restored as they were); missing ones are rebuilt:
            a fine-tuned ``pos_embed`` from ``num_frames``/``img_size`` (only when they are not 8 × 224, as the
            official class saves it), BERT's ``position_ids`` as ``arange(max_text_positions)``.
        num_frames, img_size: the classifier's input size (``finetune``).
        max_text_positions: rows of BERT's position table (``stage2``; default: read off the table).

    Returns:
        the official state dict (same tensor objects, no copies, except rebuilt extras).

    Raises:
        OfficialFormatError: keys of ours that no rule maps (named), or a kind the official code has no class for.
    """
    extra = dict(extra or {})
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    if kind == "pretrain":
        for k, v in model.items():
            if (name := _vision_to_official(k, "")) is not None:
                out[name] = v
            else:
                left.append(k)
        if not any(k.startswith("clip_decoder.") for k in out):
            left.append("heads.* (none: a backbone without its UMA heads has no official pre-training layout)")
    elif kind == "finetune":
        for k, v in model.items():
            if _BACKBONE.fullmatch(k) or _HEAD.fullmatch(k):
                out[k] = v
            else:
                left.append(k)
        if "pos_embed" in extra:
            out["pos_embed"] = extra.pop("pos_embed")
        elif num_frames is not None and img_size is not None and (num_frames, img_size) != (
                OFFICIAL_PRETRAIN_FRAMES, OFFICIAL_PRETRAIN_SIZE):
            w = model["patch_embed.proj.weight"]
            out["pos_embed"] = official_pos_embed(num_frames, img_size, int(w.shape[0]), int(w.shape[-1]),
                                                  int(w.shape[2]))
    elif kind == "stage2":
        for k, v in model.items():
            if (name := _vision_to_official(k, "vision_encoder.")) is not None:
                out[name] = v
            elif k.startswith("pool_norm."):
                out["vision_encoder." + k] = v
            elif k.startswith("text.embeddings."):
                out["text_encoder.bert.embeddings." + k[16:]] = v
            elif m := _OUR_LAYER.fullmatch(k):
                out[f"text_encoder.bert.encoder.layer.{m[1]}.{m[2]}"] = v
            elif k.startswith("text.mlm_head."):
                out["text_encoder.cls." + k[14:]] = v
            elif k in _SAME_STAGE2:
                out[k] = v
            else:
                left.append(k)
        pid = "text_encoder.bert.embeddings.position_ids"
        if pid not in extra:
            n = max_text_positions or int(model["text.embeddings.position_embeddings.weight"].shape[0])
            extra[pid] = torch.arange(n).expand((1, -1))  # xbert's persistent buffer
    else:
        raise OfficialFormatError(f"no official layout for kind {kind!r} (one of {', '.join(KINDS)})")
    if left:
        raise OfficialFormatError(f"{len(left)} of our keys have no official {kind} name "
                                  f"({', '.join(sorted(left)[:4])}{', ...' if len(left) > 4 else ''})")
    out.update(extra)
    return out
