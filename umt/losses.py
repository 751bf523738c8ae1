"""UMT's losses, pure functions on tensors.

Stage 1: UMA (unmasked token alignment; UMT Sec. 3.1, docs/design.md, "UMA heads and loss"). Stage 2 (UMT Sec. 3.2,
official ``multi_modality/models/criterions.py``): UTA is the same UMA loss; VTC (video-text contrastive), VTM
(video-text matching with hard negatives) and MLM (masked language modelling) are below.

Random draws (VTM negatives, MLM masks) use the project's counter-based noise (:func:`umt.ops.uniform_noise`) keyed
by an integer seed the trainer derives from (base seed, step, rank): never torch's global RNG, so a resumed run draws
the same, on any device. No function here syncs with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from umt import ops

__all__ = ["uma_loss", "gather_with_grad", "positive_mask", "caption_keys", "vtc_loss", "sample_vtm_negatives", "vtm_loss",
           "mlm_mask", "mlm_loss", "IGNORE_INDEX"]

#: label of a position that carries no loss (``F.cross_entropy``'s default ``ignore_index``, BERT's convention)
IGNORE_INDEX = -100


def uma_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over layers × batch × visible tokens of ``2 − 2·⟨s, t⟩`` (the squared distance of unit vectors).

    Args:
        pred: ``[L, B, K, C]`` student head outputs, unit vectors.
        target: ``[L, B, K, C]`` teacher targets at the same visible positions, unit vectors.

    Returns:
        0-dim float32 tensor (no host sync).

    Raises:
        ValueError: shape mismatch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    cos = (pred.float() * target.float()).sum(dim=-1)  # [L, B, K]
    return (2.0 - 2.0 * cos).mean()


# --------------------------------------------------------------------------------------------------------- VTC
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather along dim 0; backward: this rank's slice of the gradient summed over every rank (a reduce-scatter:
    NCCL's own, else an all-reduce then the slice, which gloo supports)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        world, ctx.rank, ctx.rows = dist.get_world_size(), dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [W·B, ...]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            out = torch.empty_like(grad[: ctx.rows])
            dist.reduce_scatter_tensor(out, grad)
            return out
        total = grad.clone()
        dist.all_reduce(total)
        return total[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, *, local_grad: bool = False) -> torch.Tensor:
    """All-gather ``x [B, ...]`` from every rank into ``[W·B, ...]`` (rank-major), keeping gradients.

    ``local_grad=False`` (default): the backward sums every rank's gradient for this rank's slice. Every rank computes
    the same global-batch loss, so this rank's slice receives ``W ×`` the single-process gradient and DDP's averaging
    over ranks brings it back to exactly the gradient of one process on the concatenated batch. ``local_grad=True``:
    the official ``AllGather`` (``models/utils.py``: only this rank's own loss's gradient reaches its slice), under
    which DDP's averaging leaves ``1/W`` of it. One process (or no process group): ``x`` itself. The batch size must
    be equal on every rank.
    """
    world = _world()
    if world == 1:
        return x
    if not local_grad:
        return _AllGatherSumGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x  # only this rank's slice carries a gradient (official ``allgather_wgrad``)
    return torch.cat(parts, dim=0)


def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def caption_keys(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One int64 key per caption ``ids [B, L]`` (padding ``mask [B, L]``), equal for equal token sequences: positives
    by caption (``text.caption_positives``, official ``has_multi_vision_gt``). A fixed random linear form of the
    token ids (no host sync; distinct captions collide with probability about 2⁻³¹)."""
    g = torch.Generator().manual_seed(0x5EED)
    w = torch.randint(1, 2**31 - 1, (ids.shape[1],), generator=g).to(ids.device)  # [L]
    return ((ids.long() + 1) * mask.long() * w).sum(dim=1)  # [B]


def positive_mask(index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
    """``pos[i, j] = index_a[i] == index_b[j]``: bool ``[Ba, Bb]``; equal item ids are positives (several captions or
    augmented views of one item in a batch are all positives of each other, official ``get_mask(idx=...)``)."""
    return index_a.view(-1, 1) == index_b.view(1, -1)


def vtc_loss(vision: torch.Tensor, text: torch.Tensor, index: torch.Tensor, temp: torch.Tensor | float, *,
             gather: bool = True, local_grad: bool = False) -> torch.Tensor:
    """Video-text contrastive loss: symmetric InfoNCE over the global batch with duplicate-aware targets.

    ``v``, ``t``: the L2-normalised embeddings, all-gathered across ranks (:func:`gather_with_grad`) when ``gather``
    and a process group is up; ``s = v tᵀ / temp`` ``[N, N]``; the target row ``i`` spreads 1 evenly over the
    columns with the same item id (official ``VTC_VTM_Loss.vtc_loss``)::

        loss = ½ (mean_i −Σ_j y_ij log softmax_j(s_i·) + mean_j −Σ_i y_ji log softmax_i(s_·j))

    With per-frame vision embeddings ``[B, T, D]`` (the official ``keep_temporal=True`` path of unmasked
    fine-tuning, ``models/criterions.py: get_sim``) each frame is normalised and ``s[i, j]`` is the mean over the
    frames of video i of their cosine with caption j, divided by ``temp``.

    Args:
        vision: ``[B, D]`` video/image embeddings of this rank (normalised here), or ``[B, T, D]`` per frame.
        text: ``[B, D]`` caption embeddings of this rank, row-aligned with ``vision``.
        index: ``[B]`` int64 item ids (equal id = same item).
        temp: the temperature (0-dim tensor: its gradient flows; or a float).
        gather: all-gather across ranks (UMT's default); False: this rank's batch only.
        local_grad: see :func:`gather_with_grad` (the official code's gradient convention).

    Returns:
        0-dim float32 loss, the same value on every rank.
    """
    v = F.normalize(vision.float(), dim=-1)  # [B, D]
    t = F.normalize(text.float(), dim=-1)  # [B, D]
    if gather:
        v, t = gather_with_grad(v, local_grad=local_grad), gather_with_grad(t, local_grad=local_grad)  # [N, D]
        index = _gather_no_grad(index)  # [N]
    if v.ndim == 3:  # per frame: the mean of the frames' cosines
        sim = torch.einsum("mld,nd->mln", v, t).mean(dim=1) / temp  # [N, N]
    else:
        sim = v @ t.t() / temp  # [N, N], rows: videos, columns: captions
    with torch.no_grad():
        pos = positive_mask(index, index).float()  # [N, N], symmetric
        target = pos / pos.sum(dim=1, keepdim=True)
    loss_v2t = -(F.log_softmax(sim, dim=1) * target).sum(dim=1).mean()
    loss_t2v = -(F.log_softmax(sim.t(), dim=1) * target).sum(dim=1).mean()
    return (loss_v2t + loss_t2v) / 2


# --------------------------------------------------------------------------------------------------------- VTM
def sample_vtm_negatives(sim: torch.Tensor, pos: torch.Tensor, seed: int,
                         hard: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row, never a positive: hard negatives drawn with probability ``∝ exp(sim)`` over the
    row's non-positive columns (official: ``softmax(sim)`` with the positives' weight set to 0, then
    ``torch.multinomial``), as Gumbel-max on ``sim`` with positives at −∞; ``hard=False``: uniform over them.

    Args:
        sim: ``[R, N]`` similarities of each query to the candidates (official: cosine / temperature).
        pos: ``[R, N]`` bool, True where the candidate is a positive (equal item id, :func:`positive_mask`).
        seed: noise seed (:func:`umt.ops.uniform_noise`).
        hard: similarity-weighted (official ``vtm_hard_neg=True``) or uniform.

    Returns:
        ``(neg [R] int64, valid [R] bool)``: ``valid`` is False for a row whose candidates are all positives (its
        ``neg`` is then meaningless and must carry no loss, see :func:`vtm_loss`).
    """
    logits = sim.float() if hard else torch.zeros(pos.shape, device=pos.device)
    logits = logits.masked_fill(pos, float("-inf"))  # [R, N]
    neg = ops.gumbel_topk(logits, 1, seed)[:, 0]  # [R]
    valid = (~pos).any(dim=1)  # [R]
    return neg, valid


def vtm_loss(logits: torch.Tensor, valid_video_neg: torch.Tensor, valid_text_neg: torch.Tensor) -> torch.Tensor:
    """Binary video-text matching cross-entropy over ``3B`` pairs in the official order: ``B`` positives (label 1),
    ``B`` (hard-negative video, caption) pairs and ``B`` (video, hard-negative caption) pairs (label 0).

    Args:
        logits: ``[3B, 2]`` match-head logits (class 1 = match).
        valid_video_neg, valid_text_neg: ``[B]`` bool from :func:`sample_vtm_negatives`; invalid pairs are ignored.

    Returns:
        0-dim float32 mean over the counted pairs.

    Raises:
        ValueError: ``logits`` is not ``[3B, 2]``.
    """
    b = valid_video_neg.shape[0]
    if logits.shape != (3 * b, 2):
        raise ValueError(f"logits must be [3B, 2] = [{3 * b}, 2], got {tuple(logits.shape)}")
    ones = torch.ones(b, dtype=torch.long, device=logits.device)
    zeros = torch.zeros(b, dtype=torch.long, device=logits.device)
    ignore = torch.full((b,), IGNORE_INDEX, dtype=torch.long, device=logits.device)
    labels = torch.cat([ones, torch.where(valid_video_neg, zeros, ignore), torch.where(valid_text_neg, zeros, ignore)])
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------------------------------------- MLM
def mlm_mask(ids: torch.Tensor, attention_mask: torch.Tensor, seed: int, *, prob: float, mask_id: int,
             vocab_size: int, special_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019, Sec. 3.1; official ``MLMLoss.mask``): each real, non-special token is
    selected with probability ``prob`` (UMT: 0.5); a selected token becomes ``[MASK]`` with probability 0.8, a
    uniformly random vocabulary id with 0.1, and stays itself with 0.1. Labels are the original ids at selected
    positions and :data:`IGNORE_INDEX` elsewhere. Padding (``attention_mask == 0``) and ``special_ids`` (``[CLS]``,
    ``[SEP]``, ``[PAD]``) are never selected (the official code only excludes ``[CLS]`` and padding).

    Args:
        ids: ``[B, L]`` int64 token ids.
        attention_mask: ``[B, L]``, 1 = real token.
        seed: noise seed (:func:`umt.ops.uniform_noise`): the same seed gives the same masks on any device.
        prob: selection probability in [0, 1].
        mask_id: the ``[MASK]`` id; vocab_size: V, random ids are drawn from ``[0, V)``.
        special_ids: ids never selected.

    Returns:
        ``(input_ids [B, L], labels [B, L])`` int64.
    """
    b, n = ids.shape
    u = ops.uniform_noise(seed, b, 4 * n, ids.device).view(b, 4, n)  # [B, 4, L]: select, [MASK], random, word
    maskable = attention_mask.bool()  # [B, L]
    for sid in special_ids:  # scalar comparisons: no host-to-device copy of the ids
        maskable = maskable & (ids != sid)
    selected = maskable & (u[:, 0] < prob)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = selected & (u[:, 1] < 0.8)
    to_random = selected & ~to_mask & (u[:, 2] < 0.5)
    words = (u[:, 3] * vocab_size).long().clamp_(max=vocab_size - 1)  # [B, L], uniform in [0, V)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), torch.where(to_random, words, ids))
    return inputs, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled positions: ``[B, L, V]`` logits, ``[B, L]`` labels (:data:`IGNORE_INDEX`
    elsewhere) → 0-dim float32 mean; 0 when nothing is labelled (no host sync, no NaN)."""
    flat = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(flat.shape[0], -1).float(), flat, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    count = (flat != IGNORE_INDEX).sum().clamp(min=1)
    return total / count
