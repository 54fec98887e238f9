#!/usr/bin/env bash
# Set up the project's environment: a Python 3.11 virtual environment at .venv with the pinned
# requirements (torch's CUDA build where an NVIDIA GPU is present, its CPU build otherwise).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "error: Python 3.11 is needed (Blender 5.0's bpy module exists only for 3.11); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

TORCH=$(grep -E '^torch==' requirements.txt | cut -d= -f3)
if ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH'))" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "installing torch $TORCH (CUDA build: an NVIDIA GPU is present)"
    "${PIP[@]}" install "torch==$TORCH"
  elif "${PIP[@]}" install --no-index --no-deps "torch==$TORCH" 2>/dev/null; then
    # the local wheel folder holds torch but not its dependencies: those come from PyPI
    "${PIP[@]}" install "torch==$TORCH"
    echo "installed torch $TORCH (CPU build from the local wheel folder)"
  else
    echo "installing torch $TORCH (CPU build: no NVIDIA GPU)"
    "${PIP[@]}" install "torch==$TORCH" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
fi

echo "installing the pinned requirements"
"${PIP[@]}" install -r requirements.txt
PYRIGHT_VERSION=1.1.407
if command -v npm >/dev/null 2>&1; then
  if [ ! -x .cache/pyright/node_modules/.bin/pyright ]; then
    echo "installing pyright $PYRIGHT_VERSION (type-checks the add-on against fake-bpy-module)"
    mkdir -p .cache/pyright
    npm install --prefix .cache/pyright --no-audit --no-fund --silent "pyright@$PYRIGHT_VERSION"
  fi
else
  echo "note: npm is not installed, so the add-on's type check (pyright) will be skipped" >&2
fi
.venv/bin/python -c "import torch, bpy, smplx, numpy; print(f'ready: torch {torch.__version__}, Blender {bpy.app.version_string}, numpy {numpy.__version__}, CUDA {torch.cuda.is_available()}')"
