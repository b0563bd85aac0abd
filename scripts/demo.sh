#!/usr/bin/env bash
# Set up .venv (Transformers and vLLM's CPU build), build the tiny gpt-oss, and compare the two stacks on it.
# Extra arguments go to `rig demo`, e.g. scripts/demo.sh --max-new-tokens 32
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "cpu"
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/rig demo "$@"
