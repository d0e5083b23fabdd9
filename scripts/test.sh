#!/usr/bin/env bash
# One step from a fresh machine to a green test run: makes .venv, installs everything, lints, runs all tests
# (the `slow` ones on the real offline models included). Pass pytest arguments through, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the audit report's test opens the report in a headless Chromium (Debian's package); CI runs this as root
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check lora_v2t tests bench scripts
.venv/bin/ruff format --check lora_v2t tests bench scripts
.venv/bin/mypy lora_v2t  # the settings: pyproject.toml [tool.mypy]
.venv/bin/codespell lora_v2t tests bench scripts recipes docs README.md BENCHMARKS.md  # [tool.codespell]
.venv/bin/python -m pytest -q "$@"
