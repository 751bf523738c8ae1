"""UMT stage-1 training: config, recipes, the step, the trainer, checkpoints and export.

``python -m umt.train --recipe NAME [--set section.field=value ...] [--run-dir DIR] [--resume auto|PATH]``.
"""

from umt.config import (CheckpointConfig, ConfigError, LogConfig, MaskConfig, ModelConfig, OptimConfig,
                              TrainConfig, apply_overrides)
from umt.train.recipes import RECIPES, get_recipe

__all__ = ["CheckpointConfig", "ConfigError", "LogConfig", "MaskConfig", "ModelConfig", "OptimConfig", "RECIPES",
           "TrainConfig", "apply_overrides", "get_recipe"]
