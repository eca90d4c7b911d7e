#!/usr/bin/env bash
# benchmarks/gpu_check.py on an offline CUDA machine whose Python has PyTorch (a GPU image): installs the wheels
# that benchmarks/gpu_kit.py put in .gpu-kit/wheels, and Graftwork from this tree, into a scratch folder (the
# image's own packages stay as they are), then runs the check with that folder first on the path.
#   bash benchmarks/gpu_check.sh [gpu_check.py's arguments]      (PYTHON=... picks the interpreter; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
kit=.gpu-kit/wheels
if ! compgen -G "$kit/*.whl" > /dev/null; then
  echo "gpu_check.sh: no wheels in $kit: run 'python benchmarks/gpu_kit.py' where pip reaches PyPI, then carry $kit here." >&2
  exit 2
fi
site=$(mktemp -d /tmp/graft-gpu-site.XXXXXX)
"$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$kit"/*.whl
"$python" -m pip install --quiet --no-index --no-deps --no-build-isolation --upgrade --target "$site" .
PYTHONPATH="$site" PYTHONUNBUFFERED=1 exec "$python" benchmarks/gpu_check.py "$@"
