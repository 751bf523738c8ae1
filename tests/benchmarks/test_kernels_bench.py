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


def test_gpu_validation_without_a_gpu_says_so_and_runs_nothing(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    import torch

    from benchmarks import gpu_validation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_validation.main(["--out", str(tmp_path)]) == gpu_validation.EXIT_NO_GPU == 2
    assert "no GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing may be run or written without a GPU"


def test_gpu_validation_plan_covers_the_checklist(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    from benchmarks import gpu_validation

    assert gpu_validation.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for needle in ("-m pytest -q -m gpu", "--sweep-only", "-m benchmarks --device cuda --check",
                   "benchmarks.bench_step --device cuda --kernels triton"):
        assert needle in out, needle


def test_reports_are_never_overwritten(tmp_path) -> None:  # noqa: ANN001
    from benchmarks.kernel_resources import report_path

    first = report_path(tmp_path, "2026-11-22_kernel_resources_cpu")
    assert first.name == "2026-11-22_kernel_resources_cpu"
    first.with_suffix(".md").write_text("x")
    assert report_path(tmp_path, "2026-11-22_kernel_resources_cpu").name == "2026-11-22_kernel_resources_cpu_2"
