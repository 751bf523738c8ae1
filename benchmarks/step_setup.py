"""What the train-step benchmarks share (:mod:`benchmarks.bench_step`, :mod:`benchmarks.bench_step_vt`): the
benchmark config of a recipe, a batch cycler, a device sync, and the trainer's peak-FLOPs and peak-memory readings.
"""

from __future__ import annotations

from typing import Any

import torch

from umt.config import apply_overrides
from umt.train.recipes import get_recipe
from umt.train.trainer import _peak_mem_bytes as peak_mem_bytes
from umt.train.trainer import _peak_tflops as peak_tflops

__all__ = ["bench_config", "cycle", "sync", "peak_mem_bytes", "peak_tflops"]


def sync(device: torch.device) -> None:
    """Wait for ``device`` (a no-op on the CPU), so that a phase's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle(loader: Any) -> Any:
    """A function returning the loader's next batch, starting epoch 0 over whenever it ends."""
    it = iter(())

    def next_batch() -> dict[str, torch.Tensor]:
        nonlocal it
        b = next(it, None)
        if b is None:
            it = loader.epoch_iter(0)
            b = next(it)
        return b

    return next_batch


def bench_config(recipe: str, model: str, device: torch.device, batch_size: int | None, *sets: str,
                 kernels: str = "torch", compile: bool = False) -> Any:
    """The recipe's config for a benchmark run on synthetic data: on CPU the real architecture at 2 frames × 112²
    (a teacher, when the task has one, at 112 px for B/16 and 98 px for L/14: the same 7×7 grid), batch
    ``batch_size or 1``; on a GPU the recipe's sizes (``batch_size`` overrides the batch). ``sets``: further
    overrides."""
    over = ["synthetic_data=true", f"device={device.type}", f"model.kernels={kernels}",
            f"model.compile={str(compile).lower()}", "model.init_from=", *sets]
    if device.type == "cpu":
        teacher_px = 98 if model == "umt_l16" else 112  # 7×7 grid for patch 14 / 16
        over += ["data.num_frames=2", "data.input_size=112", f"model.teacher_image_size={teacher_px}",
                 f"data.batch_size={batch_size or 1}"]
    elif batch_size:
        over.append(f"data.batch_size={batch_size}")
    cfg = apply_overrides(get_recipe(recipe), over)
    cfg.synthetic_samples = max(cfg.data.batch_size * 4, 64)
    return cfg
