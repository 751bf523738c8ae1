"""UMT training, one trainer for every stage: stage-1 distillation (:mod:`umt.train.distill`), stage-2 video-text
pre-training (:mod:`umt.train.video_text`) and fine-tuning (:mod:`umt.train.finetune`), each a task of the shared
loop (:mod:`umt.train.trainer`, :mod:`umt.train.task`) with its step, recipes and demo; beside them the runtime,
checkpoints, preemption, export and the preview.

``python -m umt.train --recipe NAME [--set section.field=value ...] [--run-dir DIR] [--resume auto|PATH]``.
"""

from umt.config import (CheckpointConfig, ConfigError, LogConfig, MaskConfig, ModelConfig, OptimConfig,
                              TrainConfig, apply_overrides)
from umt.train.recipes import RECIPES, get_recipe

__all__ = ["CheckpointConfig", "ConfigError", "LogConfig", "MaskConfig", "ModelConfig", "OptimConfig", "RECIPES",
           "TrainConfig", "apply_overrides", "get_recipe"]
