#!/usr/bin/env bash
# Create .venv in the repository and install clipimo with its test and demo extras.
# PYTHON=python3.11 bash scripts/setup.sh   picks another interpreter (Python >= 3.10).
#
# Which torch build: with an NVIDIA GPU (nvidia-smi lists one) the default wheels, which bundle CUDA.
# Without one, the CPU build from PyTorch's CPU wheel index (a fraction of the download and disk) when
# that index answers; otherwise the default wheels, which run on CPU too. A machine whose pip is
# configured with its own index, extra index or wheel folder (a mirror) keeps those sources and is
# not probed. TORCH_INDEX_URL=URL forces the index torch and torchvision come from, e.g. a CUDA one:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CPU_INDEX=https://download.pytorch.org/whl/cpu
"${PYTHON:-python3}" -m venv .venv
PY=.venv/bin/python
$PY -m pip install --quiet --upgrade pip

index_answers() {  # one quick request: an unreachable index costs a second, not pip's retries
    $PY - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
except Exception:
    sys.exit(1)
EOF
}

torch_index="${TORCH_INDEX_URL:-}"
if [ -z "$torch_index" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found: installing the default torch wheels (with CUDA)" >&2
    elif grep -qE '(index-url|find-links)=' <<< "$($PY -m pip config list 2>/dev/null || true)"; then
        echo "setup: no GPU found; pip is configured with its own package sources: installing torch from them" >&2
    elif index_answers "$CPU_INDEX"; then
        torch_index=$CPU_INDEX
        echo "setup: no GPU found: installing torch's CPU build" >&2
    else
        echo "setup: no GPU found and PyTorch's CPU wheel index cannot be reached: installing the default" \
             "torch wheels (they run on CPU)" >&2
    fi
fi
if [ -n "$torch_index" ]; then
    # torch and torchvision from one index, so their builds match; the rest from the usual ones.
    $PY -m pip install --quiet torch torchvision --index-url "$torch_index"
fi
$PY -m pip install --quiet -e ".[dev,demo]"
$PY -c "import torch, open_clip, clipimo; print(f'clipimo {clipimo.__version__}: torch {torch.__version__}, open_clip {open_clip.__version__}, CUDA available: {torch.cuda.is_available()}')"
if ! $PY -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
    echo "setup: this torch has no CUDA; for a GPU build rerun with" \
         "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash scripts/setup.sh (pick the CUDA version" \
         "your driver supports: https://pytorch.org/get-started/locally/)" >&2
fi
