"""The QA demo, ``demo_qa``: the sample clips with three questions each about their labels, from the stage-1 demo's
checkpoint and the MiniLM BERT: accuracy on those questions before and after training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from umt.config import TrainConfig
from umt.train.demo import BeforeAfterDemo, Demo, build_named_samples, final_eval, resolve_init

__all__ = ["QADemo", "DEMOS"]


class QADemo(BeforeAfterDemo):
    """``demo_qa``: the sample QA shards (built into their default place only), ``model.init_from`` resolved as every
    demo resolves it (:func:`umt.train.demo.resolve_init`: the stage-1 demo is trained first when ``runs/demo`` is
    absent; a stage-2 run directory or file works too), accuracy before and after."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import DEFAULT_SAMPLE_QA_SHARDS, ensure_sample_qa_shards

        build_named_samples(cfg, {DEFAULT_SAMPLE_QA_SHARDS: ensure_sample_qa_shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        if not before or not after:
            return []
        types = sorted(k[len("accuracy_"):] for k in after if k.startswith("accuracy_"))
        per = "; ".join(f"{t} {before.get('accuracy_' + t, float('nan')):.1f} → {after['accuracy_' + t]:.1f} %"
                        for t in types)
        return [f"QA accuracy on {cfg.eval.shards} (answers ranked over "
                f"{'every answer of the training shards' if not cfg.qa.answer_list else cfg.qa.answer_list}, k_test "
                f"{cfg.qa.k_test}):",
                f"  overall: before {before['accuracy']:.1f} %, after {after['accuracy']:.1f} %",
                f"  per type: {per}"]


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo_qa": QADemo()}
