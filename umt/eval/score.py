"""UMTScore: a video-text alignment score per (video, caption) pair from a stage-2 model's match (VTM) head, read
straight from a directory of video files (no shard building), as text-to-video benchmarks use it.

Which number, and the sources:

* FETV (Liu et al., NeurIPS 2023 Datasets and Benchmarks, repository ``llyx97/FETV``) introduced UMTScore, but its
  public repository holds no scoring code (data, figures and the video-QA answers only; checked at commit
  ``127282c``). The public implementation that follows it, ChronoMagic-Bench (``PKU-YuanGroup/ChronoMagic-Bench``,
  ``UMT/main/tasks/t2v_eval_utils.py``, ``evaluation`` and ``evaluation_wrapper``), fuses each caption only with its
  own video (``topk_idx = [i]``) and takes ``model.itm_head(itm_embeds)[:, 1]``: the **raw "match" logit of the
  VTM head** over the ``[CLS]`` of the fusion layers, no softmax; the reported UMTScore is the diagonal and its
  mean (published values near 2.8 confirm a logit, not a probability). That is ``score`` here
  (:meth:`~umt.model.vision_text.UMTVisionText.match_logits` ``[:, 1]``).
* ``match_prob`` is the same head's softmax probability of "match", ``softmax(logits)[1] = sigmoid(l1 - l0)``, the
  normalisation the official multiple-choice evaluation uses (``multi_modality/tasks/retrieval_mc.py``); reported
  alongside because it is bounded and comparable across checkpoints.

Frames: the checkpoint's stage-2 test setting (``data.num_frames``, 4 for the official stage-2 models; the
ChronoMagic-Bench configuration uses 12 frames of a fine-tuned UMT-L, ``--num-frames 12``), segment middles
(``data.sampling`` with no draws), the whole frame resized to ``input_size`` (``data.eval_crop``, official
``resize``), ``data.interp``, ImageNet normalisation, as :func:`umt.data.reference.augment_clip`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umt.eval.common import autocast, check_free
from umt.eval.report import write_json_and_markdown

__all__ = ["read_prompts", "count_frames", "load_video", "match_scores", "score_pairs", "write_scores"]

#: the columns a captions file may name the video and the text by (first found wins)
VIDEO_KEYS = ("video", "video_path", "path", "file", "filename")
TEXT_KEYS = ("caption", "prompt", "text")


def _row_pairs(row: dict[str, Any], where: str) -> list[tuple[str, str]]:
    video = next((row[k] for k in VIDEO_KEYS if row.get(k) not in (None, "")), None)
    text = next((row[k] for k in TEXT_KEYS if row.get(k) not in (None, "")), None)
    if video is None or text is None:
        raise ValueError(f"{where}: a row needs a video ({'/'.join(VIDEO_KEYS)}) and a caption "
                         f"({'/'.join(TEXT_KEYS)}), got keys {sorted(row)}")
    texts = text if isinstance(text, list) else [text]
    return [(str(video), str(t)) for t in texts]


def read_prompts(path: str | Path) -> list[tuple[str, str]]:
    """``(video file, caption)`` pairs, in file order, from a JSON, JSONL or CSV captions file.

    JSON: an object ``{video: caption or [captions]}`` or a list of rows; JSONL: one row per line; CSV: a header with
    a video column (:data:`VIDEO_KEYS`) and a caption column (:data:`TEXT_KEYS`). A row whose caption is a list gives
    one pair per caption.

    Raises:
        ValueError: an unreadable file, a row without video or caption, or no pairs at all.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    rows: list[dict[str, Any]]
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif p.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(obj, dict):
            rows = [{"video": k, "caption": v} for k, v in obj.items()]
        elif isinstance(obj, list):
            rows = obj
        else:
            raise ValueError(f"{p}: expected an object or a list of rows, got {type(obj).__name__}")
    pairs = [pair for i, r in enumerate(rows) for pair in _row_pairs(r, f"{p} row {i + 1}")]
    if not pairs:
        raise ValueError(f"{p}: no (video, caption) pairs")
    return pairs


def count_frames(data: bytes) -> int:
    """Video frames of the first video stream, counted by demuxing (no decoding): one non-empty packet per frame.

    Raises:
        ValueError: no video stream.
    """
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        return sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)


def load_video(path: str | Path, data_cfg: Any) -> torch.Tensor:
    """One video file as the stage-2 test pipeline presents it: ``float32 [3, T, S, S]`` normalised pixels
    (T = ``data_cfg.num_frames``, S = ``input_size``; module docstring).

    Raises:
        ValueError: no video stream, or fewer decodable frames than the container holds (names the file).
    """
    import dataclasses

    from umt.data.clips import ClipParams, clip_windows
    from umt.data.decode import decode_sampled
    from umt.data.reference import augment_clip
    from umt.data.sampling import frame_indices

    cfg = dataclasses.replace(data_cfg, train=False, num_sample=1)
    data = Path(path).read_bytes()
    try:
        n = count_frames(data)
        if n < 1:
            raise ValueError("no frames")
        ind = frame_indices(n, cfg.num_frames, None, cfg.sampling)  # [T] segment middles
        frames = decode_sampled(data, ind)  # [T, H, W, 3] uint8
    except Exception as e:  # PyAV raises its own error types on damaged input
        raise ValueError(f"{path}: cannot decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    window = clip_windows(cfg, frames.shape[2], frames.shape[1], ClipParams(None, ()))[0]
    return augment_clip(frames, cfg, window)


@torch.no_grad()
def match_scores(model: torch.nn.Module, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *,
                 device: torch.device, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """VTM logits of each video with each of its own captions.

    Args:
        video: ``[B, 3, T, H, W]`` normalised pixels.
        ids, mask: int64 ``[B, L]`` captions (row b goes with video b).

    Returns:
        float32 ``[B, 2]`` on the host: the match head's logits (column 1 = match).
    """
    with autocast(device, amp_dtype):
        vt, _ = model.encode_vision(video.to(device), None)  # [B, K, C_v] every token, frames concatenated
        tt, _ = model.encode_text(ids.to(device), mask.to(device))  # [B, L, C_t]
        logits = model.match_logits(vt, tt, mask.to(device))  # [B, 2]
    return logits.float().cpu()


def score_pairs(model: torch.nn.Module, data_cfg: Any, video_dir: str | Path, pairs: Sequence[tuple[str, str]], *,
                tokenizer_dir: str | Path, max_len: int, device: torch.device, amp_dtype: torch.dtype | None = None,
                batch_size: int = 8) -> list[dict[str, Any]]:
    """UMTScore of every pair (module docstring); each video is decoded once however many captions it has.

    Returns:
        one row per pair, in order: ``{"video", "caption", "score" (match logit), "match_prob"}``.

    Raises:
        ValueError: a video missing or undecodable (names it).
    """
    from umt.eval.retrieval import tokenize_captions

    model.eval()
    root = Path(video_dir)
    missing = sorted({v for v, _ in pairs if not (root / v).is_file()})
    if missing:
        raise ValueError(f"{root / missing[0]}: no such video ({len(missing)} of the captions file's videos missing)")
    ids, mask = tokenize_captions([c for _, c in pairs], tokenizer_dir, max_len)  # [N, L]
    cache: dict[str, torch.Tensor] = {}
    out: list[dict[str, Any]] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        # only this chunk's videos stay decoded: rows of one video are usually adjacent, so a video spanning two
        # chunks is decoded once
        cache = {v: cache[v] if v in cache else load_video(root / v, data_cfg)
                 for v in dict.fromkeys(w for w, _ in chunk)}
        video = torch.stack([cache[v] for v, _ in chunk])  # [b, 3, T, S, S]
        logits = match_scores(model, video, ids[s:s + len(chunk)], mask[s:s + len(chunk)], device=device,
                              amp_dtype=amp_dtype)  # [b, 2]
        prob = logits.softmax(dim=1)[:, 1]
        for (v, c), lg, p in zip(chunk, logits[:, 1].tolist(), prob.tolist()):
            out.append({"video": v, "caption": c, "score": lg, "match_prob": p})
    return out


def write_scores(out: str | Path, rows: list[dict[str, Any]], info: dict[str, Any], *,
                 overwrite: bool = False) -> tuple[Path, Path]:
    """``<out>.json`` (every pair and the summary) and ``<out>.md`` (a table), atomically.

    Raises:
        FileExistsError: either file exists and ``overwrite`` is False.
    """
    base = Path(out)
    js, md = base.with_suffix(".json"), base.with_suffix(".md")
    summary = {"pairs": len(rows), "mean_score": float(np.mean([r["score"] for r in rows])),
               "mean_match_prob": float(np.mean([r["match_prob"] for r in rows]))}

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["# UMTScore", "", *(f"- {k}: {v}" for k, v in info.items()), "",
             f"Mean UMTScore (VTM match logit) over {len(rows)} pairs: **{summary['mean_score']:.4f}**; mean match "
             f"probability {summary['mean_match_prob']:.4f}", "",
             "| video | caption | UMTScore (logit) | match prob |", "|---|---|---|---|",
             *(f"| {cell(r['video'])} | {cell(r['caption'])} | {r['score']:.4f} | {r['match_prob']:.4f} |"
               for r in rows), ""]
    return write_json_and_markdown(js, md, {"summary": summary, **info, "scores": rows}, lines, overwrite=overwrite)


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="python -m umt.eval score",
                                description="UMTScore (video-text alignment, the VTM head's match logit, as "
                                            "FETV/ChronoMagic-Bench) of every (video, caption) pair of a captions "
                                            "file, decoding the videos directly.")
    p.add_argument("--checkpoint", required=True, help="stage-2 checkpoint (ours or an official .pth)")
    p.add_argument("--videos", required=True, help="directory holding the video files the captions file names")
    p.add_argument("--captions", required=True, help="JSON ({video: caption} or rows), JSONL or CSV (video, caption)")
    p.add_argument("--text-encoder", default=None, help="BERT directory (default: the run's text.encoder)")
    p.add_argument("--num-frames", type=int, default=None, help="test frames (default: the checkpoint's, 4 official)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="umt_score", help="output path without suffix: writes OUT.json and OUT.md")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m umt.eval score ...``; returns the exit status (2: bad input, one line on stderr)."""
    import dataclasses
    import sys

    from umt.eval.retrieval import load_vision_text
    from umt.model.text import TextEncoderError, resolve_text_dir

    a = _parser().parse_args(argv)
    dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    try:
        base = Path(a.out)
        check_free([base.with_suffix(".json"), base.with_suffix(".md")], a.overwrite)
        pairs = read_prompts(a.captions)
        model, cfg, state = load_vision_text(a.checkpoint, text_encoder=a.text_encoder, num_frames=a.num_frames)
        data = dataclasses.replace(cfg.data, num_frames=a.num_frames) if a.num_frames else cfg.data
        text_dir = resolve_text_dir(a.text_encoder or cfg.text.encoder)
        amp = torch.bfloat16 if device.type == "cuda" else None
        rows = score_pairs(model.to(device), data, a.videos, pairs, tokenizer_dir=text_dir, max_len=cfg.text.max_len,
                           device=device, amp_dtype=amp, batch_size=a.batch_size)
        info = {"checkpoint": str(a.checkpoint), "step": state.get("step"), "videos": str(a.videos),
                "captions": str(a.captions), "frames": data.num_frames, "input_size": data.input_size,
                "eval_crop": data.eval_crop, "score": "VTM match logit (itm_head[:, 1])"}
        js, md = write_scores(base, rows, info, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, TextEncoderError) as e:
        print(f"umt.eval score: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    mean = sum(r["score"] for r in rows) / len(rows)
    print(f"UMTScore mean {mean:.4f} over {len(rows)} pairs ({len({r['video'] for r in rows})} videos); "
          f"mean match prob {sum(r['match_prob'] for r in rows) / len(rows):.4f}")
    print(f"wrote {js}\nwrote {md}")
    return 0 if all(math.isfinite(r["score"]) for r in rows) else 1
