"""A Hugging Face *CLIPModel* directory (``model_type: clip``) keeps the activation only inside ``vision_config``:
the teacher must read it from there (a top-level lookup finds nothing and falls back to quick_gelu). Built here
offline with random weights; nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from umt.model import CLIPTeacher
from umt.model.teacher import TeacherWeightsError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    # umt-tiny-clip's vision tower (width 64, 4 layers, head width 32, patch 16) at 32 px; a tiny text tower
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2, image_size=32,
                  patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=16, hidden_act="quick_gelu")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hf_clip_full")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)).save_pretrained(str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "clip" and "hidden_act" not in cfg  # the case under test
    assert cfg["vision_config"]["hidden_act"] == "gelu"
    return out


def test_activation_read_from_vision_config(clip_dir: Path) -> None:
    t = CLIPTeacher("umt-tiny-clip", image_size=32, weights=clip_dir, quick_gelu=False, align_layers=2)
    assert t is not None  # GELU in the file, GELU in the model: loads
    with pytest.raises(TeacherWeightsError, match="hidden_act='gelu'"):
        CLIPTeacher("umt-tiny-clip", image_size=32, weights=clip_dir, quick_gelu=True, align_layers=2)


def test_loaded_tower_equals_transformers_forward(clip_dir: Path) -> None:
    """The weights loaded with the file's activation give transformers' own image embedding."""
    from transformers import CLIPModel

    from umt.model.teacher import build_clip, load_clip_weights

    clip = build_clip("umt-tiny-clip", image_size=32, quick_gelu=False).eval()
    load_clip_weights(clip, clip_dir)
    hf = CLIPModel.from_pretrained(str(clip_dir)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # fp32 through 4 blocks of width 64: ~1e-6; GELU vs quick-GELU would differ by ~1e-2
        torch.testing.assert_close(clip.encode_image(x), hf.visual_projection(hf.vision_model(pixel_values=x).pooler_output), rtol=1e-4, atol=1e-5)
