"""The installed project coexists with torchvision, timm, open_clip and transformers.

Each check runs in a fresh interpreter so that import order is what a user gets.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_torchvision_shim_only_when_needed() -> None:
    """``import umt`` makes torchvision/timm/open_clip importable; the shim is on exactly when ``_C`` can't load."""
    probe = _python(
        """
        import umt._compat as c
        print(int(c._torchvision_c_loads()))
        """
    )
    assert probe.returncode == 0, probe.stderr
    c_loads = probe.stdout.strip() == "1"

    r = _python(
        """
        import umt, umt._compat as c
        import torchvision, timm, open_clip
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
        print(int(c.torchvision_shim_active()), m.num_features)
        """
    )
    assert r.returncode == 0, r.stderr
    shim, width = r.stdout.split()
    assert shim == ("0" if c_loads else "1")
    assert width == "192"

    if not c_loads:
        # Without the shim the failure the shim exists for is real (pytorch/vision#9085).
        bare = _python("import torchvision")
        assert bare.returncode != 0
        assert "torchvision::nms" in bare.stderr


def test_kernels_package_does_not_confuse_transformers() -> None:
    """Our top-level ``kernels`` is not mistaken for Hugging Face's ``kernels`` hub package, and BERT still runs."""
    r = _python(
        """
        import umt, kernels, torch
        from pathlib import Path
        import transformers
        from transformers.utils import is_kernels_available
        from transformers import BertConfig, BertModel
        cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)
        out = BertModel(cfg)(torch.randint(0, 99, (2, 5))).last_hidden_state
        import open_clip, timm
        print(Path(kernels.__file__).resolve().parent.name, int(is_kernels_available()), tuple(out.shape))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split(maxsplit=2) == ["kernels", "0", "(2, 5, 32)"]


def test_import_umt_does_not_initialise_cuda() -> None:
    r = _python(
        """
        import torch, umt, umt.ops, umt.flops, umt.data, kernels.semantic_topk, kernels.flash_attention
        print(int(torch.cuda.is_initialized()))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
