"""CPU smoke runs of the whole benchmark suite at tiny sizes (parts missing, present, failing), asserting on the
written reports, and the ``--check`` exit logic."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as suite
from benchmarks import budget
from benchmarks.common import BenchResult


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, rows: list[dict[str, Any]] | Exception) -> str:
    mod = types.ModuleType(name)
    calls: list[dict[str, Any]] = []

    def run(*, quick: bool = False, models=("umt_b16", "umt_l16"), device: str | None = None, **kw: Any) -> BenchResult:
        calls.append({"quick": quick, "models": models, "device": device})
        if isinstance(rows, Exception):
            raise rows
        return BenchResult(name=name, rows=rows, notes=[f"{name} note"])

    mod.run = run  # type: ignore[attr-defined]
    mod.calls = calls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, mod)
    return name


def _reports(out: Path) -> tuple[dict[str, Any], str]:
    (js,) = out.glob("*_suite_cpu.json")
    (md,) = out.glob("*_suite_cpu.md")
    return json.loads(js.read_text()), md.read_text()


def test_suite_parts_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for part in ("data", "kernels", "step"):
        monkeypatch.setitem(suite._MODULES, part, f"benchmarks.absent_{part}")
    rc = suite.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--check", "--model", "umt_b16"])
    assert rc == 0  # CPU: the check does not apply, so it neither passes nor fails
    payload, md = _reports(tmp_path)
    assert payload["extra"]["unavailable"]["step"] == "module benchmarks.absent_step not found"
    assert payload["extra"]["applicable"] is False and payload["extra"]["budget_failures"] is None
    assert payload["command"] == "python -m benchmarks --quick --device cpu --out " + str(tmp_path) + " --check --model umt_b16"
    assert payload["hardware"]["cpu_count"] >= 1 and payload["hardware"]["torch"]
    assert payload["extra"]["parts"]["matmul"]["extra"]["achievable_tflops"] > 0
    assert {r["model"] for r in payload["extra"]["parts"]["scaling"]["rows"]} == {"umt_b16"}
    assert "not available: module benchmarks.absent_data not found" in md
    assert "DO NOT speak to the 6-day / 32-A100 budget" in md
    assert "--check: not applicable" in md
    assert "- Hardware: CPU" in md and "- Command: `python -m benchmarks" in md
    assert "## matmul" in md and "## scaling" in md
    out = capsys.readouterr().out
    assert "| part" in out and "not available" in out  # one summary table on stdout
    assert list(tmp_path.glob("*_budget_cpu.json"))


def test_suite_parts_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = _fake_module(
        monkeypatch,
        "fake_bench_step",
        [
            {"model": "umt_b16", "compile": False, "clips_per_s": 2.0, "mfu": None},
            {"model": "umt_b16", "compile": True, "clips_per_s": 3.0, "mfu": None},
            {"model": "umt_l16", "clips_per_s": 1.0},  # no mfu key: "n/a"
        ],
    )
    data = _fake_module(monkeypatch, "fake_bench_data", [{"backend": "reference", "codec": "h264", "clips_per_s": 9.0}, {"backend": "dali", "codec": "vp9", "clips_per_s": 2.5}])
    kern = _fake_module(monkeypatch, "fake_bench_kernels", RuntimeError("no GPU"))
    monkeypatch.setitem(suite._MODULES, "step", step)
    monkeypatch.setitem(suite._MODULES, "data", data)
    monkeypatch.setitem(suite._MODULES, "kernels", kern)
    outcome = suite.run_suite(list(suite.PARTS), ["umt_b16", "umt_l16"], device="cpu", quick=True, out_dir=tmp_path, check=True)
    assert sys.modules[step].calls == [{"quick": True, "models": ("umt_b16", "umt_l16"), "device": "cpu"}]
    assert outcome.unavailable == {"kernels": "RuntimeError: no GPU"}
    # The budget took the best step row per model and the DALI data row (2.5 < 3.0: data-bound for B).
    rows = outcome.results["budget"].rows
    b1 = [r for r in rows if r["model"] == "umt_b16" and r["stage"] == 1][0]
    assert b1["clips/s per GPU"] == 2.5 and "data-bound" in b1["note"]
    l1 = [r for r in rows if r["model"] == "umt_l16" and r["stage"] == 1][0]
    assert l1["clips/s per GPU"] == 1.0 and l1["MFU"] is None  # no GPU peak on CPU: no MFU, no A100-eq
    assert not any(r["32 GPUs"] == "A100-eq" for r in rows)
    assert outcome.budget_failures is None and suite.exit_status(outcome, check=True) == 0
    payload, md = _reports(tmp_path)
    assert "NOT APPLICABLE" in md and "not applicable (CPU / tiny sizes)" in md
    assert "## step" in md and "## data" in md and "not available: RuntimeError: no GPU" in md
    step_summary = [r for r in payload["rows"] if r["part"] == "step"]
    assert len(step_summary) == 3 and "MFU n/a" in step_summary[2]["note"]
    assert "of achievable matmul" in step_summary[0]["note"]


def test_step_and_data_rate_readers() -> None:
    res = BenchResult("step", rows=[{"model": "umt_b16", "clips_per_s": "fast"}, {"model": "x", "clips_per_s": 5.0}, {"clips_per_s": 1.0}])
    assert suite.step_rates_from(res, ["umt_b16"]) == {}  # strings, unknown models and missing keys are skipped
    assert suite.step_rates_from(None, ["umt_b16"]) == {}
    assert suite.data_rate_from(BenchResult("data", rows=[{"clips_per_s": float("nan")}])) == (None, "n/a")
    assert suite.data_rate_from(BenchResult("data", rows=[{"clips_per_s": 4.0}])) == (4.0, "n/a n/a")
    # bench_data as written: "clips/s", backend "dali (cpu)", the encoding under "setting"; DALI preferred.
    rows = [{"setting": "vp9 gop 8", "backend": "reference (PyAV)", "clips/s": 9.0}, {"setting": "mjpeg", "backend": "dali (cpu)", "clips/s": 7.0}]
    assert suite.data_rate_from(BenchResult("data", rows=rows)) == (7.0, "dali (cpu) mjpeg")


def test_exit_status_logic() -> None:
    o = suite.SuiteOutcome()
    o.applicable = False
    o.budget_failures = ["over"]
    assert suite.exit_status(o, check=True) == 0  # CPU: not applicable, never fails the budget
    o.applicable = True
    assert suite.exit_status(o, check=False) == 0
    assert suite.exit_status(o, check=True) == suite.EXIT_OVER_BUDGET
    o.budget_failures = []
    assert suite.exit_status(o, check=True) == 0
    o.budget_failures = None  # GPU, but nothing could be projected
    assert suite.exit_status(o, check=True) == suite.EXIT_CANNOT_CHECK


def test_unknown_part_or_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown suite part"):
        suite.run_suite(["bogus"], ["umt_b16"], device="cpu", quick=True, out_dir=tmp_path, check=False)
    with pytest.raises(SystemExit):
        suite.main(["--model", "vit_huge", "--out", str(tmp_path)])
    assert budget.BUDGET_HOURS == 144.0


@pytest.mark.dist
def test_measure_allreduce_gloo() -> None:
    from benchmarks import scaling

    r = scaling.measure_allreduce(2, 1 << 16, backend="gloo", repeat=3)  # 64 KiB of fp32 over 2 processes
    assert r["world"] == 2 and r["seconds"] > 0
    assert r["busbw_gb_s"] == pytest.approx(r["algbw_gb_s"])  # 2·(n−1)/n = 1 at n = 2
    assert r["algbw_gb_s"] == pytest.approx((1 << 16) / r["seconds"] / 1e9)


@pytest.mark.slow
@pytest.mark.dali
def test_whole_suite_real_parts_quick(tmp_path: Path) -> None:
    """The real suite with every part the tree has (all of them now), tiny sizes on CPU (about 2 min on 2 cores)."""
    rc = suite.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--model", "umt_b16", "--check"])
    assert rc == 0
    payload, md = _reports(tmp_path)
    ran, missing = payload["extra"]["parts"], payload["extra"]["unavailable"]
    assert set(ran) | set(missing) == set(suite.PARTS) and not set(ran) & set(missing)
    assert not missing, f"parts failed or missing: {missing}"
    for part, reason in missing.items():
        assert reason and f"not available: {reason}" in md
    for part in ran:
        assert f"## {part}" in md
    assert "DO NOT speak to the 6-day / 32-A100 budget" in md
    # the step part measured stage 2 per modality, and the budget projected stage 2 from that measurement
    assert "umt_b16_vt" in md and "measured stage-2 step" in md
