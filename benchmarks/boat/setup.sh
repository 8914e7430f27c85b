#!/usr/bin/env bash
# Creates benchmarks/boat/.venv with boat-torch for compare.py. boat-torch is NOT a dependency of bilevel.
# torch is pinned (the CPU build); boat-torch and higher go in with --no-deps because boat-torch's metadata asks
# for torchvision (which pulls a different torch, with CUDA) and never imports it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
pip="$here/.venv/bin/pip"
"$pip" install torch==2.13.0
"$pip" install --no-deps boat-torch==1.1.1 higher==0.2.1
"$pip" install "numpy<=1.26.4" matplotlib setuptools
"$here/.venv/bin/python" -c "import torch, boat_torch, higher; print('torch', torch.__version__, '- boat-torch ok')"
