"""UMT trainer: Unmasked Teacher (Li et al., ICCV 2023, arXiv 2303.16058) video foundation models.

Importing :mod:`umt` does no I/O and initialises no CUDA context. It applies one compatibility fix
(:mod:`umt._compat`) so that torchvision, timm and open_clip import on a CPU-only torch.
"""

from umt._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
__all__ = ["__version__"]
