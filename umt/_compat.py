"""Import-time compatibility fixes, applied once, in one place.

torchvision on PyPI is a CUDA build. With a CPU-only torch its compiled library ``torchvision._C`` fails to
load, and ``import torchvision`` then dies in ``torchvision/_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist`` (upstream pytorch/vision#9085). timm and open_clip
import torchvision, so they die too.

:func:`ensure_torchvision_importable` defines the two operator *schemas* that torchvision's meta registrations
need (``torchvision::nms`` and ``torchvision::qnms``) with :mod:`torch.library`, but only when ``_C`` cannot be
loaded. The ops then exist without kernels: calling ``torchvision.ops.nms`` on CPU raises ``NotImplementedError``,
which is fine because nothing in this project uses torchvision's C++ ops. With a working torchvision (a CUDA torch,
or a matching CPU build) the function does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

__all__ = ["ensure_torchvision_importable", "torchvision_shim_active"]

_SHIM_ACTIVE = False
# Kept alive for the life of the process: dropping the Library object would unregister the schemas.
_LIB: "torch.library.Library | None" = None

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _torchvision_c_loads() -> bool:
    """Whether torchvision's compiled extension loads against the installed torch (no torchvision import)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision is absent: nothing to fix.
    pkg_dir = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(pkg_dir, candidates[0]))
    except (OSError, RuntimeError):
        return False
    return True


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` (and so timm and open_clip) work on a CPU-only torch.

    Must run before torchvision is first imported; it is called from ``umt/__init__.py``.

    Returns:
        True when the schema shim was installed (``torchvision._C`` does not load), False when nothing was
        needed.
    """
    global _SHIM_ACTIVE, _LIB
    if _SHIM_ACTIVE:
        return True
    if "torchvision" in sys.modules or _torchvision_c_loads():
        return False
    if _op_exists("nms"):
        return False
    _LIB = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - the namespace torchvision itself uses
    for schema in _SCHEMAS:
        _LIB.define(schema)
    _SHIM_ACTIVE = True
    return True


def torchvision_shim_active() -> bool:
    """Whether :func:`ensure_torchvision_importable` had to install the schema shim in this process."""
    return _SHIM_ACTIVE
