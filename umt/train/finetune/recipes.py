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

More official scripts (``k400/l16_*_f16_res224.sh``, ``k600/*.sh``, ``k700/*.sh``, ``mitv1/b16_*.sh``; all 16 GPUs):

=========================  ======  =======  ====  ===========  =========  =====  ======  ======  ====  ===========
recipe                     epochs  warm-up  lr    layer decay  drop path  batch  frames  views   size  starts from
=========================  ======  =======  ====  ===========  =========  =====  ======  ======  ====  ===========
``umt_l16_k400_f16_ft``    5       1        1e-5  0.85         0.2        8      16      4 × 1   224   L K710 head
``umt_b16_k600_ft``        5       1        2e-5  0.75         0.1        16     8       4 × 3   224   B K710 head
``umt_l16_k600_ft``        5       1        1e-5  0.85         0.2        16     8       4 × 3   224   L K710 head
``umt_l16_k600_f16_ft``    5       1        1e-5  0.85         0.2        8      16      4 × 1   224   L K710 head
``umt_b16_k700_ft``        5       1        2e-5  0.75         0.1        16     8       4 × 3   224   B K710 head
``umt_l16_k700_ft``        5       1        1e-5  0.85         0.2        16     8       4 × 3   224   L K710 head
``umt_l16_k700_f16_ft``    5       1        1e-5  0.85         0.2        8      16      4 × 1   224   L K710 head
``umt_b16_mitv1_ft``       40      5        1e-4  0.75         0.1        32     8       4 × 3   224   B K400, new head
``umt_b16_mitv1_384_ft``   4       1        1e-5  0.75         0.1        16     8       4 × 3   384   B K400, new head
=========================  ======  =======  ====  ===========  =========  =====  ======  ======  ====  ===========

K600/K700 map the K710 head through the official ``k710/label_mixto{600,700}.json`` (``finetune.label_map``); the B
scripts for K600/K700 and MiT pass no ``--layer_decay`` (default 0.75). MiT v1 (339 classes) uses one view per video
(``--num_sample 1``), so its effective lr is ``lr × global batch / 256``; the 384 px run has weight decay 0.1.

Common: 8 frames × 224², 16 videos per GPU × 16 GPUs = 256 per step (``optim.global_batch``: fewer GPUs
accumulate), ``num_sample`` 2 repeated views (512 clips per step), so the effective lr is ``lr × 256 × 2 / 256``
(2e-4 → 4e-4); AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05 (none on biases and 1-D parameters), per-step cosine
after a linear warm-up; mixup 0.8, CutMix 1.0, switch 0.5, label smoothing 0.1; RandAugment ``rand-m7-n4-mstd0.5-inc1``,
RandomResizedCrop scale (0.08, 1) aspect (3/4, 4/3), random erasing 0.25, flip (not for SSv2); frames as the official ``kinetics_sparse.py`` (``data.sampling="tsn"``)
except SSv2, whose ``ssv2.py`` samples its own way (``data.sampling="ssv2"``: ``N // T`` training segments, segment
centres for the single-view evaluation, segment starts and centres as the two test clips); evaluation every epoch
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
           "umt_l16_k400_ft", "umt_b16_ssv2_ft", "umt_l16_ssv2_ft", "umt_l16_k400_f16_ft", "umt_b16_k600_ft",
           "umt_l16_k600_ft", "umt_l16_k600_f16_ft", "umt_b16_k700_ft", "umt_l16_k700_ft", "umt_l16_k700_f16_ft",
           "umt_b16_mitv1_ft", "umt_b16_mitv1_384_ft", "demo_ft"]

log = logging.getLogger(__name__)

#: The official fine-tuning augmentation (``datasets/kinetics_sparse.py`` ``_aug_frame``), as the data contract's
#: ``DataConfig`` fields: RandomResizedCrop (bilinear resize, as the official ``random_resized_crop``), RandAugment
#: with the same ops for every frame of a clip, random erasing.
FT_AUGMENT: dict[str, Any] = {"crop": "rrc", "rrc_scale": (0.08, 1.0), "rrc_ratio": (0.75, 1.3333333),
                              "interp": "bilinear", "rand_augment": "rand-m7-n4-mstd0.5-inc1", "erase_prob": 0.25}

#: GPUs of every official fine-tuning script (``GPUS=16``); ``optim.global_batch`` = batch per GPU × this.
OFFICIAL_GPUS = 16


def _ft(student: str, *, num_classes: int, epochs: int, warmup: float, lr: float, layer_decay: float,
        drop_path: float, shards: str, eval_shards: str, views: str = "4x3", flip: bool = True,
        label_map: str = "", batch_size: int = 16, num_sample: int = 2, num_frames: int = 8, input_size: int = 224,
        weight_decay: float = 0.05, init_head: bool = True, sampling: str = "tsn") -> TrainConfig:
    """A paper fine-tuning run (module docstring for the shared numbers).

    Args:
        batch_size: videos per GPU (official ``--batch_size``); the global batch is ``batch_size × 16`` GPUs.
        num_sample: repeated views per video (official ``--num_sample``: 2, MiT 1).
        sampling: ``data.sampling``: ``tsn`` (official ``kinetics_sparse.py``) or ``ssv2`` (``ssv2.py``).
        init_head: load the init file's head (false when its classes are unrelated to this run's: MiT from K400,
            where the official loader drops the head of the wrong shape).
    """
    return TrainConfig(
        task="finetune",
        data=DataConfig(shards=shards, batch_size=batch_size, num_sample=num_sample, num_frames=num_frames,
                        input_size=input_size, num_workers=8, flip=flip, sampling=sampling, **FT_AUGMENT),
        model=ModelConfig(student=student, drop_path=drop_path),
        optim=OptimConfig(lr=lr, min_lr=1e-6, betas=(0.9, 0.999), weight_decay=weight_decay, epochs=epochs,
                          warmup_epochs=warmup, clip_grad=0.0, global_batch=batch_size * OFFICIAL_GPUS),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        log=LogConfig(every_steps=20),
        eval=EvalConfig(every_epochs=1, at_end=True, shards=eval_shards, batch_size=batch_size, views=views),
        finetune=FinetuneConfig(num_classes=num_classes, layer_decay=layer_decay, head_init_scale=0.001,
                                mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, label_smoothing=0.1,
                                label_map=label_map, init_head=init_head),
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
               drop_path=0.1, shards="shards/ssv2", eval_shards="shards/ssv2_val", views="2x3", flip=False,
               sampling="ssv2")


def umt_l16_ssv2_ft() -> TrainConfig:
    """UMT-L/16 fine-tuned on SSv2 from the stage-1 K710 backbone: 14 epochs, 4 warm-up, lr 4e-4, layer decay
    0.85, drop path 0.2, no flip, 2 × 3 test views (official ``ssv2/l16_ptk710_ftssv2_f8_res224.sh``; 74.7 %)."""
    return _ft("umt_vit_large_patch16_224", num_classes=174, epochs=14, warmup=4, lr=4e-4, layer_decay=0.85,
               drop_path=0.2, shards="shards/ssv2", eval_shards="shards/ssv2_val", views="2x3", flip=False,
               sampling="ssv2")


_B, _L = "umt_vit_base_patch16_224", "umt_vit_large_patch16_224"
#: the official K710 → K600/K700 head maps, at the path ``run_class_finetuning.py`` opens (``k710/label_mixto{600,
#: 700}.json``, relative to the working directory); ``--set finetune.label_map=PATH`` points elsewhere
_MIX_MAP = "k710/label_mixto{}.json"


def umt_l16_k400_f16_ft() -> TrainConfig:
    """UMT-L/16 on K400 at 16 frames from the 8-frame K710 classifier: batch 8 per GPU (global 128), 5 epochs,
    1 warm-up, lr 1e-5 (effective 1e-5 × 128 × 2 / 256 = 1e-5), layer decay 0.85, drop path 0.2, 4 × 1 test views
    (official ``k400/l16_ptk710_ftk710_ftk400_f16_res224.sh``: ``--test_num_segment 4 --test_num_crop 1``)."""
    return _ft(_L, num_classes=400, epochs=5, warmup=1, lr=1e-5, layer_decay=0.85, drop_path=0.2,
               shards="shards/k400", eval_shards="shards/k400_val", label_map="first", batch_size=8,
               num_frames=16, views="4x1")


def _kinetics(student: str, classes: int, *, lr: float, layer_decay: float, drop_path: float, frames: int = 8
              ) -> TrainConfig:
    """K600/K700 from the K710 classifier through the official label map: 5 epochs, 1 warm-up; 8 frames: batch 16,
    4 × 3 views; 16 frames: batch 8, 4 × 1 views (the official ``k600``/``k700`` scripts)."""
    return _ft(student, num_classes=classes, epochs=5, warmup=1, lr=lr, layer_decay=layer_decay,
               drop_path=drop_path, shards=f"shards/k{classes}", eval_shards=f"shards/k{classes}_val",
               label_map=_MIX_MAP.format(classes), batch_size=16 if frames == 8 else 8, num_frames=frames,
               views="4x3" if frames == 8 else "4x1")


def umt_b16_k600_ft() -> TrainConfig:
    """UMT-B/16 on K600 from the K710 classifier (official ``k600/b16_ptk710_ftk710_ftk600_f8_res224.sh``): lr 2e-5,
    drop path 0.1; the script passes no ``--layer_decay``, so ``run_class_finetuning.py``'s default 0.75 applies."""
    return _kinetics(_B, 600, lr=2e-5, layer_decay=0.75, drop_path=0.1)


def umt_l16_k600_ft() -> TrainConfig:
    """UMT-L/16 on K600, 8 frames (official ``k600/l16_ptk710_ftk710_ftk600_f8_res224.sh``): lr 1e-5, layer decay
    0.85, drop path 0.2."""
    return _kinetics(_L, 600, lr=1e-5, layer_decay=0.85, drop_path=0.2)


def umt_l16_k600_f16_ft() -> TrainConfig:
    """UMT-L/16 on K600, 16 frames, batch 8, 4 × 1 views (official ``k600/l16_ptk710_ftk710_ftk600_f16_res224.sh``)."""
    return _kinetics(_L, 600, lr=1e-5, layer_decay=0.85, drop_path=0.2, frames=16)


def umt_b16_k700_ft() -> TrainConfig:
    """UMT-B/16 on K700 from the K710 classifier (official ``k700/b16_ptk710_ftk710_ftk700_f8_res224.sh``): lr 2e-5,
    drop path 0.1, layer decay the default 0.75 (no ``--layer_decay`` in the script)."""
    return _kinetics(_B, 700, lr=2e-5, layer_decay=0.75, drop_path=0.1)


def umt_l16_k700_ft() -> TrainConfig:
    """UMT-L/16 on K700, 8 frames (official ``k700/l16_ptk710_ftk710_ftk700_f8_res224.sh``)."""
    return _kinetics(_L, 700, lr=1e-5, layer_decay=0.85, drop_path=0.2)


def umt_l16_k700_f16_ft() -> TrainConfig:
    """UMT-L/16 on K700, 16 frames, batch 8, 4 × 1 views (official ``k700/l16_ptk710_ftk710_ftk700_f16_res224.sh``)."""
    return _kinetics(_L, 700, lr=1e-5, layer_decay=0.85, drop_path=0.2, frames=16)


def umt_b16_mitv1_ft() -> TrainConfig:
    """UMT-B/16 on Moments in Time v1 (339 classes) from the K400 classifier with a fresh head (official
    ``mitv1/b16_ptk710_ftk710_ftk400_ftmitv1_f8_res224.sh``, data set ``mitv1_sparse``, the Kinetics augmentation
    with flip): batch 32 per GPU × 16 (global 512), one view per video (``--num_sample 1``), 40 epochs, 5 warm-up,
    lr 1e-4 (effective 1e-4 × 512 / 256 = 2e-4), layer decay 0.75 (default), drop path 0.1, weight decay 0.05,
    4 × 3 test views."""
    return _ft(_B, num_classes=339, epochs=40, warmup=5, lr=1e-4, layer_decay=0.75, drop_path=0.1,
               shards="shards/mitv1", eval_shards="shards/mitv1_val", batch_size=32, num_sample=1, init_head=False)


def umt_b16_mitv1_384_ft() -> TrainConfig:
    """UMT-B/16 on MiT v1 at 384² (official ``mitv1/b16_ptk710_ftk710_ftk400_ftmitv1_f8_res384.sh``,
    ``vit_base_patch16_384``; the position table is interpolated from the init file's size): batch 16 per GPU ×
    16 (global 256), one view per video, 4 epochs, 1 warm-up, lr 1e-5 (effective 1e-5), layer decay 0.75
    (default), drop path 0.1, weight decay 0.1, 4 × 3 test views. The script's ``MODEL_PATH`` names the K400
    classifier at 224 (``b16_ptk710_ftk710_ftk400_f8_res224.pth``) and it also passes ``--eval`` (evaluate only);
    the recipe is the training run its other arguments describe. Set ``model.init_from`` to the MiT 224 classifier
    (``umt_b16_mitv1_ft``'s ``best.pt``) with ``finetune.init_head=true`` to continue from it."""
    return _ft(_B, num_classes=339, epochs=4, warmup=1, lr=1e-5, layer_decay=0.75, drop_path=0.1,
               shards="shards/mitv1", eval_shards="shards/mitv1_val", batch_size=16, num_sample=1, input_size=384,
               weight_decay=0.1, init_head=False)


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
    umt_b16_k710_ft, umt_b16_k400_ft, umt_l16_k710_ft, umt_l16_k400_ft, umt_b16_ssv2_ft, umt_l16_ssv2_ft,
    umt_l16_k400_f16_ft, umt_b16_k600_ft, umt_l16_k600_ft, umt_l16_k600_f16_ft, umt_b16_k700_ft, umt_l16_k700_ft,
    umt_l16_k700_f16_ft, umt_b16_mitv1_ft, umt_b16_mitv1_384_ft, demo_ft)}
