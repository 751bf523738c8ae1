"""Frozen CLIP teacher for UMT stage 1 (docs/design.md, "Teacher"), built from open_clip's own modules.

UMT-B uses open_clip ``ViT-B-16`` at 224 px; UMT-L uses ``ViT-L-14`` at 196 px: its 16×16 position table is resized
to 14×14 while loading and the 224 px frames are resized to 196 px on the device, both bicubic *without* antialiasing
(``F.interpolate(mode="bicubic", align_corners=False)``), as the official UMT code does (open_clip's own
``resize_pos_embed`` antialiases). Both give a 14×14 grid matching the student.
Weights come from a local path the user names, in any of the three forms CLIP weights come in: an OpenAI
CLIP TorchScript archive (``ViT-B-16.pt`` as released), an open_clip checkpoint (``.pt``/``.bin``/``.safetensors``),
or a Hugging Face CLIP directory (``config.json`` + ``model.safetensors``, ``CLIPModel`` or
``CLIPVisionModelWithProjection`` as ``save_pretrained`` writes it). The format is detected from the path; what was
loaded is described by :class:`TeacherLoadInfo`. Without weights the teacher is randomly initialised and
:attr:`CLIPTeacher.random_init` is True (the trainer logs a loud warning and records it).

The blocks are run here, one by one, with open_clip's weights (``visual.transformer.resblocks``) so that the last
L blocks' outputs and the last block's CLS query and keys come out of a single pass, and attention goes through
:func:`umt.ops.attention` (never materialising the attention map).
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from umt import ops
from umt.constants import IMAGENET_MEAN, IMAGENET_STD
from umt.fileio import sha256_file

__all__ = ["CLIPTeacher", "TeacherOutput", "TeacherLoadInfo", "TeacherWeightsError", "TEACHER_CONFIGS", "build_clip",
           "teacher_output_dim",
           "load_clip_weights", "hf_clip_to_open_clip", "resize_pos_embed", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

log = logging.getLogger(__name__)

#: CLIP's own pixel normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Tiny open_clip configs for tests and the CPU demo (random weights; open_clip's CLIP(**cfg) accepts them).
TEACHER_CONFIGS: dict[str, dict[str, Any]] = {
    "umt-tiny-clip": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    },
}


def _model_cfg(name: str) -> dict[str, Any]:
    if name in TEACHER_CONFIGS:
        return copy.deepcopy(TEACHER_CONFIGS[name])
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown teacher {name!r}: not an open_clip model ({open_clip.list_models()[:8]}...) "
                         f"nor one of {sorted(TEACHER_CONFIGS)}")
    return cfg


def teacher_output_dim(name: str) -> int:
    """The output width of teacher ``name`` (its CLIP ``embed_dim``: 512 for ViT-B/16, 768 for ViT-L/14), read off
    the config without building the model: the UMA heads' width when no teacher is built.

    Raises:
        ValueError: unknown name.
    """
    return int(_model_cfg(name)["embed_dim"])


def build_clip(name: str, image_size: int | None = None, quick_gelu: bool = False) -> nn.Module:
    """Build an open_clip CLIP model with random weights (``pretrained=None``; nothing is downloaded).

    Args:
        name: open_clip model name (``"ViT-B-16"``, ``"ViT-L-14"``) or a key of :data:`TEACHER_CONFIGS`.
        image_size: input side in pixels (changes the position table; 196 for UMT-L's teacher).
        quick_gelu: QuickGELU activations, as OpenAI's CLIP weights need.

    Raises:
        ValueError: unknown name.
    """
    cfg = _model_cfg(name)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    cfg.pop("custom_text", None)
    return open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript zip archive (as OpenAI released CLIP) holds a ``constants.pkl`` entry."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def resize_pos_embed(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resize ``visual.positional_embedding`` ``[1 + g0², C]`` in ``state_dict`` to ``model``'s grid, in place.

    The CLS row is kept; the g0×g0 grid is resized bicubically with ``align_corners=False`` and no antialiasing, as the
    official UMT code resizes CLIP-L/14's 16×16 table to 14×14. No-op when the sizes already match.
    """
    key = "visual.positional_embedding"
    old = state_dict.get(key)
    grid = getattr(model.visual, "grid_size", None)
    if old is None or grid is None:
        return
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if old.shape[0] == 1 + gh * gw:
        return
    g0 = int(round((old.shape[0] - 1) ** 0.5))
    if g0 * g0 != old.shape[0] - 1:
        raise RuntimeError(f"{key} of shape {tuple(old.shape)} is not a square grid plus a CLS row")
    cls, table = old[:1], old[1:]  # [1, C], [g0², C]
    table = table.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()  # [1, C, g0, g0]
    table = F.interpolate(table, size=(gh, gw), mode="bicubic", align_corners=False, antialias=False)
    table = table.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(old.dtype)  # [gh·gw, C]
    log.info("teacher position table resized from %dx%d to %dx%d (bicubic, no antialias)", g0, g0, gh, gw)
    state_dict[key] = torch.cat([cls, table], dim=0)


class TeacherWeightsError(ValueError):
    """A teacher weights path that is not CLIP weights in a known format, or not the configured architecture."""


@dataclass
class TeacherLoadInfo:
    """What :func:`load_clip_weights` loaded (recorded in the run's ``config.json`` and checkpoints)."""

    format: str
    """``"openai-torchscript"``, ``"open_clip"`` or ``"hf-clip"``."""
    path: str
    sha256: str
    """Of the weights file (for a Hugging Face directory: of its weights file)."""
    architecture: dict[str, int]
    """Of the file's vision tower: ``patch_size``, ``width``, ``layers``, ``grid`` (position-table side)."""
    loaded: int
    """Tensors loaded into the model (the vision tower for ``hf-clip``, the whole CLIP otherwise)."""
    resized: int
    """Of those, tensors resized on the way in (the position table when the grid differs)."""
    missing: int
    """Model tensors the file did not provide (always 0: loading is strict)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vision_arch(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, int]:
    """Patch size, width, depth and position-table side of the vision tower in an open_clip-keyed state dict."""
    conv = sd.get(prefix + "conv1.weight")
    pos = sd.get(prefix + "positional_embedding")
    if conv is None or pos is None or conv.ndim != 4:
        raise TeacherWeightsError("no CLIP ViT vision tower in it (no visual.conv1.weight / visual.positional_embedding"
                                  f"; found keys like {sorted(sd)[:4]})")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.", k))}
    return {"patch_size": int(conv.shape[-1]), "width": int(conv.shape[0]), "layers": len(blocks),
            "grid": int(round((pos.shape[0] - 1) ** 0.5))}


def _check_arch(found: dict[str, int], model: nn.Module, path: Path) -> None:
    v = model.visual
    want = {"patch_size": int(v.conv1.weight.shape[-1]), "width": int(v.conv1.weight.shape[0]),
            "layers": len(v.transformer.resblocks)}
    if any(found[k] != want[k] for k in want):
        raise TeacherWeightsError(
            f"teacher weights {path} hold a ViT with patch {found['patch_size']}, width {found['width']}, "
            f"{found['layers']} layers; the configured model.teacher expects patch {want['patch_size']}, width "
            f"{want['width']}, {want['layers']} layers (e.g. a ViT-B/32 file for a ViT-B/16 recipe)")


def hf_clip_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``CLIPModel`` / ``CLIPVisionModelWithProjection`` state dict's vision tower to open_clip's
    ``visual.*`` keys (the inverse of transformers' ``convert_clip_original_pytorch_to_hf.py``): q/k/v projections
    concatenated into ``in_proj_*``, ``visual_projection.weight [E, C]`` transposed into ``proj [C, E]``. Text-tower
    keys are left out. Raises :class:`TeacherWeightsError` when there is no vision tower."""
    out: dict[str, torch.Tensor] = {}
    pre = "vision_model."
    if not any(k.startswith(pre) for k in sd):
        raise TeacherWeightsError(f"no vision_model.* tensors (found keys like {sorted(sd)[:4]})")
    simple = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
              "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
              "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
              "post_layernorm.bias": "ln_post.bias"}
    per_layer = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                 "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if not key.startswith(pre):
            continue
        k = key[len(pre):]
        if k in simple:
            out["visual." + simple[k]] = t
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
        if m is None:
            continue  # position_ids and other buffers
        i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
        if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((i, kind), {})[mod[-6]] = t
        elif mod in per_layer:
            out[f"visual.transformer.resblocks.{i}.{per_layer[mod]}.{kind}"] = t
    for (i, kind), parts in qkv.items():
        out[f"visual.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if "visual_projection.weight" in sd:
        out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    return out


def _read_hf_dir(path: Path) -> tuple[dict[str, torch.Tensor], Path, dict[str, Any]]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TeacherWeightsError(f"teacher weights {path} is a directory without config.json: not a Hugging Face "
                                  "CLIP directory")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") not in ("clip", "clip_vision_model"):
        raise TeacherWeightsError(f"teacher weights {path}: config.json model_type is {cfg.get('model_type')!r}, not a "
                                  "CLIP model ('clip' or 'clip_vision_model')")
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = path / name
        if f.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(f)), f, cfg
            try:  # tensors only: unpickling anything else could run the file's code
                return torch.load(f, map_location="cpu", weights_only=True), f, cfg
            except pickle.UnpicklingError as e:
                raise TeacherWeightsError(f"teacher weights {f}: holds objects other than tensors and was not loaded "
                                          f"(unpickling them could run code): {str(e).splitlines()[0]}") from None
    raise TeacherWeightsError(f"teacher weights {path}: no model.safetensors or pytorch_model.bin (sharded "
                              "checkpoints are not supported)")


def load_clip_weights(model: nn.Module, path: str | Path) -> TeacherLoadInfo:
    """Load CLIP weights from a local path into ``model`` (resizing the position table when the size differs).

    Formats, detected from the path: a directory → Hugging Face CLIP (``config.json`` ``model_type`` ``clip`` or
    ``clip_vision_model``; only the vision tower is loaded, strictly, into ``model.visual``); a TorchScript zip →
    OpenAI's released archive (``torch.jit.load``); anything else → an open_clip checkpoint through open_clip's own
    state-dict reader (plain/``state_dict``/``module.``-prefixed dicts, safetensors). The position table is resized
    by :func:`resize_pos_embed` (official UMT: bicubic, no antialiasing) whatever the format.

    Returns:
        :class:`TeacherLoadInfo`: format, sha256, the file's architecture, tensors loaded/resized/missing.

    Raises:
        FileNotFoundError: no such file or directory.
        TeacherWeightsError: not CLIP weights in a known format, or another architecture than ``model`` (patch size,
            width, depth), or (HF) an activation that does not match ``model``'s.
        RuntimeError: the weights do not fit the model otherwise (strict load).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    if path.is_dir():
        hf, weights_file, cfg = _read_hf_dir(path)
        fmt, sd = "hf-clip", hf_clip_to_open_clip(hf)
        act = (cfg.get("vision_config") or cfg).get("hidden_act", "quick_gelu")
        quick = isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
        if (act == "quick_gelu") != quick:
            raise TeacherWeightsError(f"teacher weights {path} use hidden_act={act!r}; set "
                                      f"model.teacher_quick_gelu={str(act == 'quick_gelu').lower()}")
    else:
        weights_file = path
        if _is_torchscript(path):
            fmt = "openai-torchscript"
            jit = torch.jit.load(str(path), map_location="cpu")
            sd = {k: v for k, v in jit.state_dict().items()
                  if k not in ("input_resolution", "context_length", "vocab_size")}
        else:
            fmt = "open_clip"
            try:
                sd = open_clip.factory.load_state_dict(str(path), device="cpu")
            except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
                raise TeacherWeightsError(f"teacher weights {path} are not an OpenAI TorchScript archive, an "
                                          f"open_clip checkpoint nor a Hugging Face CLIP directory ({e})") from e
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise TeacherWeightsError(f"teacher weights {path}: not a state dict of tensors")
            sd = open_clip.factory.convert_state_dict(model, sd)
            if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
                sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
            sd.pop("text.transformer.embeddings.position_ids", None)
    try:
        arch = _vision_arch(sd)
    except TeacherWeightsError as e:
        raise TeacherWeightsError(f"teacher weights {path} ({fmt}): {e}") from e
    _check_arch(arch, model, path)
    before = sd["visual.positional_embedding"].shape
    resize_pos_embed(sd, model)  # ours first: open_clip's resize (antialiased) is then a no-op
    resized = int(sd["visual.positional_embedding"].shape != before)
    if fmt == "hf-clip":  # the vision tower only (the text tower stays random and is dropped by the teacher)
        model.visual.load_state_dict({k[len("visual."):]: v for k, v in sd.items()}, strict=True)
    else:
        open_clip.model.resize_text_pos_embed(sd, model)
        model.load_state_dict(sd, strict=True)  # strict: nothing missing, nothing unexpected
    return TeacherLoadInfo(format=fmt, path=str(path), sha256=sha256_file(weights_file), architecture=arch,
                           loaded=len(sd), resized=resized, missing=0)


@dataclass
class TeacherOutput:
    """What the teacher returns for one batch of clips.

    Attributes:
        targets: ``[L, B, T·N, C_t]`` L2-normalised ``proj(ln_post(·))`` of the patch tokens of the last L blocks.
        q_cls: ``[B·T, H, D]`` the last block's CLS query (unscaled).
        k: ``[B·T, H, 1 + N, D]`` the last block's keys (CLS first).
    """

    targets: torch.Tensor
    q_cls: torch.Tensor
    k: torch.Tensor

    def cls_attention(self) -> torch.Tensor:
        """Head-averaged CLS→patch attention of the last block, ``[B·T, N]`` (one query row per frame)."""
        return ops.cls_attention(self.q_cls, self.k)


class CLIPTeacher(nn.Module):
    """Frozen CLIP image encoder applied per frame.

    Args:
        name: open_clip model name or a :data:`TEACHER_CONFIGS` key.
        image_size: teacher input side (frames are resized to it on the device when the video differs).
        weights: local weights file; None or "" → random init (:attr:`random_init` True, warning logged).
        quick_gelu: QuickGELU (True for OpenAI weights).
        align_layers: L, the number of last blocks whose patch tokens become targets (6).
        input_norm: ``"imagenet"`` feeds the (ImageNet-normalised) video as is, like the official UMT code;
            ``"clip"`` re-normalises it to CLIP's mean/std first.
        video_mean, video_std: the normalisation the video arrives with (for ``"clip"``).
    """

    def __init__(self, name: str = "ViT-B-16", image_size: int = 224, weights: str | Path | None = None,
                 quick_gelu: bool = True, align_layers: int = 6, input_norm: str = "imagenet",
                 video_mean: tuple[float, ...] = IMAGENET_MEAN,
                 video_std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        if input_norm not in ("imagenet", "clip"):
            raise ValueError(f"input_norm must be 'imagenet' or 'clip', got {input_norm!r}")
        clip = build_clip(name, image_size, quick_gelu)
        self.random_init = not weights
        #: what was loaded (None: random init)
        self.load_info: TeacherLoadInfo | None = None
        if weights:
            self.load_info = info = load_clip_weights(clip, weights)
            log.info("teacher %s loaded from %s: format %s, sha256 %s, file architecture %s, %d tensors loaded, "
                     "%d resized, %d missing", name, weights, info.format, info.sha256[:16], info.architecture,
                     info.loaded, info.resized, info.missing)
        else:
            log.warning("!!! TEACHER %s HAS NO WEIGHTS FILE: RANDOMLY INITIALISED. Targets are meaningless for real "
                        "pre-training; pass model.teacher_weights=PATH (OpenAI .pt, open_clip checkpoint or HF CLIP directory). !!!", name)
        self.visual = clip.visual  # the text tower is dropped
        blocks = self.visual.transformer.resblocks
        if not all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
            raise ValueError(f"teacher {name!r}: only open_clip ResidualAttentionBlock towers are supported")
        if not getattr(self.visual.transformer, "batch_first", True):
            raise ValueError("teacher transformer must be batch_first")
        if not 1 <= align_layers <= len(blocks):
            raise ValueError(f"align_layers must be in [1, {len(blocks)}], got {align_layers}")
        self.name, self.image_size, self.align_layers, self.input_norm = name, image_size, align_layers, input_norm
        self.output_dim = self.visual.output_dim
        self.patch_size = self.visual.patch_size[0]
        self.num_heads = blocks[0].attn.num_heads
        # Pixel renormalisation x·a + b, from the video's normalisation to CLIP's (identity for "imagenet").
        vm, vs = torch.tensor(video_mean), torch.tensor(video_std)
        cm, cs = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
        a, b = (vs / cs, (vm - cm) / cs) if input_norm == "clip" else (torch.ones(3), torch.zeros(3))
        self.register_buffer("norm_a", a.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_b", b.view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "CLIPTeacher":
        """Always eval: the teacher is frozen (``train(True)`` is ignored)."""
        return super().train(False)

    def _block(self, blk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One open_clip ResidualAttentionBlock on ``x [R, M, C]``; also returns its q and k ``[R, H, M, D]``."""
        r, m, c = x.shape
        attn: nn.MultiheadAttention = blk.attn
        qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [R, M, 3C]
        qkv = qkv.view(r, m, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # [3, R, H, M, D]
        q, k, v = qkv.unbind(0)
        o = ops.attention(q, k, v).transpose(1, 2).reshape(r, m, c)  # [R, M, C]; a view with the Triton kernel
        x = x + blk.ls_1(attn.out_proj(o))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, q, k

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[..., 1 + N, C]`` → ``ln_post`` → ``proj`` → L2: ``[..., N, C_t]``."""
        y = self.visual.ln_post(x[..., 1:, :]) @ self.visual.proj  # [..., N, C_t]
        return F.normalize(y, dim=-1)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> TeacherOutput:
        """Targets and last-block CLS query/keys for ``video [B, 3, T, H, W]`` (normalised pixels).

        Returns:
            :class:`TeacherOutput` with N = (image_size / patch)² patches per frame.
        """
        bsz, _, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(bsz * t, 3, h, w)  # [R, 3, H, W], R = B·T (b-major)
        frames = frames * self.norm_a.to(frames.dtype) + self.norm_b.to(frames.dtype)
        if (h, w) != (self.image_size, self.image_size):
            # bicubic, no antialias: the official UMT code's 224 → 196 resize for the CLIP-L/14 teacher
            frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False)  # [R, 3, S, S]
        v = self.visual
        x = v.conv1(frames.to(v.conv1.weight.dtype) if not torch.is_autocast_enabled() else frames)  # [R, C, g, g]
        x = x.flatten(2).transpose(1, 2)  # [R, N, C]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [R, 1, C]
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # [R, 1 + N, C]
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        first = len(blocks) - self.align_layers
        outs = []
        q = k = None
        for i, blk in enumerate(blocks):
            x, q, k = self._block(blk, x)
            if i >= first:
                outs.append(x)
        targets = self._project(torch.stack(outs))  # [L, R, N, C_t]
        n_layers, _, n, ct = targets.shape
        targets = targets.reshape(n_layers, bsz, t * n, ct)  # [L, B, T·N, C_t], T-major per clip
        return TeacherOutput(targets=targets, q_cls=q[:, :, 0], k=k)  # q_cls [R, H, D], k [R, H, 1+N, D]
