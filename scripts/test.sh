#!/usr/bin/env bash
# Set up .venv with the CPU stacks and test tools, then lint and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k diff -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "cpu,test,evals"

# Headless Chromium for the report's browser test (Debian's package; the test skips when it is absent).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing chromium (Debian) for the report test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the browser test will skip"
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "== pytest"
export TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q --durations=15 "$@"
