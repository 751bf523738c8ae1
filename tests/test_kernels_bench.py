"""The kernel benchmark runs its reference paths on CPU and reports what a GPU is needed for."""

from __future__ import annotations

import pytest

from benchmarks.bench_kernels import count_host_syncs, run


@pytest.mark.slow
def test_bench_kernels_cpu_quick_rows_and_notes() -> None:
    import torch

    result = run(quick=True, models=("umt_b16",), device="cpu")
    assert result.name == "kernels"
    ops = {(r["op"], r["pass"]) for r in result.rows}
    assert {("mask+gather", "fwd"), ("semantic_topk", "fwd"), ("attn_student", "fwd+bwd"), ("attn_teacher", "fwd")} <= ops
    for r in result.rows:
        assert r["us"] > 0 and r["rate"] > 0 and r["unit"] in ("GB/s", "TFLOP/s")
        assert r["path"] in ("a_original", "b_torch"), "no kernel rows without a GPU"
        if r["path"] == "a_original":
            assert r["speedup_vs_a"] == pytest.approx(1.0)
    assert any("need a GPU" in n for n in result.notes)
    assert count_host_syncs(lambda: None, torch.device("cpu")) is None
