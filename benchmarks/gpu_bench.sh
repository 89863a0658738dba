#!/usr/bin/env bash
# The GPU benchmark in one command (< 8 min on an H100): bf16 autocast check, the SDPA backend that runs, an NCCL
# rendezvous under torchrun, and the seed preset at 65,536 tokens with the largest batch that fits, beside mblm 0.4.0
# at its best on the same GPU; JSON out (benchmarks/gpu_bench.py has the details).
#
#   benchmarks/gpu_bench.sh [--output FILE] [gpu_bench.py options]   # on a CUDA machine
#   benchmarks/gpu_bench.sh --dry-run [--output FILE]                # every step on CPU at toy sizes (the tests)
#   benchmarks/gpu_bench.sh --wheelhouse                             # here, with internet: fill .whl/ (see below)
#
# PYTHON (default python3) is the interpreter with (CUDA) torch; msenc runs from this checkout (PYTHONPATH), so it
# needs only torch and transformers there. mblm 0.4.0 is imported from PYTHON, or from MBLM_PYTHON. A machine without
# internet (the usual GPU box) gets what is missing from the wheelhouse .whl/ in this repository's root (WHEELHOUSE
# sets another; git-ignored; made on a machine with internet by --wheelhouse for WHEEL_PYTHON_VERSION, default 3.12,
# the lent GPU machines' Python): mblm and its pure-python dependencies plus pydantic, installed with --no-deps into
# a private folder searched after the machine's own packages (never over its torch).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
WHEELS="${WHEELHOUSE:-$REPO/.whl}"
# mblm 0.4.0 and what it imports beyond torch/numpy/pyyaml/pillow/tqdm/typing-extensions (which the CUDA images
# carry); they go to the END of sys.path, so a package the machine has already wins
WHEEL_SPECS=(mblm==0.4.0 MEGABYTE-pytorch==0.3.6 mambapy==1.2.0 beartype pydantic pydantic-core annotated-types
             typing-inspection einops)

if [[ "${1:-}" == "--wheelhouse" ]]; then
    version="${WHEEL_PYTHON_VERSION:-3.12}"
    mkdir -p "$WHEELS"
    # one consistent set: resolve the versions with this machine's pip, then fetch each as a wheel for $version
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${WHEEL_SPECS[@]}"
    echo "gpu_bench.sh: wheelhouse $WHEELS for Python $version:"; ls -1 "$WHEELS"; du -sh "$WHEELS"
    exit 0
fi

dry=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry=1; done
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_bench.sh: refused: $PY cannot import torch (set PYTHON to the interpreter that has it)" >&2
    exit 2
fi
if [[ $dry == 0 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_bench.sh: refused: no CUDA device visible to $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)')): this benchmark needs a GPU; --dry-run runs its steps on CPU at toy sizes" >&2
    exit 2
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mblm_py="${MBLM_PYTHON:-$PY}"
if ! "$mblm_py" -c "import os, sys; p = os.environ.get('MSENC_GPU_BENCH_SITE'); p and sys.path.append(p); import mblm" \
        2>/dev/null; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        site="${TMPDIR:-/tmp}/msenc-gpu-bench-site"
        echo "gpu_bench.sh: installing mblm from $WHEELS into $site" >&2
        "$mblm_py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$WHEELS"/*.whl
        export MSENC_GPU_BENCH_SITE="$site"  # gpu_bench.py appends it to sys.path: the machine's packages win
    else
        echo "gpu_bench.sh: mblm is not importable by $mblm_py and there is no wheelhouse $WHEELS: the reference" \
             "step will fail (make one with: benchmarks/gpu_bench.sh --wheelhouse)" >&2
    fi
fi
exec "$PY" "$HERE/gpu_bench.py" --mblm-python "$mblm_py" "$@"
