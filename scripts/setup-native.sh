#!/usr/bin/env bash
# Create .venv with everything the native (no Docker) tier needs: torch CPU, transformers,
# the ONNX toolchain, matplotlib (quantize-search plots), modelport itself (editable) and the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: 2.13.0 is the CPU wheel; any other spec would pull GBs of CUDA packages.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[reference,onnx,coreml,mlx,report,test]"
.venv/bin/python -c "import modelport, torch, onnxruntime; print('modelport', modelport.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
