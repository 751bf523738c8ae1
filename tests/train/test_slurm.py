"""``examples/slurm/umt.sbatch``: rendezvous from ``SLURM_*`` and requeue on preemption, run on
CPU in its dry-run mode with a fake ``scontrol`` (two local "nodes", one gloo rank each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_utils import ROOT, TINY, cli_sets, free_port, read_metrics

SCRIPT = ROOT / "examples" / "slurm" / "umt.sbatch"
RUN_SETS = cli_sets([*TINY, "synthetic_samples=16"])


def _fake_slurm(tmp: Path, **env: str) -> dict[str, str]:
    """Environment of a 2-node allocation ``node[1-2]`` whose ``scontrol`` logs its calls to ``tmp/scontrol.log``
    and names both nodes ``localhost``."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {tmp / "scontrol.log"}\n'
                    '[ "$1 $2" = "show hostnames" ] && printf "localhost\\nlocalhost\\n"\nexit 0\n')
    fake.chmod(0o755)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "UMT_", "TORCHELASTIC_"))}
    return {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2",
            "SLURM_JOB_NUM_NODES": "2", "UMT_PYTHON": sys.executable, "UMT_RDZV_PORT": str(port),
            "UMT_SLURM_DRY_RUN": "1", **env}


@pytest.mark.parametrize("gpus_env, expect", [({"SLURM_GPUS_ON_NODE": "8"}, 8),
                                              ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4),
                                              ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3), ({}, 1)])
def test_plan_from_slurm_env(tmp_path: Path, gpus_env: dict[str, str], expect: int) -> None:
    env = _fake_slurm(tmp_path, UMT_SLURM_DRY_RUN="print", **gpus_env)
    if "CUDA_VISIBLE_DEVICES" not in gpus_env:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(["bash", str(SCRIPT), "umt_l16_k710", str(tmp_path / "run"), "--set", "seed=1"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    port = env["UMT_RDZV_PORT"]
    assert f"2 nodes × {expect} processes, rendezvous localhost:{port}" in res.stdout, res.stdout
    cmd = res.stdout.split("node command: ", 1)[1]
    for part in ("--nnodes=2", f"--nproc-per-node={expect}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint=localhost:{port}", "--rdzv-id=umt-4242", "--max-restarts=3", "-m umt.train",
                 "--recipe umt_l16_k710", f"--run-dir {tmp_path / 'run'}", "--resume auto", "--set seed=1"):
        assert part in cmd, (part, cmd)
    assert (tmp_path / "scontrol.log").read_text().split("\n")[0] == "show hostnames node[1-2]"


def _workers(run_dir: Path, script_pid: int) -> list[int]:
    """Pids of the job step's processes (torchrun agents and workers), as Slurm's step signal reaches them; not the
    batch shell (``--signal`` without ``B:`` leaves it alone)."""
    out = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != script_pid]


@pytest.mark.dist
def test_two_nodes_preempted_by_usr1_then_requeued_run_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = _fake_slurm(tmp_path, SLURM_GPUS_ON_NODE="1")
    # Launch 1: long enough to be running when USR1 reaches every process of the step (agents ignore it).
    proc = subprocess.Popen(["bash", str(SCRIPT), "demo", str(run), *RUN_SETS, "--set", "optim.epochs=500"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    for pid in _workers(run, proc.pid):
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 75, (out, err[-4000:])
    # torchrun restarted the group once (the workers exited 75); the restarted workers did not train on
    assert err.count("not training on after a torchrun restart") == 2 and "exitcode: 75" in err, err[-4000:]
    marker = json.loads((run / "preempted.json").read_text())
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text()
    assert json.loads((run / "config.json").read_text())["world_size"] == 2  # the two "nodes" formed one group
    step = marker["step"]
    assert marker["signal"] == "SIGUSR1" and (run / "checkpoints" / f"step_{step:08d}.pt").is_file()

    # Launch 2, as the requeued job: the same script resumes and finishes; no step logged twice.
    (tmp_path / "scontrol.log").unlink()
    env["UMT_RDZV_PORT"] = _fake_slurm(tmp_path)["UMT_RDZV_PORT"]
    res = subprocess.run(["bash", str(SCRIPT), "demo", str(run), *RUN_SETS, "--set", "optim.epochs=500", "--set",
                          f"optim.max_steps={step + 2}"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "requeue" not in (tmp_path / "scontrol.log").read_text() and not (run / "preempted.json").exists()
    assert json.loads((run / "config.json").read_text())["resumed_from"].endswith(f"step_{step:08d}.pt")
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, step + 3))
