"""Fine-tuning recipes (task ``finetune``; docs/design.md, "Fine-tuning"), registered into
:data:`umt.train.recipes.RECIPES`.

Every number is the official one, from ``single_modality/exp/finetuning/{k710,k400,ssv2}/*.sh`` and the defaults of
``single_modality/run_class_finetuning.py``:

=====================  ======  =======  ====  ======  ===========  =========  ======  =======================
recipe                 epochs  warm-up  lr    min lr  layer decay  drop path  views   starts from
=====================  ======  =======  ====  ======  ===========  =========  ======  =======================
``umt_b16_k710_ft``    35      2        2e-4  1e-6    0.75         0.1        4 × 3   stage 1 (K710)
``umt_b16_k400_ft``    5       1        2e-5  1e-6    0.75         0.1        4 × 3   ``umt_b16_k710_ft``
``umt_l16_k710_ft``    20      2        1e-4  1e-6    0.85         0.2        4 × 3   stage 1 (K710)
``umt_l16_k400_ft``    5       1        1e-5  1e-6    0.85         0.2        4 × 3   ``umt_l16_k710_ft``
``umt_b16_ssv2_ft``    30      5        2e-4  1e-6    0.75         0.1        2 × 3   stage 1 (K710)
``umt_l16_ssv2_ft``    14      4        4e-4  1e-6    0.85         0.2        2 × 3   stage 1 (K710)
=====================  ======  =======  ====  ======  ===========  =========  ======  =======================

Common: 8 frames × 224², 16 videos per GPU × 16 GPUs = 256 per step (``optim.global_batch``: fewer GPUs
accumulate), ``num_sample`` 2 repeated views (512 clips per step), so the effective lr is ``lr × 256 × 2 / 256``
(2e-4 → 4e-4); AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05 (none on biases and 1-D parameters), per-step cosine
after a linear warm-up; mixup 0.8, CutMix 1.0, switch 0.5, label smoothing 0.1; RandAugment ``rand-m7-n4-mstd0.5-inc1``,
RandomResizedCrop scale (0.08, 1) aspect (3/4, 4/3), random erasing 0.25, flip (not for SSv2); evaluation every epoch
(the official ``validation_one_epoch``), the best by top-1 kept and tested at the end with the multi-view protocol
(``--test_best``). K400 starts from the K710 fine-tuned classifier and keeps the first 400 rows of its head.

``model.init_from`` names the file to start from (a stage-1 checkpoint or export, or the K710 fine-tuning's
``best.pt``): ``--set model.init_from=PATH``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from umt.data.config import DataConfig
from umt.config import (CheckpointConfig, EvalConfig, FinetuneConfig, LogConfig, ModelConfig, OptimConfig,
                              TrainConfig)

__all__ = ["FT_RECIPES", "FT_AUGMENT", "umt_b16_k710_ft", "umt_b16_k400_ft", "umt_l16_k710_ft",
           "umt_l16_k400_ft", "umt_b16_ssv2_ft", "umt_l16_ssv2_ft", "demo_ft"]

log = logging.getLogger(__name__)

#: The official fine-tuning augmentation (``datasets/kinetics_sparse.py`` ``_aug_frame``), as the data contract's
#: ``DataConfig`` fields: RandomResizedCrop (bilinear resize, as the official ``random_resized_crop``), RandAugment
#: with the same ops for every frame of a clip, random erasing.
FT_AUGMENT: dict[str, Any] = {"crop": "rrc", "rrc_scale": (0.08, 1.0), "rrc_ratio": (0.75, 1.3333333),
                              "interp": "bilinear", "rand_augment": "rand-m7-n4-mstd0.5-inc1", "erase_prob": 0.25}

def _ft(student: str, *, num_classes: int, epochs: int, warmup: float, lr: float, layer_decay: float,
        drop_path: float, shards: str, eval_shards: str, views: str = "4x3", flip: bool = True,
        label_map: str = "") -> TrainConfig:
    """A paper fine-tuning run (module docstring for the shared numbers)."""
    return TrainConfig(
        task="finetune",
        data=DataConfig(shards=shards, batch_size=16, num_sample=2, num_frames=8, input_size=224, num_workers=8,
                       flip=flip, **FT_AUGMENT),
        model=ModelConfig(student=student, drop_path=drop_path),
        optim=OptimConfig(lr=lr, min_lr=1e-6, betas=(0.9, 0.999), weight_decay=0.05, epochs=epochs,
                          warmup_epochs=warmup, clip_grad=0.0, global_batch=256),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        log=LogConfig(every_steps=20),
        eval=EvalConfig(every_epochs=1, at_end=True, shards=eval_shards, batch_size=16, views=views),
        finetune=FinetuneConfig(num_classes=num_classes, layer_decay=layer_decay, head_init_scale=0.001,
                                mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, label_smoothing=0.1,
                                label_map=label_map),
    )


def umt_b16_k710_ft() -> TrainConfig:
    """UMT-B/16 fine-tuned on K710 (710 classes) from the stage-1 K710 backbone: 35 epochs, 2 warm-up, lr 2e-4
    (effective 4e-4), layer decay 0.75, drop path 0.1 (official ``k710/b16_ptk710_ftk710_f8_res224.sh``)."""
    return _ft("umt_vit_base_patch16_224", num_classes=710, epochs=35, warmup=2, lr=2e-4, layer_decay=0.75,
               drop_path=0.1, shards="shards/k710", eval_shards="shards/k710_val")


def umt_b16_k400_ft() -> TrainConfig:
    """UMT-B/16 fine-tuned on K400 from the K710 fine-tuned classifier (first 400 head rows): 5 epochs, 1 warm-up,
    lr 2e-5 (effective 4e-5) (official ``k400/b16_ptk710_ftk710_ftk400_f8_res224.sh``; K400 87.4 % at 4 × 3 views)."""
    return _ft("umt_vit_base_patch16_224", num_classes=400, epochs=5, warmup=1, lr=2e-5, layer_decay=0.75,
               drop_path=0.1, shards="shards/k400", eval_shards="shards/k400_val", label_map="first")


def umt_l16_k710_ft() -> TrainConfig:
    """UMT-L/16 fine-tuned on K710: 20 epochs, 2 warm-up, lr 1e-4 (effective 2e-4), layer decay 0.85, drop path 0.2
    (official ``k710/l16_ptk710_ftk710_f8_res224.sh``)."""
    return _ft("umt_vit_large_patch16_224", num_classes=710, epochs=20, warmup=2, lr=1e-4, layer_decay=0.85,
               drop_path=0.2, shards="shards/k710", eval_shards="shards/k710_val")


def umt_l16_k400_ft() -> TrainConfig:
    """UMT-L/16 fine-tuned on K400 from the K710 fine-tuned classifier: 5 epochs, 1 warm-up, lr 1e-5 (effective
    2e-5), layer decay 0.85, drop path 0.2 (official ``k400/l16_ptk710_ftk710_ftk400_f8_res224.sh``; 90.3 %)."""
    return _ft("umt_vit_large_patch16_224", num_classes=400, epochs=5, warmup=1, lr=1e-5, layer_decay=0.85,
               drop_path=0.2, shards="shards/k400", eval_shards="shards/k400_val", label_map="first")


def umt_b16_ssv2_ft() -> TrainConfig:
    """UMT-B/16 fine-tuned on Something-Something v2 (174 classes) from the stage-1 K710 backbone: 30 epochs,
    5 warm-up, lr 2e-4, layer decay 0.75, drop path 0.1, no flip, 2 × 3 test views (official
    ``ssv2/b16_ptk710_ftssv2_f8_res224.sh``; 70.8 %)."""
    return _ft("umt_vit_base_patch16_224", num_classes=174, epochs=30, warmup=5, lr=2e-4, layer_decay=0.75,
               drop_path=0.1, shards="shards/ssv2", eval_shards="shards/ssv2_val", views="2x3", flip=False)


def umt_l16_ssv2_ft() -> TrainConfig:
    """UMT-L/16 fine-tuned on SSv2 from the stage-1 K710 backbone: 14 epochs, 4 warm-up, lr 4e-4, layer decay
    0.85, drop path 0.2, no flip, 2 × 3 test views (official ``ssv2/l16_ptk710_ftssv2_f8_res224.sh``; 74.7 %)."""
    return _ft("umt_vit_large_patch16_224", num_classes=174, epochs=14, warmup=4, lr=4e-4, layer_decay=0.85,
               drop_path=0.2, shards="shards/ssv2", eval_shards="shards/ssv2_val", views="2x3", flip=False)


def demo_ft() -> TrainConfig:
    """A few CPU minutes: the stage-1 ``demo`` student (4 blocks, width 96, 4 frames × 112²) fine-tuned on the
    embedded sample's 4 labels (a fixed per-class split of its 20 clips, :mod:`umt.data.build.sample_splits`), evaluated
    on the held-out clips. ``model.init_from`` = ``runs/demo``: the newest checkpoint of the stage-1 demo run, trained
    first when that directory is absent (``python -m umt.train --recipe demo_ft``; :mod:`umt.train.finetune.demo`)."""
    return TrainConfig(
        task="finetune",
        data=DataConfig(shards="shards/built/sample_ft/train", batch_size=4, num_sample=2, num_frames=4,
                       input_size=112, num_workers=2, **FT_AUGMENT),
        model=ModelConfig(student="umt_vit_pico_patch16_224", drop_path=0.1, init_from="runs/demo",
                          teacher_image_size=112),
        optim=OptimConfig(lr=3e-2, min_lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05, epochs=40, warmup_epochs=4),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=5),
        # eval batch 2 divides both splits (14 / 6 clips); k-NN with 5 neighbours from the 14-clip bank
        eval=EvalConfig(every_epochs=10, at_end=True, shards="shards/built/sample_ft/heldout", batch_size=2,
                        views="2x3", knn_k=5),
        finetune=FinetuneConfig(num_classes=0, layer_decay=0.75),
        device="cpu",
    )


#: fine-tuning recipe name → function (merged into :data:`umt.train.recipes.RECIPES`)
FT_RECIPES: dict[str, Callable[[], TrainConfig]] = {f.__name__: f for f in (
    umt_b16_k710_ft, umt_b16_k400_ft, umt_l16_k710_ft, umt_l16_k400_ft, umt_b16_ssv2_ft, umt_l16_ssv2_ft, demo_ft)}
