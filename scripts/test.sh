#!/usr/bin/env bash
# The project's tests (CPU; real Blender through the bpy wheel). GPU tests: add `-m gpu` on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .cache/pyright/node_modules/.bin/pyright ]; then
  echo "type-checking the add-on (pyright, fake-bpy-module-5-0)"
  .cache/pyright/node_modules/.bin/pyright
elif [ -n "${CI:-}" ]; then
  echo "error: pyright is not installed (scripts/setup.sh installs it with npm)" >&2
  exit 1
fi
exec .venv/bin/python -m pytest -q "$@"
