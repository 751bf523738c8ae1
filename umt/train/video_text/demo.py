"""The stage-2 demo, ``demo_stage2``: stage 2 from the stage-1 demo checkpoint on the sample clips and images with
their captions and the real MiniLM: zero-shot retrieval R@1 on the clips' captions before and after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from umt.config import TrainConfig
from umt.train.demo import BeforeAfterDemo, Demo, final_eval, require_shards, resolve_init, same_path

__all__ = ["VideoTextDemo", "DEMOS"]


class VideoTextDemo(BeforeAfterDemo):
    """``demo_stage2``: the sample clip and image shards with their captions, the stage-1 demo checkpoint, zero-shot
    retrieval on the clips' captions before and after training."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import (DEFAULT_SAMPLE_IMAGE_SHARDS, DEFAULT_SAMPLE_SHARDS, ensure_sample_image_shards,
                                      ensure_sample_shards)

        named = [d.strip() for d in cfg.data.shards.split(",")] + ([cfg.eval.shards] if cfg.eval.shards else [])
        if any(same_path(d, DEFAULT_SAMPLE_SHARDS) for d in named):
            ensure_sample_shards(DEFAULT_SAMPLE_SHARDS)
        if any(same_path(d, DEFAULT_SAMPLE_IMAGE_SHARDS) for d in named):
            ensure_sample_image_shards(DEFAULT_SAMPLE_IMAGE_SHARDS)
        require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        if not before or not after:
            return []
        from umt.data.captions import read_captions

        n_videos = len({i for i, _ in read_captions(cfg.eval.shards)})
        chance = 100.0 / n_videos
        line = lambda r, p: (f"text→video R@1 {r[p + 't2v_r1']:.1f} %, video→text R@1 {r[p + 'v2t_r1']:.1f} %")  # noqa: E731
        return [f"zero-shot retrieval on {cfg.eval.shards} ({n_videos} clips, their captions; text→video chance "
                f"{chance:.1f} %):",
                f"  dual encoder:  before {line(before, 'emb_')}; after {line(after, 'emb_')}",
                f"  VTM re-ranked (top {cfg.eval.rerank_k}): before {line(before, '')}; after {line(after, '')}"]


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo_stage2": VideoTextDemo()}
