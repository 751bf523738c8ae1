"""Video question answering on the stage-2 model (official ``multi_modality/models/umt_qa.py``, ``tasks/vqa.py``,
``tasks/shared_utils.py``, ``models/backbones/bert/builder.py``).

:class:`UMTQA` holds three parts:

* ``student``: the stage-1/stage-2 video ViT. QA sees every token (the official QA configs set the mask ratio to 0):
  the last block's tokens after the final LayerNorm, ``[B, T·h·w, C_v]``.
* ``text``: the stage-2 BERT (:class:`~umt.model.text.BertTextEncoder`). The question runs through the text-only
  layers and then the fusion layers, which cross-attend to the visual tokens: the *question states*
  ``[B, L_q, C_t]``. The encoder's MLM head has no use here and is dropped (the official QA model's text encoder is a
  bare ``BertModel``); its weights go to the decoder's head.
* ``decoder`` (:class:`AnswerDecoder`): a BERT language-model decoder with as many layers as the encoder has fusion
  layers (official ``build_bert_decoder``: ``num_hidden_layers - fusion_layer``, 3 for BERT-base, 5 for BERT-large).
  Each layer has causal self-attention over the answer and cross-attention to the question states; the LM head is
  tied to the decoder's own word embeddings. :func:`init_decoder_from_text` initialises it as the official
  fine-tuning does (``shared_utils.setup_model`` with ``has_decoder=True``): decoder layer j from encoder layer
  ``fusion_layer + j`` (self-attention, cross-attention and MLP), the embeddings from the encoder's, the LM head
  from the MLM head.

Training loss (official ``UMT_QA.forward``): every answer of a question is tokenised as ``"answer [SEP]"`` (the
tokenizer adds ``[CLS]`` in front and a second ``[SEP]`` behind, truncated to ``max_a_len`` = 5 tokens); its negative
log-likelihood is the sum over its tokens after ``[CLS]`` of the next-token cross-entropy (padding ignored); the
loss is ``Σ_answers weight · nll / B``. A question's answers carry weights ``count / number of answers``
(``qa_dataset.get_answers_with_weights``): a single answer has weight 1.

Answer ranking (official ``UMT_QA.rank_answer``): from ``[CLS]`` alone the decoder gives the first-token
distribution; the ``k`` answers of the list whose first token is most probable are kept; each is scored by
``log p(first token) + log p(answer)`` where ``log p(answer)`` is the full sequence log-likelihood (which counts the
first token again: the official sum, kept as it is); the prediction is the best of the ``k``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from umt.model.student import UMTStudent
from umt.model.text import BertTextEncoder

__all__ = ["AnswerDecoder", "UMTQA", "answer_nll", "qa_loss", "init_decoder_from_text", "qa_state_from_stage2",
           "official_qa_name", "load_stage2_into_qa", "is_official_qa", "from_official_qa"]


def answer_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each answer under teacher forcing (official ``BertLMHeadModel`` loss with
    ``reduction="none"``, summed per sequence).

    Args:
        logits: ``[N, L, V]`` decoder logits at every position.
        ids: ``[N, L]`` answer tokens (``[CLS] ... [SEP] [SEP] [PAD]...``).
        mask: ``[N, L]``, 1 on real tokens.

    Returns:
        ``[N]``: ``-Σ_{t ≥ 1, mask[t]} log softmax(logits[t - 1])[ids[t]]``.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [N, L-1, V]
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, L-1]
    return -(tok * mask[:, 1:].to(tok.dtype)).sum(dim=1)  # [N]


def qa_loss(nll: torch.Tensor, weights: torch.Tensor, num_questions: int) -> torch.Tensor:
    """The official answer loss: ``Σ weights · nll / num_questions`` (``nll``, ``weights``: ``[N_answers]``)."""
    return (weights.to(nll.dtype) * nll).sum() / num_questions


class AnswerDecoder(nn.Module):
    """BERT language-model decoder over question states (official ``BertLMHeadModel`` with ``fusion_layer = 0``).

    Args:
        config: the text encoder's ``transformers.BertConfig`` (width, heads, vocabulary).
        depth: layers (the encoder's fusion layers).
        grad_checkpointing: recompute each layer in the backward pass (training only; the official QA configs set
            ``gradient_checkpointing = True`` for the decoder as for the encoder).

    Attributes: ``embeddings`` (``BertEmbeddings``), ``layers`` (``depth`` × ``BertLayer`` with cross-attention),
    ``lm_head`` (``BertOnlyMLMHead``, its decoder tied to ``embeddings.word_embeddings``).
    """

    def __init__(self, config: Any, depth: int, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertOnlyMLMHead

        cfg = copy.deepcopy(config)
        cfg.num_hidden_layers, cfg.is_decoder, cfg.add_cross_attention = depth, True, True
        self.config, self.depth, self.width, self.vocab_size = cfg, depth, cfg.hidden_size, cfg.vocab_size
        self.embeddings = BertEmbeddings(cfg)
        layers = []
        for i in range(depth):
            layer = BertLayer(cfg, layer_idx=i)
            layer.attention.self.is_causal = False  # the causal mask is passed explicitly (with the padding)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.lm_head = BertOnlyMLMHead(cfg)
        pred = self.lm_head.predictions
        pred.decoder.weight = self.embeddings.word_embeddings.weight
        pred.decoder.bias = pred.bias

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, states: torch.Tensor,
                states_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the next token at every answer position.

        Args:
            ids: ``[N, L]`` answer tokens; mask: ``[N, L]`` (1 = real token).
            states: ``[N, L_q, C_t]`` question states; states_mask: ``[N, L_q]`` (1 = real question token).

        Returns:
            ``[N, L, V]``.
        """
        h = self.embeddings(input_ids=ids)  # [N, L, C]
        n, length = ids.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()  # [L, L]
        allowed = causal[None] & mask[:, None, :].bool()  # [N, L, L]
        neg = torch.finfo(h.dtype).min
        self_mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill(~allowed, neg)[:, None]
        cross_mask = BertTextEncoder.extended_mask(states_mask, h.dtype)  # [N, 1, 1, L_q]
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, self_mask, states, cross_mask, use_reentrant=False)
            else:
                h = layer(h, self_mask, states, cross_mask)  # [N, L, C]
        return self.lm_head(h)  # [N, L, V]


class UMTQA(nn.Module):
    """The QA model: ``student`` → visual tokens; ``text`` (question, fused with the video) → question states;
    ``decoder`` → answer likelihoods (see the module docstring).

    Args:
        student: the video ViT (its final LayerNorm gives the visual tokens).
        text: the stage-2 BERT encoder, cross-attending from width ``student.embed_dim``. Its MLM head is removed.

    Raises:
        ValueError: the text encoder's cross-attention does not take the student's width.
    """

    def __init__(self, student: UMTStudent, text: BertTextEncoder) -> None:
        super().__init__()
        if text.vision_width != student.embed_dim:
            raise ValueError(f"text encoder cross-attends to width {text.vision_width}, the student is "
                             f"{student.embed_dim} wide")
        self.student, self.text = student, text
        self.decoder = AnswerDecoder(text.config, text.depth - text.fusion_layer, text.grad_checkpointing)
        del self.text.mlm_head  # the official QA encoder is a bare BertModel (the head's weights seed the decoder's)

    def encode_vision(self, video: torch.Tensor) -> torch.Tensor:
        """Every visual token after the final LayerNorm: ``[B, 3, T, H, W] → [B, T·h·w, C_v]``."""
        return self.student.forward_features(video)

    def encode_question(self, video: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """Question states ``[B, L_q, C_t]``: the text-only layers, then the fusion layers over the visual tokens."""
        vision = self.encode_vision(video)  # [B, K, C_v]
        return self.text.forward_fusion(self.text.forward_text(q_ids, q_mask), q_mask, vision)

    def forward(self, video: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor, a_ids: torch.Tensor,
                a_mask: torch.Tensor, owner: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (0-dim float32).

        Args:
            video: ``[B, 3, T, H, W]``; q_ids, q_mask: ``[B, L_q]`` questions.
            a_ids, a_mask: ``[N, L_a]`` every answer of every question.
            owner: ``[N]`` int64, the question (row of the batch) of each answer.
            weights: ``[N]`` answer weights.
        """
        states = self.encode_question(video, q_ids, q_mask)  # [B, L_q, C_t]
        logits = self.decoder(a_ids, a_mask, states[owner], q_mask[owner])  # [N, L_a, V]
        return qa_loss(answer_nll(logits, a_ids, a_mask), weights, video.shape[0])

    @torch.no_grad()
    def rank_answers(self, states: torch.Tensor, q_mask: torch.Tensor, ans_ids: torch.Tensor, ans_mask: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the answer list for each question (official ``rank_answer``).

        Args:
            states: ``[B, L_q, C_t]`` question states; q_mask: ``[B, L_q]``.
            ans_ids, ans_mask: ``[A, L_a]`` the tokenised answer list (every row starts with ``[CLS]``).
            k: candidates kept by first-token probability (official ``k_test`` = 128; at most A).

        Returns:
            ``(ids [B, k], probs [B, k])``: answer-list indices sorted best first, and their probabilities after
            re-ranking (softmax over the k summed log-probabilities).
        """
        b, a = states.shape[0], ans_ids.shape[0]
        k = min(k, a)
        start = ans_ids[:1, :1].expand(b, 1)  # [B, 1] the [CLS] every answer starts with
        first = self.decoder(start, torch.ones_like(start), states, q_mask)[:, 0].float()  # [B, V]
        p_first = first.softmax(dim=-1).index_select(1, ans_ids[:, 1])  # [B, A]
        top_p, top_ids = p_first.topk(k, dim=1)  # [B, k]
        cand_ids = ans_ids[top_ids.reshape(-1)]  # [B·k, L_a]
        cand_mask = ans_mask[top_ids.reshape(-1)]
        rep = torch.arange(b, device=states.device).repeat_interleave(k)  # [B·k]
        logits = self.decoder(cand_ids, cand_mask, states[rep], q_mask[rep])  # [B·k, L_a, V]
        score = top_p.log() - answer_nll(logits, cand_ids, cand_mask).view(b, k)  # [B, k]
        probs, order = score.softmax(dim=-1).topk(k, dim=1)
        return top_ids.gather(1, order), probs

    @torch.no_grad()
    def predict(self, video: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor, ans_ids: torch.Tensor,
                ans_mask: torch.Tensor, k: int) -> torch.Tensor:
        """The best answer-list index per question: ``[B]`` int64."""
        states = self.encode_question(video, q_ids, q_mask)
        return self.rank_answers(states, q_mask, ans_ids, ans_mask, k)[0][:, 0]


# ----------------------------------------------------------------------------------------- initialisation
def qa_state_from_stage2(sd: dict[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    """A stage-2 state dict in our layout (``student.*``, ``text.embeddings.*``, ``text.layers.i.*``,
    ``text.mlm_head.*``, ...) → the QA model's keys, as the official fine-tuning renames them
    (``shared_utils.setup_model``, ``has_decoder=True``): the encoder keeps every layer; layer
    ``i ≥ fusion_layer`` is also copied to ``decoder.layers.{i - fusion_layer}``, the embeddings to
    ``decoder.embeddings``, the MLM head to ``decoder.lm_head``. Keys of no use to QA (UMA heads, projections,
    temperature, match head, pooling norm) are left out."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("student."):
            out[k] = v
        elif k.startswith("text.embeddings."):
            out[k] = v
            out["decoder." + k[len("text."):]] = v
        elif k.startswith("text.mlm_head."):
            out["decoder.lm_head." + k[len("text.mlm_head."):]] = v
        elif (m := re.match(r"text\.layers\.(\d+)\.(.*)", k)) is not None:
            out[k] = v
            i = int(m.group(1))
            if i >= fusion_layer:
                out[f"decoder.layers.{i - fusion_layer}.{m.group(2)}"] = v
    return out


def init_decoder_from_text(model: UMTQA, text_state: dict[str, torch.Tensor]) -> list[str]:
    """Seed ``model.decoder`` from a text encoder's state (``text.*`` keys of :class:`BertTextEncoder`, MLM head
    included) as :func:`qa_state_from_stage2` maps it. A cross-attention tensor whose shape differs (the encoder's
    keys and values project from the vision width, the decoder's from the text width: only equal in the official
    models) keeps its init.

    Returns:
        Decoder keys left at their init.
    """
    mapped = qa_state_from_stage2({f"text.{k}" if not k.startswith("text.") else k: v
                                   for k, v in text_state.items()}, model.text.fusion_layer)
    own = model.decoder.state_dict()
    dec = {k[len("decoder."):]: v for k, v in mapped.items() if k.startswith("decoder.")}
    fit = {k: v for k, v in dec.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.decoder.load_state_dict(fit, strict=False)
    return sorted(k for k in own if k not in fit and not k.startswith("lm_head.predictions.decoder."))


def load_stage2_into_qa(model: UMTQA, path: str) -> dict[str, list[str]]:
    """Initialise ``model`` from a stage-2 checkpoint (ours, or an official ``b16_25m.pth``-style file, converted
    on read by :mod:`umt.model.official`): the student strictly (:func:`umt.model.load.load_backbone`), the text
    encoder, and the decoder as the official fine-tuning seeds it (:func:`qa_state_from_stage2`).

    Returns:
        ``{"loaded": [...], "missing": [...], "dropped": [...]}``: QA keys set from the file, QA keys left at their
        init, file keys unused.

    Raises:
        umt.model.load.BackboneLoadError: no backbone in the file, or one of another size.
    """
    from umt.model.load import load_backbone, read_backbone

    st = read_backbone(path)
    load_backbone(model.student, st)
    rest = dict(st.rest)
    mapped = qa_state_from_stage2(rest, model.text.fusion_layer)
    own = model.state_dict()
    fit = {k: v for k, v in mapped.items() if not k.startswith("student.") and k in own
           and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fit, strict=False)
    used_src = {k for k in rest if k.startswith(("text.embeddings.", "text.layers.", "text.mlm_head."))}
    loaded = sorted([f"student.{k}" for k in model.student.state_dict()] + list(fit))
    missing = sorted(k for k in own if k not in set(loaded) and not k.startswith("student.")
                     and not k.endswith("predictions.decoder.weight") and not k.endswith("predictions.decoder.bias"))
    return {"loaded": loaded, "missing": missing, "dropped": sorted(k for k in rest if k not in used_src)}


#: our QA key prefix → the official ``UMT_QA`` one (``multi_modality/models/umt_qa.py``: ``vision_encoder.encoder``
#: the ViT, ``text_encoder`` a bare ``BertModel``, ``text_decoder`` a ``BertLMHeadModel``)
_OFFICIAL_QA_PREFIXES = (("student.", "vision_encoder.encoder."), ("text.embeddings.", "text_encoder.embeddings."),
                         ("text.layers.", "text_encoder.encoder.layer."),
                         ("decoder.embeddings.", "text_decoder.bert.embeddings."),
                         ("decoder.layers.", "text_decoder.bert.encoder.layer."),
                         ("decoder.lm_head.", "text_decoder.cls."))


def official_qa_name(key: str) -> str:
    """Our QA key → the official ``UMT_QA`` state-dict name (:data:`_OFFICIAL_QA_PREFIXES`).

    Raises:
        KeyError: a key of no QA part.
    """
    for ours, theirs in _OFFICIAL_QA_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"{key}: no official QA name")


def is_official_qa(sd: dict[str, Any]) -> bool:
    """``sd`` is the state dict of an official QA model (a released ``qa_*.pth``): a text decoder beside the ViT."""
    return "text_decoder.cls.predictions.bias" in sd and any(k.startswith("vision_encoder.encoder.") for k in sd)


def from_official_qa(sd: dict[str, torch.Tensor], path: str = "<official>") -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, int]]:
    """An official QA state dict in our keys (renaming only; BERT's ``position_ids`` buffers are dropped, ours are
    not stored) and its sizes: ``{"width", "depth"}`` of the ViT, ``{"text_depth", "decoder_depth",
    "fusion_layer"}`` (official ``build_bert_decoder``: decoder layers = text layers − fusion layer).

    Raises:
        ValueError: keys no rule maps (the first ones named).
    """
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    for k, v in sd.items():
        if k.endswith("embeddings.position_ids"):
            continue
        for ours, theirs in _OFFICIAL_QA_PREFIXES:
            if k.startswith(theirs):
                out[ours + k[len(theirs):]] = v
                break
        else:
            left.append(k)
    if left:
        raise ValueError(f"{path}: official QA keys with no place in the QA model: {', '.join(sorted(left)[:4])}")
    count = lambda prefix: len({k[len(prefix):].split(".")[0] for k in out if k.startswith(prefix)})  # noqa: E731
    text_depth, dec_depth = count("text.layers."), count("decoder.layers.")
    meta = {"width": int(out["student.patch_embed.proj.weight"].shape[0]), "depth": count("student.blocks."),
            "text_depth": text_depth, "decoder_depth": dec_depth, "fusion_layer": text_depth - dec_depth}
    return out, meta
