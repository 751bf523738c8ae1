"""Fault tests: a signal at a step, a rank killed under ``torchrun --max-restarts``, signals during the
checkpoint write. Two gloo ranks train the demo model at tiny shapes on synthetic data; every run is compared with an
uninterrupted run of the same config.

Run as a script (``python tests/train/test_preempt.py <umt.train args>``, also under torchrun) for the worker side: the
fault named by ``UMT_TEST_FAULT`` (JSON) is planted, then ``umt.train``'s ``main`` runs. Faults are real signals sent
by the worker to itself from inside the step or the checkpoint write, so they land at a known point.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.train_utils import ROOT, TINY, cli_sets, dist_env, free_port, logged_losses, read_metrics, torchrun

STEPS = 8  # 16 synthetic videos / (2 ranks × batch 2) = 4 steps per epoch: the runs cross an epoch boundary
RUN_ARGS = ["--recipe", "demo", *cli_sets([*TINY, "synthetic_samples=16", f"optim.max_steps={STEPS}"])]


def _env(fault: dict | None = None) -> dict[str, str]:
    env = dist_env()
    env.pop("UMT_TEST_FAULT", None)
    if fault:
        env["UMT_TEST_FAULT"] = json.dumps(fault)
    return env


def _two_ranks(run_dir: Path, extra: Sequence[str] = (), fault: dict | None = None,
               timeout: float = 90) -> list[tuple[int, str]]:
    """Start both ranks of a gloo group (no torchrun: each rank's own exit status is seen). Returns (rc, stderr)."""
    port, procs = free_port(), []
    for rank in range(2):
        env = {**_env(fault), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *RUN_ARGS, "--run-dir",
                                       str(run_dir), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out, deadline = [], time.monotonic() + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Per-step losses of the uninterrupted 2-rank run."""
    run = tmp_path_factory.mktemp("preempt_ref") / "run"
    res = _two_ranks(run)
    assert [rc for rc, _ in res] == [0, 0], res[0][1][-3000:]
    losses = logged_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.dist
def test_sigterm_at_random_step_checkpoints_and_resumes_exactly(tmp_path: Path, reference: dict[int, float]) -> None:
    from umt.train.checkpoint import load_checkpoint
    from umt.train.preempt import EXIT_PREEMPTED, read_marker

    k = random.randint(1, STEPS - 2)  # the signal reaches rank 1 alone during step k; rank 0 learns it collectively
    run = tmp_path / "run"
    res = _two_ranks(run, fault={"kind": "signal", "signal": "SIGTERM", "rank": 1, "step": k})
    assert [rc for rc, _ in res] == [EXIT_PREEMPTED] * 2, (k, res[0][1][-2000:], res[1][1][-2000:])
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert ckpts == [f"step_{k:08d}.pt"], (k, ckpts)  # the step under way was finished, nothing after it
    assert load_checkpoint(run / "checkpoints" / ckpts[0])["step"] == k
    marker = read_marker(run)
    assert marker is not None and marker["step"] == k and marker["signal"] == "SIGTERM"
    assert sorted(logged_losses(run)) == list(range(1, k + 1))

    res = _two_ranks(run, ["--resume", "auto"])
    assert [rc for rc, _ in res] == [0, 0], res[0][1][-3000:]
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, STEPS + 1)), (k, steps)  # each step logged once
    assert logged_losses(run) == reference, k  # bit-identical, resumed tail included


@pytest.mark.dist
def test_killed_rank_restarts_under_torchrun_and_resumes(tmp_path: Path, reference: dict[int, float]) -> None:
    run = tmp_path / "run"
    ckpt_every, k = 3, 6  # rank 1 is killed (SIGKILL) in step 6: steps 4 and 5 were logged after the checkpoint at 3
    args = [str(Path(__file__).resolve()), *RUN_ARGS, "--run-dir", str(run), "--set",
            f"checkpoint.every_steps={ckpt_every}"]  # no --resume: a restarted worker resumes by itself
    # torchrun's shared TCPStore keeps the dead attempt's peer addresses (pytorch/pytorch#135712): a fresh store each
    # attempt, as examples/slurm/umt.sbatch sets
    env = {**_env({"kind": "kill", "rank": 1, "step": k, "attempt": 0}), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    res = torchrun(args, flags=["--max-restarts=1", "--monitor-interval=0.5"], env=env, timeout=150)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "exitcode: -9" in res.stderr and "torchrun restart 1" in res.stderr, res.stderr[-2000:]  # it did fire
    config = json.loads((run / "config.json").read_text())
    assert config["resumed_from"].endswith(f"step_{ckpt_every:08d}.pt")
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, STEPS + 1)), steps  # no step logged twice, none missing
    got = logged_losses(run)
    assert {s: got[s] for s in got if s > ckpt_every} == {s: reference[s] for s in reference if s > ckpt_every}
    assert got == reference


@pytest.mark.dist
def test_signals_during_checkpoint_write(tmp_path: Path) -> None:
    from umt.train.checkpoint import load_checkpoint, load_latest_checkpoint
    from umt.train.preempt import EXIT_PREEMPTED, read_marker

    # Two SIGTERMs (the scheduler's and torchrun's) reach rank 0 half-way through writing the step-4 checkpoint: the
    # write completes, the run stops right there (no second write), the earlier checkpoint still loads.
    run = tmp_path / "term"
    res = _two_ranks(run, ["--set", "checkpoint.every_steps=2"],
                     fault={"kind": "signal_in_save", "signal": "SIGTERM", "rank": 0, "step": 4, "times": 2})
    assert [rc for rc, _ in res] == [EXIT_PREEMPTED] * 2, (res[0][1][-2000:], res[1][1][-2000:])
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt", "step_00000002.sha256", "step_00000004.pt",
                                                    "step_00000004.sha256"]  # no *.tmp left
    assert load_checkpoint(ck / "step_00000002.pt")["step"] == 2 and load_checkpoint(ck / "step_00000004.pt")[
        "step"] == 4
    assert read_marker(run)["step"] == 4 and sorted(logged_losses(run)) == [1, 2, 3, 4]

    # SIGKILL half-way through the step-4 write: only the temporary file is torn; resume falls back to step 2.
    run = tmp_path / "kill"
    res = _two_ranks(run, ["--set", "checkpoint.every_steps=2"],
                     fault={"kind": "kill_in_save", "rank": 0, "step": 4}, timeout=60)
    assert res[0][0] == -signal.SIGKILL and res[1][0] != 0, res[1][1][-2000:]
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt", "step_00000002.sha256", "step_00000004.pt.tmp"]
    path, state = load_latest_checkpoint(ck)
    assert path.name == "step_00000002.pt" and state["step"] == 2


# --------------------------------------------------------------------------------------------- worker side
def _plant(fault: dict) -> None:
    """Plant ``fault`` in this worker: ``signal`` (send ``signal`` to itself at the start of step ``step``), ``kill``
    (SIGKILL there, in torchrun attempt ``attempt`` only), ``signal_in_save`` / ``kill_in_save`` (half-way through
    writing the checkpoint of ``step``: ``times`` signals, or SIGKILL)."""
    if not fault or int(os.environ.get("RANK", 0)) != fault["rank"]:
        return
    if fault.get("attempt") is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) != fault["attempt"]:
        return
    if fault["kind"] in ("signal", "kill"):
        from umt.train.distill.step import StageOneStep

        inner, calls = StageOneStep.micro_step, [0]

        def micro_step(self, *a, **kw):  # type: ignore[no-untyped-def]
            calls[0] += 1  # no accumulation and a fresh run: call k is step k
            if calls[0] == fault["step"]:
                sig = signal.SIGKILL if fault["kind"] == "kill" else signal.Signals[fault["signal"]]
                os.kill(os.getpid(), sig)
            return inner(self, *a, **kw)

        StageOneStep.micro_step = micro_step  # type: ignore[method-assign]
        return
    import io

    import torch

    real_save = torch.save

    def save(obj, f, *a, **kw):  # type: ignore[no-untyped-def]
        if not str(f).endswith(f"step_{fault['step']:08d}.pt.tmp"):
            return real_save(obj, f, *a, **kw)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            for _ in range(fault.get("times", 1)):
                os.kill(os.getpid(), signal.SIGKILL if fault["kind"] == "kill_in_save"
                        else signal.Signals[fault["signal"]])
                time.sleep(0.05)
            fh.write(data[len(data) // 2 :])

    torch.save = save


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import umt  # noqa: F401

    _plant(json.loads(os.environ.get("UMT_TEST_FAULT", "{}")))
    from umt.train.__main__ import main

    sys.exit(main(sys.argv[1:]))
