"""The one switch between PyTorch reference ops and the project's Triton kernels.

Every hot-path op the model, masking and losses use goes through this module: attention, the semantic-mask
top-k, and the token/target gathers. ``set_backend("triton")`` turns the Triton kernels on (GPU, or CPU under
``TRITON_INTERPRET=1``); ``"torch"`` (the default) uses the references in :mod:`kernels`, which need neither Triton
nor a GPU. Training configs set it through ``model.kernels``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

import kernels.flash_attention as _fa
import kernels.semantic_topk as _st
import kernels.token_gather as _tg

__all__ = [
    "BACKENDS",
    "attention",
    "backend",
    "cls_attention",
    "gather_targets",
    "gather_tokens",
    "gumbel_topk",
    "semantic_topk",
    "set_backend",
    "triton_available",
    "uniform_noise",
    "use_backend",
]

BACKENDS = ("torch", "triton")
_BACKEND = "torch"

# Pure helpers shared by every backend.
uniform_noise = _st.uniform_noise
gumbel_topk = _st.gumbel_topk
cls_attention = _st.cls_attention


def triton_available() -> bool:
    """Whether Triton kernels can run here: Triton importable and a CUDA GPU, or ``TRITON_INTERPRET=1``."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def set_backend(name: str) -> None:
    """Choose ``"torch"`` (references) or ``"triton"`` (kernels) for every op in this module.

    Raises:
        ValueError: unknown name.
        RuntimeError: ``"triton"`` asked for where Triton cannot run (see :func:`triton_available`).
    """
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    if name == "triton" and not triton_available():
        raise RuntimeError("the Triton backend needs triton and a CUDA GPU (or TRITON_INTERPRET=1 for tests)")
    _BACKEND = name


def backend() -> str:
    """The backend in force: ``"torch"`` or ``"triton"``."""
    return _BACKEND


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend` that restores the previous backend."""
    previous = _BACKEND
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal scaled dot-product attention ``[B, H, N, D] → [B, H, N, D]``."""
    return _fa.flash_attention(q, k, v, impl=_BACKEND)


def semantic_topk(
    q_cls: torch.Tensor, k: torch.Tensor, keep: int, seed: int | torch.Tensor, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Kept patch indices ``[R, K]`` (sorted) from the CLS query ``[R, H, D]`` and keys ``[R, H, M, D]``."""
    return _st.semantic_topk(q_cls, k, keep, seed, num_prefix_tokens, impl=_BACKEND)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, M, C]`` gathered at ``idx [B, K]`` (+ ``pos_embed [M, C]`` at the same rows) → ``[B, K, C]``."""
    return _tg.gather_tokens(x, idx, pos_embed, impl=_BACKEND)


def gather_targets(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[L, B, M, C]`` gathered at ``idx [B, K]`` → ``[L, B, K, C]``."""
    return _tg.gather_targets(t, idx, impl=_BACKEND)
