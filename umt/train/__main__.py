"""``python -m umt.train`` / ``umt-train``: parse, build the trainer, run, tear down (works under torchrun)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

import umt  # noqa: F401 - torchvision shim before timm/open_clip
from umt.config import ConfigError, apply_overrides
from umt.train.checkpoint import run_dir_in_use
from umt.train.demo import DemoError
from umt.train.recipes import DEMOS, RECIPES, get_recipe
from umt.train.task import check_config

log = logging.getLogger("umt.train")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umt-train", description="UMT training, one trainer for every task: stage-1 distillation from a "
                                "CLIP teacher (umt_*_k710, demo), stage-2 video-text pre-training (umt_*_5m/17m/25m), "
                                "and the other tasks a recipe names.")
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="named config (umt.train.recipes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field (repeatable), e.g. --set optim.lr=1e-4 --set data.shards=DIR")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default: runs/<recipe>, or the first free runs/<recipe>-N when that one "
                        "already holds checkpoints; with --resume auto, the newest of them)")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest checkpoint in the run dir) or a checkpoint path; implied 'auto' when torchrun "
                        "restarts the workers (TORCHELASTIC_RESTART_COUNT > 0)")
    p.add_argument("--export", default=None, metavar="OUT.safetensors",
                   help="after training, export the student backbone to this safetensors file (refused before "
                        "training starts when it exists, unless --export-overwrite)")
    p.add_argument("--export-overwrite", action="store_true", help="let --export replace an existing file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def default_run_dir(recipe: str, resume: str | None, root: Path = Path("runs")) -> Path:
    """``runs/<recipe>`` for a first run; a fresh run never reuses a directory that holds a run (checkpoints,
    metrics or config: it takes the first free ``runs/<recipe>-N``), and ``--resume auto`` continues the newest run
    with checkpoints."""
    candidates = [root / recipe] + sorted(root.glob(f"{recipe}-[0-9]*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    with_ckpt = [p for p in candidates if any((p / "checkpoints").glob("*.pt"))]
    if resume:
        return with_ckpt[-1] if with_ckpt else root / recipe
    n = 0
    while run_dir_in_use((root / recipe) if n == 0 else root / f"{recipe}-{n}"):
        n += 1
    return root / recipe if n == 0 else root / f"{recipe}-{n}"


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the process exit code: 0 done, 2 for a bad config, a used run directory or an unreadable
    ``--resume`` checkpoint, :data:`umt.train.preempt.EXIT_PREEMPTED` (75) after a preemption checkpoint.

    Under ``torchrun --max-restarts=N`` a restarted worker (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes as with
    ``--resume auto`` (pass ``--run-dir``); one restarted after its group was preempted exits 0 at once (the
    marker ``preempted.json`` stays: :func:`umt.train.preempt.preempted_before_restart`)."""
    from umt.train.preempt import EXIT_PREEMPTED, Preempted, preempted_before_restart, restart_count

    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s")
    if restart_count() > 0 and not args.resume:
        log.info("torchrun restart %d: resuming from the newest checkpoint (--resume auto)", restart_count())
        args.resume = "auto"
    try:
        cfg = apply_overrides(get_recipe(args.recipe), args.overrides)
        check_config(cfg)  # the task's own checks too, before anything is built or printed
    except ConfigError as e:
        print(f"umt-train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import json

        from umt.config import config_to_dict

        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    demo = None if cfg.synthetic_data else DEMOS.get(args.recipe)
    if demo is not None and demo.single_process and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        print(f"umt-train: the {args.recipe} recipe runs in one process (it may train the stage-1 demo first)",
              file=sys.stderr)
        return 2
    if demo is not None and rank == 0:  # sample shards (default places only); init_from = the stage-1 demo's
        try:
            cfg = demo.prepare(cfg, lambda d, recipe="demo": main(["--recipe", recipe, "--run-dir", str(d)]))
        except DemoError as e:
            print(f"umt-train: {e}", file=sys.stderr)
            return 2
    from umt.train.trainer import Trainer

    if not args.run_dir and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # Each rank would pick its own first free runs/<recipe>-N, racing rank 0's mkdir: two directories, one run.
        print("umt-train: with several processes (torchrun), pass --run-dir DIR: the ranks cannot agree on a default "
              "run directory", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.recipe, args.resume)
    if preempted_before_restart(run_dir):  # exit 0: torchrun stops restarting; the marker tells the launcher
        print(f"umt-train: this launch was preempted ({run_dir}/preempted.json); not training on after a torchrun "
              "restart", file=sys.stderr)
        return 0
    if not args.resume and run_dir_in_use(run_dir):
        print(f"umt-train: {run_dir} already holds a run (checkpoints, metrics or config); pass --resume auto to "
              "continue that run, or choose another --run-dir", file=sys.stderr)
        return 2
    if args.export and Path(args.export).exists() and not args.export_overwrite:
        print(f"umt-train: --export {args.export} already exists; choose another path or pass --export-overwrite",
              file=sys.stderr)
        return 2
    from umt.fileio import LockedError
    from umt.train.checkpoint import CheckpointError

    try:
        trainer = Trainer(cfg, run_dir, resume=args.resume, recipe=args.recipe)
    except CheckpointError as e:
        print(f"umt-train: cannot resume: {e}", file=sys.stderr)
        return 2
    except LockedError as e:
        print(f"umt-train: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable run directory, missing shards, ...: one line, not a traceback
        print(f"umt-train: error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"umt-train: config error: {e}", file=sys.stderr)
        return 2
    try:
        before = demo.before(trainer) if demo is not None and trainer.rt.is_main else None
        try:
            summary = trainer.fit()
        except Preempted as e:
            if rank == 0:
                print(f"umt-train: {e}; continue with --resume auto (exit {EXIT_PREEMPTED})", file=sys.stderr)
            return EXIT_PREEMPTED
        except OSError as e:  # a full disk while checkpointing, ...: what was written before is whole
            if e.errno != errno.ENOSPC:
                raise
            print(f"umt-train: error: {e.strerror}; earlier checkpoints are intact: continue with --resume auto",
                  file=sys.stderr)
            return 1
        if args.export and trainer.rt.is_main:
            from umt.train.export import export_student

            meta = {**trainer.task.export_metadata(), "step": str(trainer.step)}
            try:
                export_student(trainer.task.backbone(), args.export, meta, overwrite=args.export_overwrite)
            except OSError as e:
                print(f"umt-train: error: cannot export: {e.strerror or e}", file=sys.stderr)
                return 1
            summary["export"] = args.export
    finally:
        trainer.close()
    if rank == 0:
        if summary["first_loss"] is None:  # resumed from the final checkpoint: nothing was left to train
            print(f"the run was already complete at step {summary['steps']}; nothing to train; run dir: "
                  f"{summary['run_dir']}")
        else:
            print(f"first logged loss {summary['first_loss']:.4f}, last logged loss {summary['last_loss']:.4f} "
                  f"after {summary['steps']} steps ({summary['skipped_steps']} skipped); run dir: "
                  f"{summary['run_dir']}")
        if summary.get("skipped_samples"):
            per = ", ".join(f"epoch {e}: {n}" for e, n in summary["skipped_samples_per_epoch"].items())
            print(f"{summary['skipped_samples']} corrupt samples skipped ({per}); the log names each")
        if summary.get("export"):
            print(f"student backbone exported to {summary['export']}")
        for line in demo.report(cfg, before, summary["run_dir"]) if demo is not None else []:
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
