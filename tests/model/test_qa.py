"""The video-QA model (umt.model.qa): answer loss and ranking on hand-worked cases, gradient flow, and the
initialisation from an official stage-2 checkpoint (official decoder key names:
tests/model/fixtures/official_qa_decoder_keys.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from transformers import BertConfig

import umt.model  # noqa: F401 - registers umt_vit_*
from umt.model.qa import UMTQA, answer_nll, load_stage2_into_qa, official_qa_name, qa_loss
from umt.model.text import BertTextEncoder

SPECIAL = {"cls": 1, "sep": 2, "pad": 0, "mask": 3}
QA_FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "official_qa_decoder_keys.json").read_text())


def tiny_qa(vocab: int = 10, width: int = 16, layers: int = 3, fusion: int = 2) -> UMTQA:
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32)
    text = BertTextEncoder(BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                                      num_attention_heads=2, intermediate_size=2 * width, max_position_embeddings=64,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                           fusion, student.embed_dim, SPECIAL)
    return UMTQA(student, text)


#: vocabulary probabilities of the "constant" decoder: 5 → .2, 6 → .25, 7 → .25, 8 → .1, [SEP]=2 → .1, the five
#: other ids .02 each (sum 1)
PROBS = [0.02, 0.02, 0.1, 0.02, 0.02, 0.2, 0.25, 0.25, 0.1, 0.02]
#: answer list: A0 = [CLS] 5 [SEP] [SEP], A1 = [CLS] 6 7 [SEP] [SEP], A2 = [CLS] 8 [SEP] [SEP] (padded with 0)
ANS = torch.tensor([[1, 5, 2, 2, 0], [1, 6, 7, 2, 2], [1, 8, 2, 2, 0]])
ANS_MASK = (ANS != 0).long()


def constant_decoder(model: UMTQA) -> UMTQA:
    """Every decoder weight 0 except the LM head's bias = log PROBS: every hidden state is 0, so at every position
    the next-token distribution is PROBS whatever the question."""
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.decoder.lm_head.predictions.bias.copy_(torch.tensor(PROBS).log())
    return model.eval()


def test_answer_nll_and_loss_hand_worked() -> None:
    """nll(A0) = -(log .2 + 2 log .1), nll(A1) = -(2 log .25 + 2 log .1), nll(A2) = -(log .1 + 2 log .1); the loss
    of question 0 with answers A0, A1 (weights ½ each) and question 1 with A2 (weight 1) over B = 2."""
    torch.manual_seed(0)
    model = constant_decoder(tiny_qa())
    states = torch.randn(3, 4, 16)
    logits = model.decoder(ANS, ANS_MASK, states, torch.ones(3, 4, dtype=torch.long))
    nll = answer_nll(logits, ANS, ANS_MASK)
    expect = [-(math.log(.2) + 2 * math.log(.1)), -(2 * math.log(.25) + 2 * math.log(.1)), -3 * math.log(.1)]
    torch.testing.assert_close(nll, torch.tensor(expect), rtol=1e-5, atol=1e-5)
    loss = qa_loss(nll, torch.tensor([0.5, 0.5, 1.0]), 2)
    assert abs(loss.item() - (0.5 * expect[0] + 0.5 * expect[1] + expect[2]) / 2) < 1e-5
    video = torch.randn(2, 3, 2, 32, 32)
    q_ids, q_mask = torch.tensor([[1, 5, 2], [1, 6, 2]]), torch.ones(2, 3, dtype=torch.long)
    full = model(video, q_ids, q_mask, ANS, ANS_MASK, torch.tensor([0, 0, 1]), torch.tensor([0.5, 0.5, 1.0]))
    assert abs(full.item() - loss.item()) < 1e-5


def test_rank_answers_picks_the_hand_computed_best() -> None:
    """First-token probabilities: A1 .25 > A0 .2 > A2 .1. Scores log p(first) + log p(answer): A0 .2·(.2·.1·.1) =
    4e-4, A1 .25·(.25·.25·.1·.1) = 1.5625e-4, A2 .1·(.1·.1·.1) = 1e-4. k = 1 keeps only A1; k = 2 re-ranks A0 above
    A1 (probabilities 4/(4 + 1.5625) and the rest); k = 3 (and k = 128, clamped) the same winner, A2 last."""
    torch.manual_seed(0)
    model = constant_decoder(tiny_qa())
    states, q_mask = torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.long)
    ids, probs = model.rank_answers(states, q_mask, ANS, ANS_MASK, k=1)
    assert ids.tolist() == [[1], [1]] and torch.allclose(probs, torch.ones(2, 1))
    ids, probs = model.rank_answers(states, q_mask, ANS, ANS_MASK, k=2)
    assert ids.tolist() == [[0, 1], [0, 1]]
    p0 = 4e-4 / (4e-4 + 1.5625e-4)
    torch.testing.assert_close(probs[0], torch.tensor([p0, 1 - p0]), rtol=1e-4, atol=1e-5)
    for k in (3, 128):
        ids, probs = model.rank_answers(states, q_mask, ANS, ANS_MASK, k=k)
        assert ids.tolist() == [[0, 1, 2], [0, 1, 2]]
        total = 4e-4 + 1.5625e-4 + 1e-4
        torch.testing.assert_close(probs[1], torch.tensor([4e-4, 1.5625e-4, 1e-4]) / total, rtol=1e-4, atol=1e-5)


def test_decoder_is_causal_and_reads_the_question() -> None:
    """A random decoder: position t's logits do not change when a later answer token changes, and change with the
    question states."""
    torch.manual_seed(0)
    model = tiny_qa().eval()
    states, sm = torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.long)
    a, b = torch.tensor([[1, 5, 6, 2]]), torch.tensor([[1, 5, 7, 2]])
    m = torch.ones(1, 4, dtype=torch.long)
    la, lb = model.decoder(a, m, states, sm), model.decoder(b, m, states, sm)
    torch.testing.assert_close(la[:, :2], lb[:, :2])
    assert not torch.allclose(la[:, 2:], lb[:, 2:])
    assert not torch.allclose(model.decoder(a, m, states + 1, sm), la)
    # a padded question token is not read by the cross-attention
    s2 = states.clone()
    s2[:, 3] += 5.0
    sm2 = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(model.decoder(a, m, states, sm2), model.decoder(a, m, s2, sm2))


def test_gradient_reaches_decoder_text_and_vision() -> None:
    torch.manual_seed(0)
    model = tiny_qa()
    video = torch.randn(2, 3, 2, 32, 32)
    q_ids, q_mask = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    loss = model(video, q_ids, q_mask, ANS, ANS_MASK, torch.tensor([0, 0, 1]), torch.tensor([0.5, 0.5, 1.0]))
    params = {"decoder": model.decoder.layers[0].crossattention.self.query.weight,
              "decoder_head": model.decoder.lm_head.predictions.transform.dense.weight,
              "text_only": model.text.layers[0].attention.self.query.weight,
              "text_fusion": model.text.layers[2].crossattention.self.key.weight,
              "vision": model.student.patch_embed.proj.weight,
              "vision_last": model.student.blocks[-1].mlp.fc2.weight}
    grads = torch.autograd.grad(loss, list(params.values()))
    for name, g in zip(params, grads):
        assert g.abs().sum() > 0, name


def test_official_decoder_key_names() -> None:
    """Our decoder at BERT-base size names exactly the official UMT_QA text_decoder keys (less BERT's position_ids
    buffer, which our embeddings do not store)."""
    off = set()
    for e in QA_FIXTURE["keys"]:
        off |= {e[0].replace("{i}", str(i)) for i in range(*e[3])} if len(e) == 4 else {e[0]}
    assert len(off) == QA_FIXTURE["num_keys"]
    with torch.device("meta"):
        student = timm.create_model("umt_vit_base_patch16_224", num_frames=4)
        text = BertTextEncoder(BertConfig(vocab_size=30522), QA_FIXTURE["fusion_layer"], 768, SPECIAL)
        model = UMTQA(student, text)
    sd = model.state_dict()
    ours = {official_qa_name(k): tuple(v.shape) for k, v in sd.items() if k.startswith("decoder.")}
    expect = {k: None for k in off if not k.endswith("position_ids")}
    assert set(ours) == set(expect)
    shapes = {e[0].replace("{i}", "0"): tuple(e[1]) for e in QA_FIXTURE["keys"]}
    for k, s in shapes.items():
        if not k.endswith("position_ids"):
            assert ours[k] == s, k
    assert not any(k.startswith("text.mlm_head") for k in sd)


def test_official_stage2_checkpoint_loads_into_qa(tmp_path: Path) -> None:
    """An official-layout stage-2 file (tiny): the student, the text encoder, and the decoder seeded from the fusion
    layers, embeddings and MLM head, each compared with the file's own tensor under its official name."""
    from tests.model.test_official import _randomise, official_names, tiny_stage2

    src = _randomise(tiny_stage2(vocab=100))
    off_sd = official_names("stage2", src.state_dict())
    path = tmp_path / "b16_25m.pth"
    torch.save({"model": off_sd}, path)
    qa = tiny_qa(vocab=100, width=32, layers=3, fusion=2)
    rep = load_stage2_into_qa(qa, str(path))
    sd = qa.state_dict()
    torch.testing.assert_close(sd["student.patch_embed.proj.weight"],
                               off_sd["vision_encoder.encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(sd["text.layers.0.attention.self.query.weight"],
                               off_sd["text_encoder.bert.encoder.layer.0.attention.self.query.weight"])
    for part in ("attention.self.value.weight", "crossattention.output.dense.bias", "output.LayerNorm.weight"):
        torch.testing.assert_close(sd[f"decoder.layers.0.{part}"],
                                   off_sd[f"text_encoder.bert.encoder.layer.2.{part}"])
    torch.testing.assert_close(sd["decoder.embeddings.word_embeddings.weight"],
                               off_sd["text_encoder.bert.embeddings.word_embeddings.weight"])
    torch.testing.assert_close(sd["decoder.lm_head.predictions.transform.dense.weight"],
                               off_sd["text_encoder.cls.predictions.transform.dense.weight"])
    torch.testing.assert_close(sd["decoder.lm_head.predictions.bias"], off_sd["text_encoder.cls.predictions.bias"])
    # the decoder's cross-attention keys/values read the question (width 32), the file's the video (96): fresh
    assert rep["missing"] == ["decoder.layers.0.crossattention.self.key.weight",
                              "decoder.layers.0.crossattention.self.value.weight"]
    assert {k.split(".")[0] for k in rep["dropped"]} == {"heads", "pool_norm", "vision_proj", "text_proj", "temp",
                                                         "itm_head"}


def test_official_qa_file_loads_for_evaluation(tmp_path: Path) -> None:
    """A released-style qa_*.pth (official UMT_QA key names, written by this test's own renaming, with BERT's
    position_ids buffers) loads strictly: every tensor lands where its official name says; the fusion split is read
    off the layer counts (3 text layers, 1 decoder layer → fusion 2)."""
    import re

    from tests.data_utils import tiny_bert
    from umt.eval.qa import load_qa

    bert = tiny_bert(tmp_path / "bert", layers=3, width=32)
    torch.manual_seed(0)
    src = tiny_qa(vocab=30522, width=32, layers=3, fusion=2)
    g = torch.Generator().manual_seed(1)
    off = {}
    for k, v in src.state_dict().items():
        v = torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        k = re.sub(r"^student\.", "vision_encoder.encoder.", k)
        k = re.sub(r"^text\.embeddings\.", "text_encoder.embeddings.", k)
        k = re.sub(r"^text\.layers\.", "text_encoder.encoder.layer.", k)
        k = re.sub(r"^decoder\.embeddings\.", "text_decoder.bert.embeddings.", k)
        k = re.sub(r"^decoder\.layers\.", "text_decoder.bert.encoder.layer.", k)
        k = re.sub(r"^decoder\.lm_head\.", "text_decoder.cls.", k)
        off[k] = v
    off["text_decoder.cls.predictions.decoder.weight"] = off["text_decoder.bert.embeddings.word_embeddings.weight"]
    off["text_decoder.cls.predictions.decoder.bias"] = off["text_decoder.cls.predictions.bias"]
    off["text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    off["text_decoder.bert.embeddings.position_ids"] = torch.arange(64)[None]
    path = tmp_path / "qa_msrvtt_pico.pth"
    torch.save({"model": off}, path)
    model, cfg, state = load_qa(path, text_encoder=bert, num_frames=2)
    assert state["official"] and cfg.text.fusion_layer == 2 and cfg.model.student == "umt_vit_pico_patch16_224"
    sd = model.state_dict()
    torch.testing.assert_close(sd["student.blocks.0.attn.qkv.weight"],
                               off["vision_encoder.encoder.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(sd["text.layers.2.crossattention.self.key.weight"],
                               off["text_encoder.encoder.layer.2.crossattention.self.key.weight"])
    torch.testing.assert_close(sd["decoder.layers.0.crossattention.self.query.weight"],
                               off["text_decoder.bert.encoder.layer.0.crossattention.self.query.weight"])
    torch.testing.assert_close(sd["decoder.lm_head.predictions.transform.dense.bias"],
                               off["text_decoder.cls.predictions.transform.dense.bias"])
    with pytest.raises(ValueError, match="--text-encoder"):
        load_qa(path)


def test_decoder_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = tiny_qa()
    states, sm = torch.randn(3, 4, 16, requires_grad=True), torch.ones(3, 4, dtype=torch.long)
    out = []
    for ckpt in (False, True):
        model.decoder.grad_checkpointing = ckpt
        loss = answer_nll(model.decoder(ANS, ANS_MASK, states, sm), ANS, ANS_MASK).sum()
        out.append(torch.autograd.grad(loss, [states, model.decoder.layers[0].attention.self.query.weight]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)
