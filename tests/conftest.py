"""Test configuration: markers skip cleanly where the hardware or package is missing.

Markers (declared in setup.cfg): ``gpu`` (CUDA GPU), ``dali`` (nvidia-dali), ``triton`` (triton; on CPU the tests
run in the interpreter, ``TRITON_INTERPRET=1`` is set here before any kernel module is imported), ``dist``
(several processes, gloo on CPU), ``slow``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# Must precede the import of any module that defines @triton.jit kernels.
if importlib.util.find_spec("torch") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

import umt  # noqa: E402,F401 - applies the torchvision compatibility shim before tests import timm/open_clip


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    reasons = {
        "gpu": None if torch.cuda.is_available() else "needs a CUDA GPU",
        "dali": None if _has("nvidia.dali") else "needs nvidia-dali (pip install '.[dali]')",
        "triton": None if _has("triton") else "needs triton (pip install '.[triton]')",
        "peers": None if _has("decord") and _has("spdl") else "needs the peer loaders (pip install '.[peers]')",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))

