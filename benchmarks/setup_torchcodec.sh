#!/usr/bin/env bash
# Separate environment for the TorchCodec peer of `python -m benchmarks.bench_data --peers`.
#
# Why: TorchCodec 0.17's PyPI wheel links the CUDA build of torch (libtorch_cuda, libc10_cuda, libcudart.so.13,
# libnvrtc.so.13) and loads the system's FFmpeg shared libraries (major versions 4 to 9). The project's environment
# has the CPU build of torch, so `import torchcodec` fails there. This script builds benchmarks/.venv-torchcodec
# (git-ignored) with the CUDA build of the project's torch version (2.13.0), torchcodec 0.17.0, numpy and pillow;
# bench_data runs the TorchCodec measurement child with that interpreter (--torchcodec-python) and the project's
# source tree on PYTHONPATH. The child decodes on CPU; no GPU is needed.
#
# What it does (idempotent: a second run checks and exits early):
#   1. apt-get install ffmpeg (Debian/Ubuntu; needs root; skipped when libavcodec is already installed)
#   2. python -m venv benchmarks/.venv-torchcodec
#   3. pip install torch===2.13.0 (the PyPI build: CUDA 13, several GB with its nvidia-* wheels; `===` so that
#      a local CPU wheel "2.13.0+cpu" on a find-links path does not satisfy it), torchcodec==0.17.0, numpy, pillow
#   4. checks that the venv imports torchcodec and decodes a frame on CPU
#
# Usage, from the repository root:   bash benchmarks/setup_torchcodec.sh
# Environment: PYTHON (interpreter for the venv, default python3; must match the wheels' CPython, 3.10-3.14),
#              VENV (default benchmarks/.venv-torchcodec).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/benchmarks/.venv-torchcodec}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch===2.13.0"
TORCHCODEC_SPEC="torchcodec==0.17.0"

check() {
    "$VENV/bin/python" - <<'EOF'
import torch, torchcodec
from torchcodec.decoders import VideoDecoder  # loads the FFmpeg-linked core library
assert torch.version.cuda, f"torch {torch.__version__} is a CPU build: torchcodec's wheel needs the CUDA build"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchcodec {torchcodec.__version__}: OK")
EOF
}

# 1. system FFmpeg (shared libraries)
if ! ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.'; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update
        $SUDO apt-get install -y ffmpeg
    else
        echo "install FFmpeg's shared libraries (major version 4 to 9) with your package manager, then rerun" >&2
        exit 1
    fi
fi

# 2.-3. the venv
if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install "$TORCH_SPEC" "$TORCHCODEC_SPEC" numpy pillow

# 4.
check
