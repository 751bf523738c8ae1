"""Every trainer option a recipe can set, through a short CPU run of the real trainer.

Each option set runs 6 steps of the tiny synthetic config at a high LR and asserts what the option is for (the mask
kind drawn, the clipped norm the optimizer sees, bf16 matmuls, the Triton kernels actually taking the calls, a
compiled module) on top of a finite loss that falls.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train_utils import tiny_cfg
from umt import ops
from umt.train.trainer import Trainer

STEPS = 6
#: On top of the tiny run: a high LR, no warm-up, no drop-path, no checkpoints, STEPS steps.
RUN = ["optim.epochs=10", "optim.warmup_epochs=0", "optim.lr=0.3", "model.drop_path=0.0", "checkpoint.every_steps=0",
       f"optim.max_steps={STEPS}", "mask.ratio=0.5"]

OPTION_SETS = [
    pytest.param(["mask.kind=semantic", "optim.impl=foreach", "model.teacher_input_norm=clip"], id="semantic-foreach-clipnorm"),
    pytest.param(["mask.kind=tube", "optim.clip_grad=0.05", "model.drop_path=0.1"], id="tube-clipgrad-droppath"),
    pytest.param(["mask.kind=random", "precision=bf16", "data.num_sample=2"], id="random-bf16-numsample2"),
    pytest.param(["model.kernels=triton"], id="triton-kernels", marks=[pytest.mark.triton, pytest.mark.slow]),  # ~30 s: interpreter
    # torch.compile with the aot_eager backend (Dynamo + AOTAutograd, no C++ code generation): inductor's CPU codegen
    # took 280 s for this tiny run on the 2 shared cores, far past a test's budget.
    pytest.param(["model.compile=true"], id="compile-aot-eager", marks=pytest.mark.slow),
]


class _Spy:
    """Records what the step saw: masks, the grad norm at optimizer.step, the dtype of the heads' matmul, op impls."""

    def __init__(self, tr: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.masks: list[torch.Tensor] = []
        self.norms: list[float] = []
        self.raw_norms: list[float] = []
        self.matmul_dtypes: set[torch.dtype] = set()
        self.impls: list[str] = []
        sf = tr.step_fn
        make_mask, fb, step = sf.make_mask, sf.forward_backward, tr.optimizer.step

        def norm() -> float:
            return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in sf.params if p.grad is not None))

        def spy_mask(*a: Any, **k: Any) -> torch.Tensor:
            idx = make_mask(*a, **k)
            self.masks.append(idx)
            return idx

        def spy_fb(*a: Any, **k: Any) -> torch.Tensor:
            loss = fb(*a, **k)
            self.raw_norms.append(norm())
            return loss

        def spy_step(*a: Any, **k: Any) -> Any:
            self.norms.append(norm())
            return step(*a, **k)

        sf.make_mask, sf.forward_backward = spy_mask, spy_fb
        tr.optimizer.step = spy_step  # type: ignore[method-assign]
        tr.model.heads.proj[0].register_forward_hook(lambda m, a, out: self.matmul_dtypes.add(out.dtype))
        for name in ("_attention_impl", "_index_impl"):
            real = getattr(ops, name)
            monkeypatch.setattr(ops, name, lambda *a, _real=real: self.impls.append(_real(*a)) or self.impls[-1])


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("options", OPTION_SETS)
def test_trainer_option_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str]) -> None:
    cfg = tiny_cfg(*RUN, *options)
    if cfg.model.compile:
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    tr = Trainer(cfg, tmp_path / "run")
    try:
        spy = _Spy(tr, monkeypatch)
        summary = tr.fit()
    finally:
        tr.close()
        ops.set_backend("torch")  # the trainer sets the process-wide backend
    losses = [r["loss"] for r in tr.logged]
    assert summary["steps"] == STEPS and summary["skipped_steps"] == 0 and len(losses) == STEPS
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.2, losses  # it learns (about 1.8 → 1.0 at this LR)
    b, t, n, k = cfg.data.batch_size * cfg.data.num_sample, 2, 4, 2
    assert len(spy.masks) == STEPS
    for idx in spy.masks:
        assert idx.shape == (b, t * k) and (idx[:, 1:] > idx[:, :-1]).all()
    frames = torch.stack([idx // n for idx in spy.masks])  # [S, B, T·K] frame of each kept token
    if cfg.mask.kind in ("semantic", "tube"):
        assert (frames == torch.tensor([0, 0, 1, 1])).all()  # K per frame
    if cfg.mask.kind == "tube":
        assert all(torch.equal(idx[:, k:] - n, idx[:, :k]) for idx in spy.masks)  # one spatial set, every frame
    if cfg.mask.kind == "random":
        assert ((frames == 0).sum(-1) != k).any()  # not tied to frames: some clip keeps more of one frame
    if cfg.optim.clip_grad:
        assert all(x <= cfg.optim.clip_grad * (1 + 1e-4) for x in spy.norms), spy.norms
        assert max(spy.raw_norms) > 2 * cfg.optim.clip_grad  # the bound was active
    else:
        assert spy.norms == pytest.approx(spy.raw_norms, rel=1e-6)
    assert spy.matmul_dtypes == ({torch.bfloat16} if cfg.precision == "bf16" else {torch.float32})
    if cfg.optim.impl == "foreach":
        assert tr.optimizer.defaults["foreach"] and not tr.optimizer.defaults["fused"]
    if cfg.model.teacher_input_norm == "clip":
        assert not torch.equal(tr.teacher.norm_a, torch.ones_like(tr.teacher.norm_a))
    if cfg.data.num_sample > 1:
        assert tr.loader.batch_size == 4 and tr.lr == pytest.approx(0.3 * 4 / 256)
    if cfg.model.kernels == "triton":
        # Teacher and student attention (head dim 32) and the semantic top-k all ran as Triton kernels.
        assert spy.impls and set(spy.impls) == {"triton"}, set(spy.impls)
    else:
        assert set(spy.impls) == {"torch"}
    if cfg.model.compile:
        assert isinstance(tr.net, torch._dynamo.eval_frame.OptimizedModule)
