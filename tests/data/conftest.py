"""Shard sets shared by the data tests, built once per session (the tests only read them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_utils import PATTERN_H, PATTERN_W, pattern_shards as _build_pattern_shards


@pytest.fixture(scope="session")
def pattern_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Landscape 128x96 coordinate-pattern clips (:func:`tests.data_utils.pattern_frame`), 28 frames, all-intra."""
    return _build_pattern_shards(tmp_path_factory.mktemp("pattern"), PATTERN_W, PATTERN_H)


@pytest.fixture(scope="session")
def portrait_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Portrait 64x104 (phone video): crop offsets down the frame exceed the crop width."""
    return _build_pattern_shards(tmp_path_factory.mktemp("portrait"), 64, 104)
