#!/usr/bin/env bash
# Creates the reference venv for benchmarks/train_bench.py: mblm 0.4.0 (the version IBM
# multiscale-beep-modeling pins) on CPU torch 2.13.0. torch is installed FIRST: mblm's own requirement on
# torch would otherwise pull the multi-GB CUDA build. Does nothing when the venv already holds both.
#
#   benchmarks/setup_mblm_venv.sh [VENV_DIR]      (default /tmp/mblm040-venv; PYTHON=python3.x to choose)
set -euo pipefail
VENV="${1:-/tmp/mblm040-venv}"
PY="${PYTHON:-python3}"

installed() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("mblm") == "0.4.0" and m.version("torch").startswith("2.13.0") else 1)
PYEOF
}

if installed; then
    echo "mblm 0.4.0 and torch 2.13.0 already installed in $VENV"
    exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet mblm==0.4.0
"$VENV/bin/python" -c "import mblm, torch; print('mblm', mblm.__version__, 'torch', torch.__version__)"
installed || { echo "setup_mblm_venv.sh: $VENV does not hold mblm 0.4.0 + torch 2.13.0 after install" >&2; exit 1; }
