"""VTC's all-gather keeps gradients: on two gloo processes under DDP, the global-batch loss's gradients on every
rank equal one process's on the concatenated batch (and the official convention gives half of them).

Run as a script by torchrun (``python -m torch.distributed.run --nproc-per-node=2 tests/train/test_dist_vtc.py OUT``) for
the worker side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.train_utils import ROOT, torchrun

@pytest.mark.dist
def test_vtc_gradients_through_the_all_gather_match_one_process(tmp_path: Path) -> None:
    res = torchrun([str(Path(__file__).resolve()), str(tmp_path)], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["world"] == 2 and r["n_params"] == 5
        assert r["loss_diff"] < 1e-6, r  # every rank computes the global-batch loss
        assert r["max_abs_grad"] > 1e-3, r  # the comparison is not between zeros
        assert r["max_abs_diff"] < 1e-6, r  # exact global-batch gradients
        assert r["local_half_diff"] < 1e-6, r  # official AllGather + DDP averaging: 1/world of them


def _worker(out: Path) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from umt.losses import vtc_loss
    from umt.train.runtime import close_process_group

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v, self.t = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
            self.temp = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.v(x), self.t(y)

    torch.manual_seed(0)
    ref = Pair()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 5, generator=g)  # the global batch, on every rank
    index = torch.tensor([0, 1, 2, 0, 4, 1])  # items 0 and 1 appear on both ranks: cross-rank positives
    mine = slice(3 * rank, 3 * rank + 3)
    vr, tr = ref(x, y)
    ref_loss = vtc_loss(vr, tr, index, ref.temp, gather=False)  # one process, concatenated batch
    ref_loss.backward()
    result: dict[str, float] = {"world": world}
    for local_grad in (False, True):
        model = copy.deepcopy(ref)
        model.zero_grad(set_to_none=True)
        ddp = DDP(model)
        v, t = ddp(x[mine], y[mine])
        loss = vtc_loss(v, t, index[mine], model.temp, local_grad=local_grad)
        loss.backward()  # DDP averages the gradients over the ranks
        pairs = list(zip(model.parameters(), ref.parameters()))
        if not local_grad:
            result["loss_diff"] = abs(loss.item() - ref_loss.item())
            result["n_params"] = len(pairs)
            result["max_abs_diff"] = max((p.grad - q.grad).abs().max().item() for p, q in pairs)
            result["max_abs_grad"] = max(q.grad.abs().max().item() for _, q in pairs)
        else:  # the temperature is outside the gather: its gradient is exact either way
            result["local_half_diff"] = max((p.grad - q.grad / world).abs().max().item()
                                            for (n, p), (_, q) in zip(model.named_parameters(), pairs)
                                            if n != "temp")
        del ddp
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    close_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import umt  # noqa: F401

    _worker(Path(sys.argv[1]))
