"""Zero-shot text↔video retrieval of a stage-2 model: dual-encoder similarity, then VTM re-ranking
of each query's top k (official ``k_test`` 128), with multi-caption ground truth.

Protocol (official ``multi_modality/tasks/retrieval_utils.py``, after ALBEF and Singularity):

1. every caption → the text encoder's text-only layers: tokens ``[Nt, L, C_t]`` and the unit embedding ``[Nt, D]``;
2. every video (segment middles, no masking) → the vision encoder: tokens ``[Nv, K, C_v]`` and ``[Nv, D]``;
3. ``sim[v, j]`` ``[Nv, Nt]`` (the "_emb" metrics, dual encoder only): by default (``frame_scoring="frame_mean"``)
   the mean over video v's frames of the cosine between the frame's unit embedding and caption j's, as the official
   ``criterions.get_sim`` (``einsum("mld,nd->mln").mean(1)`` over normalised per-frame features); equivalently the
   dot product of the caption with the *un-normalised* mean of the unit frame embeddings. ``"pooled"`` takes the
   cosine with the re-normalised mean instead (a per-video factor ``1 / |mean|`` ≥ 1 that favours videos whose
   frames agree; the same video→text ranking, another text→video one). The official ``eval_frame_ensemble``
   (``concat``, its default) concerns the VTM step: the frames' tokens are concatenated into one sequence, as here;
   its ``mean``/``max``/``lse`` combine several single-frame clips and do not apply to one multi-frame clip;
4. for each video its top ``k`` captions, and for each caption its top ``k`` videos, are scored by the match (VTM)
   head over the fusion layers; a pair's score is the match head's "match" logit; pairs outside a query's top k
   score -100, as official.

Scaling past one device: a rank keeps only the tokens of its own share of
videos (on the host), every rank encodes all captions (small: ``Nt × L``), only the ``[n, D]`` embeddings are
all-gathered, the similarity is computed in row chunks, and each candidate pair is scored by the rank that owns its
video, so no rank ever holds all video tokens; the score matrices are summed across ranks once at the end.

The model interface (:class:`umt.model.vision_text.UMTVisionText`): ``encode_vision(video, idx=None) -> (tokens,
embed)``, ``encode_text(ids, mask) -> (tokens, embed)``, ``match_logits(vision_tokens, text_tokens, text_mask) ->
[B, 2]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from umt.eval.common import IndexAccumulator, autocast, check_free, dist_info
from umt.eval.retrieval_metrics import retrieval_metrics
from umt.eval.report import write_json_and_markdown

__all__ = ["FRAME_SCORINGS", "encode_texts", "encode_videos", "gather_by_index", "rerank_scores", "evaluate_retrieval",
           "write_report", "NOT_CANDIDATE", "group_captions"]

log = logging.getLogger(__name__)

#: How a video's frames make its dual-encoder score (module docstring, step 3): ``frame_mean`` (official, the mean
#: of the per-frame cosines) or ``pooled`` (the cosine with the normalised mean of the frame embeddings).
FRAME_SCORINGS = ("frame_mean", "pooled")

#: the score of a pair outside a query's top k (official -100)
NOT_CANDIDATE = -100.0


def encode_texts(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, device: torch.device,
                 amp_dtype: torch.dtype | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption through the text-only layers.

    Args:
        ids, mask: int64 ``[Nt, L]`` token ids and attention mask (padded to one length).

    Returns:
        ``(tokens [Nt, L, C_t] on the host, embeds float32 [Nt, D] on device)``.
    """
    toks, embs = [], []
    for s in range(0, ids.shape[0], batch_size):
        i, m = ids[s:s + batch_size].to(device), mask[s:s + batch_size].to(device)
        with autocast(device, amp_dtype):
            t, e = model.encode_text(i, m)  # [b, L, C_t], [b, D]
        toks.append(t.cpu())
        embs.append(e.float())
    return torch.cat(toks), torch.cat(embs)


def encode_videos(model: torch.nn.Module, batches: Iterable[dict[str, Any]], *, device: torch.device,
                  amp_dtype: torch.dtype | None = None,
                  frame_scoring: str = "frame_mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's videos through the vision encoder (every token visible).

    Args:
        batches: evaluation batches ``{"video": [B, 3, T, H, W], "index": int64 [B]}``; rows with index -1 (padding
            of the last batch) are dropped.
        frame_scoring: :data:`FRAME_SCORINGS`: ``frame_mean`` returns the mean of the unit per-frame embeddings
            (not re-normalised, so that a dot product with a unit caption is the mean per-frame cosine); ``pooled``
            returns it normalised. A model without ``encode_vision_frames`` gives its ``encode_vision`` embedding.

    Returns:
        ``(index int64 [n], tokens [n, K, C_v] on the host, embeds float32 [n, D] on device)``.

    Raises:
        ValueError: an unknown ``frame_scoring``.
    """
    if frame_scoring not in FRAME_SCORINGS:
        raise ValueError(f"frame_scoring must be one of {FRAME_SCORINGS}, got {frame_scoring!r}")
    per_frame = hasattr(model, "encode_vision_frames")
    idx, toks, embs = [], [], []
    for b in batches:
        keep = b["index"] >= 0  # [B]
        with autocast(device, amp_dtype):
            if per_frame:
                t, f = model.encode_vision_frames(b["video"].to(device))  # [B, K, C_v], [B, T, D] unit rows
                e = f.float().mean(dim=1)  # [B, D]: <e, text> = mean_t cos(frame t, text)
                if frame_scoring == "pooled":
                    e = torch.nn.functional.normalize(e, dim=-1)
            else:
                t, e = model.encode_vision(b["video"].to(device), None)  # [B, K, C_v], [B, D]
        keep_d = keep.to(e.device)
        idx.append(b["index"][keep].cpu())
        toks.append(t[keep_d].cpu())
        embs.append(e[keep_d].float())
    if not idx:
        raise ValueError("the evaluation loader yielded no videos on this rank")
    return torch.cat(idx), torch.cat(toks), torch.cat(embs)


def gather_by_index(x: torch.Tensor, index: torch.Tensor, num_items: int) -> torch.Tensor:
    """Rows ``x [n, D]`` of items ``index [n]`` from every rank, as ``[num_items, D]`` in index order (one
    all-reduce of the per-item table, :class:`umt.eval.common.IndexAccumulator`).

    Raises:
        umt.eval.common.CountError: an item is missing or delivered more than once (over all ranks).
    """
    acc = IndexAccumulator(num_items, x.shape[1], 1, x.device)
    acc.add(x, index, torch.zeros_like(index))
    acc.reduce()
    acc.check("video")
    return acc.totals()[0]


def _topk_rows(sim: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Column indices of each row's top ``k`` (chunked over rows): int64 ``[rows, k]``."""
    return torch.cat([sim[s:s + chunk].topk(k, dim=1).indices for s in range(0, sim.shape[0], chunk)])


def rerank_scores(model: torch.nn.Module, sim: torch.Tensor, local_index: torch.Tensor, local_tokens: torch.Tensor,
                  text_tokens: torch.Tensor, text_mask: torch.Tensor, *, k: int, device: torch.device,
                  amp_dtype: torch.dtype | None = None, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """VTM scores of every video's top-k captions and every caption's top-k videos.

    Args:
        sim: float ``[Nv, Nt]`` dual-encoder similarity (the same on every rank).
        local_index, local_tokens: the videos this rank owns and their tokens ``[n, K, C_v]`` (host).
        text_tokens, text_mask: every caption's text-only tokens ``[Nt, L, C_t]`` (host) and mask ``[Nt, L]``.
        k: candidates per query (clamped to the other side's size).

    Returns:
        ``(scores_v2t float32 [Nv, Nt], scores_t2v float32 [Nt, Nv])`` on the host: the match logit on candidate
        pairs, :data:`NOT_CANDIDATE` elsewhere; identical on every rank (summed across ranks).
    """
    nv, nt = sim.shape
    v2t_top = _topk_rows(sim, min(k, nt)).cpu()  # [Nv, kv]
    t2v_top = _topk_rows(sim.t().contiguous(), min(k, nv)).cpu()  # [Nt, kt]
    v2t_val = torch.zeros(nv, nt)
    t2v_val = torch.zeros(nt, nv)
    v2t_set = torch.zeros(nv, nt, dtype=torch.bool)
    t2v_set = torch.zeros(nt, nv, dtype=torch.bool)
    # the pairs each local video takes part in: its own top-k captions and the captions whose top k holds it
    want_v2t = torch.zeros(nv, nt, dtype=torch.bool)
    want_v2t.scatter_(1, v2t_top, True)
    want_t2v = torch.zeros(nt, nv, dtype=torch.bool)
    want_t2v.scatter_(1, t2v_top, True)
    for row, v in enumerate(local_index.tolist()):
        texts = torch.nonzero(want_v2t[v] | want_t2v[:, v]).flatten()  # [m]
        for s in range(0, texts.numel(), batch_size):
            t = texts[s:s + batch_size]
            vt = local_tokens[row:row + 1].to(device).expand(t.numel(), -1, -1)  # [b, K, C_v]
            with autocast(device, amp_dtype):
                logits = model.match_logits(vt, text_tokens[t].to(device), text_mask[t].to(device))  # [b, 2]
            score = logits[:, 1].float().cpu()
            a, b_ = want_v2t[v, t], want_t2v[t, v]
            v2t_val[v, t[a]] = score[a]
            v2t_set[v, t[a]] = True
            t2v_val[t[b_], v] = score[b_]
            t2v_set[t[b_], v] = True
    _, world = dist_info()
    if world > 1:  # each pair was scored by the one rank that owns its video
        for x in (v2t_val, t2v_val, v2t_set, t2v_set):
            y = x.to(device, torch.float32)
            dist.all_reduce(y)
            x.copy_(y.cpu().to(x.dtype))
    return (torch.where(v2t_set, v2t_val, torch.tensor(NOT_CANDIDATE)),
            torch.where(t2v_set, t2v_val, torch.tensor(NOT_CANDIDATE)))


def evaluate_retrieval(model: torch.nn.Module, batches: Iterable[dict[str, Any]], num_videos: int,
                       caption_video: Sequence[int], text_ids: torch.Tensor, text_mask: torch.Tensor, *,
                       device: torch.device, amp_dtype: torch.dtype | None = None, rerank_k: int = 128,
                       text_batch_size: int = 256, rerank_batch_size: int = 128,
                       frame_scoring: str = "frame_mean") -> dict[str, float]:
    """The whole protocol (module docstring) on every rank; returns the same metrics everywhere.

    Args:
        batches: this rank's evaluation batches (every video exactly once over all ranks, see
            :func:`encode_videos`).
        num_videos: Nv, videos in the evaluation set.
        caption_video: int [Nt] the video (its index) each caption describes, or per caption a list of videos
            (multi-video ground truth, :func:`group_captions`).
        text_ids, text_mask: int64 ``[Nt, L]``: every caption tokenised (one length).
        rerank_k: candidates per query for VTM re-ranking (official 128); 0 reports the dual-encoder metrics only.
        frame_scoring: how frames make the dual-encoder score (:data:`FRAME_SCORINGS`; default the official
            mean of per-frame cosines); it also picks the re-ranking candidates.

    Returns:
        ``{"t2v_r1", ..., "r_mean"}`` after re-ranking and the same keys with ``emb_`` in front from the similarity
        alone.

    Raises:
        umt.eval.common.CountError: a video missing or seen twice over the ranks.
        ValueError: a video without a caption.
    """
    model.eval()
    local_index, local_tokens, local_embeds = encode_videos(model, batches, device=device, amp_dtype=amp_dtype,
                                                            frame_scoring=frame_scoring)
    text_tokens, text_embeds = encode_texts(model, text_ids, text_mask, device=device, amp_dtype=amp_dtype,
                                            batch_size=text_batch_size)
    video_embeds = gather_by_index(local_embeds, local_index.to(local_embeds.device), num_videos)  # [Nv, D]
    sim = (video_embeds @ text_embeds.t()).float()  # [Nv, Nt]
    gt = caption_video
    out = {f"emb_{k}": v for k, v in retrieval_metrics(sim.cpu().numpy(), gt).items()}
    if rerank_k > 0:
        v2t, t2v = rerank_scores(model, sim, local_index, local_tokens, text_tokens, text_mask, k=rerank_k,
                                 device=device, amp_dtype=amp_dtype, batch_size=rerank_batch_size)
        out.update(retrieval_metrics(v2t.numpy(), gt, t2v.numpy()))
    return out


def write_report(out_dir: str | Path, metrics: dict[str, float], info: dict[str, Any], *, overwrite: bool = False,
                 name: str = "retrieval") -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` and ``.md`` (atomic).

    Raises:
        FileExistsError: a report of that name exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    rows = []
    for prefix, label in (("", "VTM re-ranked"), ("emb_", "dual encoder")):
        if f"{prefix}t2v_r1" not in metrics:
            continue
        for d, dname in (("t2v", "text→video"), ("v2t", "video→text")):
            g = lambda s: metrics[f"{prefix}{d}_{s}"]  # noqa: E731
            rows.append(f"| {label} | {dname} | {g('r1'):.1f} | {g('r5'):.1f} | {g('r10'):.1f} | {g('medr'):.1f} | "
                        f"{g('meanr'):.1f} |")
    lines = [f"# Zero-shot retrieval: {info.get('shards', '')}", "",
             *(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, (dict, list))), "",
             "| scores | direction | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---|---|---|---|---|---|", *rows, "",
             f"r_mean (mean of the six recalls): {metrics.get('r_mean', metrics.get('emb_r_mean', float('nan'))):.2f}",
             ""]
    return write_json_and_markdown(out / f"{name}.json", out / f"{name}.md", {"metrics": metrics, **info}, lines,
                                   overwrite=overwrite)


# --------------------------------------------------------------------------------------------------- from files
def build_vision_text(cfg: Any, teacher_dim: int, *, text_encoder: str | None = None,
                      num_frames: int | None = None) -> torch.nn.Module:
    """A :class:`~umt.model.vision_text.UMTVisionText` of the sizes ``cfg`` (a run's
    :class:`~umt.config.TrainConfig`) names, without the teacher (retrieval needs none).

    Args:
        teacher_dim: the UMA heads' output width (read off a checkpoint's ``heads.proj.0.weight``).
        text_encoder: the BERT directory for its config and tokenizer (default ``cfg.text.encoder``); its weights are
            replaced by the checkpoint's.
        num_frames: frames at test time (default the run's ``data.num_frames``; the position table follows).

    Raises:
        umt.model.text.TextEncoderError: the directory is missing or not a BERT.
    """
    import timm

    import umt.model  # noqa: F401 - registers the umt_vit_* names
    from umt.model.heads import UMAHeads
    from umt.model.text import build_text_encoder
    from umt.model.vision_text import UMTVisionText

    d, m, t = cfg.data, cfg.model, cfg.text
    student = timm.create_model(m.student, num_frames=num_frames or d.num_frames, img_size=d.input_size,
                                drop_path_rate=0.0, align_layers=m.align_layers)
    heads = UMAHeads(student.embed_dim, teacher_dim, student.align_layers)
    text, _ = build_text_encoder(text_encoder or t.encoder, t.fusion_layer, student.embed_dim)
    return UMTVisionText(student, heads, text, t.embed_dim, t.temp, t.mlm_prob, t.vtm_hard_negatives,
                         t.vtc_local_grad)


def load_vision_text(checkpoint: str | Path, *, text_encoder: str | None = None,
                     num_frames: int | None = None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """A stage-2 checkpoint (``step_*.pt`` or ``best.pt`` of task ``video_text``, or an official stage-2 ``.pth``,
    :mod:`umt.model.official`) as ``(model, cfg, state)`` with every weight loaded strictly.

    Raises:
        ValueError: not a stage-2 checkpoint (one line naming the file and the task it holds); an official file with
            keys no rule maps (:class:`umt.model.official.OfficialFormatError`).
        umt.model.text.TextEncoderError: the text encoder directory is missing or not a BERT.
    """
    from umt.config import config_from_dict

    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=False)
    from umt.model import official

    if official.is_official(state):  # an official stage-2 .pth (umt.model.official): our layout, in memory
        off = official.from_official(state, str(path))
        state = {"model": off.model, "task": official.TASK_OF_KIND[off.kind], "config": official.config_overrides(off),
                 "step": None}
    if not isinstance(state, dict) or state.get("task") != "video_text" or "config" not in state:
        task = state.get("task") if isinstance(state, dict) else None
        raise ValueError(f"{path} is not a stage-2 (video_text) checkpoint (task {task!r}); retrieval needs the text "
                         "side and the match head")
    cfg = config_from_dict(state["config"])
    sd = state["model"]
    model = build_vision_text(cfg, int(sd["heads.proj.0.weight"].shape[0]), text_encoder=text_encoder,
                              num_frames=num_frames)
    model.load_state_dict(sd, strict=True)
    return model, cfg, state


def tokenize_captions(captions: Sequence[str], tokenizer_dir: str | Path, max_len: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption as the training loader tokenises it (:class:`umt.data.captions.CaptionTokenizer`), padded to the
    longest: ``(ids int64 [Nt, L], mask int64 [Nt, L])``."""
    from umt.data.captions import CaptionTokenizer, pad_to_longest

    tok = CaptionTokenizer(tokenizer_dir, max_len)
    rows = [tok.encode(c) for c in captions]
    ids = torch.from_numpy(np.stack([r[0] for r in rows])).long()
    lengths = torch.tensor([r[1] for r in rows])
    return pad_to_longest(ids, lengths)


def group_captions(caps: Sequence[tuple[int, str]]) -> tuple[list[str], list[list[int]]]:
    """``[(video, caption), ...]`` → the distinct captions (first-seen order) and, per caption, the videos it
    describes: the official ``has_multi_vision_gt`` evaluation (``VidTxtRetEvalDataset.build_data_multi_img_gt``:
    one text per label, its ground truth every video of that label)."""
    order: dict[str, list[int]] = {}
    for v, c in caps:
        vids = order.setdefault(c, [])
        if v not in vids:
            vids.append(v)
    return list(order), list(order.values())


def retrieval_on_shards(model: torch.nn.Module, cfg: Any, shard_dir: str | Path, *, tokenizer_dir: str | Path,
                        device: torch.device, amp_dtype: torch.dtype | None = None, rerank_k: int = 128,
                        batch_size: int = 16, frame_scoring: str = "frame_mean", multi_video_gt: bool = False
                        ) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`evaluate_retrieval` over a captioned shard directory (every caption of every item is a query;
    :func:`umt.data.captions.read_captions`), this process's rank's share of the videos.

    Args:
        cfg: the run's config (its ``data`` section: frames, size, normalisation, sampling, ``eval_crop``).
        multi_video_gt: identical captions (after :func:`umt.data.captions.pre_text`) are one query whose ground
            truth is every video they describe (:func:`group_captions`; official ``has_multi_vision_gt``).

    Returns:
        ``(metrics, info)``: info names the shards and counts videos and captions.
    """
    import dataclasses

    from umt.data.meta_loader import build_video_text_eval_loader
    from umt.data.captions import read_captions

    rank, world = dist_info()
    data = dataclasses.replace(cfg.data, batch_size=batch_size, num_sample=1)
    loader = build_video_text_eval_loader(data, shard_dir, tokenizer_dir=tokenizer_dir, max_len=cfg.text.max_len,
                                          rank=rank, world_size=world, device=device)
    try:
        caps = read_captions(shard_dir)
        texts, gt = group_captions(caps) if multi_video_gt else ([c for _, c in caps], [i for i, _ in caps])
        ids, mask = tokenize_captions(texts, tokenizer_dir, cfg.text.max_len)
        metrics = evaluate_retrieval(model, loader.epoch_iter(0), loader.num_samples, gt, ids,
                                     mask, device=device, amp_dtype=amp_dtype, rerank_k=rerank_k,
                                     frame_scoring=frame_scoring)
    finally:
        loader.close()
    info = {"shards": str(shard_dir), "videos": loader.num_samples, "captions": len(texts), "rerank_k": rerank_k,
            "frames": cfg.data.num_frames, "input_size": cfg.data.input_size, "eval_crop": cfg.data.eval_crop,
            "frame_scoring": frame_scoring, "multi_video_gt": multi_video_gt}
    return metrics, info


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="python -m umt.eval retrieval",
                                description="Zero-shot text-video retrieval of a stage-2 checkpoint: R@1/5/10, median "
                                            "and mean rank both ways, dual encoder and VTM re-ranked (works under "
                                            "torchrun).")
    p.add_argument("--checkpoint", required=True, help="stage-2 checkpoint (run/checkpoints/step_*.pt or best.pt)")
    p.add_argument("--shards", required=True, help="captioned shard directory (video-text or image-text)")
    p.add_argument("--text-encoder", default=None,
                   help="BERT directory for the tokenizer and config (default: the run's text.encoder)")
    p.add_argument("--rerank-k", type=int, default=128, help="VTM re-ranking candidates per query (official 128; 0: "
                                                             "dual encoder only)")
    p.add_argument("--batch-size", type=int, default=16, help="videos per batch per rank")
    p.add_argument("--frame-scoring", default="frame_mean", choices=FRAME_SCORINGS,
                   help="dual-encoder video score: frame_mean (official: mean of the per-frame cosines) or pooled "
                        "(cosine with the normalised mean frame embedding)")
    p.add_argument("--num-frames", type=int, default=None, help="test frames (default: the run's)")
    p.add_argument("--multi-video-gt", action="store_true",
                   help="identical captions are one query whose ground truth is every video they describe (SSv2-label"
                        "/-template; default: the run's eval.multi_video_gt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="write retrieval.json and retrieval.md here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m umt.eval retrieval ...``; returns the exit status (2: bad input, one line on stderr)."""
    import dataclasses
    import sys

    from umt.eval.common import close_distributed, init_distributed
    from umt.model.text import TextEncoderError, resolve_text_dir

    a = _parser().parse_args(argv)
    ctx = init_distributed(a.device)
    try:
        if a.out:
            check_free([Path(a.out) / "retrieval.json", Path(a.out) / "retrieval.md"], a.overwrite)
        model, cfg, state = load_vision_text(a.checkpoint, text_encoder=a.text_encoder, num_frames=a.num_frames)
        if a.num_frames:
            cfg.data = dataclasses.replace(cfg.data, num_frames=a.num_frames)
        model = model.to(ctx.device)
        text_dir = resolve_text_dir(a.text_encoder or cfg.text.encoder)
        amp = torch.bfloat16 if ctx.device.type == "cuda" else None
        metrics, info = retrieval_on_shards(model, cfg, a.shards, tokenizer_dir=text_dir, device=ctx.device,
                                            amp_dtype=amp, rerank_k=a.rerank_k, batch_size=a.batch_size,
                                            frame_scoring=a.frame_scoring,
                                            multi_video_gt=a.multi_video_gt or cfg.eval.multi_video_gt)
    except (ValueError, FileNotFoundError, FileExistsError, TextEncoderError) as e:
        print(f"umt.eval retrieval: {str(e).splitlines()[0]}", file=sys.stderr)
        close_distributed(ctx)
        return 2
    info.update(checkpoint=str(a.checkpoint), step=state.get("step"))
    if ctx.rank == 0:
        print(f"text→video R@1 {metrics['t2v_r1']:.1f} R@5 {metrics['t2v_r5']:.1f} R@10 {metrics['t2v_r10']:.1f} "
              f"MdR {metrics['t2v_medr']:.0f}; video→text R@1 {metrics['v2t_r1']:.1f} R@5 {metrics['v2t_r5']:.1f} "
              f"R@10 {metrics['v2t_r10']:.1f} MdR {metrics['v2t_medr']:.0f} (dual encoder t2v R@1 "
              f"{metrics['emb_t2v_r1']:.1f}); {info['videos']} videos, {info['captions']} captions"
              if "t2v_r1" in metrics else
              f"dual encoder: text→video R@1 {metrics['emb_t2v_r1']:.1f}, video→text R@1 {metrics['emb_v2t_r1']:.1f}")
        if a.out:
            for path in write_report(a.out, metrics, info, overwrite=a.overwrite):
                print(f"wrote {path}")
    close_distributed(ctx)
    return 0


# The inference functions run without autograd. Applied here rather than as decorators: mutmut (the mutation-testing
# tool, README "Mutation testing") leaves decorated functions unmutated, and these hold the re-ranking.
encode_texts = torch.no_grad()(encode_texts)
encode_videos = torch.no_grad()(encode_videos)
rerank_scores = torch.no_grad()(rerank_scores)
evaluate_retrieval = torch.no_grad()(evaluate_retrieval)
