#!/usr/bin/env bash
# The one entry point: sets up what is missing (first call only), then runs
#   ./run.sh train [flags]      the trainer      (python -m train)
#   ./run.sh test  [args]       the test suite   (pytest)
#   ./run.sh bench [flags]      the bench suite  (python -m bench)
#   ./run.sh gpu-check [flags]  the GPU check    (python -m bench.gpu_check; --dry-run on a CPU)
#   ./run.sh lint               ruff: the lint rules and the formatting (what CI checks first)
#
# Which Python:
#   * PYTHON=/path/to/python ./run.sh ...  that Python's torch, through a venv that sees its
#     packages (.venv-host); only what is missing is installed, so with everything present it
#     starts with no network (PIP_NO_INDEX=1 makes pip say so instead of waiting).
#   * otherwise the first python3 on PATH whose torch sees a GPU, the same way: a GPU owner's
#     working torch is used as it is, never replaced by a download.
#   * otherwise .venv with the pinned CPU build (torch==2.13.0, triton==3.9.0), or, on a GPU
#     machine where no Python has a working torch, whatever CUDA build pip picks.
set -euo pipefail
cd "$(dirname "$0")"

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
torch_sees_gpu() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

die() { echo "run.sh: $*" >&2; exit 2; }

# missing EXTRA: the requirements (pip syntax, one per line) that this Python lacks or has
# too old, from pyproject.toml's dependencies plus the named extra ("" for none).
missing() {
  "$PY" - "$1" <<'PYCODE'
import importlib.metadata as md
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        sys.exit("run.sh: Python 3.10 needs the tomli package to read pyproject.toml")

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
extra = sys.argv[1]
wanted = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])

def version(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])

for requirement in wanted:
    spec, _, marker = requirement.partition(";")
    if "linux" in marker and not sys.platform.startswith("linux"):
        continue
    name, op, least = re.match(r"([\w.-]+)\s*(>=|==)?\s*([\w.]*)", spec.strip()).groups()
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(spec.strip())
        continue
    if op in (">=", "==") and (version(have) < version(least) or (op == "==" and version(have) != version(least))):
        print(spec.strip())
PYCODE
}

# host_venv BASE: .venv-host, a venv that sees BASE's packages (BASE may itself be a venv:
# its site-packages are added by a .pth file) and this checkout (a .pth file too, so nothing
# is built or downloaded for the project itself).
host_venv() {
  local base=$1
  VENV=${VENV:-.venv-host}
  PY="$VENV/bin/python"
  if [ ! -x "$PY" ] || [ "$(cat "$VENV/.base" 2>/dev/null)" != "$base" ]; then
    rm -rf "$VENV"
    "$base" -m venv --system-site-packages "$VENV" || die "cannot make a venv from $base"
    local site
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # One import line: site.addsitedir also reads the .pth files there (editable installs,
    # nested environments), which a plain path line would not.
    "$base" -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({p!r})' for p in site.getsitepackages() + [site.getusersitepackages()]))" > "$site/_host_python.pth"
    pwd > "$site/_this_checkout.pth"
    echo "$base" > "$VENV/.base"
    echo "setup: using $base (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)) through $VENV" >&2
  fi
}

# install_missing EXTRA: pip installs only what `missing` lists; says what and why it failed.
install_missing() {
  local need
  need=$(missing "$1")
  [ -z "$need" ] && return 0
  # torch and triton come with the owner's Python (the build that matches the driver); a
  # download here would replace them with gigabytes of another build.
  if echo "$need" | grep -qE '^(torch|triton)\b'; then
    die "$BASE_PYTHON has $(echo "$need" | grep -E '^(torch|triton)\b' | tr '\n' ' ')missing or too old (supported: torch>=2.11, triton>=3.6): upgrade them there, or unset PYTHON to use the pinned CPU build"
  fi
  echo "setup: installing what $PY lacks: $(echo $need)" >&2
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $need > "$VENV/pip.log" 2>&1 || die "could not install $(echo $need) into $VENV (no network? pip's words are in $VENV/pip.log): install them into $BASE_PYTHON, or point PYTHON at a Python that has them"
}

pinned_venv() {
  VENV=${VENV:-.venv}
  PY="$VENV/bin/python"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if has_gpu; then
      echo "setup: GPU found but no Python with a working torch; installing torch and triton" >&2
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

# setup EXTRA: choose the Python (see the header) and make sure EXTRA's packages are there.
setup() {
  BASE_PYTHON=""
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not a program; name a python executable"
    "$PYTHON" -c "import torch" >/dev/null 2>&1 || die "PYTHON=$PYTHON cannot import torch; name a Python that has it, or unset PYTHON"
    BASE_PYTHON=$(command -v "$PYTHON")
  elif [ -z "${VENV:-}" ] && [ ! -x .venv/bin/python ] && command -v python3 >/dev/null 2>&1 && torch_sees_gpu python3; then
    BASE_PYTHON=$(command -v python3)
  fi
  if [ -n "$BASE_PYTHON" ]; then
    host_venv "$BASE_PYTHON"
    install_missing "$1"
  else
    pinned_venv
  fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  train) setup ""; exec "$PY" -m train "$@" ;;
  test)  setup test-run; exec "$PY" -m pytest "$@" ;;
  bench) setup bench; exec "$PY" -m bench "$@" ;;
  gpu-check) setup test-run; exec "$PY" -m bench.gpu_check "$@" ;;
  lint)  setup lint; "$PY" -m ruff check . && exec "$PY" -m ruff format --check . ;;
  *) echo "usage: ./run.sh train|test|bench|gpu-check|lint [args]" >&2; exit 2 ;;
esac
