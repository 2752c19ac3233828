# Sourced by scripts/demo.sh and scripts/test.sh: a project venv with nanoact installed, and the corpus located.
# Creates .venv on first use; installs PyTorch's CPU build first where no NVIDIA GPU is present (an unpinned
# torch would pull a multi-GB CUDA build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
# stage NAME: say what starts now, and how long the stage before it took (seconds since the script started too)
_T0=$SECONDS _TS=$SECONDS _STAGE=""
stage() {
  local now=$SECONDS
  if [ -n "$_STAGE" ]; then echo "[$((now - _T0))s] $_STAGE: done in $((now - _TS))s" >&2; fi
  _STAGE="$*" _TS=$now
  if [ -n "$_STAGE" ]; then echo "[$((now - _T0))s] $_STAGE ..." >&2; fi
}
if [ ! -x .venv/bin/python ]; then
  stage "creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  stage "installing PyTorch 2.13 (a download of about 200 MB for the CPU build)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch==2.13.0"
  else
    pip install -q "torch==2.13.0" || pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=.venv/.nanoact-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  stage "installing nanoact and its dependencies (MLflow, Optuna, ...)"
  pip install -q -e '.[dev]'
  touch "$stamp"
fi
stage ""  # set-up done (says how long the last set-up stage took, if any ran)
# The corpus: $NANOACT_DATA_DIR if set; else a shared/data folder beside the checkout (our CI); else the user
# cache, where nanoact downloads and checksums it on first use.
if [ -z "${NANOACT_DATA_DIR:-}" ] && [ -f "$ROOT/../shared/data/tinyshakespeare.txt" ]; then
  export NANOACT_DATA_DIR="$ROOT/../shared/data"
fi
