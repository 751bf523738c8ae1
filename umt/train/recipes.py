"""Named runs: functions returning a :class:`~umt.config.TrainConfig`, collected from every stage's package
(``umt.train.distill.recipes``, ``umt.train.video_text.recipes`` and ``.retrieval_ft``, ``umt.train.finetune.recipes``,
``umt.train.video_qa.recipes``), and the demo hooks
of the recipes that have them (:class:`umt.train.demo.Demo`).

``python -m umt.train --recipe NAME`` looks names up in :data:`RECIPES`; a recipe names its task (``TrainConfig.task``).
"""

from __future__ import annotations

from collections.abc import Callable

from umt.config import TrainConfig
from umt.train.demo import Demo
from umt.train.distill.demo import DEMOS as DISTILL_DEMOS
from umt.train.distill.recipes import DISTILL_RECIPES
from umt.train.finetune.demo import DEMOS as FT_DEMOS
from umt.train.finetune.recipes import FT_RECIPES
from umt.train.video_qa.demo import DEMOS as QA_DEMOS
from umt.train.video_qa.recipes import QA_RECIPES
from umt.train.video_text.demo import DEMOS as VIDEO_TEXT_DEMOS
from umt.train.video_text.recipes import VIDEO_TEXT_RECIPES
from umt.train.video_text.retrieval_ft import RETRIEVAL_FT_RECIPES

__all__ = ["RECIPES", "DEMOS", "get_recipe"]

#: recipe name → function: stage 1, stage 2, fine-tuning, fine-tuned retrieval, video QA
RECIPES: dict[str, Callable[[], TrainConfig]] = {**DISTILL_RECIPES, **VIDEO_TEXT_RECIPES, **FT_RECIPES,
                                                 **RETRIEVAL_FT_RECIPES, **QA_RECIPES}

#: recipe name → its demo hooks (only used when the recipe trains on shards, not ``synthetic_data``)
DEMOS: dict[str, Demo] = {**DISTILL_DEMOS, **FT_DEMOS, **VIDEO_TEXT_DEMOS, **QA_DEMOS}


def get_recipe(name: str) -> TrainConfig:
    """The config of recipe ``name``.

    Raises:
        KeyError: unknown name (the message lists the recipes).
    """
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name]()
