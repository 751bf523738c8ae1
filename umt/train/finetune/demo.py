"""The fine-tuning demo, ``demo_ft``: fine-tuning of the stage-1 demo checkpoint on the sample's labels (a fixed
per-class split of the clips): held-out top-1 before and after, and the k-NN probe of a random backbone beside the
stage-1 checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from umt.config import TrainConfig
from umt.train.demo import BeforeAfterDemo, Demo, final_eval, require_shards, resolve_init, same_path

__all__ = ["FinetuneDemo", "knn_side_by_side", "DEMOS"]


def knn_side_by_side(cfg: TrainConfig) -> str:
    """The k-NN probe on the held-out split, the training split as the bank, for a randomly
    initialised backbone and for the stage-1 checkpoint ``model.init_from``, side by side
    (:func:`umt.eval.probe.knn_probe_checkpoints`; ``eval.knn_k``, ``eval.knn_temperature``).

    Returns:
        One line to print (``k-NN top-1: random backbone X %, stage-1 checkpoint Y %``).
    """
    from umt.eval.probe import format_knn_table, knn_probe_checkpoints

    ev = cfg.eval
    res = knn_probe_checkpoints({"random backbone": None, "stage-1 checkpoint": cfg.model.init_from},
                                cfg.data.shards, ev.shards, arch=cfg.model.student, num_frames=cfg.data.num_frames,
                                input_size=cfg.data.input_size, batch_size=ev.batch_size, k=ev.knn_k,
                                temperature=ev.knn_temperature, device="cpu", seed=cfg.seed,
                                num_workers=cfg.data.num_workers)
    return format_knn_table(res)


class FinetuneDemo(BeforeAfterDemo):
    """``demo_ft``: the sample's train / held-out split (:mod:`umt.data.build.sample_splits`), the stage-1 demo checkpoint,
    held-out top-1 before and after, the k-NN side by side."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.sample_splits import DEFAULT_SPLIT_SHARDS, ensure_sample_splits

        train, held = Path(DEFAULT_SPLIT_SHARDS, "train"), Path(DEFAULT_SPLIT_SHARDS, "heldout")
        if same_path(cfg.data.shards, train) or (cfg.eval.shards and same_path(cfg.eval.shards, held)):
            ensure_sample_splits(DEFAULT_SPLIT_SHARDS)
        require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        fmt = lambda r: f"{r['top1']:.1f} %" if r and "top1" in r else "n/a"  # noqa: E731
        views = int(after.get("num_views", 1)) if after else 1
        return [f"held-out top-1 ({cfg.eval.shards}): {fmt(before)} before fine-tuning (stage-1 backbone, fresh "
                f"head), {fmt(after)} after ({views} view{'s' if views > 1 else ''} per clip, best.pt)",
                knn_side_by_side(cfg)]


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo_ft": FinetuneDemo()}
