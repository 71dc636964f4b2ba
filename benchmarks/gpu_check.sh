#!/usr/bin/env bash
# The GPU check in one call (issue 17): bash benchmarks/gpu_check.sh [extra gpu_check.py args]
# Run from anywhere on a machine with an NVIDIA GPU; writes $OUT/gpu_check.json (default
# benchmarks/out/). Downloads nothing: it uses the repo's venv ($PYTHON, else .venv/bin/python,
# else python3), which must hold a CUDA build of torch==2.13.0 (the PyPI Linux wheel is one).
# Exit codes: 0 CUDA agrees with CPU, 1 they disagree, 3 torch cannot use CUDA, 4 no python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY="$(command -v python3 || true)"; fi
fi
[[ -n "$PY" ]] || { echo "gpu_check: no python (set PYTHON or build .venv)" >&2; exit 4; }
export OUT="${OUT:-$PWD/benchmarks/out}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda build", torch.version.cuda, "available", torch.cuda.is_available())'
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
