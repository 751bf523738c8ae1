"""``python -m benchmarks.fault_campaign``: kill every writer at every rename (and at random instants) and report
what was left: recovered, refused with a clear error, or lost.

It runs the crash tests (``tests/**/test_*crash.py``, the lock and disk-full tests) with ``UMT_FAULT_CAMPAIGN=1``
(every kill point, not the suite's sample) and ``UMT_FAULT_LOG`` (each kill point is logged by ``tests/crash.py``),
then joins the log with pytest's per-test outcome: a kill point of a passing test ended as that test asserts (the
same command finished byte-identical or with the same losses, or refused with its one-line message while every
finished file stayed whole); a kill point of a failing test counts as lost. Writes
``benchmarks/results/<date>_fault_campaign_<device>.md`` through :func:`benchmarks.common.write_report`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.common import BenchResult, command_line, write_report

ROOT = Path(__file__).resolve().parents[1]

#: test module → (writer, what "recovered" means there)
WRITERS = {
    "tests/data/test_shards_crash.py": ("make_shards (shards, .idx, progress, manifest)",
                                        "re-run ends byte-identical; ENOSPC: one-line error, re-run identical"),
    "tests/train/test_trainer_crash.py": ("trainer (config, checkpoint + checksum, rotation, metrics)",
                                          "--resume auto logs the uninterrupted run's losses"),
    "tests/train/test_writers_crash.py": ("export, classification report",
                                          "file whole or absent; the same command finishes or refuses to overwrite"),
    "tests/train/test_durability_gaps.py": ("checkpoint checksum (power loss simulated)",
                                            "changed bytes refused; resume takes the previous checkpoint"),
    "tests/test_fileio.py": ("advisory locks (make_shards)", "second writer refused; SIGKILLed holder frees it"),
    "tests/train/test_run_lock.py": ("advisory locks (trainer)", "second trainer refused; SIGKILLed holder frees it"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fault_campaign", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=None, help="report directory (default benchmarks/results)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log, junit = Path(tmp) / "faults.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "UMT_FAULT_CAMPAIGN": "1", "UMT_FAULT_LOG": str(log)}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                        *WRITERS], cwd=ROOT, env=env, check=False)
        wall = time.perf_counter() - t0
        points = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        cases = ET.parse(junit).getroot().iter("testcase")
        outcome: dict[str, str] = {}
        seconds: dict[str, float] = collections.defaultdict(float)
        for c in cases:
            module = c.get("classname", "").replace(".", "/") + ".py"
            failed = any(ch.tag in ("failure", "error") for ch in c)
            skipped = any(ch.tag == "skipped" for ch in c)
            outcome[f"{module}::{c.get('name')}"] = "failed" if failed else "skipped" if skipped else "passed"
            seconds[module] += float(c.get("time", 0))
    rows = []
    for module, (writer, meaning) in WRITERS.items():
        mine = [pt for pt in points if pt["test"].startswith(module)]
        tests = {k: v for k, v in outcome.items() if k.startswith(module + "::")}
        lost_tests = {k for k, v in tests.items() if v == "failed"}
        logged = {pt["test"].split(" ")[0] for pt in mine}
        # a failed test's kill points are lost; a test that failed before logging any counts as one
        lost = sum(1 for pt in mine if pt["test"].split(" ")[0] in lost_tests) + len(lost_tests - logged)
        rows.append({"writer": writer, "kill points": len(mine), "killed": sum(pt["killed"] for pt in mine),
                     "tests passed": sum(v == "passed" for v in tests.values()),
                     "tests failed": len(lost_tests), "lost": lost, "campaign s": round(seconds[module], 1),
                     "recovered means": meaning})
    total = sum(r["kill points"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    res = BenchResult(name="fault_campaign", rows=rows, notes=[
        f"{total} kill points in all; lost: {lost}; wall time {wall:.0f} s.",
        "Kill points: SIGKILL right before and right after every os.replace of the writer (all durable writes rename "
        "through umt.fileio), plus random instants; forked children for writers without torch thread pools, fresh "
        "processes for the trainer.",
        "A kill point is 'lost' when the test that made it failed (the data set, checkpoint or file was not recovered "
        "as it asserts).",
    ])
    from benchmarks.common import format_table

    print(format_table(rows))
    print(*res.notes, sep="\n")
    if not a.no_write:
        paths = write_report(res, a.out_dir, command=command_line())
        print(f"wrote {paths[1]}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
