"""Student video ViT for UMT stage 1 (docs/design.md, "Stage 1"), built from timm layers and registered in timm.

A plain ViT over space-time tokens: Conv3d patch embedding with tubelet 1 (kernel = stride = (1, 16, 16)), a fixed
1-D sin-cos position table over the flattened (T, H, W) index (T-major), no CLS token, pre-norm blocks with q/v biases
(no k bias), drop path ramping linearly over depth. Only the visible tokens enter block 0 (gathered with fixed-shape
index ops, :func:`umt.ops.gather_tokens`); attention goes through :func:`umt.ops.attention`.

Registered sizes (``timm.create_model(name, ...)``):

========================================  =====  =====  =====  ==============================
name                                      width  depth  heads  use
========================================  =====  =====  =====  ==============================
``umt_vit_base_patch16_224``              768    12     12     UMT-B (paper)
``umt_vit_large_patch16_224``             1024   24     16     UMT-L (paper)
``umt_vit_tiny_patch16_224``              192    12     3      small experiments
``umt_vit_pico_patch16_224``              96     4      3      tests and the CPU demo
========================================  =====  =====  =====  ==============================

With ``num_classes > 0`` the student is the fine-tuning classifier of the official
``single_modality/models/modeling_finetune.py`` (``use_mean_pooling``): no final LayerNorm over the tokens
(``norm`` is the identity), mean over all tokens → ``fc_norm`` → linear ``head`` (truncated-normal std 0.02, then
× ``head_init_scale``, official ``init_scale`` 0.001). Fine-tuning at another frame count or resolution than the
pre-training one builds the sin-cos table at the pre-training size and interpolates it (:func:`pos_table`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from umt import ops
from umt.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Attention", "Block", "PatchEmbed3D", "UMTStudent", "sincos_pos_table", "interpolate_pos_table",
           "pos_table", "STUDENT_ARCHS"]

#: name → (width, depth, heads); docs/design.md, "Student", for B and L.
STUDENT_ARCHS: dict[str, tuple[int, int, int]] = {
    "umt_vit_base_patch16_224": (768, 12, 12),
    "umt_vit_large_patch16_224": (1024, 24, 16),
    "umt_vit_tiny_patch16_224": (192, 12, 3),
    "umt_vit_pico_patch16_224": (96, 4, 3),
}


def sincos_pos_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos position table (Vaswani et al. 2017; as the official UMT ``get_sinusoid_encoding_table``).

    Args:
        num_positions: M = T·h·w flattened positions (T-major).
        dim: C, the embedding width.

    Returns:
        float32 ``[M, C]``: even columns ``sin(pos / 10000^(2i/C))``, odd columns ``cos(...)``.
    """
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # [M, 1]
    i = torch.arange(dim, dtype=torch.float64)  # [C]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)  # [M, C]
    table = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def interpolate_pos_table(table: torch.Tensor, src_grid: tuple[int, int, int],
                          dst_grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample a T-major position table from grid ``(T0, h0, w0)`` to ``(T, h, w)``, as the official fine-tuning
    code does (``get_sinusoid_encoding_table`` in ``single_modality/models/modeling_finetune.py``): first over space,
    bicubic on each frame's ``h0 × w0`` grid (``align_corners=False``), then over time, linear per spatial position
    (``align_corners=False``), in float32.

    Args:
        table: ``[T0·h0·w0, C]``.
        src_grid, dst_grid: ``(frames / tubelet, H / patch, W / patch)``.

    Returns:
        ``[T·h·w, C]`` float32; ``table`` itself (no copy, bit for bit) when the grids are equal.

    Raises:
        ValueError: ``table`` does not have ``T0·h0·w0`` rows.
    """
    t0, h0, w0 = src_grid
    t, h, w = dst_grid
    if table.shape[0] != t0 * h0 * w0:
        raise ValueError(f"position table has {table.shape[0]} rows, grid {src_grid} needs {t0 * h0 * w0}")
    if tuple(src_grid) == tuple(dst_grid):
        return table
    c = table.shape[1]
    x = table.float().reshape(t0, h0, w0, c)  # [T0, h0, w0, C]
    if (h0, w0) != (h, w):
        x = x.permute(0, 3, 1, 2)  # [T0, C, h0, w0]
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)  # [T0, C, h, w]
        x = x.permute(0, 2, 3, 1)  # [T0, h, w, C]
    if t0 != t:
        x = x.permute(1, 2, 3, 0).reshape(h * w, c, t0)  # [h·w, C, T0]
        x = F.interpolate(x, size=t, mode="linear", align_corners=False)  # [h·w, C, T]
        x = x.reshape(h, w, c, t).permute(3, 0, 1, 2)  # [T, h, w, C]
    return x.reshape(t * h * w, c).contiguous()


def pos_table(grid: tuple[int, int, int], dim: int,
              pretrain_grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The student's fixed position table for token grid ``grid = (T, h, w)``.

    Without ``pretrain_grid`` (or when it equals ``grid``) this is :func:`sincos_pos_table` over ``T·h·w``
    positions, exactly; otherwise the table is built for the pre-training grid and resampled to ``grid`` with
    :func:`interpolate_pos_table` (official fine-tuning at 16 frames or 384 px).

    Returns:
        float32 ``[T·h·w, C]``.
    """
    t, h, w = grid
    if pretrain_grid is None or tuple(pretrain_grid) == tuple(grid):
        return sincos_pos_table(t * h * w, dim)
    t0, h0, w0 = pretrain_grid
    return interpolate_pos_table(sincos_pos_table(t0 * h0 * w0, dim), (t0, h0, w0), (t, h, w))


class PatchEmbed3D(nn.Module):
    """Conv3d patch embedding, kernel = stride = (tubelet, patch, patch): ``[B, 3, T, H, W] → [B, T·h·w, C]``.

    Kernel = stride makes the convolution a matmul over non-overlapping patches, computed as one: patchify (a
    permuted copy of the input), then ``F.linear`` with the Conv3d's weight, so the output is contiguous
    ``[B, M, C]``. (The Conv3d output ``[B, C, T, h, w]`` flattened and transposed has strides ``(C·M, 1, M)``:
    the token gather then reads each channel with a stride of M elements, scalar 2-byte loads.) The
    parameters stay those of ``proj`` (a Conv3d), so checkpoints are unchanged.
    """

    def __init__(self, patch_size: int = 16, tubelet_size: int = 1, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c_in, t, h, w = x.shape
        tt, p, _ = self.proj.kernel_size
        x = x.view(b, c_in, t // tt, tt, h // p, p, w // p, p)  # [B, 3, T', t, h, p, w, p]
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c_in * tt * p * p)  # [B, T'·h·w, 3·t·p·p], T-major
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)  # [B, M, C], contiguous


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases, no k bias (as BEiT/UMT), through :func:`umt.ops.attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])  # [3C]
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3C]
        qkv = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D]
        x = ops.attention(qkv[0], qkv[1], qkv[2])  # [B, H, N, D], memory [B, N, H, D] with the Triton kernel
        x = x.transpose(1, 2).reshape(b, n, c)  # [B, N, C]: a view (no copy) of the kernel's token-major output
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + dp(attn(ln(x)))``, ``x + dp(mlp(ln(x)))`` (MLP ratio 4, GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_layer: type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _norm_layer() -> type[nn.Module]:
    """apex's FusedLayerNorm when importable (optional speed-up), else timm's LayerNorm."""
    try:  # pragma: no cover - apex is not installable from the registries this project uses
        from apex.normalization import FusedLayerNorm  # type: ignore[import-not-found]

        if torch.cuda.is_available():
            return FusedLayerNorm
    except ImportError:
        pass
    return LayerNorm


class UMTStudent(nn.Module):
    """UMT student video ViT.

    Args:
        img_size: input side H = W in pixels (int or (H, W)).
        patch_size: spatial patch side (16).
        num_frames: T (8 in the paper recipe).
        tubelet_size: frames per token (1: every token lines up with one teacher token).
        in_chans: input channels.
        num_classes: 0 for pre-training (no head, final LayerNorm ``norm`` over the tokens); > 0 is the fine-tuning
            classifier: no ``norm`` (identity), mean-pool → ``fc_norm`` → ``head`` (official ``use_mean_pooling``).
        embed_dim, depth, num_heads, mlp_ratio: ViT size.
        drop_path_rate: drop path of the last block; block i gets ``rate·i/(depth-1)`` (linear ramp).
        align_layers: L, number of last blocks whose outputs :meth:`forward_align` returns (6 in UMT).
        pretrain_num_frames, pretrain_img_size: the size the backbone was pre-trained at; when either differs from
            ``num_frames``/``img_size`` the position table is built at the pre-training size and interpolated
            (:func:`pos_table`). None: the same as the model's.
        head_init_scale: the head's weight (truncated normal, std 0.02) and bias are multiplied by this after init
            (official ``init_scale``, 0.001 in every fine-tuning script).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, num_frames: int = 8,
                 tubelet_size: int = 1, in_chans: int = 3, num_classes: int = 0, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 align_layers: int = 6, pretrain_num_frames: int | None = None,
                 pretrain_img_size: int | tuple[int, int] | None = None, head_init_scale: float = 0.001,
                 **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop("global_pool", None)
        if kwargs:
            raise TypeError(f"unexpected arguments for UMTStudent: {sorted(kwargs)}")
        if not 1 <= align_layers <= depth:
            raise ValueError(f"align_layers must be in [1, depth={depth}], got {align_layers}")
        h, w = to_2tuple(img_size)
        self.num_frames, self.patch_size, self.tubelet_size = num_frames, patch_size, tubelet_size
        self.grid = (num_frames // tubelet_size, h // patch_size, w // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.embed_dim = self.num_features = embed_dim
        self.align_layers = align_layers
        self.num_classes = num_classes
        norm_layer = _norm_layer()
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        ph, pw = to_2tuple(pretrain_img_size if pretrain_img_size is not None else (h, w))
        pt = pretrain_num_frames if pretrain_num_frames is not None else num_frames
        #: token grid the position table was built for before interpolation (the pre-training size)
        self.pretrain_grid = (pt // tubelet_size, ph // patch_size, pw // patch_size)
        # Fixed, not learned: a non-persistent buffer, rebuilt from the size arguments (not in checkpoints). The
        # official fine-tuning code makes an interpolated table an nn.Parameter but detaches it in forward: fixed too.
        self.register_buffer("pos_embed", pos_table(self.grid, embed_dim, self.pretrain_grid), persistent=False)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, dpr[i], norm_layer) for i in range(depth))
        # The classifier pools the last block's tokens without a final LayerNorm, then fc_norm (official
        # modeling_finetune.py with use_mean_pooling: norm = Identity); pre-training keeps norm (stage 1, UMA heads).
        self.norm = norm_layer(embed_dim, eps=1e-6) if num_classes == 0 else nn.Identity()
        self.fc_norm = norm_layer(embed_dim, eps=1e-6) if num_classes > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if num_classes > 0:  # official: trunc_normal_(std=.02), then weight and bias × init_scale
            trunc_normal_(self.head.weight, std=0.02)
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official UMT/VideoMAE init: xavier-uniform linears, zero biases, unit LayerNorm.
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def embed(self, video: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed ``video [B, 3, T, H, W]``, add positions, keep the visible tokens.

        Fewer frames than ``num_frames`` (an image, T = 1, in stage 2) take the first ``T·h·w`` rows of the table:
        the T-major sin-cos table's first frame is the 196-position image table.

        Args:
            idx: ``[B, K]`` sorted clip-level kept positions in ``[0, T·h·w)``; None keeps every token.

        Returns:
            ``[B, K, C]`` (``K = T·h·w`` when ``idx`` is None).

        Raises:
            ValueError: more frames than the position table holds.
        """
        x = self.patch_embed(video)  # [B, M, C]
        m = x.shape[1]
        if m > self.pos_embed.shape[0]:
            raise ValueError(f"{video.shape[2]} frames need {m} positions; the student's table has "
                             f"{self.pos_embed.shape[0]} (num_frames {self.num_frames})")
        pos = self.pos_embed[:m]  # [M, C]
        if idx is None:
            return x + pos.to(x.dtype)
        return ops.gather_tokens(x, idx, pos)  # [B, K, C]

    def forward_align(self, video: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Outputs of the last ``align_layers`` blocks over the visible tokens, after the final LayerNorm.

        Args:
            video: ``[B, 3, T, H, W]`` normalised pixels.
            idx: ``[B, K]`` int64 sorted kept token positions (clip-level, K = T·keep_per_frame), or None for
                every token.

        Returns:
            ``[L, B, K, C]`` with L = ``align_layers``.
        """
        x = self.embed(video, idx)  # [B, K, C]
        first = len(self.blocks) - self.align_layers
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= first:
                outs.append(x)
        return self.norm(torch.stack(outs))  # [L, B, K, C]

    def forward_features(self, video: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Last block's tokens after ``norm``: ``[B, 3, T, H, W] → [B, K, C]`` (the final LayerNorm for
        pre-training, the identity for the classifier)."""
        x = self.embed(video, idx)  # [B, K, C]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-pool → fc_norm → head: ``[B, K, C] → [B, num_classes]`` (``[B, C]`` with no head)."""
        return self.head(self.fc_norm(x.mean(dim=1)))  # [B, num_classes]

    def get_num_layers(self) -> int:
        """Blocks (depth): layer-wise lr decay gives the head ``num_layers + 1`` (official ``get_num_layers``)."""
        return len(self.blocks)

    def forward(self, video: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(video, idx))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No hub weights exist for these names: pretrained=True needs pretrained_cfg_overlay={"file": PATH}
    # (a safetensors file written by umt.train.export).
    return {"num_classes": 0, "input_size": (3, 224, 224), "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "first_conv": "patch_embed.proj", "classifier": None, **kwargs}


default_cfgs = generate_default_cfgs({name: _cfg() for name in STUDENT_ARCHS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> UMTStudent:
    width, depth, heads = STUDENT_ARCHS[variant]
    args = dict(embed_dim=width, depth=depth, num_heads=heads, align_layers=min(6, depth))
    args.update(kwargs)
    return build_model_with_cfg(UMTStudent, variant, pretrained, pretrained_strict=True, **args)


@register_model
def umt_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> UMTStudent:
    """UMT-B student: ViT-B/16 (768, 12 blocks, 12 heads), drop path 0.1 in the paper recipe."""
    return _create("umt_vit_base_patch16_224", pretrained, **kwargs)


@register_model
def umt_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> UMTStudent:
    """UMT-L student: ViT-L/16 (1024, 24 blocks, 16 heads), drop path 0.2 in the paper recipe."""
    return _create("umt_vit_large_patch16_224", pretrained, **kwargs)


@register_model
def umt_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> UMTStudent:
    """Tiny student (192, 12 blocks, 3 heads)."""
    return _create("umt_vit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def umt_vit_pico_patch16_224(pretrained: bool = False, **kwargs: Any) -> UMTStudent:
    """Test/demo student (96, 4 blocks, 3 heads)."""
    return _create("umt_vit_pico_patch16_224", pretrained, **kwargs)
