"""Frozen CLIP teacher for UMT stage 1 (DESIGN.md, "Teacher"), built from open_clip's own modules.

UMT-B uses open_clip ``ViT-B-16`` at 224 px; UMT-L uses ``ViT-L-14`` at 196 px: its 16×16 position table is resized
to 14×14 while loading and the 224 px frames are resized to 196 px on the device, both bicubic *without* antialiasing
(``F.interpolate(mode="bicubic", align_corners=False)``), as the official UMT code does (issue 9; open_clip's own
``resize_pos_embed`` antialiases). Both give a 14×14 grid matching the student.
Weights come from a local file the user names: an OpenAI CLIP TorchScript ``.pt`` or an open_clip checkpoint
(``.pt``/``.bin``/``.safetensors``), loaded with open_clip's loaders. Without a file the teacher is randomly
initialised and :attr:`CLIPTeacher.random_init` is True (the trainer logs a loud warning and records it).

The blocks are run here, one by one, with open_clip's weights (``visual.transformer.resblocks``) so that the last
L blocks' outputs and the last block's CLS query and keys come out of a single pass, and attention goes through
:func:`umt.ops.attention` (never materialising the attention map).
"""

from __future__ import annotations

import copy
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from umt import ops
from umt.data.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CLIPTeacher", "TeacherOutput", "TEACHER_CONFIGS", "build_clip", "load_clip_weights",
           "resize_pos_embed", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

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
    official UMT code resizes CLIP-L/14's 16×16 table to 14×14 (issue 9). No-op when the sizes already match.
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


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load CLIP weights from a local file into ``model`` (resizing the position table when the size differs).

    OpenAI TorchScript archives (``ViT-B-16.pt`` as released) are opened with ``torch.jit.load``; everything else
    goes through open_clip's state-dict reader (plain/``state_dict``/``module.``-prefixed state dicts, safetensors).
    The position table is resized by :func:`resize_pos_embed` (official UMT: bicubic, no antialiasing).

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the weights do not fit the model (strict load).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file not found: {path}")
    if _is_torchscript(path):
        jit = torch.jit.load(str(path), map_location="cpu")
        sd = {k: v for k, v in jit.state_dict().items()
              if k not in ("input_resolution", "context_length", "vocab_size")}
    else:
        sd = open_clip.factory.load_state_dict(str(path), device="cpu")
        sd = open_clip.factory.convert_state_dict(model, sd)
        if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        sd.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(sd, model)  # ours first: open_clip's resize (antialiased) is then a no-op
    open_clip.model.resize_text_pos_embed(sd, model)
    model.load_state_dict(sd, strict=True)


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
        if weights:
            load_clip_weights(clip, weights)
            log.info("teacher %s loaded from %s", name, weights)
        else:
            log.warning("!!! TEACHER %s HAS NO WEIGHTS FILE: RANDOMLY INITIALISED. Targets are meaningless for real "
                        "pre-training; pass model.teacher_weights=PATH (OpenAI .pt or open_clip checkpoint). !!!", name)
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
            # bicubic, no antialias: the official UMT code's 224 → 196 resize for the CLIP-L/14 teacher (issue 9)
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
