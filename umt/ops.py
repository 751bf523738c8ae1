"""The one switch between PyTorch reference ops and the project's Triton kernels.

Every hot-path op the model, masking and losses use goes through this module: attention, the semantic-mask
top-k, and the token/target gathers. ``set_backend("triton")`` turns the Triton kernels on (GPU, or CPU under
``TRITON_INTERPRET=1``); ``"torch"`` (the default) uses the references in :mod:`kernels`, which need neither Triton
nor a GPU. Training configs set it through ``model.kernels``.

Fallbacks: with the Triton backend on, a call whose inputs a kernel cannot take (tensors on the CPU outside the
interpreter, an attention head dim other than 16/32/64/128 (or 128 on sm_80, where its tiles spill), unequal q/k/v
shapes, a dtype other than fp16/bf16/fp32) runs the PyTorch reference instead, so a model never fails because of the
switch. The choice is made from tensor metadata only (no host sync) and logged once per reason at DEBUG level.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
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
    "kernel_configs",
    "cls_attention",
    "gather_targets",
    "gather_tokens",
    "gumbel_topk",
    "pin_kernel_configs",
    "semantic_topk",
    "set_backend",
    "triton_available",
    "uniform_noise",
    "use_backend",
]

BACKENDS = ("torch", "triton")
_BACKEND = "torch"
_LOG = logging.getLogger(__name__)
_LOGGED: set[str] = set()

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


def kernel_configs() -> dict[str, dict[str, int]]:
    """The attention kernel configurations launched in this process, by
    :func:`kernels.flash_attention.config_key` (written to the run directory for exact resume)."""
    return _fa.chosen_configs()


def pin_kernel_configs(configs: dict[str, dict[str, int]]) -> None:
    """Pin attention kernel configurations recorded by a run (see :func:`kernel_configs`), so a resumed run launches
    the same tiles, hence sums in the same order, even if the built-in table changed in between."""
    _fa.pin_configs(configs)


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


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernel_device(*tensors: torch.Tensor) -> bool:
    """Whether Triton kernels can run on these tensors: all on a CUDA device, or all anywhere under the interpreter."""
    return all(t.is_cuda for t in tensors) or _interpreting()


def _fallback(op: str, why: str) -> str:
    key = f"{op}: {why}"
    if key not in _LOGGED:
        _LOGGED.add(key)
        _LOG.debug("umt.ops.%s runs the PyTorch reference: %s", op, why)
    return "torch"


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    if _BACKEND != "triton":
        return "torch"
    if not _kernel_device(q, k, v):
        return _fallback("attention", "tensors not on a CUDA device")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return _fallback("attention", "q, k, v shapes differ")
    reason = _fa.unsupported_reason(q.shape[-1], _fa.target_arch(q.device))  # head dim, and D=128 on sm_80
    if reason is not None:
        return _fallback("attention", reason)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return _fallback("attention", f"dtype {q.dtype}")
    return "triton"


def _index_impl(op: str, *tensors: torch.Tensor) -> str:
    if _BACKEND != "triton":
        return "torch"
    if not _kernel_device(*tensors):
        return _fallback(op, "tensors not on a CUDA device")
    return "triton"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal scaled dot-product attention ``softmax(q kᵀ / sqrt(D)) v``, ``[B, H, N, D] → [B, H, N, D]``.

    With the Triton kernel the result is a view of ``[B, N, H, D]`` memory, so ``o.transpose(1, 2).reshape(B, N, C)``
    (the head merge every caller does) copies nothing; SDPA's flash path on CUDA returns the same layout.

    Triton backend: :func:`kernels.flash_attention.flash_attention` (FlashAttention-2, fwd + bwd); otherwise, or for
    inputs it does not take, PyTorch SDPA.
    """
    return _fa.flash_attention(q, k, v, impl=_attention_impl(q, k, v))


def semantic_topk(
    q_cls: torch.Tensor, k: torch.Tensor, keep: int, seed: int | torch.Tensor, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Kept patch indices ``[R, K]`` (int64, sorted ascending) from the CLS query ``[R, H, D]`` and keys
    ``[R, H, M, D]`` (M = ``num_prefix_tokens`` + N): Gumbel-top-k on the head-averaged CLS attention.

    Both backends give the same indices for the same seed (counter-based noise, :func:`uniform_noise`).
    """
    return _st.semantic_topk(q_cls, k, keep, seed, num_prefix_tokens, impl=_index_impl("semantic_topk", q_cls, k))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, M, C]`` gathered at ``idx [B, K]`` (+ ``pos_embed [M, C]`` at the same rows) → ``[B, K, C]``.

    Differentiable in ``x`` and ``pos_embed``; the Triton backward assumes unique indices per row (every mask is).
    """
    tensors = (x, idx) if pos_embed is None else (x, idx, pos_embed)
    return _tg.gather_tokens(x, idx, pos_embed, impl=_index_impl("gather_tokens", *tensors))


def gather_targets(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[L, B, M, C]`` gathered at ``idx [B, K]`` → ``[L, B, K, C]`` (all L layers in one launch with Triton)."""
    return _tg.gather_targets(t, idx, impl=_index_impl("gather_targets", t, idx))
