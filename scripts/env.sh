# Sourced by scripts/demo.sh and scripts/test.sh: a project venv with nanoact installed, and the corpus located.
# Creates .venv on first use; installs PyTorch's CPU build first where no NVIDIA GPU is present (an unpinned
# torch would pull a multi-GB CUDA build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch==2.13.0"
  else
    pip install -q "torch==2.13.0" || pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=.venv/.nanoact-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -q -e '.[dev]'
  touch "$stamp"
fi
# The corpus: $NANOACT_DATA_DIR if set; else a shared/data folder beside the checkout (our CI); else the user
# cache, where nanoact downloads and checksums it on first use.
if [ -z "${NANOACT_DATA_DIR:-}" ] && [ -f "$ROOT/../shared/data/tinyshakespeare.txt" ]; then
  export NANOACT_DATA_DIR="$ROOT/../shared/data"
fi
