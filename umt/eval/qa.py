"""``python -m umt.eval qa``: open-ended video-QA accuracy of a QA checkpoint on a QA shard directory.

Protocol (official ``multi_modality/tasks/vqa.py``, ``evaluation``, and ``tasks/vqa_utils.py``,
``eval_simple_qa_acc``): the question is preprocessed as in training (``pre_text``) and tokenised (at most
``qa.max_question_len`` tokens); every answer of the list is tokenised as ``"answer [SEP]"`` (``qa.max_answer_len``);
:meth:`umt.model.qa.UMTQA.rank_answers` keeps the ``k_test`` answers with the most probable first token and returns
the best after re-ranking by full likelihood. A prediction is correct when it equals the question's answer
(exact string match; a question annotated with several answers counts any of them). Accuracy is in percent.

Per question type: the annotation's ``answer_type``/``question_type`` when the data set has one (ActivityNet-QA);
otherwise the question's first word when it is one of what, who, how, when, where (the breakdown usually reported for
MSRVTT-QA and MSVD-QA), else ``other``. The official code reports only the overall figure; the per-type table is
ours.

Outputs (``--out DIR``, through :mod:`umt.fileio`): ``qa.json`` (metrics, per type, every prediction, provenance)
and ``qa.md``; an existing report is refused without ``--overwrite``. Under torchrun each rank answers its block of
questions; the predictions are gathered once at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from umt.eval.common import autocast, check_free, dist_info
from umt.eval.report import write_json_and_markdown

__all__ = ["WH_WORDS", "question_type", "qa_accuracy", "tokenize_questions", "tokenize_answers", "build_qa_model",
           "official_qa_config", "load_qa", "predict", "qa_on_shards", "write_report", "main"]

#: first words that name a question type when the annotation has none
WH_WORDS = ("what", "who", "how", "when", "where")


def question_type(question: str, annotated: str = "") -> str:
    """The annotation's type, else the question's first word among :data:`WH_WORDS`, else ``"other"``."""
    if annotated:
        return annotated
    words = question.strip().lower().split()
    return words[0] if words and words[0] in WH_WORDS else "other"


def qa_accuracy(truth: Sequence[tuple[Sequence[str], str, str]], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy of ``predictions`` against ``truth`` rows ``(answers, question, annotated type)``.

    Returns:
        ``{"accuracy": %, "questions": n, "correct": c, "per_type": {type: {"accuracy": %, "questions", "correct"}}}``
        (types sorted by name).

    Raises:
        ValueError: the two lists differ in length, or are empty.
    """
    if len(truth) != len(predictions) or not truth:
        raise ValueError(f"{len(predictions)} predictions for {len(truth)} questions")
    per: dict[str, list[int]] = {}
    correct = 0
    for (answers, question, kind), pred in zip(truth, predictions):
        ok = int(pred in answers)
        correct += ok
        c = per.setdefault(question_type(question, kind), [0, 0])
        c[0] += ok
        c[1] += 1
    return {"accuracy": 100.0 * correct / len(truth), "questions": len(truth), "correct": correct,
            "per_type": {t: {"accuracy": 100.0 * c / n, "questions": n, "correct": c}
                         for t, (c, n) in sorted(per.items())}}


def tokenize_questions(tokenizer: Any, questions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Questions after ``pre_text`` as ``[CLS] ... [SEP]``, at most ``max_len`` tokens, padded to the longest:
    ``(ids int64 [B, L], mask int64 [B, L])``."""
    from umt.data.captions import pre_text

    t = tokenizer([pre_text(q) for q in questions], padding="longest", truncation=True, max_length=max_len,
                  return_tensors="pt")
    return t["input_ids"].long(), t["attention_mask"].long()


def tokenize_answers(tokenizer: Any, answers: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers as the official code feeds the decoder, ``answer + " [SEP]"`` (the tokenizer adds ``[CLS]`` and a
    second ``[SEP]``), at most ``max_len`` tokens: ``(ids int64 [N, L], mask int64 [N, L])``."""
    t = tokenizer([f"{a} {tokenizer.sep_token}" for a in answers], padding="longest", truncation=True,
                  max_length=max_len, return_tensors="pt")
    return t["input_ids"].long(), t["attention_mask"].long()


def build_qa_model(cfg: Any, *, text_encoder: str | None = None, num_frames: int | None = None,
                   drop_path: float = 0.0) -> tuple[torch.nn.Module, Any]:
    """A :class:`~umt.model.qa.UMTQA` of the sizes ``cfg`` (a run's :class:`~umt.config.TrainConfig`) names: the
    student at ``data.num_frames`` × ``data.input_size`` (every token kept), the BERT of ``text.encoder`` split at
    ``text.fusion_layer``, the decoder seeded from the encoder's fusion layers, embeddings and MLM head
    (:func:`umt.model.qa.init_decoder_from_text`).

    Returns:
        ``(model, text_info)`` (:class:`umt.model.text.TextEncoderInfo`).

    Raises:
        umt.model.text.TextEncoderError: the directory is missing or not a BERT, or the fusion layer is out of range.
    """
    import timm

    import umt.model  # noqa: F401 - registers the umt_vit_* names
    from umt.model.qa import UMTQA, init_decoder_from_text
    from umt.model.text import build_text_encoder

    d, m, t = cfg.data, cfg.model, cfg.text
    student = timm.create_model(m.student, num_frames=num_frames or d.num_frames, img_size=d.input_size,
                                drop_path_rate=drop_path)
    text, info = build_text_encoder(text_encoder or t.encoder, t.fusion_layer, student.embed_dim,
                                    grad_checkpointing=t.grad_checkpointing)
    text_state = {k: v.clone() for k, v in text.state_dict().items()}
    model = UMTQA(student, text)
    init_decoder_from_text(model, text_state)
    return model, info


def official_qa_config(meta: dict[str, int], path: str, text_encoder: str | None, num_frames: int | None) -> Any:
    """The run config of an official QA file: its ViT (``umt_vit_*`` by width × depth), its BERT split, the official
    QA test view (``exp/finetuning/qa_*``: 12 frames × 224², the segment middles, the whole frame resized).

    Raises:
        ValueError: no ``text_encoder`` directory given (the file holds no tokenizer), or a ViT of no registered size.
    """
    from umt.config import ModelConfig, QAConfig, TextConfig, TrainConfig
    from umt.data.config import DataConfig
    from umt.model.official import arch_for

    if not text_encoder:
        raise ValueError(f"{path} is an official QA file: pass --text-encoder (a local bert-base-uncased / "
                         "bert-large-uncased directory) for its tokenizer and BERT config")
    arch = arch_for(meta["width"], meta["depth"])
    if arch is None:
        raise ValueError(f"{path}: a ViT of width {meta['width']} and depth {meta['depth']} has no umt_vit_* name")
    return TrainConfig(task="video_qa", data=DataConfig(num_frames=num_frames or 12, input_size=224,
                                                        sampling="rand_middle", eval_crop="resize", interp="bicubic"),
                       model=ModelConfig(student=arch, drop_path=0.0),
                       text=TextConfig(encoder=text_encoder, fusion_layer=meta["fusion_layer"]), qa=QAConfig())


def load_qa(checkpoint: str | Path, *, text_encoder: str | None = None,
            num_frames: int | None = None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """A QA checkpoint (``step_*.pt`` or ``best.pt`` of task ``video_qa``, or a released official ``qa_*.pth``,
    read through :func:`umt.model.qa.from_official_qa` with ``text_encoder`` required) as ``(model, cfg, state)``,
    loaded strictly.

    Raises:
        ValueError: no such file, or not a QA checkpoint (one line naming the task it holds).
    """
    from umt.config import config_from_dict

    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line for the user
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    from umt.model.official import unwrap
    from umt.model.qa import from_official_qa, is_official_qa

    sd = unwrap(state) if isinstance(state, dict) else None
    if sd is not None and is_official_qa(sd):  # a released qa_*.pth: our keys, sizes read off the tensors
        model_sd, meta = from_official_qa(sd, str(path))
        cfg = official_qa_config(meta, str(path), text_encoder, num_frames)
        model, _ = build_qa_model(cfg, text_encoder=text_encoder)
        model.load_state_dict(model_sd, strict=True)
        return model, cfg, {"step": None, "official": True}
    if not isinstance(state, dict) or state.get("task") != "video_qa" or "config" not in state:
        task = state.get("task") if isinstance(state, dict) else None
        raise ValueError(f"{path} is not a video-QA checkpoint (task {task!r}); train one with a qa_* recipe from a "
                         "stage-2 checkpoint")
    cfg = config_from_dict(state["config"])
    model, _ = build_qa_model(cfg, text_encoder=text_encoder, num_frames=num_frames)
    model.load_state_dict(state["model"], strict=True)
    return model, cfg, state


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, tokenizer: Any, answers: Sequence[str], *, k: int,
            max_question_len: int, max_answer_len: int, device: torch.device,
            amp_dtype: torch.dtype | None) -> dict[int, str]:
    """The predicted answer of every question ``loader`` (a :class:`umt.data.qa.QALoader` in evaluation mode) yields
    on this rank: ``{row id: answer}``."""
    a_ids, a_mask = (x.to(device) for x in tokenize_answers(tokenizer, answers, max_answer_len))
    out: dict[int, str] = {}
    for batch in loader.epoch_iter(0):
        rows = [int(r) for r in batch["row"]]
        q_ids, q_mask = (x.to(device) for x in tokenize_questions(tokenizer, [loader.rows[r].question for r in rows],
                                                                  max_question_len))
        video = batch["video"].to(device)
        with autocast(device, amp_dtype):
            best = model.predict(video if amp_dtype else video.float(), q_ids, q_mask, a_ids, a_mask, k)  # [B]
        out.update({r: answers[int(i)] for r, i in zip(rows, best.tolist())})
    return out


def qa_on_shards(model: torch.nn.Module, data_cfg: Any, shards: str | Path, *, tokenizer_dir: str | Path,
                 answers: Sequence[str] | None, k: int, max_question_len: int, max_answer_len: int,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 batch_size: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer every question of ``shards`` (each rank its block) and score them (every rank gets the result).

    Args:
        data_cfg: the run's :class:`~umt.data.config.DataConfig` (frames, size, normalisation); read in evaluation
            mode (the middle frame of each segment, the whole frame resized).
        answers: the candidate list; None: every answer of ``shards``, sorted (:func:`umt.data.qa.answer_list`).

    Returns:
        ``(metrics, predictions)``: :func:`qa_accuracy`'s dict plus ``"answers"`` (candidates) and ``"k"``, and one
        ``{"question_id", "question", "answer", "prediction", "type"}`` per question in shard order.
    """
    from transformers import AutoTokenizer

    from umt.data.qa import QALoader, answer_list

    cfg = dataclasses.replace(data_cfg, shards=str(shards), train=False, batch_size=batch_size, flip=False,
                              num_sample=1, drop_last=False)
    rank, world = dist_info()
    loader = QALoader(cfg, shards, rank=rank, world_size=world, device=device)
    try:
        cands = list(answers) if answers is not None else answer_list(loader.rows)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        mine = predict(model, loader, tok, cands, k=k, max_question_len=max_question_len,
                       max_answer_len=max_answer_len, device=device, amp_dtype=amp_dtype)
    finally:
        loader.close()
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, mine)
        mine = {r: a for p in parts for r, a in p.items()}
    rows = loader.rows
    if len(mine) != len(rows):
        raise RuntimeError(f"{len(mine)} answers for {len(rows)} questions")
    preds = [mine[i] for i in range(len(rows))]
    metrics = qa_accuracy([(r.answers, r.question, r.type) for r in rows], preds)
    metrics.update(answers=len(cands), k=min(k, len(cands)))
    table = [{"question_id": r.question_id, "question": r.question, "answer": list(r.answers), "prediction": p,
              "type": question_type(r.question, r.type)} for r, p in zip(rows, preds)]
    return metrics, table


def write_report(out_dir: str | Path, metrics: dict[str, Any], predictions: list[dict[str, Any]],
                 info: dict[str, Any], *, overwrite: bool = False, name: str = "qa") -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` and ``.md`` (atomic).

    Raises:
        FileExistsError: a report of that name exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    lines = [f"# Video QA: {info.get('shards', '')}", "",
             *(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, (dict, list))), "",
             f"Accuracy **{metrics['accuracy']:.2f} %** ({metrics['correct']} of {metrics['questions']} questions; "
             f"{metrics['answers']} candidate answers, k_test {metrics['k']}).", "",
             "| question type | questions | correct | accuracy (%) |", "|---|---|---|---|",
             *(f"| {t} | {v['questions']} | {v['correct']} | {v['accuracy']:.2f} |"
               for t, v in metrics["per_type"].items()), ""]
    return write_json_and_markdown(out / f"{name}.json", out / f"{name}.md",
                                   {"metrics": metrics, **info, "predictions": predictions}, lines, overwrite=overwrite)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m umt.eval qa", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a video_qa checkpoint (step_*.pt or best.pt)")
    p.add_argument("--shards", required=True, help="a QA shard directory (make_shards on a QA annotation file)")
    p.add_argument("--out", default="", help="write qa.json and qa.md here")
    p.add_argument("--answer-list", default="", help="JSON list of candidate answers (default: the run's "
                   "qa.answer_list, else every answer of --shards)")
    p.add_argument("--k", type=int, default=0, help="k_test (default: the run's qa.k_test)")
    p.add_argument("--text-encoder", default="",
                   help="BERT directory for the tokenizer and config (default: the run's)")
    p.add_argument("--num-frames", type=int, default=0, help="test frames (default: the run's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m umt.eval qa ...``; returns the exit status (2: bad input, one line on stderr)."""
    from umt.eval.common import close_distributed, init_distributed
    from umt.model.text import TextEncoderError, resolve_text_dir

    a = _parser().parse_args(argv)
    ctx = init_distributed(a.device)
    device = ctx.device
    try:
        if a.out and ctx.rank == 0:
            check_free([Path(a.out) / "qa.json", Path(a.out) / "qa.md"], a.overwrite)
        model, cfg, state = load_qa(a.checkpoint, text_encoder=a.text_encoder or None, num_frames=a.num_frames or None)
        data = dataclasses.replace(cfg.data, num_frames=a.num_frames) if a.num_frames else cfg.data
        lst = a.answer_list or cfg.qa.answer_list
        answers = json.loads(Path(lst).read_text()) if lst else None
        amp = torch.bfloat16 if device.type == "cuda" else None
        metrics, preds = qa_on_shards(model.to(device).eval(), data, a.shards,
                                      tokenizer_dir=resolve_text_dir(a.text_encoder or cfg.text.encoder),
                                      answers=answers, k=a.k or cfg.qa.k_test,
                                      max_question_len=cfg.qa.max_question_len, max_answer_len=cfg.qa.max_answer_len,
                                      device=device, amp_dtype=amp, batch_size=a.batch_size)
        info = {"checkpoint": str(a.checkpoint), "step": state.get("step"), "shards": str(a.shards),
                "answer_list": lst or "(every answer of the shards)", "frames": data.num_frames,
                "input_size": data.input_size}
        paths = write_report(a.out, metrics, preds, info, overwrite=a.overwrite) if a.out and ctx.rank == 0 else ()
    except (ValueError, FileNotFoundError, FileExistsError, TextEncoderError) as e:
        print(f"umt.eval qa: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        close_distributed(ctx)
    if ctx.rank == 0:
        types = ", ".join(f"{t} {v['accuracy']:.1f}%" for t, v in metrics["per_type"].items())
        print(f"QA accuracy {metrics['accuracy']:.2f}% over {metrics['questions']} questions ({types})")
        for path in paths:
            print(f"wrote {path}")
    return 0
