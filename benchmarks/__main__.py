"""The benchmark suite: ``python -m benchmarks`` (console script ``umt-bench``).

::

    python -m benchmarks [--suite matmul,data,kernels,step,scaling,budget] [--model umt_b16,umt_l16]
                         [--device cuda] [--out DIR] [--check] [--quick]

Runs the parts in that order, prints one summary table, and writes ``<date>_suite_<device>.{json,md}`` (every part's
table, the hardware, versions and exact command) and ``<date>_budget_<device>.{json,md}`` under ``--out``
(default ``benchmarks/results``).

Parts: ``matmul`` (:mod:`benchmarks.matmul`, the achievable matmul rate that MFU is also reported against),
``data``/``kernels``/``step`` (``benchmarks.bench_data``/``bench_kernels``/``bench_step``, each a
``run(*, quick, models, device) -> BenchResult``; a part whose module is missing or fails is reported as
"not available: <reason>" and the suite goes on), ``scaling`` (:mod:`benchmarks.scaling`) and ``budget``
(:mod:`benchmarks.budget`, fed with the step and data rates measured in the same run).

Exit status: 0; with ``--check`` 1 when a budget projection exceeds the budget, 2 when the check cannot be made on a
GPU (no step rate was measured). On CPU, or with ``--quick``, the figures are tiny-size smoke figures that do not
speak to the budget: ``--check`` then prints "not applicable" and exits 0 — it neither passes nor fails the budget.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks import budget as budget_mod
from benchmarks.common import BenchResult, command_line, format_table, hardware_info, hardware_label, write_report
from umt.flops import UMT_SPECS, train_flops_per_clip
from umt.fileio import atomic_write

__all__ = ["PARTS", "SuiteOutcome", "data_rate_from", "exit_status", "main", "run_suite", "stage2_rates_from",
           "step_rates_from"]

log = logging.getLogger("benchmarks")

#: Parts in run order, and the module that implements each measured one.
PARTS = ("matmul", "data", "kernels", "step", "scaling", "budget")
_MODULES = {
    "matmul": "benchmarks.matmul",
    "data": "benchmarks.bench_data",
    "kernels": "benchmarks.bench_kernels",
    "step": "benchmarks.bench_step",
}
EXIT_OK, EXIT_OVER_BUDGET, EXIT_CANNOT_CHECK = 0, 1, 2


def _num(value: Any) -> float | None:
    """A finite float from a row value, or None (missing keys, strings, NaN read as "n/a")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


#: Row keys read for a clips/s figure, in order (agreed ``clips_per_s``; ``clips/s`` as bench_data writes it).
_RATE_KEYS = ("clips_per_s", "clips/s")


def _rate(row: dict[str, Any]) -> float | None:
    """The clips/s of a row under any of :data:`_RATE_KEYS`, or None ("n/a")."""
    return next((v for k in _RATE_KEYS if (v := _num(row.get(k))) is not None), None)


def _data_label(row: dict[str, Any]) -> str:
    """``"<backend> <codec or setting>"`` of a bench_data row, ``n/a`` for missing keys."""
    return f"{row.get('backend', 'n/a')} {row.get('codec', row.get('setting', 'n/a'))}"


def step_rates_from(result: BenchResult | None, models: list[str]) -> dict[str, float]:
    """Per-model train-step clips/s per GPU from a bench_step result: the best row per model (e.g. the faster of
    with and without ``torch.compile``). Rows need ``model`` and ``clips_per_s``; others are ignored."""
    rates: dict[str, float] = {}
    for row in result.rows if result else []:
        model, rate = row.get("model"), _rate(row)
        if model in models and rate and rate > rates.get(model, 0.0):
            rates[model] = rate
    return rates


def stage2_rates_from(result: BenchResult | None, models: list[str]) -> dict[str, dict[str, float]]:
    """Per-model stage-2 samples/s per GPU and modality from bench_step's ``<model>_vt`` rows (``modality``,
    ``samples_per_s``): ``{"umt_b16": {"video": ..., "image": ...}}``."""
    rates: dict[str, dict[str, float]] = {}
    for row in result.rows if result else []:
        model, rate = str(row.get("model", "")), _num(row.get("samples_per_s"))
        if model.endswith("_vt") and model[:-3] in models and rate and row.get("modality") in ("video", "image"):
            rates.setdefault(model[:-3], {})[row["modality"]] = rate
    return rates


def data_rate_from(result: BenchResult | None) -> tuple[float | None, str]:
    """The data pipeline's clips/s per GPU from a bench_data result and a label of the row it came from.

    The best DALI row (the trainer's pipeline; ``backend`` starting with ``dali``) where there is one, else the
    best row of any backend. Rows need ``clips_per_s`` (or ``clips/s``); ``backend`` and ``codec`` (or ``setting``)
    label it.
    """
    rows = [r for r in (result.rows if result else []) if _rate(r)]
    dali = [r for r in rows if str(r.get("backend", "")).lower().startswith("dali")]
    pool = dali or rows
    if not pool:
        return None, "n/a"
    best = max(pool, key=lambda r: _rate(r) or 0.0)
    return _rate(best), _data_label(best)


class SuiteOutcome:
    """What :func:`run_suite` produced: results per part, reasons for parts not available, the summary and paths."""

    def __init__(self) -> None:
        self.results: dict[str, BenchResult] = {}
        self.unavailable: dict[str, str] = {}
        self.summary: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.budget_failures: list[str] | None = None  # None: not checked / not applicable
        self.applicable = False
        self.paths: list[Path] = []
        self.info: dict[str, Any] = {}


def _run_part(name: str, *, quick: bool, models: list[str], device: str) -> BenchResult:
    module = importlib.import_module(_MODULES[name])
    result = module.run(quick=quick, models=tuple(models), device=device)
    if not isinstance(result, BenchResult):
        raise TypeError(f"{_MODULES[name]}.run returned {type(result).__name__}, expected BenchResult")
    return result


def _generic_summary(part: str, result: BenchResult) -> list[dict[str, Any]]:
    """One summary line per row of a part whose row keys this module does not know (kernels)."""
    metrics = ("tflops", "gb_s", "speedup", "ms", "us", "seconds", "clips_per_s")
    out = []
    for row in result.rows:
        label = " ".join(str(v) for k, v in row.items() if isinstance(v, str))[:60] or "-"
        key = next((k for k in metrics if _num(row.get(k)) is not None), None)
        out.append({"part": part, "item": label, "value": row.get(key) if key else None, "unit": key or "n/a", "note": ""})
    return out


def _kernels_summary(result: BenchResult) -> list[dict[str, Any]]:
    """The fastest path per (model, op, pass) of bench_kernels rows (``rate``, ``unit``, ``path``, ``us``); rows
    without those keys fall back to :func:`_generic_summary`."""
    if not all(_num(r.get("us")) is not None for r in result.rows):
        return _generic_summary("kernels", result)
    best: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for row in result.rows:
        key = (row.get("model"), row.get("op"), row.get("pass"))
        if key not in best or row["us"] < best[key]["us"]:
            best[key] = row
    out = []
    for (model, op, p), row in best.items():
        frac, speed = _num(row.get("frac_of_ceiling")), _num(row.get("speedup_vs_a"))
        note = ", ".join(x for x in (f"path {row.get('path')}", f"{frac:.0%} of ceiling" if frac is not None else "",
                                      f"{speed:.1f}× vs original" if speed is not None else "") if x)  # fmt: skip
        out.append({"part": "kernels", "item": f"{model} {op} {p}", "value": _num(row.get("rate")), "unit": row.get("unit", "n/a"), "note": note})
    return out


def _summarise(outcome: SuiteOutcome, models: list[str], peak: float | None, achievable: float | None) -> None:
    s = outcome.summary
    for part, reason in outcome.unavailable.items():
        s.append({"part": part, "item": "-", "value": None, "unit": "", "note": f"not available: {reason}"})
    r = outcome.results
    if "matmul" in r:
        best = max(r["matmul"].rows, key=lambda x: x["tflops"])
        note = f"{best['frac_of_peak']:.0%} of {peak:g} peak" if best.get("frac_of_peak") else "no known bf16 peak (CPU fp32)"
        s.append({"part": "matmul", "item": f"{best['dtype']} {best['size']}³ {best['device']}", "value": best["tflops"], "unit": "TFLOP/s", "note": note})
    if "data" in r:
        for row in r["data"].rows:
            s.append({"part": "data", "item": _data_label(row), "value": _rate(row), "unit": "clips/s", "note": ""})
    if "kernels" in r:
        s.extend(_kernels_summary(r["kernels"]))
    if "step" in r:
        for row in r["step"].rows:
            model, rate = row.get("model"), _rate(row)
            unit = "clips/s"
            if rate is None and _num(row.get("samples_per_s")) is not None:  # stage-2 rows: samples of a modality
                rate, unit = _num(row.get("samples_per_s")), "samples/s"
            extras = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("model", "clips_per_s", "mfu") and isinstance(v, (str, bool)))
            parts = []
            mfu = _num(row.get("mfu"))
            parts.append(f"MFU {mfu:.1%}" if mfu is not None else "MFU n/a")
            # FLOPs per clip (sample) at the sizes the step actually ran (bench_step's gflop_per_clip; tiny on CPU).
            gflop = _num(row.get("gflop_per_clip", row.get("gflop_per_sample")))
            flops = gflop * 1e9 if gflop else (train_flops_per_clip(UMT_SPECS[model]) if model in UMT_SPECS else None)
            if rate and flops and achievable:
                parts.append(f"{rate * flops / (achievable * 1e12):.1%} of achievable matmul")
            s.append({"part": "step", "item": f"{model} {extras}".strip(), "value": rate, "unit": unit, "note": ", ".join(parts)})
    if "scaling" in r:
        for row in r["scaling"].rows:
            if row["GPUs"] == 32 and row["single-GPU rate"] != "A100 @5.7% MFU (paper)" and "HDR" in row["interconnect"]:
                s.append(
                    {
                        "part": "scaling",
                        "item": f"{row['model']} 32 GPUs, {row['interconnect']}, {row['single-GPU rate']}",
                        "value": row["efficiency (overlap)"],
                        "unit": "efficiency",
                        "note": f"all-reduce {row['all-reduce s'] * 1e3:.0f} ms = {row['share (no overlap)']:.0%} of step without overlap",
                    }
                )
    if "budget" in r:
        res = r["budget"]
        if not res.extra["totals"]:
            s.append({"part": "budget", "item": "-", "value": None, "unit": "", "note": res.notes[0] if res.notes else "nothing projected"})
        for model, per_hw in res.extra["totals"].items():
            for hw, total in per_hw.items():
                label = "A100-eq" if hw == "A100-eq" else res.extra["gpu"]
                if not outcome.applicable:
                    verdict = "not applicable (CPU / tiny sizes)"
                elif total is None:
                    verdict = "n/a"
                else:
                    verdict = f"{budget_mod.BUDGET_HOURS / total:.1f}× inside 144 h" if total <= budget_mod.BUDGET_HOURS else "EXCEEDS 144 h"
                s.append({"part": "budget", "item": f"{model} stages 1+2 on 32 × {label}", "value": total, "unit": "h", "note": verdict})
            for row in res.rows:
                if row["model"] == model and row["32 GPUs"] == "A100-eq" and row["speed-up"]:
                    s.append({"part": "budget", "item": f"{model} stage {row['stage']} A100-eq vs paper", "value": row["speed-up"], "unit": "× faster", "note": f"{row['hours']:.1f} h vs {row['paper h']:g} h"})


def run_suite(
    parts: list[str], models: list[str], *, device: str, quick: bool, out_dir: str | Path | None, check: bool, command: str | None = None
) -> SuiteOutcome:
    """Run ``parts`` for ``models`` on ``device``, write the reports, and return everything measured.

    Raises:
        ValueError: unknown part or model.
    """
    if unknown := [p for p in parts if p not in PARTS]:
        raise ValueError(f"unknown suite part(s) {unknown}; expected a subset of {PARTS}")
    if unknown := [m for m in models if m not in UMT_SPECS]:
        raise ValueError(f"unknown model(s) {unknown}; expected a subset of {sorted(UMT_SPECS)}")
    if check and "budget" not in parts:
        parts = [*parts, "budget"]
    parts = [p for p in PARTS if p in parts]
    info = hardware_info()
    cuda = torch.device(device).type == "cuda"
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if cuda else "CPU"
    peak = budget_mod.device_peak_tflops(gpu_name) if cuda else None
    outcome = SuiteOutcome()
    outcome.info = info
    outcome.applicable = cuda and not quick
    for part in (bar := tqdm(parts, desc="umt-bench", unit="part", file=sys.stderr)):
        bar.set_postfix_str(part)
        log.info("running %s", part)
        try:
            if part in _MODULES:
                outcome.results[part] = _run_part(part, quick=quick, models=models, device=device)
            elif part == "scaling":
                from benchmarks import scaling

                rates = step_rates_from(outcome.results.get("step"), models) if outcome.applicable else {}
                outcome.results[part] = scaling.run(quick=quick, models=tuple(models), device=device, step_rates=rates)
            elif part == "budget":
                outcome.results[part] = _budget(outcome, models, peak, gpu_name)
        except ModuleNotFoundError as e:
            outcome.unavailable[part] = f"module {e.name} not found"
            log.warning("%s not available: %s", part, outcome.unavailable[part])
        except Exception as e:  # noqa: BLE001 - one failing part must not stop the suite; the reason is reported
            outcome.unavailable[part] = f"{type(e).__name__}: {e}"
            log.warning("%s not available", part, exc_info=True)
    achievable = outcome.results["matmul"].extra.get("achievable_tflops") if "matmul" in outcome.results else None
    _summarise(outcome, models, peak, achievable)
    outcome.notes = _suite_notes(outcome, gpu_name, peak, achievable, quick)
    if check:
        if not outcome.applicable:
            outcome.notes.append("--check: not applicable on CPU or with --quick; the budget is neither passed nor failed.")
        elif "budget" in outcome.results and outcome.results["budget"].rows:
            outcome.budget_failures = budget_mod.check_failures(outcome.results["budget"])
            outcome.notes.append("--check: " + ("FAIL: " + "; ".join(outcome.budget_failures) if outcome.budget_failures else "the budget holds"))
        else:
            outcome.notes.append("--check: cannot check: no train-step rate was measured")
    outcome.paths = _write(outcome, out_dir, info, command or command_line())
    return outcome


def _budget(outcome: SuiteOutcome, models: list[str], peak: float | None, gpu_name: str) -> BenchResult:
    step = step_rates_from(outcome.results.get("step"), models)
    data, data_label = data_rate_from(outcome.results.get("data"))
    refs = budget_mod.reference_rows(models)
    ref_note = "Rows labelled '(reference)' are 32 A100 at a fixed MFU (5.7 % = the released code, 50 % = target), not measurements."
    if not step:
        if "step" in outcome.unavailable:
            reason = outcome.unavailable["step"]
        elif "step" not in outcome.results:
            reason = "the step part was not run"
        else:
            reason = "no step rows with model and clips_per_s"
        return BenchResult(
            name="budget",
            rows=refs,
            notes=[
                *([] if outcome.applicable else [f"NOT APPLICABLE: run on {gpu_name} at tiny sizes; nothing here speaks to the budget."]),
                f"No train-step rate measured ({reason}): nothing measured to project.",
                ref_note,
            ],
            extra={"totals": {}, "budget_hours": budget_mod.BUDGET_HOURS, "applicable": outcome.applicable, "gpu": gpu_name},
        )
    res = budget_mod.project(step, data, peak_tflops=peak, gpu_name=gpu_name, applicable=outcome.applicable,
                             stage2_rates=stage2_rates_from(outcome.results.get("step"), models))
    res.rows += refs
    res.notes.append(ref_note)
    res.notes.insert(1, f"Data rate used: {data_label} ({'n/a' if data is None else f'{data:.1f} clips/s'}); step rates: " + ", ".join(f"{m} {v:.2f} clips/s" for m, v in step.items()))
    return res


def _suite_notes(outcome: SuiteOutcome, gpu_name: str, peak: float | None, achievable: float | None, quick: bool) -> list[str]:
    notes = []
    if not outcome.applicable:
        notes.append(
            f"These figures were taken on {gpu_name}{' in --quick mode' if quick else ''} at tiny sizes: they exercise the "
            "suite and DO NOT speak to the 6-day / 32-A100 budget."
        )
    notes.append(
        "Protocol: warm-up runs, then repeated timed runs (CUDA events on GPU, perf_counter otherwise), median with "
        "p10/p90; random (non-zero) inputs. MFU = clips/s × FLOPs per clip ÷ dense bf16 peak (umt.flops)."
    )
    if peak:
        notes.append(f"Device peak: {peak:g} TFLOP/s dense bf16; achievable matmul measured in this run: " + (f"{achievable:.1f} TFLOP/s." if achievable else "n/a."))
    return notes


def _section(name: str, result: BenchResult) -> list[str]:
    lines = [f"## {name}", "", format_table(result.rows), ""]
    if result.notes:
        lines += [*(f"- {n}" for n in result.notes), ""]
    return lines


def _write(outcome: SuiteOutcome, out_dir: str | Path | None, info: dict[str, Any], command: str) -> list[Path]:
    extra = {
        "parts": {k: asdict(v) for k, v in outcome.results.items()},
        "unavailable": outcome.unavailable,
        "applicable": outcome.applicable,
        "budget_failures": outcome.budget_failures,
    }
    suite = BenchResult(name="suite", rows=outcome.summary, notes=outcome.notes, extra=extra)
    json_path, md_path = write_report(suite, out_dir, command=command, info=info)
    md = [*md_path.read_text().splitlines(), ""]
    for name, res in outcome.results.items():
        md += _section(name, res)
    for name, reason in outcome.unavailable.items():
        md += [f"## {name}", "", f"not available: {reason}", ""]
    atomic_write(md_path, "\n".join(md) + "\n")
    paths = [json_path, md_path]
    if "budget" in outcome.results:
        paths += list(write_report(outcome.results["budget"], out_dir, command=command, info=info))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line of the suite; returns the exit status (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="UMT throughput benchmark suite and budget check.")
    p.add_argument("--suite", default=",".join(PARTS), help=f"comma-separated parts, subset of {','.join(PARTS)}")
    p.add_argument("--model", default="umt_b16,umt_l16", help="comma-separated models")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", default=None, help="report directory (default benchmarks/results)")
    p.add_argument("--check", action="store_true", help="exit 1 when a projection exceeds the 6-day budget")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    parts = [x.strip() for x in args.suite.split(",") if x.strip()]
    models = [x.strip() for x in args.model.split(",") if x.strip()]
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        outcome = run_suite(parts, models, device=device, quick=args.quick, out_dir=args.out, check=args.check, command=command)
    except ValueError as e:
        p.error(str(e))
    print(f"UMT benchmark suite on {hardware_label(outcome.info)}")
    print(format_table(outcome.summary))
    for note in outcome.notes:
        print(f"- {note}")
    print("Reports: " + ", ".join(str(x) for x in outcome.paths))
    return exit_status(outcome, check=args.check)


def exit_status(outcome: SuiteOutcome, *, check: bool) -> int:
    """0 without ``--check`` or where the check does not apply (CPU, ``--quick``); with it, 1 when a projection
    exceeds the budget and 2 when no projection could be made."""
    if not check or not outcome.applicable:
        return EXIT_OK
    if outcome.budget_failures is None:
        return EXIT_CANNOT_CHECK
    return EXIT_OVER_BUDGET if outcome.budget_failures else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
