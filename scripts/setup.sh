#!/usr/bin/env bash
# Make .venv and install lora_v2t with the offline models, the dev tools and the audit's stores. Idempotent and
# quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first, pinned: on these machines 2.13.0 is a CPU build on local disk; unpinned pulls a multi-GB CUDA build
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[offline,dev,audit]"
