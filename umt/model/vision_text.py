"""The stage-2 video-text model (UMT Sec. 3.2; official ``multi_modality/models/umt.py``, ``backbones/vit/vit.py``).

:class:`UMTVisionText` holds the stage-1 student and its UMA heads (same attribute names, so the keys are
``student.*`` / ``heads.*`` and a stage-1 checkpoint loads into it), the BERT text encoder
(:class:`~umt.model.text.BertTextEncoder`, keys ``text.*``, with its MLM head), the projections and the matching head.

Vision, as the official ``PretrainVisionTransformer``: the student over the visible tokens only (video: 4 frames, mask
0.8 → 4 × 40 kept; images: T = 1, mask 0.5 → 98 kept). Images use the first 196 rows of the student's sin-cos table,
which are exactly a 196-position table (the official ``img_pos_embed``): the table is a function of the flattened
index only. The visual tokens are the last block's output after the student's final LayerNorm (``x_vis =
norm(x_vis)``); the pooled feature is ``pool_norm(mean over the visible tokens)`` (a second LayerNorm, eps 1e-6, the
official ``pool_norm``), then ``vision_proj``. Text: the ``[CLS]`` of the text-only layers, then ``text_proj``. The
temperature is learnable, initialised at 0.07 and clamped in place to [0.001, 0.5] at every forward (official
``clip_contrastive_temperature``).

At evaluation without a mask the official code pools per frame (``keep_temporal=True``: ``pool_norm`` of each
frame's mean token, projected and normalised per frame: :meth:`UMTVisionText.encode_vision_frames`) and scores a
video against a caption by the mean of the per-frame cosines (``criterions.get_sim``); the zero-shot retrieval
(:mod:`umt.eval.retrieval`) does exactly that. :meth:`UMTVisionText.encode_vision` returns the normalised mean of
the per-frame unit vectors (the API promises a unit vector; the same video→text ranking, but text→video scores
differ from the official ones by the norm of that mean, a per-video factor).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from umt.losses import mlm_loss, mlm_mask, positive_mask, sample_vtm_negatives, uma_loss, vtc_loss, vtm_loss
from umt.masking import step_seed
from umt.model.heads import UMAHeads
from umt.model.student import UMTStudent
from umt.model.text import BertTextEncoder

__all__ = ["UMTVisionText", "LOSS_NAMES", "TEMP_MIN", "TEMP_MAX", "load_pretrained"]

#: the stage-2 losses, in the order the task logs them
LOSS_NAMES = ("vtc", "vtm", "mlm", "uta")
#: temperature clamp (official ``clip_contrastive_temperature(min_val=0.001, max_val=0.5)``)
TEMP_MIN, TEMP_MAX = 0.001, 0.5
#: noise streams of one step's seed (:func:`umt.masking.step_seed`): VTM video negatives, VTM text negatives, MLM
_VTM_VIDEO, _VTM_TEXT, _MLM = 11, 12, 13


class UMTVisionText(nn.Module):
    """Stage-2 model: student + UMA heads, BERT (text-only + fusion layers, MLM head), projections, temperature,
    VTM head.

    Args:
        student: the stage-1 :class:`UMTStudent` (built for the stage-2 frame count; its ``align_layers`` last blocks
            feed the UTA loss).
        heads: the stage-1 :class:`UMAHeads` (``student.embed_dim → teacher_dim``).
        text: the BERT text encoder, built for ``vision_width = student.embed_dim``.
        embed_dim: D of the contrastive space (official 512 for UMT-B, 768 for UMT-L).
        temp: initial temperature (official 0.07).
        mlm_prob: MLM selection probability (official 0.5).
        vtm_hard_negatives: similarity-weighted VTM negatives (official ``vtm_hard_neg=True``), else uniform.
        vtc_local_grad: the official VTC gradient convention (:func:`umt.losses.gather_with_grad`).

    Raises:
        ValueError: the text encoder's cross-attention does not take the student's width.
    """

    def __init__(self, student: UMTStudent, heads: UMAHeads, text: BertTextEncoder, embed_dim: int,
                 temp: float = 0.07, mlm_prob: float = 0.5, vtm_hard_negatives: bool = True,
                 vtc_local_grad: bool = False) -> None:
        super().__init__()
        if text.vision_width != student.embed_dim:
            raise ValueError(f"text encoder cross-attends to width {text.vision_width}, the student is "
                             f"{student.embed_dim} wide")
        self.student, self.heads, self.text = student, heads, text
        cv, ct = student.embed_dim, text.width
        self.pool_norm = nn.LayerNorm(cv, eps=1e-6)
        self.vision_proj = nn.Linear(cv, embed_dim)
        self.text_proj = nn.Linear(ct, embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        # PyTorch's default ``nn.Linear`` init for the projections and the match head (weight and bias uniform in
        # ±1/sqrt(fan_in)), as the official ``UMT.__init__`` leaves them: it applies no init of its own to them
        self.itm_head = nn.Linear(ct, 2)
        self.embed_dim, self.mlm_prob = embed_dim, mlm_prob
        self.vtm_hard_negatives, self.vtc_local_grad = vtm_hard_negatives, vtc_local_grad
        self.tokens_per_frame = student.grid[1] * student.grid[2]

    # --------------------------------------------------------------------------------------------- pieces
    @property
    def mlm_head(self) -> nn.Module:
        """BERT's MLM head (``text.mlm_head``; decoder tied to the word embeddings)."""
        return self.text.mlm_head

    @property
    def temperature(self) -> torch.Tensor:
        """The contrastive temperature, clamped to [0.001, 0.5] (0-dim)."""
        return self.temp.clamp(TEMP_MIN, TEMP_MAX)

    def vision_features(self, video: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Outputs of the student's last ``align_layers`` blocks after its final LayerNorm, over the visible tokens.

        Args:
            video: ``[B, 3, T, H, W]`` normalised pixels (T = 1 for images).
            idx: ``[B, K]`` sorted kept positions in ``[0, T·h·w)``, or None for every token.

        Returns:
            ``[L, B, K, C_v]``; ``[-1]`` is the last block's output (the visual tokens).

        Raises:
            ValueError: more frames than the student's position table holds.
        """
        return self.student.forward_align(video, idx)  # [L, B, K, C_v]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``pool_norm`` of the mean visual token: ``[B, K, C_v] → [B, C_v]``."""
        return self.pool_norm(tokens.mean(dim=1))

    # ------------------------------------------------------------------------------------ retrieval API
    def encode_vision(self, video: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens and the unit contrastive embedding.

        Args:
            video: ``[B, 3, T, H, W]`` normalised pixels.
            idx: ``[B, K]`` kept positions (training), or None: every token, pooled per frame as the official
                evaluation does (see the module docstring).

        Returns:
            ``(tokens [B, K, C_v], embed [B, D])``, ``embed`` L2-normalised; K = T·h·w when ``idx`` is None.
        """
        if idx is not None:
            tokens = self.vision_features(video, idx)[-1]  # [B, K, C_v]
            return tokens, F.normalize(self.vision_proj(self.pool(tokens)), dim=-1)
        tokens, per_frame = self.encode_vision_frames(video)  # [B, K, C_v], [B, T, D]
        return tokens, F.normalize(per_frame.mean(dim=1), dim=-1)

    def encode_vision_frames(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token, and one unit contrastive embedding per frame (official ``keep_temporal=True`` evaluation).

        Args:
            video: ``[B, 3, T, H, W]`` normalised pixels.

        Returns:
            ``(tokens [B, T·h·w, C_v], per_frame [B, T, D])``; each ``per_frame[b, t]`` is ``vision_proj`` of
            ``pool_norm`` of frame t's mean token, L2-normalised. The official text→video score is
            ``mean_t <per_frame[b, t], text>`` (``criterions.get_sim``).
        """
        tokens = self.vision_features(video, None)[-1]  # [B, K, C_v]
        return tokens, self.frame_embeds(tokens)

    def frame_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every token of a clip ``[B, T·h·w, C_v]`` → one unit embedding per frame ``[B, T, D]``: ``vision_proj``
        of ``pool_norm`` of the frame's mean token, L2-normalised (official ``keep_temporal=True``)."""
        b, k, c = tokens.shape
        t = k // self.tokens_per_frame
        frames = self.pool_norm(tokens.view(b, t, -1, c).mean(dim=2))  # [B, T, C_v]
        return F.normalize(self.vision_proj(frames), dim=-1)  # [B, T, D]

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-only layers and the unit contrastive embedding of the ``[CLS]`` token.

        Args:
            ids: ``[B, L]`` int64 token ids; mask: ``[B, L]``, 1 = real token.

        Returns:
            ``(tokens [B, L, C_t], embed [B, D])``, ``embed`` L2-normalised.
        """
        tokens = self.text.forward_text(ids, mask)  # [B, L, C_t]
        return tokens, F.normalize(self.text_proj(tokens[:, 0]), dim=-1)

    def match_logits(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor,
                     text_mask: torch.Tensor) -> torch.Tensor:
        """VTM logits: the fusion layers over ``text_tokens [B, L, C_t]`` (from :meth:`encode_text`, padding
        ``text_mask [B, L]``) cross-attending to ``vision_tokens [B, K, C_v]``, the ``[CLS]`` into ``itm_head``
        → ``[B, 2]`` (class 1 = match)."""
        fused = self.text.forward_fusion(text_tokens, text_mask, vision_tokens)  # [B, L, C_t]
        return self.itm_head(fused[:, 0])

    # ------------------------------------------------------------------------------------------ training
    def forward(self, video: torch.Tensor, idx: torch.Tensor | None, text_ids: torch.Tensor,
                text_mask: torch.Tensor, index: torch.Tensor, uta_target: torch.Tensor | None, seed: int, *,
                mlm: bool = True) -> dict[str, torch.Tensor]:
        """The four stage-2 losses of one micro-batch (unweighted), as the official ``UMT.forward``.

        Args:
            video: ``[B, 3, T, H, W]``; idx: ``[B, K]`` kept positions (the semantic mask), or None: every token
                (fine-tuned retrieval, official ``video_mask_ratio=0``), pooled per frame as the official
                ``keep_temporal=True`` (VTC and the VTM negatives' similarity: the mean of the per-frame cosines).
            text_ids, text_mask: ``[B, L]`` captions.
            index: ``[B]`` item ids (VTC/VTM positives).
            uta_target: ``[L_a, B, K, C_t]`` the teacher's aligned layers at the kept positions (unit vectors), or
                None: no UTA (its loss is 0 and the UMA heads are not run: official ``loss_weight.uta == 0``).
            seed: this micro-batch's seed; VTM negatives and MLM masks draw from streams of it.
            mlm: compute MLM (False: 0, the masked caption is not run, official ``loss_weight.mlm == 0``).

        Returns:
            ``{"vtc", "vtm", "mlm", "uta"}``: 0-dim float32 losses.
        """
        with torch.no_grad():
            self.temp.clamp_(TEMP_MIN, TEMP_MAX)
        feats = self.vision_features(video, idx)  # [L_a, B, K, C_v]
        vision_tokens = feats[-1]  # [B, K, C_v]
        zero = torch.zeros((), device=video.device)
        if uta_target is None:
            loss_uta = zero
        else:
            pos = self.student.pos_embed  # [M, C_v]
            pos_vis = pos[idx] if idx is not None else pos.expand(video.shape[0], -1, -1)  # [B, K, C_v]
            loss_uta = uma_loss(self.heads(feats, pos_vis), uta_target)
        if idx is None:
            v_vtc = self.frame_embeds(vision_tokens)  # [B, T, D] unit rows
            v_emb = v_vtc.mean(dim=1)  # [B, D]: <v_emb, t> = mean_t cos(frame t, t), the official get_sim
        else:
            v_emb = v_vtc = F.normalize(self.vision_proj(self.pool(vision_tokens)), dim=-1)  # [B, D]
        text_tokens, t_emb = self.encode_text(text_ids, text_mask)  # [B, L, C_t], [B, D]
        loss_vtc = vtc_loss(v_vtc, t_emb, index, self.temp, local_grad=self.vtc_local_grad)
        loss_vtm = self._vtm(vision_tokens, text_tokens, text_mask, v_emb, t_emb, index, seed)
        loss_mlm = self._mlm(vision_tokens, text_ids, text_mask, seed) if mlm else zero
        return {"vtc": loss_vtc, "vtm": loss_vtm, "mlm": loss_mlm, "uta": loss_uta}

    def _vtm(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
             v_emb: torch.Tensor, t_emb: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor:
        """VTM over this rank's batch (official): one negative video per caption and one negative caption per
        video, then the fusion layers over ``3B`` pairs."""
        with torch.no_grad():
            sim_v2t = v_emb.float() @ t_emb.float().t() / self.temp  # [B, B]
            pos = positive_mask(index, index)  # [B, B]
            neg_video, ok_video = sample_vtm_negatives(sim_v2t.t(), pos, step_seed(seed, 0, 0, _VTM_VIDEO),
                                                       self.vtm_hard_negatives)  # a video per caption
            neg_text, ok_text = sample_vtm_negatives(sim_v2t, pos, step_seed(seed, 0, 0, _VTM_TEXT),
                                                     self.vtm_hard_negatives)  # a caption per video
        vis = torch.cat([vision_tokens, vision_tokens[neg_video], vision_tokens])  # [3B, K, C_v]
        txt = torch.cat([text_tokens, text_tokens, text_tokens[neg_text]])  # [3B, L, C_t]
        msk = torch.cat([text_mask, text_mask, text_mask[neg_text]])  # [3B, L]
        return vtm_loss(self.match_logits(vis, txt, msk), ok_video, ok_text)

    def _mlm(self, vision_tokens: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
             seed: int) -> torch.Tensor:
        """MLM (official ``MLMLoss.mlm_loss``): the masked caption through the text-only layers, then the fusion
        layers with the visual tokens, then the MLM head."""
        t = self.text
        inputs, labels = mlm_mask(text_ids, text_mask, step_seed(seed, 0, 0, _MLM), prob=self.mlm_prob,
                                  mask_id=t.mask_id, vocab_size=t.vocab_size, special_ids=(t.cls_id, t.sep_id, t.pad_id))
        hidden = t.forward_fusion(t.forward_text(inputs, text_mask), text_mask, vision_tokens)  # [B, L, C_t]
        return mlm_loss(t.mlm_logits(hidden), labels)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, mlm_prob={self.mlm_prob}, vtm_hard_negatives={self.vtm_hard_negatives}"


def load_pretrained(model: UMTVisionText, path: str) -> dict[str, list[str]]:
    """Initialise ``model`` from a checkpoint or export (``model.init_from``): the student backbone strictly
    (:func:`umt.model.load.load_backbone`: same width, depth and patch, or a one-line error), then every other model
    key of the file that exists in ``model`` with the same shape (a stage-1 file: the UMA heads; a stage-2 file: the
    text side, projections, temperature too), ``strict=False`` as the official stage-2 init
    (``vit.py: load_state_dict(state_dict, strict=False)``).

    Returns:
        ``{"loaded": [...], "missing": [...], "dropped": [...]}``: model keys set from the file, model keys left at
        their init (e.g. ``text.*`` and the projections from a stage-1 file), file keys not used.

    Raises:
        umt.model.load.BackboneLoadError: no backbone in the file, or a backbone of another size; UMA heads of another
            shape (another teacher width or number of aligned layers).
    """
    from umt.model.load import BackboneLoadError, load_backbone, read_backbone

    st = read_backbone(path)
    report = load_backbone(model.student, st)
    own = model.state_dict()
    rest = {k: v for k, v in st.rest.items() if k in own}
    heads_bad = [k for k, v in rest.items() if k.startswith("heads.") and tuple(v.shape) != tuple(own[k].shape)]
    heads_file = sorted(k for k in st.rest if k.startswith("heads."))
    heads_own = sorted(k for k in own if k.startswith("heads."))
    if heads_bad or (heads_file and heads_file != heads_own):
        k = heads_bad[0] if heads_bad else None
        what = (f"{k}: file {tuple(rest[k].shape)} vs model {tuple(own[k].shape)}" if k else
                f"file has {len(heads_file)} head tensors, the model {len(heads_own)} (model.align_layers)")
        raise BackboneLoadError(f"{path}: its UMA heads do not fit the model ({what}): another teacher width or "
                                "number of aligned layers")
    fits = {k: v for k, v in rest.items() if tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    loaded = sorted(f"student.{k}" for k in report.loaded) + sorted(fits)
    used = set(fits)
    dropped = sorted(d for d in report.dropped if d not in used)
    missing = sorted(k for k in own if k not in used and not (k.startswith("student.") and k[8:] in report.loaded))
    return {"loaded": loaded, "missing": missing, "dropped": dropped}
