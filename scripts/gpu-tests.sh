#!/usr/bin/env bash
# Run the tests that need CUDAExecutionProvider, on a GPU machine, in one command:
#   bash scripts/gpu-tests.sh
# It installs the project like the README does (into .venv-gpu) and runs the `gpu` marker plus the
# recipes with device: cuda. A test that skips here means CUDA did not load: the output says why.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q torch==2.13.0 -e ".[test]"
python - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
PY
python -m pytest -m gpu -rs -v tests/test_gpu.py
