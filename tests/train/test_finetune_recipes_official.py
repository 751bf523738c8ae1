"""The fine-tuning recipes added for the remaining official scripts carry their numbers.

Table written from ``single_modality/exp/finetuning/{k400,k600,k700,mitv1}/*.sh`` of OpenGVLab/unmasked_teacher
(every script: ``GPUS=16``) and the defaults of ``single_modality/run_class_finetuning.py`` (``--layer_decay`` 0.75,
``--weight_decay`` 0.05, ``--min_lr`` 1e-6, ``--num_sample`` 2, mixup 0.8 / CutMix 1.0, smoothing 0.1) where a
script leaves an argument out.
"""

from __future__ import annotations

import pytest

#: name: (epochs, warm-up, lr, layer decay, drop path, classes, batch/GPU, num_sample, frames, size,
#:        test views (segments × crops), weight decay, label map, head from the init file)
OFFICIAL = {
    # k400/l16_ptk710_ftk710_ftk400_f16_res224.sh
    "umt_l16_k400_f16_ft": (5, 1, 1e-5, 0.85, 0.2, 400, 8, 2, 16, 224, "4x1", 0.05, "first", True),
    # k600/b16_ptk710_ftk710_ftk600_f8_res224.sh (no --layer_decay: the default 0.75)
    "umt_b16_k600_ft": (5, 1, 2e-5, 0.75, 0.1, 600, 16, 2, 8, 224, "4x3", 0.05, "k710/label_mixto600.json", True),
    # k600/l16_ptk710_ftk710_ftk600_f8_res224.sh, .._f16_res224.sh
    "umt_l16_k600_ft": (5, 1, 1e-5, 0.85, 0.2, 600, 16, 2, 8, 224, "4x3", 0.05, "k710/label_mixto600.json", True),
    "umt_l16_k600_f16_ft": (5, 1, 1e-5, 0.85, 0.2, 600, 8, 2, 16, 224, "4x1", 0.05, "k710/label_mixto600.json",
                            True),
    # k700/b16_ptk710_ftk710_ftk700_f8_res224.sh, l16 f8 and f16
    "umt_b16_k700_ft": (5, 1, 2e-5, 0.75, 0.1, 700, 16, 2, 8, 224, "4x3", 0.05, "k710/label_mixto700.json", True),
    "umt_l16_k700_ft": (5, 1, 1e-5, 0.85, 0.2, 700, 16, 2, 8, 224, "4x3", 0.05, "k710/label_mixto700.json", True),
    "umt_l16_k700_f16_ft": (5, 1, 1e-5, 0.85, 0.2, 700, 8, 2, 16, 224, "4x1", 0.05, "k710/label_mixto700.json",
                            True),
    # mitv1/b16_ptk710_ftk710_ftk400_ftmitv1_f8_res224.sh (--num_sample 1, 339 classes: the K400 head is dropped)
    "umt_b16_mitv1_ft": (40, 5, 1e-4, 0.75, 0.1, 339, 32, 1, 8, 224, "4x3", 0.05, "", False),
    # mitv1/b16_ptk710_ftk710_ftk400_ftmitv1_f8_res384.sh (vit_base_patch16_384, --weight_decay 0.1)
    "umt_b16_mitv1_384_ft": (4, 1, 1e-5, 0.75, 0.1, 339, 16, 1, 8, 384, "4x3", 0.1, "", False),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_added_recipes_carry_the_official_numbers(name: str) -> None:
    from umt.train.recipes import get_recipe
    from umt.train.step import peak_lr

    epochs, warmup, lr, ld, dp, k, bs, ns, frames, size, views, wd, label_map, init_head = OFFICIAL[name]
    cfg = get_recipe(name)
    o, f, d = cfg.optim, cfg.finetune, cfg.data
    assert cfg.task == "finetune"
    assert (o.epochs, o.warmup_epochs, o.lr, o.min_lr, f.layer_decay, cfg.model.drop_path, o.weight_decay) == (
        epochs, warmup, lr, 1e-6, ld, dp, wd)
    assert (f.num_classes, d.batch_size, d.num_sample, d.num_frames, d.input_size, cfg.eval.views) == (
        k, bs, ns, frames, size, views)
    assert (f.label_map, f.init_head, d.flip) == (label_map, init_head, True)  # Kinetics / MiT flip (SSv2 does not)
    assert (o.betas, f.mixup, f.cutmix, f.mixup_switch_prob, f.label_smoothing, f.head_init_scale) == (
        (0.9, 0.999), 0.8, 1.0, 0.5, 0.1, 0.001)
    assert o.global_batch == bs * 16  # 16 GPUs: fewer accumulate
    assert ("large" in cfg.model.student) == name.startswith("umt_l16")
    # official: lr × batch × GPUs × num_sample / 256, the same when 4 GPUs accumulate
    scale = bs * 16 * ns / 256
    for world in (16, 4):
        assert peak_lr(cfg, world) == pytest.approx((lr * scale, 1e-6 * scale))
