"""Fine-tuned retrieval recipes: every number pinned against tables copied here from the official
``multi_modality/exp/finetuning/ret_*/{b16,l16}_25m.py`` (lr, epochs, warm-up, caption length, drop path, frames, batch,
k_test), each registered recipe's config carries them (no masking, MLM and UTA weights 0: teacher-free), and the
official fine-tuned R@1 of ``multi_modality/MODEL_ZOO.md``."""

from __future__ import annotations

import pytest

# dataset: (lr, epochs, warmup_epochs, max_txt_l, drop_path_rate, is_paragraph_retrieval, has_multi_vision_gt)
OFFICIAL = {
    "msrvtt": (1e-5, 10, 1, 32, 0.2, False, False),
    "didemo": (2e-5, 12, 1, 64, 0.1, True, False),
    "anet": (4e-5, 20, 1, 150, 0.1, True, False),
    "lsmdc": (2e-5, 10, 1, 96, 0.2, False, False),
    "msvd": (1e-5, 5, 0, 64, 0.2, False, False),
    "ssv2_label": (5e-5, 10, 0, 25, 0.1, False, True),
    "ssv2_tpl": (1e-4, 10, 1, 25, 0.1, False, True),
}
OFFICIAL_L16 = {
    "msrvtt": (2e-5, 7, 1, 32, 0.3, False, False),
    "didemo": (4e-5, 5, 1, 64, 0.2, True, False),
    "anet": (4e-5, 20, 1, 150, 0.2, True, False),
    "lsmdc": (2e-5, 8, 1, 96, 0.2, False, False),
    "msvd": (1e-5, 3, 0, 64, 0.3, False, False),
    "ssv2_label": (4e-5, 10, 0, 25, 0.2, False, True),
    "ssv2_tpl": (1e-4, 5, 1, 25, 0.2, False, True),
}
# MODEL_ZOO.md, "Video-Text Retrieval", 25M columns: T2V R@1, V2T R@1 (SSv2: T2V only)
ZOO = {"b16": {"msrvtt": (51.0, 49.0), "didemo": (61.6, 59.5), "anet": (58.3, 56.0), "lsmdc": (32.7, 32.7),
               "msvd": (50.8, 73.3), "ssv2_label": (64.2, None), "ssv2_tpl": (87.9, None)},
       "l16": {"msrvtt": (58.8, 58.6), "didemo": (70.4, 65.7), "anet": (66.8, 64.4), "lsmdc": (43.0, 41.4),
               "msvd": (58.2, 82.4), "ssv2_label": (73.3, None), "ssv2_tpl": (90.8, None)}}
CASES = [("b16", n) for n in OFFICIAL] + [("l16", n) for n in OFFICIAL_L16]


@pytest.mark.parametrize("size,name", CASES, ids=[f"{s}_{n}" for s, n in CASES])
def test_numbers_are_official_and_registered(size: str, name: str) -> None:
    from umt.train.recipes import get_recipe
    from umt.train.video_text.retrieval_ft import OFFICIAL_RESULTS, RETRIEVAL_FT, RETRIEVAL_FT_L16

    want = (OFFICIAL if size == "b16" else OFFICIAL_L16)[name]
    ft = (RETRIEVAL_FT if size == "b16" else RETRIEVAL_FT_L16)[name]
    assert (ft.lr, ft.epochs, ft.warmup_epochs, ft.max_len, ft.drop_path, ft.paragraph, ft.multi_video_gt) == want
    assert (ft.num_frames, ft.num_frames_test, ft.batch_size, ft.k_test) == (12, 12, 32, 128)
    assert OFFICIAL_RESULTS[(size, name)] == ZOO[size][name]
    cfg = get_recipe(f"umt_{size}_ret_{name}")  # python -m umt.train --recipe umt_b16_ret_msrvtt
    assert cfg.task == "video_text" and cfg.data.num_frames == 12 and cfg.data.batch_size == 32
    assert cfg.mask.ratio == 0.0 and cfg.mask.image_ratio == 0.0
    assert cfg.text.mlm_weight == 0.0 and cfg.text.uta_weight == 0.0
    assert cfg.text.vtc_weight == 1.0 and cfg.text.vtm_weight == 1.0 and cfg.text.max_len == want[3]
    assert cfg.text.vtm_hard_negatives and cfg.text.caption_positives == want[6] and cfg.eval.multi_video_gt == want[6]
    assert cfg.optim.lr == want[0] and cfg.optim.min_lr == pytest.approx(want[0] * 0.01)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.weight_decay) == (*want[1:3], 0.02)
    assert cfg.optim.global_batch == 32 * 8  # NNODE=1 × NUM_GPUS=8 in every ret_*/*.sh
    assert cfg.model.drop_path == want[4] and cfg.eval.rerank_k == 128 and cfg.eval.every_epochs == 1
    assert cfg.model.init_from == f"runs/umt_{size}_25m/best.pt"
    assert (cfg.text.fusion_layer, cfg.text.embed_dim) == ((9, 512) if size == "b16" else (19, 768))
    assert cfg.data.shards == f"shards/ret_{name}" and cfg.eval.shards == f"shards/ret_{name}_test"


def test_all_seven_per_size_and_no_others() -> None:
    from umt.train.recipes import RECIPES
    from umt.train.video_text.retrieval_ft import RETRIEVAL_FT, RETRIEVAL_FT_L16

    assert set(RETRIEVAL_FT) == set(OFFICIAL) and set(RETRIEVAL_FT_L16) == set(OFFICIAL_L16)
    assert {k for k in RECIPES if "_ret_" in k} == {f"umt_{s}_ret_{n}" for s, n in CASES}


def test_recipes_need_no_teacher() -> None:
    from umt.train.recipes import get_recipe
    from umt.train.video_text.task import needs_teacher

    assert not any(needs_teacher(get_recipe(f"umt_{s}_ret_{n}")) for s, n in CASES)
    assert not needs_teacher(get_recipe("demo_retft")) and needs_teacher(get_recipe("umt_b16_25m"))
