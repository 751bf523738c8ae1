"""pytest plugin (loaded by ``tests/conftest.py``): ``--shuffle-seed N`` runs the collected tests in a random order
drawn from ``N``, to find tests that pass only because of what ran before them (a registry filled by an earlier
test, a module-level cache, a fixture left in some state). The same seed gives the same order, so a failure found
this way is reproduced by running again with the seed the header prints::

    python -m pytest -q --shuffle-seed 11

Module- and session-scoped fixtures still work in a shuffled run; they are set up again whenever the order leaves
and re-enters their module, so a shuffled run is slower than the file order.
"""

from __future__ import annotations

import random

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle-seed", type=int, default=None, metavar="N",
                     help="run the tests in a random order drawn from seed N (finds order-dependent tests)")


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("shuffle_seed")
    return None if seed is None else f"test order: shuffled, --shuffle-seed {seed}"


@pytest.hookimpl(trylast=True)  # after the markers' skips; only the order changes
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.getoption("shuffle_seed")
    if seed is not None:
        random.Random(seed).shuffle(items)
