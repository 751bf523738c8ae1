"""``--shuffle-seed`` (tests/ordering.py): a seeded run holds every test once, in an order that is not the file order
and is the same for the same seed; without the option the file order is kept."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ("pytester",)

_TESTS = "\n".join(f"def test_{i:02d}():\n    pass\n" for i in range(12))


def _run(pytester: pytest.Pytester, *args: str) -> tuple[list[str], str]:
    result = pytester.runpytest_inprocess("-p", "tests.ordering", "-v", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=12)
    out = result.stdout.str()
    return re.findall(r"::(test_\d\d) PASSED", out), out


def test_shuffle_seed_reorders_every_test_once_and_repeats(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_many=_TESTS)
    plain = [f"test_{i:02d}" for i in range(12)]
    assert _run(pytester)[0] == plain
    (a, header), (b, _), (c, _) = (_run(pytester, "--shuffle-seed", s) for s in ("11", "11", "12"))
    assert sorted(a) == plain and a != plain  # 1 in 12! to be the file order by chance; seed 11 is not
    assert a == b and a != c
    assert "test order: shuffled, --shuffle-seed 11" in header
