"""Config validation gaps: a mask ratio that keeps no token is refused."""

from __future__ import annotations

import pytest

from umt.config import ConfigError, apply_overrides
from umt.train.recipes import get_recipe


@pytest.mark.parametrize("ratio", ["1.0", "1", "1.5", "-0.1"])
def test_mask_ratio_keeping_no_token_is_refused(ratio: str) -> None:
    with pytest.raises(ConfigError, match="mask.ratio"):
        apply_overrides(get_recipe("demo"), [f"mask.ratio={ratio}"])
    assert apply_overrides(get_recipe("demo"), ["mask.ratio=0.9"]).mask.ratio == 0.9
