#!/usr/bin/env bash
# GPU smoke test: the real NVML path of rig.telemetry.recorder, the Transformers stack on CUDA, and the environment manifest.
#
# The CPU test suite can only replay NVML readings; this script checks the real thing on a machine with an NVIDIA
# GPU and records a short NVML trace (in rig.telemetry.recorder's JSONL replay format) that can replace the synthetic one in
# tests/data. It needs no network: the rig runs from this checkout (PYTHONPATH), and oss-harmony is installed from
# wheels/ when it is missing.
#
#   scripts/gpu_smoke.sh                 # writes to $OUT if set, else ./gpu_smoke_out
#   PYTHON=python3.12 OUT=/tmp/smoke scripts/gpu_smoke.sh
#
# Outputs: OUT/nvml_trace.jsonl, OUT/telemetry_nvml.json (a real-NVML recorder summary), OUT/bf16 and OUT/fp32
# (runs with telemetry), OUT/env.json, OUT/kernels.json and .html, OUT/sweep (bf16 against fp32), and
# OUT/bench_noise.txt and OUT/bench_hf.txt (the coupled-noise and capture costs on the GPU). Exits 1 with a one-line message when there is no usable NVIDIA GPU.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_smoke_out}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*"; }
die() { echo "gpu_smoke: $*" >&2; exit 1; }

step "GPU check"
command -v nvidia-smi >/dev/null 2>&1 || die "no nvidia-smi on PATH: this script needs an NVIDIA GPU and driver"
nvidia-smi -L || die "nvidia-smi failed: no usable NVIDIA GPU or driver"
"$PY" - <<'EOF' || die "NVML not usable from Python (see the line above); install nvidia-ml-py"
import sys
from rig.telemetry.nvml import NvmlBackend, TelemetryError
try:
    b = NvmlBackend(); b.init(); print("NVML:", b.system_info(), f"{len(b.devices())} device(s)"); b.shutdown()
except TelemetryError as exc:
    print(f"NVML: {exc}", file=sys.stderr); sys.exit(1)
EOF

step "oss-harmony"
if ! "$PY" -c "import openai_harmony" 2>/dev/null; then
  if compgen -G "wheels/oss_harmony-*.whl" >/dev/null; then
    "$PY" -m pip install --no-index --find-links wheels oss-harmony
  else
    die "oss-harmony is not installed and wheels/ has no oss_harmony wheel (needed to render prompts)"
  fi
fi

step "environment (rig env)"
"$PY" -m rig env
"$PY" -m rig env --json > "$OUT/env.json"

step "real NVML recorder: 3 s at 20 Hz, with phases"
"$PY" - "$OUT/telemetry_nvml.json" "$OUT/telemetry_nvml" <<'EOF'
import json, sys, time
from rig.telemetry.recorder import TelemetryRecorder, load_telemetry
rec = TelemetryRecorder(rate_hz=20.0, gpu=True)
rec.start(); rec.mark("idle"); time.sleep(1.5)
try:
    import torch
    rec.mark("matmul", tokens=100)
    x = torch.randn(8192, 8192, device="cuda")
    t_end = time.time() + 1.5
    while time.time() < t_end:
        x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()
except ImportError:
    time.sleep(1.5)
s = rec.stop()
rec.write(sys.argv[2])
json.dump(s, open(sys.argv[1], "w"), indent=1)
g = s["gpu"]
assert g["status"] == "ok", f"NVML sampling did not start: {g}"
for d in g["devices"]:
    print(d["index"], d["name"], d["uuid"], "energy_j", d["energy_j"], "power_w_max", d["power_w_max"],
          "unsupported", d["unsupported"], "resets", d["energy_counter_resets"])
for ph in s["phases"]:
    print(ph["name"], "duration_s", round(ph["duration_s"], 2), "energy_j", ph["energy_j"], "W", ph["mean_power_w"])
print("sampler:", s["sampler"], "tables:", {k: v.num_rows for k, v in load_telemetry(sys.argv[2]).items()})
EOF

step "record an NVML trace for the replay tests (background, 8 s at 20 Hz)"
"$PY" -m rig.telemetry record-trace "$OUT/nvml_trace.jsonl" --seconds 8 --rate-hz 20 &
TRACE_PID=$!

step "tiny model"
"$PY" -m rig tiny-model "$OUT/tiny"

for dtype in bfloat16 float32; do
  name=$([ "$dtype" = bfloat16 ] && echo bf16 || echo fp32)
  step "Transformers on cuda, $dtype, telemetry at 20 Hz -> $OUT/$name"
  rm -rf "${OUT:?}/$name"
  "$PY" -m rig run --stack hf --model "$OUT/tiny" --suite default --device cuda --dtype "$dtype" \
    --out "$OUT/$name" --telemetry-hz 20
done
wait "$TRACE_PID"

step "replay the recorded trace through the sampler"
"$PY" - "$OUT/nvml_trace.jsonl" <<'EOF'
import json, sys
from rig.telemetry.nvml import ManualClock, ReplayBackend
from rig.telemetry.recorder import TelemetryRecorder
clock = ManualClock()
backend = ReplayBackend(sys.argv[1], clock)
rec = TelemetryRecorder(rate_hz=10.0, backend=backend, clock=clock, env={})
rec.start(); clock.advance(min(backend.duration_s, 8.0)); s = rec.stop()
print(json.dumps({"devices": [{k: d[k] for k in ("index", "samples", "energy_j", "unsupported")}
                              for d in s["gpu"]["devices"]], "energy_j": s["energy_j"]}, indent=1))
EOF

step "telemetry summary of the bf16 run (rig show)"
"$PY" -m rig show "$OUT/bf16"

step "environment differences between the two runs (expected: none)"
"$PY" -m rig env --diff "$OUT/bf16" "$OUT/fp32"

step "kernels on CUDA against float64 (rig kernels; a failing check is a finding, not a smoke failure)"
"$PY" -m rig kernels --device cuda --json "$OUT/kernels.json" || echo "rig kernels: exit $? (see the table above)"
"$PY" -m rig report --kernels "$OUT/kernels.json" -o "$OUT/kernels.html"

step "a small sweep on cuda: Transformers bf16 against fp32, one replicate for the floor (exit 1 = a finding)"
"$PY" -m rig sweep --stack hf --model "$OUT/tiny" --device cuda --grid dtype=float32,bfloat16 --replicates 1 \
  --max-new-tokens 32 --out "$OUT/sweep" || echo "rig sweep: exit $? (see the matrix above)"

step "what the rig costs on the GPU: coupled noise per step (issue 13's 5% target) and the hf capture (issue 14)"
"$PY" benchmarks/bench_noise.py --model "$OUT/tiny" --device cuda --repeats 3 --tokens 32 | tee "$OUT/bench_noise.txt"
"$PY" benchmarks/bench_hf.py --model "$OUT/tiny" --pairs 4 | tee "$OUT/bench_hf.txt"

step "telemetry and envinfo tests"
"$PY" -m pytest -q tests/test_telemetry.py tests/test_envinfo.py

printf '\ngpu_smoke: OK; outputs in %s (copy nvml_trace.jsonl to tests/data/ to replay a real trace)\n' "$OUT"
