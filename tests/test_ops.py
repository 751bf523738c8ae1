"""The one switch (:mod:`umt.ops`): backends, the Triton branch of every op, fallbacks, and imports without Triton."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import umt.ops as ops
from kernels.flash_attention import attention_reference


def test_set_backend_validates_and_restores() -> None:
    assert ops.backend() == "torch"
    with pytest.raises(ValueError):
        ops.set_backend("cuda")
    with ops.use_backend("torch"):
        assert ops.backend() == "torch"
    assert ops.backend() == "torch"


@pytest.mark.triton
def test_triton_backend_runs_every_op_like_the_reference() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 16), torch.randn(3, 2, 13, 16)
    x, pos = torch.randn(2, 12, 8, requires_grad=True), torch.randn(12, 8)
    t = torch.randn(2, 2, 12, 8)
    a = torch.randn(1, 2, 18, 16)
    ref = (
        ops.semantic_topk(q, k, 4, 9),
        ops.gather_tokens(x, torch.tensor([[0, 3, 5], [1, 2, 11]]), pos),
        ops.gather_targets(t, torch.tensor([[0, 3, 5], [1, 2, 11]])),
        ops.attention(a, a, a),
    )
    with ops.use_backend("triton"):
        assert ops.backend() == "triton"
        # Count the Triton custom ops actually dispatched, so a silent fallback would fail this test.
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = (
                ops.semantic_topk(q, k, 4, 9),
                ops.gather_tokens(x, torch.tensor([[0, 3, 5], [1, 2, 11]]), pos),
                ops.gather_targets(t, torch.tensor([[0, 3, 5], [1, 2, 11]])),
                ops.attention(a, a, a),
            )
        calls = [e.name for e in prof.events()]
    assert ops.backend() == "torch"
    for name in ("umt::semantic_topk", "umt::gather_rows", "umt::flash_attn_fwd"):
        assert name in calls, name
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
    assert torch.allclose(got[3], ref[3], atol=1e-5)


@pytest.mark.triton
def test_triton_backend_falls_back_for_unsupported_attention() -> None:
    torch.manual_seed(1)
    q = torch.randn(1, 2, 10, 80)  # head dim 80: not a kernel size
    with ops.use_backend("triton"):
        out = ops.attention(q, q, q)
    assert torch.allclose(out, attention_reference(q, q, q))


def test_kernels_import_without_triton_and_without_cuda_init() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        sys.modules["triton.language"] = None
        import torch
        import umt.ops as ops
        import kernels.flash_attention as fa, kernels.semantic_topk as st, kernels.token_gather as tg
        assert not torch.cuda.is_initialized()
        assert not ops.triton_available()
        x = torch.randn(1, 1, 4, 16)
        assert torch.allclose(ops.attention(x, x, x), fa.attention_reference(x, x, x))
        for call in (lambda: fa.flash_attention(x, x, x, impl="triton"),
                     lambda: st.semantic_topk(x[:, :, 0], x, 2, 0, impl="triton"),
                     lambda: tg.gather_tokens(x[0], torch.zeros(1, 2, dtype=torch.long), impl="triton")):
            try:
                call()
            except RuntimeError as e:
                assert "triton" in str(e)
            else:
                raise AssertionError("impl='triton' without triton must raise")
        try:
            ops.set_backend("triton")
        except RuntimeError:
            pass
        else:
            raise AssertionError("set_backend('triton') without triton must raise")
        print("OK")
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


@pytest.mark.triton
def test_kernel_configs_round_trip_for_resume() -> None:
    """What a run records (ops.kernel_configs, saved in checkpoints and <run_dir>/kernel_configs.json) pins the
    same configs in a new process (ops.pin_kernel_configs on resume)."""
    import json

    import kernels.flash_attention as fa

    a = torch.randn(1, 2, 18, 16)
    with ops.use_backend("triton"):
        ops.attention(a, a, a)
    recorded = json.loads(json.dumps(ops.kernel_configs()))
    key = fa.config_key("fwd", 18, 16, torch.float32, "interpreter")
    assert recorded[key] == fa._INTERPRETER_CONFIG.as_dict()
    changed = {key: {**recorded[key], "block_n": 32}}
    try:
        ops.pin_kernel_configs(changed)
        assert fa.pick_config("fwd", 18, 16, torch.float32, "interpreter").block_n == 32
    finally:
        fa._OVERRIDES.pop(key, None)
