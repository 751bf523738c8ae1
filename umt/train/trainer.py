"""The trainer: distributed setup, precision, the step loop, checkpoints and logging, once for every task.

What differs between kinds of training (stage-1 distillation, stage-2 video-text, fine-tuning: models, loader,
losses, metrics) is a :class:`~umt.train.task.Task` that the recipe names (``TrainConfig.task``); where the
processes run (rank, device, autocast dtype) is a :class:`~umt.train.runtime.Runtime`.

The loop reads top to bottom: per optimizer step, ``accum`` micro-batches (each: next batch, timed as data wait →
:meth:`~umt.train.step.TrainStep.train_batch`, DDP ``no_sync`` on all but the last; ``accum`` = 1 unless
``optim.global_batch`` asks for more) → optimizer step → counters on the device → on logging steps only, one host
sync to read loss/skip counters and write metrics → periodic checkpoint → preemption check (one CPU all-reduce; on a
signal: checkpoint and :class:`~umt.train.preempt.Preempted`). ``step`` counts optimizer steps, ``batch_in_epoch``
loader batches.

Corrupt samples: the shard loaders replace a sample that fails to read (:mod:`umt.data.loader`); on logging steps
(and before a checkpoint) the trainer takes each rank's new counts (:func:`umt.data.loader.take_skipped`, no extra
sync on other steps), sums them over the ranks per epoch and logs the run's total as ``skipped_samples`` and the
current epoch's as ``skipped_samples_epoch``; :meth:`Trainer.fit` returns both (``skipped_samples_per_epoch``), and
checkpoints carry them across a resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from umt import ops
from umt.flops import peak_bf16_tflops
from umt.masking import step_seed
from umt.config import TrainConfig, accumulation_steps, config_to_dict
from umt.data.loader import take_skipped
from umt.fileio import atomic_path, atomic_write, check_writable, exclusive_lock
from umt.train import checkpoint as ckpt
from umt.train.preempt import Preempted, PreemptionHandler, write_marker
from umt.train.runtime import close_process_group, init_runtime
from umt.train.step import TrainStep, build_optimizer, build_scheduler
from umt.train.task import Task, build_task, check_config

__all__ = ["Trainer", "NonFiniteError"]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps: training stopped."""


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_bf16_tflops(torch.cuda.get_device_name(device))


def _peak_mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class Trainer:
    """One training run of the task ``cfg.task`` names (:mod:`umt.train.task`).

    Args:
        cfg: the resolved config.
        run_dir: run directory (config.json, metrics.jsonl, TensorBoard events, checkpoints/).
        resume: None, ``"auto"`` (newest readable checkpoint in ``run_dir/checkpoints``, if any; unreadable ones are
            skipped with a warning) or a path.

    Raises:
        umt.train.checkpoint.CheckpointError: ``resume`` names a missing or unreadable checkpoint.
        FileExistsError: a fresh run (no ``resume``) into a directory that holds a run.
        ConfigError: a failed config check (the task's own included, :func:`umt.train.task.check_config`), or
            ``optim.global_batch`` does not divide into micro-batches.
        recipe: recipe name, recorded in config.json.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: str | None = None, recipe: str = "") -> None:
        # One trainer per run directory for the run's life: a second one (another launch pointed at the same
        # directory) would interleave checkpoints and metrics. Rank 0 holds the lock (RANK: set by torchrun).
        self._lock = contextlib.ExitStack()
        if int(os.environ.get("RANK", "0")) == 0:
            run_dir = Path(run_dir)
            check_writable(run_dir, "run directory")  # before models, data or the process group are set up
            self._lock.enter_context(exclusive_lock(run_dir.parent / f".{run_dir.name}.lock",
                                                    f"run directory {run_dir}"))
        try:
            self._setup(cfg, run_dir, resume, recipe)
        except BaseException:
            self._lock.close()
            raise

    def _setup(self, cfg: TrainConfig, run_dir: str | Path, resume: str | None, recipe: str) -> None:
        check_config(cfg, require_data=True)
        if not resume and ckpt.run_dir_in_use(run_dir):  # a fresh run never appends to another run's files
            raise FileExistsError(f"{run_dir} already holds a run (checkpoints, metrics or config): resume it "
                                  "(resume='auto') or choose another run directory")
        self.cfg, self.run_dir, self.recipe = cfg, Path(run_dir), recipe
        self.rt = rt = init_runtime(cfg)
        ops.set_backend(cfg.model.kernels)
        torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts from rank 0)
        #: what this kind of training builds (models, loader, step, metrics)
        self.task: Task = build_task(cfg, rt)
        self.model = self.task.model
        #: micro-batches per optimizer step (gradient accumulation up to ``optim.global_batch``)
        self.accum = accumulation_steps(cfg, rt.world_size)
        self.loader = self.task.build_loader()
        self.steps_per_epoch = len(self.loader) // self.accum  # optimizer steps; a partial last group is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"the loader yields {len(self.loader)} batches per epoch, fewer than the {self.accum} "
                             "micro-batches of one optimizer step (world_size × batch_size × accumulation clips)")
        #: loader batches consumed per epoch (``batch_in_epoch`` counts these)
        self.batches_per_epoch = self.steps_per_epoch * self.accum
        self.lr, self.min_lr = self.task.peak_lr(rt.world_size)
        log.info("global batch %d = %d per rank × %d ranks × %d accumulation steps (peak lr %.3g)",
                 cfg.data.batch_size * rt.world_size * self.accum, cfg.data.batch_size, rt.world_size, self.accum,
                 self.lr)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr, rt.device,
                                         groups=self.task.param_groups(cfg.optim.weight_decay))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch, self.lr, self.min_lr)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        net: torch.nn.Module = self.model
        if rt.distributed:
            net = DDP(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if cfg.model.compile:
            net = torch.compile(net)
        self.net = net
        self.step_fn = self.task.make_step(net, self.optimizer, self.scheduler)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        #: corrupt samples skipped by the loaders, summed over the ranks: epoch -> count (epochs with none left out)
        self.skipped_samples: dict[int, int] = {}
        self._skips_from = 0  # the first epoch whose counts some rank may not have taken yet
        #: the best ``task.eval_key`` result so far (``best.pt`` holds those weights), None before any evaluation
        self.best_eval: float | None = None
        self.resumed_from: Path | None = None
        if resume:
            self._resume(resume)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.tb = None
        self.logged: list[dict[str, Any]] = []
        if rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if self.resumed_from is not None:  # rows past the checkpoint are logged again by this run: drop them
                for name in ("metrics.jsonl", "eval.jsonl"):
                    dropped = ckpt.drop_metrics_after(self.run_dir / name, self.step)
                    if dropped:
                        log.info("%s: dropped %d rows logged after step %d", name, dropped, self.step)
            if cfg.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the events past the checkpoint, logged again by this run
                self.tb = SummaryWriter(str(self.run_dir / "tb"),
                                        purge_step=self.step if self.resumed_from is not None else None)
        #: signal handling; built on every rank in the same order (it may create a process group)
        self.preempt = (PreemptionHandler(cfg.checkpoint.signals, distributed=rt.distributed, device=rt.device)
                        if cfg.checkpoint.signals else None)

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scheduler, RNG, step, data position."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(), "step": self.step,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best_eval": self.best_eval,
                "skipped": int(self.step_fn.skipped), "consecutive_skipped": int(self.step_fn.consecutive),
                "skipped_samples": dict(self.skipped_samples),
                "config": config_to_dict(self.cfg), "student": self.cfg.model.student,
                "world_size": self.rt.world_size, "kernel_configs": ops.kernel_configs(), "task": self.cfg.task,
                **self.task.record()}

    @property
    def teacher(self) -> Any:
        """The distillation task's frozen teacher (None for tasks without one)."""
        return getattr(self.task, "teacher", None)

    def _resume(self, resume: str) -> None:
        """Load ``resume`` (a path) or, for ``"auto"``, the newest readable checkpoint of the run.

        Raises:
            ckpt.CheckpointError: an explicit path that is missing or unreadable (``auto`` skips those instead).
        """
        if resume == "auto":
            found = ckpt.load_latest_checkpoint(self.run_dir / "checkpoints", rename=self.rt.is_main)
            if found is None:
                log.info("resume=auto: no readable checkpoint in %s, starting fresh", self.run_dir / "checkpoints")
                return
            path, state = found
        else:
            path = Path(resume)
            state = ckpt.load_checkpoint(path)
        self.task.check_resume(state, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_eval = state.get("best_eval")
        self.skipped_samples = {int(e): int(n) for e, n in state.get("skipped_samples", {}).items()}
        self._skips_from = self.epoch
        self.step_fn.skipped.fill_(state.get("skipped", 0))
        self.step_fn.consecutive.fill_(state.get("consecutive_skipped", 0))
        ops.pin_kernel_configs(state.get("kernel_configs", {}))  # the same kernel tiles: bit-exact resume
        self.resumed_from = path
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def _write_config(self) -> None:
        info = {"recipe": self.recipe, "config": config_to_dict(self.cfg), "world_size": self.rt.world_size,
                "device": str(self.rt.device), "amp_dtype": str(self.rt.amp_dtype), "peak_lr": self.lr,
                "min_lr": self.min_lr, "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "accum_steps": self.accum,
                "global_batch": self.cfg.data.batch_size * self.rt.world_size * self.accum,
                "task": self.cfg.task, **self.task.record(),
                "resumed_from": str(self.resumed_from) if self.resumed_from else None}
        atomic_write(self.run_dir / "config.json", json.dumps(info, indent=2) + "\n")

    def save(self, preempted_by: int = 0, write: bool = True) -> Path | None:
        """Checkpoint on rank 0 (others wait at a barrier); with ``preempted_by`` (a signal number) rank 0 then
        writes the preemption marker (:func:`umt.train.preempt.write_marker`) before the barrier. ``write=False``:
        the checkpoint of this step is already written, only the marker is."""
        path = None
        if write:
            self._take_skipped()  # every rank is here: the checkpoint holds the counts of the batches it covers
        if self.rt.is_main:
            if write:
                path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.state_dict(),
                                            self.cfg.checkpoint.keep_last)
                atomic_write(self.run_dir / "kernel_configs.json",
                             json.dumps(ops.kernel_configs(), indent=2) + "\n")
                log.info("checkpoint %s", path)
            else:
                path = self.ckpt_dir / f"step_{self.step:08d}.pt"
            if preempted_by:
                write_marker(self.run_dir, self.step, path, preempted_by)
        if self.rt.distributed:
            dist.barrier()
        return path

    # ------------------------------------------------------------------------------------------------ loop
    def _take_skipped(self) -> None:
        """Add the loaders' new corrupt-sample counts of every rank to :attr:`skipped_samples`. Collective: every
        rank calls it at the same step (logging steps, checkpoints). Epochs from ``_skips_from`` to the current one
        (the same range on every rank) are summed as one vector."""
        lo, hi = self._skips_from, max(self._skips_from, self.epoch)
        counts = [0] * (hi - lo + 1)
        for epoch, n in take_skipped(self.loader).items():
            counts[min(max(epoch, lo), hi) - lo] += n
        if self.rt.distributed:
            t = torch.tensor(counts, dtype=torch.int64, device=self.rt.device)
            dist.all_reduce(t)
            counts = t.tolist()
        for k, n in enumerate(counts):
            if n:
                self.skipped_samples[lo + k] = self.skipped_samples.get(lo + k, 0) + int(n)
        self._skips_from = self.epoch

    def _log(self, loss_sums: dict[str, torch.Tensor], n_ok: torch.Tensor, samples: int,
             flops: float | None, wall: float, wait: float) -> dict:
        """Host sync (deliberate, logging steps only): average each of the task's losses over the interval's applied
        steps and the ranks, write metrics. ``samples``/``flops``: this rank's, over the interval."""
        names = list(loss_sums)
        stats = torch.stack([loss_sums[k].float() for k in names] + [n_ok.float()])
        if self.rt.distributed:
            dist.all_reduce(stats)
        *sums, n_ok_v = stats.tolist()
        consecutive = int(self.step_fn.consecutive)
        if consecutive >= self.cfg.optim.max_nonfinite:
            raise NonFiniteError(f"{consecutive} consecutive steps had a non-finite gradient norm (last at step "
                                 f"{self.step}); stopping. Lower optim.lr, set optim.clip_grad, or check the data.")
        self._take_skipped()
        last_epoch = self.epoch if self.batch_in_epoch else self.epoch - 1  # the epoch of the last batch trained on
        clips_per_s = samples * self.rt.world_size / max(wall, 1e-9)
        peak = _peak_tflops(self.rt.device)
        means = {k: v / n_ok_v if n_ok_v else float("nan") for k, v in zip(names, sums)}
        row = {"step": self.step, "epoch": self.epoch + self.batch_in_epoch / self.batches_per_epoch,
               "loss": means.pop("loss"), **means, "lr": self.optimizer.param_groups[0]["lr"],
               "clips_per_s": clips_per_s, "clips_per_s_per_device": clips_per_s / self.rt.world_size,
               "data_wait_frac": wait / max(wall, 1e-9),
               "mfu": flops / max(wall, 1e-9) / (peak * 1e12) if peak and flops is not None else None,
               "peak_mem": _peak_mem_bytes(self.rt.device), "skipped_steps": int(self.step_fn.skipped),
               "skipped_samples": sum(self.skipped_samples.values()),
               "skipped_samples_epoch": self.skipped_samples.get(last_epoch, 0), "accum_steps": self.accum}
        if self.rt.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step" and v is not None:
                        self.tb.add_scalar(f"train/{k}", v, self.step)
        self.logged.append(row)
        return row

    def _image_step(self, step: int) -> bool:
        n = self.cfg.log.image_every_steps
        return bool(n) and step % n == 0 and self.rt.is_main and self.tb is not None

    def _log_image(self) -> None:
        """The task's preview image of this step (kept by the step on an image-logging step), to TensorBoard."""
        self.task.log_image(self.step_fn, self.tb, self.step)
        self.step_fn.first_clip, self.step_fn.keep_first_clip = None, False

    def evaluate(self, final: bool = False) -> dict[str, float] | None:
        """The task's evaluation (:meth:`umt.train.task.Task.evaluate`) on every rank; rank 0 appends the result to
        ``eval.jsonl`` and TensorBoard (``eval/*``). A periodic result better than :attr:`best_eval` by the task's
        ``eval_key`` replaces ``best.pt`` (weights, written atomically). Returns the result (None: no eval set)."""
        self.model.eval()
        try:
            with torch.no_grad():
                res = self.task.evaluate(final, self.run_dir)
        finally:
            self.model.train()
        if res is None:
            return None
        key = self.task.eval_key
        better = not final and key in res and (self.best_eval is None or res[key] > self.best_eval)
        if better:
            self.best_eval = float(res[key])
        if self.rt.is_main:
            row = {"step": self.step, "epoch": self.epoch, "final": final, **res}
            with open(self.run_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in res.items():
                    if isinstance(v, (int, float)):
                        self.tb.add_scalar(f"eval/{k}" + ("_final" if final else ""), v, self.step)
            if better:
                with atomic_path(self.run_dir / "best.pt") as tmp:
                    torch.save({"model": self.model.state_dict(), "step": self.step, "epoch": self.epoch,
                                "eval": res, "task": self.cfg.task, "config": config_to_dict(self.cfg)}, tmp)
                log.info("best %s %.4f at step %d: %s", key, self.best_eval, self.step, self.run_dir / "best.pt")
            log.info("eval%s at step %d: %s", " (final)" if final else "", self.step,
                     ", ".join(f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, (int, float))))
        if self.rt.distributed:
            dist.barrier()
        return res

    def fit(self) -> dict[str, Any]:
        """Train until ``total_steps``; checkpoint every N steps and at the end.

        Returns:
            ``{"first_loss", "last_loss", "steps", "run_dir", "skipped_steps", "skipped_samples",
            "skipped_samples_per_epoch"}``: losses from the logged rows of this run; corrupt samples the loaders
            skipped (summed over the ranks, the run's total and ``{epoch: count}``, resumed runs included).

        Raises:
            NonFiniteError: ``optim.max_nonfinite`` consecutive skipped steps.
            umt.train.preempt.Preempted: one of ``checkpoint.signals`` reached a rank; all ranks finished the step
                under way and rank 0 wrote its checkpoint (and the marker) first.
        """
        cfg, rt = self.cfg, self.rt
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (rt.is_main and cfg.log.progress),
                   dynamic_ncols=True, desc="train")
        self.net.train()
        loss_sums = {k: torch.zeros((), device=rt.device) for k in self.task.metrics}
        n_ok = torch.zeros((), device=rt.device)
        wait, samples, flops = 0.0, 0, 0.0
        t_start = time.perf_counter()
        try:
            while self.step < self.total_steps:
                it = self.loader.epoch_iter(self.epoch, self.batch_in_epoch)
                while self.step < self.total_steps:
                    # The micro-batches of one optimizer step, each trained on as it arrives (only one is held).
                    losses: list[dict[str, torch.Tensor]] = []
                    for i in range(self.accum):
                        t0 = time.perf_counter()
                        batch = next(it, None) if self.batch_in_epoch + i < self.batches_per_epoch else None
                        wait += time.perf_counter() - t0
                        if batch is None:
                            break
                        if i == 0:  # drop path draws from torch's global RNG: reseed per (step, rank), exact resume
                            torch.manual_seed(step_seed(cfg.seed, self.step, rt.rank, stream=1))
                        # one mask seed per micro-batch; with no accumulation it is the step's seed
                        seed = step_seed(cfg.seed, self.step * self.accum + i, rt.rank)
                        self.step_fn.keep_first_clip = i == 0 and self._image_step(self.step + 1)
                        losses.append(self.step_fn.train_batch(batch, seed, scale=1.0 / self.accum,
                                                               sync=i == self.accum - 1))
                        samples += self.task.samples(batch)
                        f = self.task.flops(batch)
                        flops = None if f is None or flops is None else flops + f
                    if len(losses) < self.accum:  # the loader ended early: drop a partial group's gradients
                        self.optimizer.zero_grad(set_to_none=True)
                        batch = None
                        break
                    ok = self.step_fn.optimizer_step()
                    for k, loss in TrainStep.mean_losses(losses, loss_sums).items():
                        loss_sums[k] += torch.where(ok, loss, 0.0)
                    n_ok += ok.float()
                    self.step += 1
                    self.batch_in_epoch += self.accum
                    if self.batch_in_epoch >= self.batches_per_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    bar.update(1)
                    if self.step_fn.first_clip is not None:
                        self._log_image()
                    last = self.step >= self.total_steps
                    if self.step % cfg.log.every_steps == 0 or last:
                        if rt.device.type == "cuda":
                            torch.cuda.synchronize(rt.device)
                        row = self._log(loss_sums, n_ok, samples, flops, time.perf_counter() - t_start,
                                        wait)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                        for total in loss_sums.values():
                            total.zero_()
                        n_ok.zero_()
                        wait, samples, flops, t_start = 0.0, 0, 0.0, time.perf_counter()
                    every = cfg.eval.every_epochs
                    if every and self.batch_in_epoch == 0 and self.epoch % every == 0 and not last:
                        self.evaluate()  # before the checkpoint, so that it records best_eval
                    saved = cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0 and not last
                    if saved:
                        self.save()
                    # Preemption: one CPU all-reduce per step; a signal on any rank stops all after this
                    # step. On the last step the final checkpoint below covers it and the run ends normally.
                    if self.preempt is not None and not last and (signum := self.preempt.should_stop()):
                        path = self.save(preempted_by=signum, write=not saved)
                        raise Preempted(self.step, path, signal.Signals(signum).name)
                    if self.batch_in_epoch == 0:
                        break  # epoch done: the next one gets a fresh iterator (leftover batches are dropped)
                if batch is None and self.batch_in_epoch != 0:
                    log.warning("loader ended epoch %d after %d of %d batches", self.epoch, self.batch_in_epoch,
                                self.batches_per_epoch)
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if cfg.eval.every_epochs and self.batch_in_epoch == 0 and self.epoch % cfg.eval.every_epochs == 0:
                self.evaluate()  # the last epoch's periodic evaluation (may update best.pt)
            self.save()
        finally:
            bar.close()
        if cfg.eval.at_end:
            best = self.run_dir / "best.pt"
            if best.is_file():  # the final protocol on the best weights (the last checkpoint keeps the last ones)
                self.model.load_state_dict(torch.load(best, map_location=rt.device, weights_only=False)["model"])
            self.evaluate(final=True)
        rows = self.logged
        return {"first_loss": rows[0]["loss"] if rows else None, "last_loss": rows[-1]["loss"] if rows else None,
                "steps": self.step, "run_dir": str(self.run_dir), "skipped_steps": int(self.step_fn.skipped),
                "skipped_samples": sum(self.skipped_samples.values()),
                "skipped_samples_per_epoch": dict(sorted(self.skipped_samples.items()))}

    def close(self) -> None:
        """Release the loader, TensorBoard writer, signal handlers and process group."""
        if self.preempt is not None:
            self.preempt.close()
        self.loader.close()
        if self.tb is not None:
            self.tb.close()
        if self.rt.distributed and dist.is_initialized():
            self.step_fn = self.net = None  # type: ignore[assignment]  # the DDP wrapper goes first
            close_process_group()
        self._lock.close()
