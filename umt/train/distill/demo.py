"""The stage-1 demo, ``demo``: stage 1 on the embedded sample clips (the shards are built on first use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from umt.config import TrainConfig
from umt.train.demo import Demo, require_shards, same_path

__all__ = ["Stage1Demo", "DEMOS"]


class Stage1Demo(Demo):
    """``demo``: the sample clip shards (:func:`umt.data.build.samples.ensure_sample_shards`)."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import DEFAULT_SAMPLE_SHARDS, ensure_sample_shards

        if same_path(cfg.data.shards, DEFAULT_SAMPLE_SHARDS):
            ensure_sample_shards(DEFAULT_SAMPLE_SHARDS)
        require_shards(**{"data.shards": cfg.data.shards})
        return cfg


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo": Stage1Demo()}
