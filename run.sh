#!/usr/bin/env bash
# The one entry point: sets up everything on a fresh machine (first call only), then runs
#   ./run.sh train [flags]   the trainer      (python -m train)
#   ./run.sh test  [args]    the test suite   (pytest)
#   ./run.sh bench [flags]   the bench suite  (python -m bench)
#   ./run.sh lint            ruff: the lint rules and the formatting (what CI checks first)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if has_gpu; then
      echo "setup: installing torch (CUDA build) and triton" >&2
      "$PY" -m pip install -q torch triton
    else
      # The CPU build: a looser requirement would pull a multi-GB CUDA build. Triton is
      # pinned because the tests run the kernels through its CPU interpreter.
      echo "setup: no GPU; installing torch==2.13.0 (CPU build) and triton==3.9.0" >&2
      "$PY" -m pip install -q torch==2.13.0 triton==3.9.0
    fi
  fi
  if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "setup: installing the project and its dependencies" >&2
    # The test extra holds everything: the bench and plot extras' packages, pytest,
    # hypothesis and ruff (see pyproject.toml).
    "$PY" -m pip install -q -e '.[test]'
    touch "$VENV/.installed"
  fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  train) setup; exec "$PY" -m train "$@" ;;
  test)  setup; exec "$PY" -m pytest "$@" ;;
  bench) setup; exec "$PY" -m bench "$@" ;;
  lint)  setup; "$PY" -m ruff check . && exec "$PY" -m ruff format --check . ;;
  *) echo "usage: ./run.sh train|test|bench|lint [args]" >&2; exit 2 ;;
esac
