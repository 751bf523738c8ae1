"""The trainer runs any :class:`umt.train.task.Task` (docs/design.md, "Tasks and recipes"): a toy
two-loss regression task goes through the same loop, accumulation, metrics and exact resume as stage 1, and each
of its losses is logged separately."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from tests.train_utils import read_metrics
from umt.config import ConfigError, TrainConfig, apply_overrides
from umt.train.step import TrainStep
from umt.train.runtime import Runtime
from umt.train.task import Task, build_task, register_task, task_class
from umt.train.trainer import Trainer


class _Loader:
    """16 fixed samples, batch 4, shuffled per epoch by (seed, epoch); exact mid-epoch resume."""

    batch_size = 4

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(16, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(16, 1, generator=g)
        self.seed = seed

    def __len__(self) -> int:
        return 4

    def epoch_iter(self, epoch: int, start_batch: int = 0):  # noqa: ANN201
        order = torch.randperm(16, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for b in range(start_batch, 4):
            i = order[4 * b:4 * b + 4]
            yield {"x": self.x[i], "y": self.y[i], "index": i}

    def close(self) -> None:
        pass


class _Step(TrainStep):
    def train_batch(self, batch: dict[str, Any], seed: int, *, scale: float = 1.0,
                    sync: bool = True) -> dict[str, torch.Tensor]:
        with self.no_sync(sync):
            pred = self.model(batch["x"])
            loss_mse = (pred - batch["y"]).pow(2).mean()
            loss_l1 = (pred - batch["y"]).abs().mean()
            loss = loss_mse + loss_l1
            (loss * scale).backward()
        return {"loss": loss.detach(), "loss_mse": loss_mse.detach(), "loss_l1": loss_l1.detach()}


@register_task
class _ToyTask(Task):
    name = "toy_regression"
    metrics = ("loss", "loss_mse", "loss_l1")

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        self.model = nn.Linear(3, 1)
        self.built_loaders = 0

    def build_loader(self) -> _Loader:
        self.built_loaders += 1
        return _Loader(self.cfg.seed)

    def peak_lr(self, world_size: int) -> tuple[float, float]:
        return self.cfg.optim.lr, self.cfg.optim.min_lr

    def make_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainStep:
        return _Step(net, optimizer, scheduler, self.cfg, self.rt.device, self.rt.amp_dtype)

    def flops(self, batch: dict[str, Any]) -> float:
        return 6.0 * 3 * batch["x"].shape[0]

    eval_key = "neg_mse"
    evaluated: list[bool] = []

    def evaluate(self, final: bool, out_dir: Path) -> dict[str, float] | None:
        if not self.cfg.eval.every_epochs:
            return None
        assert not self.model.training  # the trainer switches to eval mode
        self.evaluated.append(final)
        data = _Loader(0)
        mse = float((self.model(data.x) - data.y).pow(2).mean())
        return {"neg_mse": -mse, "mse": mse}


def _cfg(*extra: str) -> TrainConfig:
    return apply_overrides(TrainConfig(task="toy_regression", device="cpu", synthetic_data=True),
                           ["data.batch_size=4", "optim.lr=0.05", "optim.min_lr=0.005", "optim.epochs=3",
                            "optim.warmup_epochs=0", "optim.weight_decay=0.0", "log.every_steps=1",
                            "log.tensorboard=false", "log.progress=false", "checkpoint.every_steps=0", *extra])


def test_unknown_task_is_a_clear_error() -> None:
    cfg = TrainConfig(task="no_such_task")
    with pytest.raises(ConfigError, match="unknown task 'no_such_task'.*distill"):
        build_task(cfg, Runtime(0, 1, 0, torch.device("cpu"), None))
    assert task_class("distill").name == "distill"  # the stage-1 module is imported on first use


def test_a_task_trains_through_the_trainer_and_logs_each_loss(tmp_path: Path) -> None:
    tr = Trainer(_cfg(), tmp_path / "run")
    try:
        out = tr.fit()
    finally:
        tr.close()
    rows = read_metrics(tmp_path / "run")
    assert out["steps"] == 12 and [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:  # each loss is logged; the total is their sum (the same batch, averaged over one step)
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_l1"], rel=1e-6)
        assert r["mfu"] is None  # no GPU peak on CPU
    assert rows[-1]["loss_mse"] < 0.5 * rows[0]["loss_mse"]  # it learns
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task"] == "toy_regression" and cfg["config"]["task"] == "toy_regression"
    assert torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=False)["task"] == \
        "toy_regression"


def test_a_task_resumes_exactly_mid_epoch(tmp_path: Path) -> None:
    full = Trainer(_cfg(), tmp_path / "full")
    try:
        full.fit()
    finally:
        full.close()
    part = Trainer(_cfg("optim.max_steps=6"), tmp_path / "part")  # stops mid-epoch 1 (4 steps per epoch)
    try:
        part.fit()
    finally:
        part.close()
    rest = Trainer(_cfg(), tmp_path / "part", resume="auto")
    try:
        assert (rest.step, rest.epoch, rest.batch_in_epoch) == (6, 1, 2)
        rest.fit()
    finally:
        rest.close()
    want = {r["step"]: (r["loss"], r["loss_mse"], r["loss_l1"]) for r in read_metrics(tmp_path / "full")}
    got = {r["step"]: (r["loss"], r["loss_mse"], r["loss_l1"]) for r in read_metrics(tmp_path / "part")}
    assert got == want  # bit-identical per-step losses, each of them


def test_accumulation_averages_every_loss(tmp_path: Path) -> None:
    tr = Trainer(_cfg("optim.global_batch=8", "optim.epochs=2"), tmp_path / "acc")
    try:
        assert tr.accum == 2
        tr.fit()
    finally:
        tr.close()
    rows = read_metrics(tmp_path / "acc")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["accum_steps"] == 2 for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_l1"], rel=1e-6)


def test_periodic_evaluation_keeps_the_best_and_the_final_one_uses_it(tmp_path: Path) -> None:
    _ToyTask.evaluated = []
    # lr high enough that the loss goes up and down: the best epoch is not always the last
    tr = Trainer(_cfg("eval.every_epochs=1", "optim.lr=0.9", "optim.min_lr=0.9", "optim.epochs=4"), tmp_path / "ev")
    try:
        tr.fit()
        final_weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    finally:
        tr.close()
    rows = read_metrics(tmp_path / "ev", "eval.jsonl")
    periodic = [r for r in rows if not r["final"]]
    assert [r["epoch"] for r in periodic] == [1, 2, 3, 4] and [r["final"] for r in rows][-1] is True
    assert _ToyTask.evaluated == [False] * 4 + [True]
    best = max(periodic, key=lambda r: r["neg_mse"])
    assert best["epoch"] != 4  # so the final evaluation below tells best.pt's weights from the last ones
    saved = torch.load(tmp_path / "ev" / "best.pt", weights_only=False)
    assert saved["step"] == best["step"] and saved["eval"]["neg_mse"] == best["neg_mse"]
    assert rows[-1]["neg_mse"] == best["neg_mse"]  # the final evaluation ran on best.pt's weights
    assert all(torch.equal(final_weights[k], saved["model"][k]) for k in saved["model"])
    last = torch.load(max((tmp_path / "ev" / "checkpoints").glob("*.pt")), weights_only=False)
    assert last["best_eval"] == best["neg_mse"]  # resume keeps the best so far
