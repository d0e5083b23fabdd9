#!/usr/bin/env bash
# The main job on a fresh machine with no internet: install (into .venv), then `lora-v2t demo`, which
# prepares the offline Gemma-3-270M + multilingual USE, trains an adapter for ~9 minutes on a shipped Russian
# sample, prints reconstructions as it learns, saves the adapter and shows how to load it. Under 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/lora-v2t demo "$@"
