#!/usr/bin/env bash
# Create .venv with clmerge and everything it needs (CPU or GPU machine).
# torch and torchvision are pinned *together*: a torch pin alone lets pip pick a torchvision built for another torch,
# which fails to import, and timm/peft import torchvision (see ../shared/research/environment.md §1).
# On a cluster with its own CUDA torch, install that pair first and run `pip install -e ".[test]"` instead.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install --quiet -e ".[test]"
echo "clmerge installed in $(pwd)/.venv — try: .venv/bin/clmerge list methods"
