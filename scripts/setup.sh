#!/usr/bin/env bash
# Create .venv in the repository and install clipimo with its test and demo extras.
# PYTHON=python3.11 bash scripts/setup.sh   picks another interpreter (Python >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,demo]"
.venv/bin/python -c "import torch, open_clip, clipimo; print(f'clipimo {clipimo.__version__}: torch {torch.__version__}, open_clip {open_clip.__version__}, CUDA available: {torch.cuda.is_available()}')"
