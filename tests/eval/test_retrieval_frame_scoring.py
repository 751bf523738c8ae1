"""Zero-shot dual-encoder scoring of a multi-frame video is the official mean of the per-frame cosines
(``multi_modality/models/criterions.py`` ``get_sim``: normalised per-frame features, ``einsum("mld,nd->mln")
.mean(1)``, used by ``tasks/retrieval_utils.py`` for the "_emb" scores and the re-ranking candidates), not the cosine
with the re-normalised mean of the frame embeddings (kept as ``frame_scoring="pooled"``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from umt.eval.retrieval import evaluate_retrieval


class _FrameModel(torch.nn.Module):
    """Per-frame unit embeddings read straight off the "video" ``[B, 3, T, 1, 1]`` (column t = frame t's vector),
    and captions as one-hot ``ids`` rows (``[Nt, 3]``)."""

    def encode_vision_frames(self, video: torch.Tensor):  # noqa: ANN201
        frames = F.normalize(video[:, :, :, 0, 0].permute(0, 2, 1), dim=-1)  # [B, T, 3]
        return frames, frames

    def encode_vision(self, video: torch.Tensor, idx: torch.Tensor | None):  # noqa: ANN201
        tokens, frames = self.encode_vision_frames(video)
        return tokens, F.normalize(frames.mean(1), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):  # noqa: ANN201
        e = F.normalize(ids.float(), dim=-1)  # [Nt, 3]
        return e[:, None, :], e


def _videos() -> torch.Tensor:
    # the caption is e0. Video 0: frames 60° either side of e0 (each cosine 0.5; their mean points along e0, so the
    # re-normalised mean has cosine 1). Video 1: both frames at cosine 0.8 on one side.
    a, b = math.radians(60), math.acos(0.8)
    v0 = torch.tensor([[math.cos(a), math.cos(a)], [math.sin(a), -math.sin(a)], [0.0, 0.0]])  # [3, T=2]
    v1 = torch.tensor([[math.cos(b), math.cos(b)], [math.sin(b), math.sin(b)], [0.0, 0.0]])
    return torch.stack([v0, v1])[..., None, None]  # [2, 3, 2, 1, 1]


def _run(**kw):  # noqa: ANN003, ANN202
    batches = [{"video": _videos(), "index": torch.tensor([0, 1])}]
    ids = torch.tensor([[1, 0, 0], [0, 1, 0]])  # caption 0: e0 (describes video 1); caption 1: e1 (video 0)
    return evaluate_retrieval(_FrameModel(), batches, 2, [1, 0], ids, torch.ones_like(ids), device=torch.device("cpu"),
                              rerank_k=0, **kw)


def test_default_text_to_video_score_is_the_mean_of_frame_cosines() -> None:
    # official: caption e0 scores video 0 at mean(0.5, 0.5) = 0.5 and video 1 at 0.8 -> video 1 first (correct)
    m = _run()
    assert m["emb_t2v_r1"] == pytest.approx(50.0)  # caption 0 right; caption 1 (e1): v0 mean(.87,-.87)=0 < v1 0.6
    # the re-normalised mean scores video 0 at 1.0 and ranks it first for caption 0 instead
    p = _run(frame_scoring="pooled")
    assert p["emb_t2v_r1"] == pytest.approx(0.0)


def test_unknown_frame_scoring_is_refused() -> None:
    with pytest.raises(ValueError, match="frame_scoring"):
        _run(frame_scoring="max")
