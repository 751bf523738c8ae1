"""Fine-tuned retrieval recipes: every number pinned against a table copied here from the official
``multi_modality/exp/finetuning/ret_*/b16_25m.py`` (lr, epochs, warm-up, caption length, drop path, frames, batch,
k_test), and each recipe's config carries them (no video masking, MLM and UTA weights 0)."""

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


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_numbers_are_official(name: str) -> None:
    from umt.train.video_text.retrieval_ft import RETRIEVAL_FT, retrieval_ft_recipe

    ft = RETRIEVAL_FT[name]
    assert (ft.lr, ft.epochs, ft.warmup_epochs, ft.max_len, ft.drop_path, ft.paragraph, ft.multi_video_gt) == \
        OFFICIAL[name]
    assert (ft.num_frames, ft.num_frames_test, ft.batch_size, ft.k_test) == (12, 12, 32, 128)
    cfg = retrieval_ft_recipe(name)
    assert cfg.task == "video_text" and cfg.data.num_frames == 12 and cfg.data.batch_size == 32
    assert cfg.mask.ratio == 0.0 and cfg.text.mlm_weight == 0.0 and cfg.text.uta_weight == 0.0
    assert cfg.text.vtc_weight == 1.0 and cfg.text.vtm_weight == 1.0 and cfg.text.max_len == OFFICIAL[name][3]
    assert cfg.optim.lr == OFFICIAL[name][0] and cfg.optim.min_lr == pytest.approx(OFFICIAL[name][0] * 0.01)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.weight_decay) == (*OFFICIAL[name][1:3], 0.02)
    assert cfg.model.drop_path == OFFICIAL[name][4] and cfg.eval.rerank_k == 128


def test_all_seven_and_no_others() -> None:
    from umt.train.video_text.retrieval_ft import RETRIEVAL_FT

    assert set(RETRIEVAL_FT) == set(OFFICIAL)
