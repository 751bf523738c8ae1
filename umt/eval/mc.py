"""Multiple-choice video-caption accuracy (MSR-VTT-MC protocol) of a stage-2 model, decoding the videos directly.

Each question is a video and n candidate captions (official MSR-VTT-MC: 5), one of them right. The official scoring
(``multi_modality/tasks/retrieval_mc.py``, ``main_with_ensemble`` and ``get_sim_for_each_question``), per question::

    sim[j]   = softmax_j( mean_t <unit frame embedding t, unit caption j embedding> / temp )   # over the n options
    match[j] = softmax(itm_head(fusion [CLS] of caption j with the video's tokens)) [1]         # "match" probability
    score[j] = 0.7 * match[j] + 0.3 * sim[j]

and the answer is ``argmax_j score[j]``; accuracy in percent. The frames are the per-frame pooled, projected and
normalised embeddings (:meth:`~umt.model.vision_text.UMTVisionText.encode_vision_frames`), the video's tokens all
frames concatenated (official ``eval_frame_ensemble="concat"``), the temperature the model's (clamped) ``temp``.
Frames and resizing: as :mod:`umt.eval.score` (the checkpoint's stage-2 test setting).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from umt.eval.common import autocast, check_free
from umt.eval.report import write_json_and_markdown

__all__ = ["MATCH_WEIGHT", "SIM_WEIGHT", "read_questions", "questions_from_annotations", "mc_scores", "evaluate_mc",
           "write_report"]

#: official weights of the match probability and of the similarity softmax (``retrieval_mc.py``)
MATCH_WEIGHT, SIM_WEIGHT = 0.7, 0.3


def questions_from_annotations(rows: Sequence[dict[str, Any]], num_options: int = 5,
                               seed: int = 0) -> list[dict[str, Any]]:
    """A multiple-choice set from a captioned annotation file (rows ``{"video", "caption": str or [str]}``): each
    video's first caption against ``num_options - 1`` first captions of other videos, the right one at a random
    place; deterministic in ``seed``.

    Raises:
        ValueError: fewer videos than ``num_options``.
    """
    if len(rows) < num_options:
        raise ValueError(f"{len(rows)} videos cannot make {num_options}-option questions")
    first = [r["caption"][0] if isinstance(r["caption"], list) else r["caption"] for r in rows]
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rows):
        others = rng.sample([j for j in range(len(rows)) if j != i], num_options - 1)
        answer = rng.randrange(num_options)
        opts = [first[j] for j in others]
        opts.insert(answer, first[i])
        out.append({"video": r["video"], "caption": opts, "answer": answer})
    return out


def read_questions(path: str | Path, num_options: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Questions from a JSON list or JSONL file of rows ``{"video", "caption": [options], "answer": int}`` (the
    official ``msrvtt_mc_test.json`` layout; ``options``/``candidates`` are accepted for ``caption``). A file of
    plain captioned rows (no ``answer``) becomes a set by :func:`questions_from_annotations`.

    Raises:
        ValueError: a row without options, an answer outside them, rows with different numbers of options.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    rows = ([json.loads(x) for x in text.splitlines() if x.strip()] if p.suffix.lower() == ".jsonl"
            else json.loads(text))
    if rows and all("answer" not in r for r in rows):
        return questions_from_annotations(rows, num_options, seed)
    out = []
    for i, r in enumerate(rows):
        opts = next((r[k] for k in ("caption", "options", "candidates") if isinstance(r.get(k), list)), None)
        if "video" not in r or not opts or not isinstance(r.get("answer"), int) or not 0 <= r["answer"] < len(opts):
            raise ValueError(f"{p} row {i + 1}: needs video, a list of options and an answer index into it")
        out.append({"video": r["video"], "caption": [str(o) for o in opts], "answer": int(r["answer"])})
    if not out:
        raise ValueError(f"{p}: no questions")
    if len({len(q["caption"]) for q in out}) != 1:
        raise ValueError(f"{p}: every question needs the same number of options")
    return out


@torch.no_grad()
def mc_scores(model: torch.nn.Module, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, num_options: int,
              *, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The official per-option scores (module docstring) of B questions.

    Args:
        video: ``[B, 3, T, H, W]`` normalised pixels.
        ids, mask: int64 ``[B·n, L]``: question b's options are rows ``b·n .. b·n + n - 1``.
        num_options: n.

    Returns:
        float32 ``[B, n]`` on the host: ``{"score", "match" (probability), "sim" (softmax over the options)}``.
    """
    b, n = video.shape[0], num_options
    with autocast(device, amp_dtype):
        vt, frames = model.encode_vision_frames(video.to(device))  # [B, K, C_v], [B, T, D] unit rows
        tt, te = model.encode_text(ids.to(device), mask.to(device))  # [B·n, L, C_t], [B·n, D]
        cos = torch.einsum("btd,bnd->btn", frames.float(), te.float().view(b, n, -1))  # [B, T, n]
        sim = F.softmax(cos.mean(dim=1) / model.temperature.float(), dim=1)  # [B, n]
        logits = model.match_logits(vt.repeat_interleave(n, dim=0), tt, mask.to(device))  # [B·n, 2]
    match = F.softmax(logits.float(), dim=1)[:, 1].view(b, n)  # [B, n]
    score = MATCH_WEIGHT * match + SIM_WEIGHT * sim
    return {"score": score.cpu(), "match": match.cpu(), "sim": sim.float().cpu()}


def evaluate_mc(model: torch.nn.Module, data_cfg: Any, video_dir: str | Path, questions: Sequence[dict[str, Any]], *,
                tokenizer_dir: str | Path, max_len: int, device: torch.device, amp_dtype: torch.dtype | None = None,
                batch_size: int = 8) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Accuracy over ``questions`` (:func:`read_questions`), videos decoded by :func:`umt.eval.score.load_video`.

    Returns:
        ``({"acc": percent, "acc_match_only": ..., "acc_sim_only": ..., "questions": N}, per-question rows)``; the
        two ablations rank by one term alone.

    Raises:
        ValueError: a missing or undecodable video (names it).
    """
    from umt.eval.retrieval import tokenize_captions
    from umt.eval.score import load_video

    model.eval()
    root = Path(video_dir)
    n = len(questions[0]["caption"])
    rows: list[dict[str, Any]] = []
    hits = {"score": 0, "match": 0, "sim": 0}
    for s in range(0, len(questions), batch_size):
        qs = questions[s:s + batch_size]
        for q in qs:
            if not (root / q["video"]).is_file():
                raise ValueError(f"{root / q['video']}: no such video")
        video = torch.stack([load_video(root / q["video"], data_cfg) for q in qs])  # [b, 3, T, S, S]
        ids, mask = tokenize_captions([c for q in qs for c in q["caption"]], tokenizer_dir, max_len)  # [b·n, L]
        out = mc_scores(model, video, ids, mask, n, device=device, amp_dtype=amp_dtype)
        for i, q in enumerate(qs):
            for k in hits:
                hits[k] += int(out[k][i].argmax()) == q["answer"]
            rows.append({"video": q["video"], "answer": q["answer"], "pred": int(out["score"][i].argmax()),
                         "scores": [round(x, 6) for x in out["score"][i].tolist()]})
    total = len(questions)
    metrics = {"acc": 100.0 * hits["score"] / total, "acc_match_only": 100.0 * hits["match"] / total,
               "acc_sim_only": 100.0 * hits["sim"] / total, "questions": total}
    return metrics, rows


def write_report(out_dir: str | Path, metrics: dict[str, float], rows: list[dict[str, Any]], info: dict[str, Any], *,
                 overwrite: bool = False) -> tuple[Path, Path]:
    """``<out_dir>/mc.json`` (metrics, settings, per-question predictions) and ``mc.md``, atomically.

    Raises:
        FileExistsError: a report exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    lines = ["# Multiple-choice video-caption accuracy", "", *(f"- {k}: {v}" for k, v in info.items()), "",
             "| scoring | accuracy (%) |", "|---|---|",
             f"| 0.7 match prob + 0.3 similarity softmax (official) | {metrics['acc']:.2f} |",
             f"| match probability only | {metrics['acc_match_only']:.2f} |",
             f"| similarity only | {metrics['acc_sim_only']:.2f} |", "",
             f"{metrics['questions']} questions.", ""]
    return write_json_and_markdown(out / "mc.json", out / "mc.md", {"metrics": metrics, **info, "predictions": rows},
                                   lines, overwrite=overwrite)


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="python -m umt.eval mc",
                                description="Multiple-choice caption accuracy of a stage-2 checkpoint (MSR-VTT-MC "
                                            "protocol: 0.7 match probability + 0.3 similarity softmax).")
    p.add_argument("--checkpoint", required=True, help="stage-2 checkpoint (ours or an official .pth)")
    p.add_argument("--videos", required=True, help="directory holding the questions' video files")
    p.add_argument("--questions", required=True,
                   help="JSON/JSONL rows {video, caption: [options], answer}; captioned rows without answers make "
                        "a set (first caption against --num-options - 1 others)")
    p.add_argument("--num-options", type=int, default=5, help="options per question when building a set (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of a built set")
    p.add_argument("--text-encoder", default=None, help="BERT directory (default: the run's text.encoder)")
    p.add_argument("--num-frames", type=int, default=None, help="test frames (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="write mc.json and mc.md here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m umt.eval mc ...``; returns the exit status (2: bad input, one line on stderr)."""
    import dataclasses
    import sys

    from umt.eval.retrieval import load_vision_text
    from umt.model.text import TextEncoderError, resolve_text_dir

    a = _parser().parse_args(argv)
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if a.out:
            check_free([Path(a.out) / "mc.json", Path(a.out) / "mc.md"], a.overwrite)
        questions = read_questions(a.questions, a.num_options, a.seed)
        model, cfg, state = load_vision_text(a.checkpoint, text_encoder=a.text_encoder, num_frames=a.num_frames)
        data = dataclasses.replace(cfg.data, num_frames=a.num_frames) if a.num_frames else cfg.data
        text_dir = resolve_text_dir(a.text_encoder or cfg.text.encoder)
        amp = torch.bfloat16 if device.type == "cuda" else None
        metrics, rows = evaluate_mc(model.to(device), data, a.videos, questions, tokenizer_dir=text_dir,
                                    max_len=cfg.text.max_len, device=device, amp_dtype=amp, batch_size=a.batch_size)
        info = {"checkpoint": str(a.checkpoint), "step": state.get("step"), "videos": str(a.videos),
                "questions_file": str(a.questions), "options": len(questions[0]["caption"]),
                "frames": data.num_frames, "input_size": data.input_size}
        paths = write_report(a.out, metrics, rows, info, overwrite=a.overwrite) if a.out else ()
    except (ValueError, FileNotFoundError, FileExistsError, TextEncoderError) as e:
        print(f"umt.eval mc: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"MC accuracy {metrics['acc']:.2f}% over {metrics['questions']} questions (match only "
          f"{metrics['acc_match_only']:.2f}%, similarity only {metrics['acc_sim_only']:.2f}%)")
    for path in paths:
        print(f"wrote {path}")
    return 0
