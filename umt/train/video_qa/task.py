"""Video question answering (official ``multi_modality/tasks/vqa.py`` with ``models/umt_qa.py``), a task of the one
trainer.

:class:`VideoQATask` (``task = "video_qa"``) builds :class:`~umt.model.qa.UMTQA` (the student at the recipe's frames,
the stage-2 BERT split at ``text.fusion_layer``, the answer decoder) and initialises it from a stage-2 checkpoint
(``model.init_from``: ours or an official ``*_25m.pth``; :func:`umt.model.qa.load_stage2_into_qa`), as the official
fine-tuning does. Without one, the decoder is seeded from the BERT directory's own fusion layers and the student is
random (a loud warning). No teacher, no mask (the official QA configs: ``clip_teacher="none"``, mask ratio 0).

Its loader (:class:`QABatches`) reads (clip, question) rows of a QA shard directory (:class:`umt.data.qa.QALoader`)
and tokenises each question and its distinct answers (weights ``count / answers``) on the host. Optimiser
(official ``exp/finetuning/qa_*``): AdamW, betas (0.9, 0.999), weight decay 0.02 on ≥ 2-D weights, lr as given (not
batch-scaled), cosine after 1 warm-up epoch to 0.01 × lr, no clipping. Evaluation: accuracy on ``eval.shards``
(:func:`umt.eval.qa.qa_on_shards`, ``best.pt`` by it, the official ``stop_key``); the final one writes
``<run_dir>/qa.{json,md}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from umt.config import ConfigError, TrainConfig
from umt.model.text import TextEncoderError, resolve_text_dir
from umt.train.runtime import Runtime
from umt.train.task import Task, load_init_from, refuse_changed_input, register_task
from umt.train.video_qa.step import VideoQAStep

__all__ = ["VideoQATask", "QABatches"]

log = logging.getLogger(__name__)


class QABatches:
    """The training batches of a :class:`umt.data.qa.QALoader` with the questions and answers tokenised.

    ``epoch_iter`` yields ``{"video", "index", "q_ids" [B, L_q], "q_mask", "a_ids" [N, L_a], "a_mask", "owner" [N],
    "weights" [N]}`` on the loader's device (N: the distinct answers of the B questions).
    """

    def __init__(self, loader: Any, tokenizer: Any, max_question_len: int, max_answer_len: int,
                 device: torch.device) -> None:
        self.loader, self.tokenizer, self.device = loader, tokenizer, device
        self.max_q, self.max_a = max_question_len, max_answer_len
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        from umt.data.qa import answer_weights
        from umt.eval.qa import tokenize_answers, tokenize_questions

        for batch in self.loader.epoch_iter(epoch, start_batch):
            rows = [self.loader.rows[int(r)] for r in batch["row"]]
            q_ids, q_mask = tokenize_questions(self.tokenizer, [r.question for r in rows], self.max_q)
            answers, weights, owner = [], [], []
            for b, r in enumerate(rows):
                a, w = answer_weights(r.answers)
                answers += a
                weights += w
                owner += [b] * len(a)
            a_ids, a_mask = tokenize_answers(self.tokenizer, answers, self.max_a)
            dev = self.device
            yield {"video": batch["video"], "index": batch["index"].to(dev), "q_ids": q_ids.to(dev),
                   "q_mask": q_mask.to(dev), "a_ids": a_ids.to(dev), "a_mask": a_mask.to(dev),
                   "owner": torch.tensor(owner, dtype=torch.int64, device=dev),
                   "weights": torch.tensor(weights, dtype=torch.float32, device=dev)}

    def close(self) -> None:
        self.loader.close()


@register_task
class VideoQATask(Task):
    """Open-ended video QA: the answer language-model loss of the official ``UMT_QA``.

    Raises (from ``__init__``):
        ConfigError: a text encoder directory that is missing or not a BERT, a fusion layer out of range, a
            ``model.init_from`` file without a backbone or with another size.
    """

    name = "video_qa"
    metrics = ("loss",)
    #: accuracy on ``eval.shards`` picks ``best.pt`` (official ``stop_key``: the overall accuracy)
    eval_key = "accuracy"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        from umt.eval.qa import build_qa_model
        from umt.model.qa import load_stage2_into_qa

        try:
            model, self.text_info = build_qa_model(cfg, drop_path=cfg.model.drop_path)
        except TextEncoderError as e:
            raise ConfigError(str(e)) from None
        self.init_report: dict[str, Any] | None = None
        if cfg.model.init_from:
            rep, self.init_report = load_init_from(model, cfg.model.init_from, load_stage2_into_qa)
            n_text = sum(not k.startswith("student.") for k in rep["loaded"])
            log.info("init from %s: %d tensors loaded (%s), %d kept as built from the BERT directory (%s), %d file "
                     "keys unused", cfg.model.init_from, len(rep["loaded"]),
                     f"student + {n_text} text/decoder tensors, the decoder from the fusion layers" if n_text else
                     "the student only: no stage-2 text side in the file; the paper recipes start from stage 2",
                     len(rep["missing"]), ", ".join(rep["missing"][:4]) + (" ..." if len(rep["missing"]) > 4 else ""),
                     len(rep["dropped"]))
        else:
            log.warning("model.init_from is empty: QA starts from a RANDOM student; UMT fine-tunes QA from a stage-2 "
                        "checkpoint (set model.init_from)")
        self.model = model.to(rt.device)
        self._tokenizer: Any = None
        self._answers: list[str] | None = None

    @property
    def tokenizer(self) -> Any:
        """The text encoder directory's tokenizer (loaded once)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(resolve_text_dir(self.cfg.text.encoder)),
                                                            local_files_only=True)
        return self._tokenizer

    def answers(self) -> list[str]:
        """The candidate answers: ``qa.answer_list``, else every answer of the training shards, sorted (read once).

        Raises:
            ConfigError: the file is missing or not a JSON list of strings, or the training shards hold no questions.
        """
        if self._answers is not None:
            return self._answers
        path = self.cfg.qa.answer_list
        if not path:
            from umt.data.qa import answer_list, read_qa

            try:
                self._answers = answer_list(read_qa(self.cfg.data.shards))
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"data.shards {self.cfg.data.shards!r}: {str(e).splitlines()[0]}") from None
            return self._answers
        try:
            lst = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"qa.answer_list {path!r}: {e}") from None
        if not isinstance(lst, list) or not all(isinstance(a, str) for a in lst) or not lst:
            raise ConfigError(f"qa.answer_list {path!r} must be a JSON list of answer strings")
        self._answers = lst
        return lst

    # -------------------------------------------------------------------------------------------- building
    def build_loader(self) -> QABatches:
        """(clip, question) rows of ``data.shards`` (one QA shard directory), tokenised.

        Raises:
            ConfigError: the directory holds no questions, or too few for one batch per rank.
        """
        from umt.data.qa import QALoader

        cfg, rt = self.cfg, self.rt
        try:
            loader = QALoader(cfg.data, cfg.data.shards, rank=rt.rank, world_size=rt.world_size, device=rt.device)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"data.shards {cfg.data.shards!r}: {str(e).splitlines()[0]}") from None
        return QABatches(loader, self.tokenizer, cfg.qa.max_question_len, cfg.qa.max_answer_len, rt.device)

    def peak_lr(self, world_size: int) -> tuple[float, float]:
        """``(optim.lr, optim.min_lr)`` as given (the official QA lr is not batch-scaled; floor 0.01 × lr)."""
        return self.cfg.optim.lr, self.cfg.optim.min_lr

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> VideoQAStep:
        return VideoQAStep(net, optimizer, scheduler, self.cfg, self.rt.device, self.rt.amp_dtype)

    # ------------------------------------------------------------------------------------------ accounting
    def flops(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of ``batch`` (:func:`umt.flops.qa_train_flops` at its question and answer lengths;
        host-side shapes, no sync)."""
        from umt.flops import TextSpec, ViTSpec, qa_train_flops

        st, tx = self.model.student, self.model.text
        vit = ViTSpec(st.embed_dim, len(st.blocks), st.patch_size)
        text = TextSpec(tx.width, tx.depth, tx.depth - tx.fusion_layer, tx.vocab_size, tx.config.intermediate_size)
        q, a = batch["q_ids"].shape, batch["a_ids"].shape
        return qa_train_flops(vit, int(batch["video"].shape[2]), int(batch["video"].shape[-1]), text, int(q[0]),
                              int(q[1]), int(a[0]), int(a[1]))["total"]

    def record(self) -> dict[str, Any]:
        """The text encoder's provenance and what ``model.init_from`` loaded."""
        return {"text": self.text_info.to_dict(), "init_from": self.init_report}

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse to resume with another text encoder than the checkpoint's (``text.allow_change``).

        Raises:
            ConfigError: the text encoder's weights (sha256) differ from the checkpoint's record.
        """
        saved = state.get("text")
        now = self.text_info.to_dict()
        if not saved or saved.get("sha256") == now["sha256"]:
            return
        refuse_changed_input(path, "another text encoder", f"{saved.get('path')} → {now['path']}",
                             self.cfg.text.allow_change, "text.allow_change")

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        """QA accuracy on ``eval.shards`` (each rank its block of questions); the final evaluation also writes
        ``<run_dir>/qa.{json,md}``. None without ``eval.shards``."""
        cfg = self.cfg
        if not cfg.eval.shards:
            return None
        from umt.eval.qa import qa_on_shards, write_report

        metrics, preds = qa_on_shards(self.model, cfg.data, cfg.eval.shards,
                                      tokenizer_dir=resolve_text_dir(cfg.text.encoder), answers=self.answers(),
                                      k=cfg.qa.k_test, max_question_len=cfg.qa.max_question_len,
                                      max_answer_len=cfg.qa.max_answer_len, device=self.rt.device,
                                      amp_dtype=self.rt.amp_dtype, batch_size=cfg.eval.batch_size)
        if final and self.rt.is_main:
            write_report(out_dir, metrics, preds, {"shards": cfg.eval.shards, "final": True}, overwrite=True)
        flat = {"accuracy": metrics["accuracy"]}
        flat.update({f"accuracy_{t}": v["accuracy"] for t, v in metrics["per_type"].items()})
        return flat
