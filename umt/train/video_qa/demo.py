"""The QA demo, ``demo_qa``: the sample clips with three questions each about their labels, from the stage-2 demo's
checkpoint: accuracy on those questions before and after training."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umt.config import TrainConfig
from umt.train.demo import BeforeAfterDemo, Demo, DemoError, final_eval, newest_checkpoint, require_shards, same_path

__all__ = ["QADemo", "DEMO_STAGE2_RUN", "DEMOS"]

#: the stage-2 demo's run directory (``python -m umt.train --recipe demo_stage2 --run-dir runs/demo_stage2``)
DEMO_STAGE2_RUN = "runs/demo_stage2"


class QADemo(BeforeAfterDemo):
    """``demo_qa``: the sample QA shards (built into their default place only), ``model.init_from`` resolved to the
    stage-2 demo's newest checkpoint (that demo is run first, in its own process, when its default directory does
    not exist), accuracy before and after."""

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import DEFAULT_SAMPLE_QA_SHARDS, ensure_sample_qa_shards

        if any(same_path(d, DEFAULT_SAMPLE_QA_SHARDS) for d in (cfg.data.shards, cfg.eval.shards) if d):
            ensure_sample_qa_shards(DEFAULT_SAMPLE_QA_SHARDS)
        require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        init = Path(cfg.model.init_from) if cfg.model.init_from else None
        if init is None or init.is_file():
            return cfg
        ckpt = newest_checkpoint(init) if init.is_dir() else None
        if ckpt is None:
            if not same_path(init, DEMO_STAGE2_RUN) or init.exists():
                raise DemoError(f"model.init_from={init} is neither a checkpoint file nor a run directory with "
                                "checkpoints/step_*.pt")
            print(f"demo_qa: training the stage-2 demo into {init} first (python -m umt.train --recipe demo_stage2)",
                  flush=True)
            rc = subprocess.call([sys.executable, "-m", "umt.train", "--recipe", "demo_stage2", "--run-dir", str(init)])
            ckpt = newest_checkpoint(init)
            if rc != 0 or ckpt is None:
                raise DemoError(f"the stage-2 demo run into {init} failed (exit {rc}); see its messages above")
        cfg.model.init_from = str(ckpt)
        return cfg

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        if not before or not after:
            return []
        types = sorted(k[len("accuracy_"):] for k in after if k.startswith("accuracy_"))
        per = "; ".join(f"{t} {before.get('accuracy_' + t, float('nan')):.1f} → {after['accuracy_' + t]:.1f} %"
                        for t in types)
        return [f"QA accuracy on {cfg.eval.shards} (60 questions about the 20 clips' labels; answers ranked over "
                f"every answer of the set, k_test {cfg.qa.k_test}):",
                f"  overall: before {before['accuracy']:.1f} %, after {after['accuracy']:.1f} %",
                f"  per type: {per}"]


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo_qa": QADemo()}
