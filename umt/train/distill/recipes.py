"""Stage-1 recipes (task ``distill``): UMT-B and UMT-L on K710, and the CPU ``demo``; registered into
:data:`umt.train.recipes.RECIPES`. A variant calls its base and edits a few fields.
"""

from __future__ import annotations

from collections.abc import Callable

from umt.data.config import DataConfig
from umt.config import (CheckpointConfig, LogConfig, MaskConfig, ModelConfig, OptimConfig, TrainConfig)

__all__ = ["DISTILL_RECIPES", "umt_b16_k710", "umt_l16_k710", "demo"]


def umt_b16_k710() -> TrainConfig:
    """UMT-B stage 1 on K710: ViT-B/16 student, CLIP ViT-B/16 teacher at 224, 8×224², semantic mask 0.8,
    batch 64/GPU, AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4·batch/256 (min 1e-5·batch/256), 40 warm-up epochs of 200,
    cosine, drop path 0.1, no clipping (UMT paper, official config ``b16_ptk710_f8_res224``).

    Epochs: 200, as the paper states; the official scripts pass ``--epochs 201`` (one extra epoch at the cosine floor),
    kept at the paper's 200 here. The global batch is fixed at 2048 (``optim.global_batch``): on fewer than
    32 GPUs the trainer accumulates gradients over micro-batches instead of shrinking the batch and the LR."""
    return TrainConfig(
        data=DataConfig(shards="shards/k710", batch_size=64, num_frames=8, input_size=224, num_workers=8),
        model=ModelConfig(student="umt_vit_base_patch16_224", drop_path=0.1, teacher="ViT-B-16",
                          teacher_image_size=224),
        mask=MaskConfig(kind="semantic", ratio=0.8),
        optim=OptimConfig(lr=1.5e-4, min_lr=1e-5, betas=(0.9, 0.95), weight_decay=0.05, epochs=200,
                          warmup_epochs=40, clip_grad=0.0, global_batch=2048),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        log=LogConfig(every_steps=20),
    )


def umt_l16_k710() -> TrainConfig:
    """UMT-L stage 1 on K710: as :func:`umt_b16_k710` with a ViT-L/16 student (drop path 0.2) and the CLIP ViT-L/14
    teacher at 196 px (position table resized to 14×14)."""
    cfg = umt_b16_k710()
    cfg.model = ModelConfig(student="umt_vit_large_patch16_224", drop_path=0.2, teacher="ViT-L-14",
                            teacher_image_size=196)
    return cfg


def demo() -> TrainConfig:
    """A few CPU minutes on the embedded sample shards (``shards/built/sample``): 4-block width-96 student,
    4-block width-64 random CLIP teacher, 4 frames × 112², batch 8, a larger LR so the loss visibly falls."""
    return TrainConfig(
        data=DataConfig(shards="shards/built/sample", batch_size=8, num_frames=4, input_size=112, num_workers=2),
        model=ModelConfig(student="umt_vit_pico_patch16_224", drop_path=0.0, align_layers=2, teacher="umt-tiny-clip",
                          teacher_image_size=112, teacher_quick_gelu=False),
        mask=MaskConfig(kind="semantic", ratio=0.8),
        optim=OptimConfig(lr=3e-2, min_lr=3e-3, weight_decay=0.05, epochs=30, warmup_epochs=1, max_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=5, image_every_steps=20),
        device="cpu",
    )


#: stage-1 recipe name → function (merged into :data:`umt.train.recipes.RECIPES`)
DISTILL_RECIPES: dict[str, Callable[[], TrainConfig]] = {f.__name__: f for f in (umt_b16_k710, umt_l16_k710, demo)}
