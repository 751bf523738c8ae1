"""The stage-2 demo, ``demo_stage2``: stage 2 from the stage-1 demo checkpoint on the sample clips and images with
their captions and the real MiniLM: zero-shot retrieval R@1 on the clips' captions before and after; and
``demo_retft``, teacher-free fine-tuned retrieval from the stage-2 demo checkpoint with retrieval and
multiple-choice accuracy before and after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from umt.config import TrainConfig
from umt.train.checkpoint import run_dir_in_use
from umt.train.demo import (BeforeAfterDemo, Demo, DemoError, build_named_samples, final_eval, newest_checkpoint,
                            require_shards, resolve_init, same_path)

__all__ = ["VideoTextDemo", "RetrievalFTDemo", "mc_accuracy", "MC_DEMO_QUESTIONS", "DEMOS"]


class VideoTextDemo(BeforeAfterDemo):
    """``demo_stage2``: the sample clip and image shards with their captions, the stage-1 demo checkpoint, zero-shot
    retrieval on the clips' captions before and after training."""

    #: what the report calls the retrieval it measures
    title = "zero-shot retrieval"

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[[Path], int]) -> TrainConfig:
        from umt.data.build.samples import (DEFAULT_SAMPLE_IMAGE_SHARDS, DEFAULT_SAMPLE_SHARDS, ensure_sample_image_shards,
                                      ensure_sample_shards)

        build_named_samples(cfg, {DEFAULT_SAMPLE_SHARDS: ensure_sample_shards,
                                  DEFAULT_SAMPLE_IMAGE_SHARDS: ensure_sample_image_shards})
        return resolve_init(cfg, train_stage1)

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        after = final_eval(run_dir)
        if not before or not after:
            return []
        from umt.data.captions import read_captions

        n_videos = len({i for i, _ in read_captions(cfg.eval.shards)})
        chance = 100.0 / n_videos
        line = lambda r, p: (f"text→video R@1 {r[p + 't2v_r1']:.1f} %, video→text R@1 {r[p + 'v2t_r1']:.1f} %")  # noqa: E731
        return [f"{self.title} on {cfg.eval.shards} ({n_videos} clips, their captions; text→video chance "
                f"{chance:.1f} %):",
                f"  dual encoder:  before {line(before, 'emb_')}; after {line(after, 'emb_')}",
                f"  VTM re-ranked (top {cfg.eval.rerank_k}): before {line(before, '')}; after {line(after, '')}"]


#: the multiple-choice demo set: each sample clip's first caption against four others' (made once from
#: ``shards/samples/annotations.jsonl`` by :func:`umt.eval.mc.questions_from_annotations`, 5 options, seed 0)
MC_DEMO_QUESTIONS = "shards/samples/mc_demo.jsonl"
#: where the sample clips lie (the MC evaluation decodes them directly)
SAMPLE_VIDEOS = "shards/samples"
#: the stage-2 demo's default run directory, ``demo_retft``'s default ``model.init_from``
DEMO_STAGE2_RUN = "runs/demo_stage2"


def mc_accuracy(model: Any, cfg: TrainConfig) -> dict[str, float]:
    """Multiple-choice accuracy of ``model`` on :data:`MC_DEMO_QUESTIONS` (:func:`umt.eval.mc.evaluate_mc`, the
    official 0.7 · match + 0.3 · similarity score), CPU, the run's test frames."""
    import torch

    from umt.eval.mc import evaluate_mc, read_questions
    from umt.model.text import resolve_text_dir

    questions = read_questions(MC_DEMO_QUESTIONS)
    metrics, _ = evaluate_mc(model, cfg.data, SAMPLE_VIDEOS, questions,
                             tokenizer_dir=resolve_text_dir(cfg.text.encoder), max_len=cfg.text.max_len,
                             device=torch.device("cpu"))
    return metrics


class RetrievalFTDemo(VideoTextDemo):
    """``demo_retft``: teacher-free fine-tuned retrieval from the stage-2 demo checkpoint (trained first into
    ``runs/demo_stage2`` when absent) on the sample clips; retrieval and multiple-choice accuracy before and after."""

    title = "retrieval"

    def prepare(self, cfg: TrainConfig, train_stage1: Callable[..., int]) -> TrainConfig:
        from umt.data.build.samples import DEFAULT_SAMPLE_SHARDS, ensure_sample_shards

        if any(same_path(d, DEFAULT_SAMPLE_SHARDS) for d in (cfg.data.shards, cfg.eval.shards)):
            ensure_sample_shards(DEFAULT_SAMPLE_SHARDS)
        require_shards(**{"data.shards": cfg.data.shards, "eval.shards": cfg.eval.shards})
        init = Path(cfg.model.init_from) if cfg.model.init_from else None
        if init is not None and same_path(init, DEMO_STAGE2_RUN) and newest_checkpoint(init) is None:
            if run_dir_in_use(init):
                raise DemoError(f"{init} holds a stage-2 run without checkpoints: finish it with `python -m umt.train "
                                f"--recipe demo_stage2 --run-dir {init} --resume auto`, or pass "
                                "--set model.init_from=FILE")
            rc = train_stage1(init, "demo_stage2")
            if rc != 0 or newest_checkpoint(init) is None:
                raise DemoError(f"the stage-2 demo run into {init} failed (exit {rc}); see its messages above")
        return resolve_init(cfg, train_stage1)

    def before(self, trainer: Any) -> Any:
        task = trainer.task
        retrieval = super().before(trainer)
        try:
            return {"retrieval": retrieval, "mc": mc_accuracy(task.model, task.cfg)}
        finally:
            task.model.train()

    def report(self, cfg: TrainConfig, before: Any, run_dir: str | Path) -> list[str]:
        lines = super().report(cfg, before["retrieval"], run_dir)
        ckpt = newest_checkpoint(run_dir)
        if ckpt is None:
            return lines
        from umt.eval.retrieval import load_vision_text

        model, _, _ = load_vision_text(ckpt)
        after = mc_accuracy(model, cfg)
        b = before["mc"]
        return lines + [f"multiple choice ({MC_DEMO_QUESTIONS}: {after['questions']:.0f} clips, each clip's caption "
                        f"against four others; chance 20.0 %): before {b['acc']:.1f} %, after {after['acc']:.1f} % "
                        f"(match only {b['acc_match_only']:.1f} → {after['acc_match_only']:.1f} %, similarity only "
                        f"{b['acc_sim_only']:.1f} → {after['acc_sim_only']:.1f} %)"]


#: recipe name → its demo hooks
DEMOS: dict[str, Demo] = {"demo_stage2": VideoTextDemo(), "demo_retft": RetrievalFTDemo()}
