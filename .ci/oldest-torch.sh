#!/usr/bin/env bash
# pyproject.toml declares a torch range; development uses the torch pinned in requirements-dev.txt. This check
# builds the CPU extension against an older torch — 2.13.0, the oldest release that installs here in seconds (a
# local CPU wheel) — in a second virtual environment, installed with pip beside that torch (which must stay), and
# runs the op tests there. MTL_OPS_OLDEST_TORCH=<version> tests another release.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version="${MTL_OPS_OLDEST_TORCH:-2.13.0}"
venv="$PWD/.venv-oldest-torch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== oldest torch: torch $torch_version in $venv"
python3 -m venv "$venv"
# triton (its CPU interpreter runs the Triton kernels) and the test tools at the versions pinned for development
mapfile -t tools < <(grep -E '^(triton|numpy|pytest|ninja|setuptools|wheel)([=<>! ]|$)' requirements-dev.txt)
"$venv/bin/pip" install -q "torch==$torch_version" "${tools[@]}"

# Build from a copy of the sources: the main build's object files under build/ have the same paths and would be
# reused by ninja although they were compiled against another torch.
mkdir "$work/src" "$work/run"
tar -cf - --exclude='*.so' --exclude=__pycache__ --exclude=_build_info.json \
  setup.py pyproject.toml README.md mtl_ops csrc | tar -xf - -C "$work/src"
MTL_OPS_NO_CUDA=1 MAX_JOBS=2 "$venv/bin/pip" install -q --no-build-isolation "$work/src"

# The checks and tests run outside both source trees, so that they import the installed package.
cp -r tests pyproject.toml "$work/run/"
cd "$work/run"
"$venv/bin/python" - "$torch_version" <<'PY'
import sys

import torch

import mtl_ops
from mtl_ops import backends

assert torch.__version__.split("+")[0] == sys.argv[1], f"pip replaced torch {sys.argv[1]} by {torch.__version__}"
assert backends.LIBRARIES["cpp"].loaded, backends.LIBRARIES["cpp"].reason
print(f"mtl_ops {mtl_ops.__version__} from {mtl_ops.__file__}, compiled against torch {torch.__version__}")
PY

"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_gated_residual.py tests/test_ctal_affinity.py \
  tests/test_ms_attention_mix.py tests/test_sfa_apply.py tests/test_routed_primitive_gather.py tests/test_cka.py \
  tests/test_backends.py tests/test_gpu_paths.py
