"""The data benchmark's measuring parts: decode-work accounting, process-tree CPU time, and the peer loaders."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import bench_data
from tests.data_utils import make_clip


def test_decode_work_is_frames_not_seconds(good_shard_set: Path) -> None:
    d = good_shard_set  # 12..33-frame clips, VP9 at the default GOP
    w = bench_data._decode_work(d, epochs=1)
    assert 8 <= w["decoded frames/clip"] <= 33 and w["decode CPU-s/clip"] > 0


def test_tree_cpu_counts_children() -> None:
    import os

    before = bench_data._tree_cpu_s(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.4: pass\ntime.sleep(5)"])
    time.sleep(1.0)
    live = bench_data._tree_cpu_s(os.getpid())  # the child is alive: read from /proc
    p.kill()
    p.wait()
    assert live - before >= 0.3


@pytest.mark.peers
def test_official_loader_reimplementation(tmp_path: Path) -> None:
    from benchmarks.peers import OfficialUMTDataset, _multiscale_box, _tsn_random

    import random

    rng = random.Random(0)
    for n in (8, 30, 241):
        idx = _tsn_random(n, 8, rng)
        assert all(int(i * n / 8) <= k < max(int((i + 1) * n / 8), int(i * n / 8) + 1) for i, k in enumerate(idx))
    for _ in range(50):
        x, y, cw, ch = _multiscale_box(320, 240, 224, rng)
        assert 0 <= x and x + cw <= 320 and 0 <= y and y + ch <= 240 and {cw, ch} <= {240, 210, 180, 158}
    clip = make_clip(tmp_path / "a.mp4", n_frames=20, width=96, height=64)
    v = OfficialUMTDataset([clip], size=32)[0]
    assert v.shape == (3, 8, 32, 32) and torch.isfinite(v).all()


@pytest.mark.peers
def test_spdl_loader_runs_with_pyav_ffmpeg(tmp_path: Path) -> None:
    from benchmarks.peers import spdl_env

    clip = make_clip(tmp_path / "a.mp4", n_frames=20, width=96, height=64)
    code = f"from benchmarks.peers import SPDLDataset\nv=SPDLDataset([{str(clip)!r}], size=32)[0]\nprint(tuple(v.shape))"
    out = subprocess.run([sys.executable, "-c", code], env=spdl_env(), capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.strip() == "(3, 8, 32, 32)", out.stderr[-500:]


@pytest.mark.peers
def test_decord_peer_returns_the_sampled_frames(tmp_path: Path) -> None:
    """decord alone with the torch augmentation: a [3, T, S, S] clip whose frames are the TSN draws of the video."""
    from benchmarks.peers import DecordDataset

    clip = make_clip(tmp_path / "a.mp4", n_frames=24, width=96, height=64)
    v = DecordDataset([clip], size=32)[0]
    assert v.shape == (3, 8, 32, 32) and torch.isfinite(v).all()
    assert (v[:, 1:] - v[:, :-1]).abs().amax() > 0  # distinct frames, not one frame repeated
