"""``python -m umt.env``: the versions and capabilities of this machine, the first thing to paste into a bug report.

Prints Python, torch (and the CUDA/cuDNN it was built with), the GPU(s), DALI, Triton, timm, open_clip,
transformers, PyAV and webdataset, and whether the two GPU paths work here: DALI's ``mixed`` video decoder (a
CUDA GPU and nvidia-dali) and the Triton kernels (a CUDA GPU and triton; on CPU the kernels run only in the
interpreter, ``TRITON_INTERPRET=1``, which the tests use). ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import sys
from typing import Any

__all__ = ["collect", "main"]

_PACKAGES = [("torch", "torch"), ("torchvision", "torchvision"), ("nvidia-dali", "nvidia-dali-cuda130"),
             ("triton", "triton"), ("timm", "timm"), ("open_clip", "open_clip_torch"),
             ("transformers", "transformers"), ("av (PyAV)", "av"), ("webdataset", "webdataset"),
             ("umt-trainer", "umt-trainer")]


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Versions and capabilities as a dict (JSON-serialisable)."""
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "packages": {name: _version(dist) for name, dist in _PACKAGES}}
    dali = info["packages"]["nvidia-dali"] or next(
        (_version(d) for d in ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-nightly-cuda130")
         if _version(d)), None)
    info["packages"]["nvidia-dali"] = dali
    cuda = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if cuda else None
    info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                     "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                    for i in range(torch.cuda.device_count())] if cuda else []
    info["dali_mixed_decoder"] = bool(cuda and dali)
    info["dali_mixed_decoder_why"] = ("usable" if cuda and dali else
                                      "no CUDA GPU" if not cuda else "nvidia-dali is not installed")
    triton = info["packages"]["triton"]
    info["triton_kernels"] = bool(cuda and triton)
    info["triton_kernels_why"] = ("usable" if cuda and triton else
                                  "no triton (pip install '.[triton]')" if not triton else
                                  "no CUDA GPU: the interpreter only (TRITON_INTERPRET=1), as the tests run them")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m umt.env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']} on {info['platform']}")
    for name, v in info["packages"].items():
        print(f"  {name:14s} {v or 'not installed'}")
    print(f"torch built with CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}")
    print("GPUs: " + (", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in info["gpus"])
                      or "none"))
    print(f"DALI mixed (GPU) video decoder: {info['dali_mixed_decoder_why']}")
    print(f"Triton kernels on the GPU: {info['triton_kernels_why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
