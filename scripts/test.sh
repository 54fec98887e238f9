#!/usr/bin/env bash
# The project's tests (CPU; real Blender through the bpy wheel). GPU tests: add `-m gpu` on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
