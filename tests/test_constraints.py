"""constraints.txt (the exact set CI tests) against setup.cfg's ranges: every pin satisfies its range,
and every declared dependency is pinned."""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(x.strip()) for x in lines if x.strip() and not x.strip().startswith("#")]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_pin_satisfies_its_range_and_every_dependency_is_pinned() -> None:
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in setup.cfg but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"
    assert not any(req.specifier == "" or "==" in str(req.specifier) for req in _declared()
                   if canonicalize_name(req.name) in ("torch", "torchvision", "transformers", "timm"))


def test_ci_and_readme_install_with_the_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text().split("```")[1]
    assert 'pip install -c constraints.txt -e ".[all]" && python -m pytest -q' in ci
    assert 'pip install -c constraints.txt -e ".[dali]" && python -m umt.train --recipe demo' in readme
    assert 'pip install -c constraints.txt -e ".[all]" && python -m pytest -q' in readme
