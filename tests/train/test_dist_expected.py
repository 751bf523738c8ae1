"""DDP gradients against an independently computed expectation.

Two gloo processes each take half of a global batch through the DDP-wrapped model and the trainer's loss
(:func:`umt.losses.uma_loss`). The expected gradient never goes through DDP, autograd or ``uma_loss``: for every
parameter tensor, the directional derivative of the *global-batch* UMA loss, written out here in float64
(mean of 2 − 2·⟨s, t⟩ over layers × clips × visible tokens), by central finite differences along a random direction.
A wrong all-reduce (sum instead of mean, a parameter left out), a wrong loss or a wrong backward all show.

Run as a script by torchrun for the worker side (``python -m torch.distributed.run --nproc-per-node=2 THIS OUT``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.train_utils import ROOT, torchrun

@pytest.mark.dist
def test_ddp_gradient_equals_finite_differences_of_the_global_loss(tmp_path: Path) -> None:
    res = torchrun([str(Path(__file__).resolve()), str(tmp_path)], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["n_checked"] == r["n_params"] > 20, r
        assert r["worst_rel_err"] < 1e-4, r  # float64 differences; uma_loss itself works in float32
        assert r["min_abs_fd"] > 1e-6, r  # every checked derivative is far from zero


def _worker(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from umt import ops
    from umt.losses import uma_loss
    from umt.masking import random_mask
    from umt.config import apply_overrides
    from umt.train.recipes import get_recipe
    from umt.train.distill.step import build_models

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = apply_overrides(get_recipe("demo"), ["synthetic_data=true", "data.num_frames=2", "data.input_size=32",
                                               "model.teacher_image_size=32", "model.drop_path=0.0"])
    torch.manual_seed(0)
    model, teacher = build_models(cfg, torch.device("cpu"))
    with torch.no_grad():  # non-trivial affine parameters in every norm, so their gradients are not special
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model = model.double()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 2, 32, 32, generator=g)  # the global batch, identical on every rank
    idx = random_mask(4, 2, 4, 2, seed=3)  # [4, 4] visible positions of T·N = 8
    target = ops.gather_targets(teacher(video).targets, idx).double()  # [L, 4, 4, C]
    video = video.double()

    shard = slice(rank * 2, rank * 2 + 2)
    ddp = DDP(model)
    uma_loss(ddp(video[shard], idx[shard]), target[:, shard]).backward()

    def global_loss() -> float:  # UMA, by hand, over the whole batch, in float64
        with torch.no_grad():
            pred = model(video, idx)
            return float((2.0 - 2.0 * (pred * target).sum(-1)).mean())

    eps = 1e-6
    dirs = torch.Generator().manual_seed(7)
    worst, min_fd, checked = 0.0, float("inf"), 0
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        v = torch.randn(p.shape, generator=dirs, dtype=p.dtype)
        with torch.no_grad():
            p.add_(eps * v)
            up = global_loss()
            p.sub_(2 * eps * v)
            down = global_loss()
            p.add_(eps * v)
        fd = (up - down) / (2 * eps)
        ad = float((p.grad * v).sum())
        worst = max(worst, abs(ad - fd) / max(abs(fd), 1e-12))
        min_fd = min(min_fd, abs(fd))
        checked += 1
    (out / f"rank{rank}.json").write_text(json.dumps({"n_params": len(params), "n_checked": checked,
                                                       "worst_rel_err": worst, "min_abs_fd": min_fd}))
    del ddp  # the DDP wrapper first (see close_process_group)
    from umt.train.runtime import close_process_group

    close_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import umt  # noqa: F401

    _worker(Path(sys.argv[1]))
