#!/usr/bin/env bash
# The one-shot GPU check (see benchmarks/gpu_check.py): build for this GPU, CUDA/Triton tests, compute-sanitizer,
# op and network benchmarks, a summary; results under benchmarks/results/<device>/ unless --out is given.
#   benchmarks/gpu_check.sh                      on a GPU machine, from the repository root
#   benchmarks/gpu_check.sh --dry-run            the same stages on the CPU at smoke-test sizes
# PYTHON selects the interpreter (default: .venv/bin/python where it exists, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
