"""Ahead-of-time compilation of every Triton kernel for H100 (sm_90) and A100 (sm_80), on a CPU.

The interpreter tests prove the kernels' arithmetic; these prove they build for the GPUs they are meant for, as a
launch would build them (:mod:`kernels.aot`: the wrappers' own arguments, specialised by Triton's binder): they
compile, fit the per-block shared memory, never spill at the configs the wrappers pin, and use ``wgmma`` on Hopper.
The compiles run in one ``python -m kernels.aot`` subprocess (``TRITON_INTERPRET`` unset there; two processes),
cached in Triton's cache dir between runs. Default: the representative subset (bf16 at every real shape, fp16/fp32
at one); ``slow``: every candidate config at every shape and dtype.
"""

from __future__ import annotations

import importlib.util
import inspect
import time

import pytest

pytestmark = pytest.mark.triton

if importlib.util.find_spec("triton") is None:  # pragma: no cover - collection without the triton extra
    pytest.skip("needs triton", allow_module_level=True)

from kernels import aot  # noqa: E402

_LAUNCHED = {  # every @triton.jit kernel a wrapper launches (helpers called from them are compiled with them)
    "flash_attn_fwd", "flash_attn_bwd_delta", "flash_attn_bwd_kv", "flash_attn_bwd_q", "semantic_topk",
    "gather_rows_tokens", "gather_rows_targets", "gather_rows_scatter",
}
_DOT_KERNELS = ("flash_attn_fwd", "flash_attn_bwd_kv", "flash_attn_bwd_q")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    t0 = time.perf_counter()
    result = aot.run_matrix(full=False, jobs=2)
    print(f"AOT default matrix: {len(result['rows'])} launches in {time.perf_counter() - t0:.1f} s")
    return result["rows"]


def _fmt(r: dict) -> str:
    return f"{r['op']} {r['shape']} {r['dtype']} {r['arch']} {r['config']}"


def test_every_launched_kernel_compiles_for_sm90_and_sm80(rows: list[dict]) -> None:
    errors = [f"{_fmt(r)}: {r['error']}" for r in rows if r["error"]]
    assert not errors, "\n".join(errors)
    for arch in ("sm90", "sm80"):
        assert {r["op"] for r in rows if r["arch"] == arch} == _LAUNCHED, arch
    # Every launched @triton.jit kernel of the package is in the matrix (a new kernel must be added to kernels.aot).
    import kernels.flash_attention as fa
    import kernels.semantic_topk as st
    import kernels.token_gather as tg

    defined = {name for mod in (fa, st, tg) for name, _ in inspect.getmembers(mod) if name.endswith("_kernel")}
    assert defined == {"_attn_fwd_kernel", "_attn_bwd_delta_kernel", "_attn_bwd_kv_kernel", "_attn_bwd_q_kernel",
                       "_semantic_topk_kernel", "_rows_kernel"}
    shapes = {r["shape"] for r in rows if r["op"] == "flash_attn_fwd"}
    assert {"teacher_b16", "teacher_l14", "student_b_320", "student_l_1568", "d128_320"} <= shapes
    assert {r["dtype"] for r in rows} == {"bfloat16", "float16", "float32"}


def test_shared_memory_fits_the_per_block_limit(rows: list[dict]) -> None:
    over = [f"{_fmt(r)}: {r['shared']} B > {r['smem_limit']} B" for r in rows if r["shared"] > r["smem_limit"]]
    assert not over, "\n".join(over)
    assert all(r["blocks_per_sm"] >= 1 for r in rows)


def test_pinned_configs_never_spill(rows: list[dict]) -> None:
    """Zero spilled bytes for every config the wrappers launch, on both targets, in every dtype (this covers
    sm_90 at D=64 in bf16/fp16, and the sm_80 backward tiles, which spilled 4–24 B at D=64 before the fix)."""
    spills = [f"{_fmt(r)}: {r['spill_stores']} B stores, {r['registers']} regs" for r in rows
              if r["pinned"] and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, "\n".join(spills)
    assert any(r["arch"] == "sm80" and r["op"] == "flash_attn_bwd_kv" for r in rows if r["pinned"])


def test_hopper_attention_uses_wgmma(rows: list[dict]) -> None:
    sm90 = [r for r in rows if r["arch"] == "sm90" and r["op"] in _DOT_KERNELS]
    assert sm90 and all(r["wgmma"] for r in sm90), [_fmt(r) for r in sm90 if not r["wgmma"]]
    assert not any(r["wgmma"] for r in rows if r["arch"] == "sm80")


def test_token_gather_loads_are_vectorised(rows: list[dict]) -> None:
    """With the contiguous [B, M, C] patch embedding (tests/kernels/test_kernels_gather.py checks the layout) the gather
    loads 16-bit tokens as vectors; the Conv3d layout (strides (C·M, 1, M)) compiled to 32 scalar ld.global.b16."""
    gathers = [r for r in rows if r["op"] in ("gather_rows_tokens", "gather_rows_targets") and r["dtype"] != "float32"]
    assert gathers and all(r["narrow_loads"] == 0 for r in gathers), [(_fmt(r), r["narrow_loads"]) for r in gathers]


def test_capture_refuses_to_run_under_the_interpreter() -> None:
    """In this process TRITON_INTERPRET=1 (tests/conftest.py): kernels are interpreter objects, so the compile
    must happen in the subprocess run_matrix starts."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("only meaningful under the interpreter")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        aot.capture_matrix()


def test_occupancy_formula() -> None:
    # 128 regs × 256 threads = 32,768 regs per block → 2 blocks by registers (64 KiB + 1 KiB smem → 3 by smem).
    assert aot.occupancy("sm90", 128, 8, 64 * 1024) == (2, 0.25)
    assert aot.occupancy("sm80", 255, 4, 0)[0] == 2  # 255 → 256 regs/thread: 32,768 per 4-warp block
    assert aot.occupancy("sm80", 32, 4, 200 * 1024)[0] == 0  # does not fit


@pytest.mark.slow
def test_full_matrix_every_candidate_config(request: pytest.FixtureRequest) -> None:
    """Every candidate config at every shape and dtype compiles; at D=64 in 16-bit on sm_90 none spills or
    overflows shared memory (the others may: the pinned table avoids them, see test_pinned_configs_never_spill).

    About 17 minutes cold on 2 busy cores (414 compiles), so it runs only when asked for: ``pytest -m slow``.
    """
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the full AOT matrix runs with -m slow (about 17 min cold, see benchmarks.kernel_resources)")
    full = aot.run_matrix(full=True, jobs=2)["rows"]
    assert not [r for r in full if r["error"]]
    hot = [r for r in full if r["arch"] == "sm90" and r["dtype"] != "float32" and not r["shape"].startswith("d128")]
    bad = [_fmt(r) for r in hot if r["spill_stores"] or r["shared"] > r["smem_limit"]]
    assert not bad, "\n".join(bad)
