"""The stage-2 projections and match head start from PyTorch's default ``nn.Linear`` init, as the official
``multi_modality/models/umt.py`` (``UMT.__init__`` builds ``vision_proj``, ``text_proj`` and ``itm_head`` as plain
``nn.Linear`` and applies no init of its own to them): weight kaiming-uniform(a=√5), i.e. uniform in ±1/√fan_in, and
bias uniform in ±1/√fan_in (not xavier, not zero)."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def model(tiny_bert: str):  # noqa: ANN201
    import timm

    import umt.model  # noqa: F401 - registers the umt_vit_* names
    from umt.model.heads import UMAHeads
    from umt.model.text import build_text_encoder
    from umt.model.vision_text import UMTVisionText

    torch.manual_seed(0)
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32, align_layers=2)
    text, _ = build_text_encoder(tiny_bert, 2, student.embed_dim)
    return UMTVisionText(student, UMAHeads(student.embed_dim, 16, 2), text, 256)


@pytest.mark.parametrize("name", ["vision_proj", "text_proj", "itm_head"])
def test_projections_use_the_default_linear_init(model, name: str) -> None:  # noqa: ANN001
    lin = getattr(model, name)
    fan_in = lin.weight.shape[1]
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear.reset_parameters: both weight and bias
    w, b = lin.weight.detach(), lin.bias.detach()
    assert w.abs().max().item() <= bound
    assert b.abs().max().item() <= bound
    # a zero bias (the xavier + zeros init) is not the default init: uniform biases are almost surely all non-zero
    assert (b != 0).all()
    # the weights fill the range as a uniform does: std = bound/√3 (with ≥ 64 draws, within 25 %); xavier's bound
    # √(6 / (fan_in + fan_out)) would put values past ±1/√fan_in for these shapes
    if w.numel() >= 64:
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)


def test_per_frame_embeddings_give_encode_vision(model) -> None:  # noqa: ANN001
    # the retrieval's official scoring reads encode_vision_frames; encode_vision is its normalised frame mean
    torch.manual_seed(1)
    video = torch.randn(2, 3, 2, 32, 32)
    model.eval()
    with torch.no_grad():
        tokens, frames = model.encode_vision_frames(video)
        tokens2, embed = model.encode_vision(video, None)
    assert frames.shape == (2, 2, 256) and torch.equal(tokens, tokens2)
    torch.testing.assert_close(frames.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(embed, torch.nn.functional.normalize(frames.mean(1), dim=-1))
