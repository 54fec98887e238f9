#!/usr/bin/env bash
# The version matrix: the add-on's smoke flow and the scene tests (tests marked `versions`) on every Blender in
# scripts/blender_versions.txt, each a bpy wheel in its own virtual environment under
# .cache/blender/<version>/; the .venv's Blender 5.0 runs them with the rest of the suite.
#
#   bash scripts/blender_versions.sh setup   # make the environments (downloads ~300 MB each)
#   bash scripts/blender_versions.sh test    # run the smoke flow on each, print a table
#   bash scripts/blender_versions.sh         # both
#
# bpy 5.1 and newer exist only for Python 3.13. It is looked for as $PYTHON313, python3.13 on
# the PATH and pyenv's ~/.pyenv/versions/3.13*; where none is found and this runs as root with
# apt, Debian's python3.13 package is installed when the release has one (Debian 13 and newer;
# Debian 12 does not). PyPI has no CPython interpreter that pip can install, so where neither
# works the 3.13 rows are skipped with that reason, and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
ACTION=${1:-all}
LIST=scripts/blender_versions.txt
ROOT=.cache/blender
PIP_OPTS=(--disable-pip-version-check -q --no-cache-dir)
mkdir -p "$ROOT"

is_python() {  # is_python EXE MAJOR.MINOR
  "$1" -c "import sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$2'.split('.'))))" 2>/dev/null
}

find_python() {  # find_python MAJOR.MINOR: prints the interpreter, or nothing
  local want=$1 var="PYTHON${1/./}" cand
  for cand in "${!var:-}" "python$want" "$HOME"/.pyenv/versions/"$want"*/bin/"python$want" \
              /usr/local/bin/"python$want" /usr/bin/"python$want"; do
    [ -n "$cand" ] || continue
    cand=$(command -v "$cand" 2>/dev/null) || continue
    if is_python "$cand" "$want"; then echo "$cand"; return 0; fi
  done
  return 0
}

why_no_python() {  # why_no_python MAJOR.MINOR: tries Debian's package, prints the reason it failed
  local want=$1 release
  release=$( (. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}") || echo unknown)
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "no Python $want (not \$PYTHON${want/./}, not python$want on the PATH, not under ~/.pyenv) and no apt as root to install one"
    return
  fi
  apt-get update -qq >/dev/null 2>&1 || true
  if apt-cache policy "python$want" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "installing Debian's python$want" >&2
    if apt-get install -y -qq "python$want" "python$want-venv" >/dev/null 2>&1; then
      return
    fi
    echo "apt-get install python$want failed on $release"
    return
  fi
  echo "no Python $want here (not \$PYTHON${want/./}, python$want, ~/.pyenv) and $release has no python$want package; PyPI has no CPython that pip installs; set PYTHON${want/./}=/path/to/python$want"
}

# rows: version python pins...
mapfile -t ROWS < <(grep -vE '^\s*(#|$)' "$LIST")
declare -A PY SKIP INSTALL_S TEST_S STATUS

setup() {
  local row v want pins py dir start
  for row in "${ROWS[@]}"; do
    read -r v want pins <<<"$row"
    py=$(find_python "$want")
    if [ -z "$py" ]; then
      reason=$(why_no_python "$want")
      py=$(find_python "$want")
      if [ -z "$py" ]; then SKIP[$v]=$reason; echo "SKIPPED Blender $v: $reason" >&2; continue; fi
    fi
    PY[$v]=$py
    dir="$ROOT/$v"
    if [ -f "$dir/.ready" ] && [ "$(cat "$dir/.ready")" = "bpy==$v $pins $py" ]; then
      INSTALL_S[$v]=0; continue
    fi
    start=$(date +%s)
    echo "making $dir: bpy==$v $pins on $("$py" --version) ($py)"
    rm -rf "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip "${PIP_OPTS[@]}" install "bpy==$v" $pins
    "$dir/bin/python" -c "import bpy; print('  ready:', bpy.app.version_string)" 2>/dev/null
    echo "bpy==$v $pins $py" >"$dir/.ready"
    INSTALL_S[$v]=$(( $(date +%s) - start ))
    echo "  made $dir in ${INSTALL_S[$v]} s"
  done
}

run_tests() {
  local row v want pins start failed=0
  for row in "${ROWS[@]}"; do
    read -r v want pins <<<"$row"
    if [ -n "${SKIP[$v]:-}" ]; then STATUS[$v]="skipped: ${SKIP[$v]}"; continue; fi
    if [ ! -f "$ROOT/$v/.ready" ]; then
      STATUS[$v]="not set up (run: bash scripts/blender_versions.sh setup)"; failed=1; continue
    fi
    echo "== smoke flow on Blender $v"
    start=$(date +%s)
    if DREAMWALTZ_TEST_BLENDER="$ROOT/$v/bin/python" .venv/bin/python -m pytest -q -m versions \
        tests/test_blender_versions.py tests/test_build_addon.py tests/test_blender_render_with_scene.py; then
      STATUS[$v]=passed
    else
      STATUS[$v]=FAILED; failed=1
    fi
    TEST_S[$v]=$(( $(date +%s) - start ))
  done
  echo
  printf '%-8s  %-8s  %9s  %7s  %s\n' Blender Python install_s test_s result
  for row in "${ROWS[@]}"; do
    read -r v want pins <<<"$row"
    printf '%-8s  %-8s  %9s  %7s  %s\n' "$v" "$want" "${INSTALL_S[$v]:--}" "${TEST_S[$v]:--}" "${STATUS[$v]:-}"
  done
  return $failed
}

case "$ACTION" in
  setup) setup ;;
  test) setup >/dev/null; run_tests ;;
  all) setup; run_tests ;;
  *) echo "usage: $0 [setup|test|all]" >&2; exit 2 ;;
esac
