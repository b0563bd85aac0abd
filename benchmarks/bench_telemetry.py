"""What the telemetry sampler costs: its thread's CPU time as a share of one core, at 10 Hz and 50 Hz.

The sampler runs beside the model on the same host, so it must stay cheap (target: at most 1% of one core at
10 Hz). This measures the sampler thread's own CPU time (time.thread_time inside the thread) and, as a cross-check,
the process's CPU time while the main thread sleeps, minus that of the same sleep without a sampler.

No GPU here: NVML is replaced by ReplayBackend (tests/data/nvml_trace_synthetic.jsonl, 2 devices, looped), so the
numbers cover the host sampler (psutil) and the sampler's own bookkeeping, not the NVML driver calls (tens of
microseconds each on real hardware; PCIe throughput is read at most once a second because it blocks for 20 ms).

Run: .venv/bin/python benchmarks/bench_telemetry.py [--seconds 5]
Prints a table, then one JSON line last.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig.telemetry.nvml import ReplayBackend  # noqa: E402
from rig.telemetry.recorder import TelemetryRecorder  # noqa: E402

TRACE = Path(__file__).resolve().parents[1] / "tests" / "data" / "nvml_trace_synthetic.jsonl"


def idle_cpu_s(seconds: float) -> float:
    """Process CPU seconds used while the main thread sleeps `seconds` (nothing else running)."""
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0


def measure(rate_hz: float, seconds: float, gpu: bool) -> dict:
    backend = ReplayBackend(TRACE, loop=True) if gpu else None
    rec = TelemetryRecorder(rate_hz=rate_hz, gpu=gpu, backend=backend)
    rec.start()
    c0 = time.process_time()
    time.sleep(seconds)  # the main thread idles: the process's CPU time is the sampler's
    process_cpu_s = time.process_time() - c0
    summary = rec.stop()
    s = summary["sampler"]
    duration_s = summary["duration_s"]
    return {
        "rate_hz": rate_hz,
        "gpus": len(summary["gpu"]["devices"]),
        "seconds": duration_s,
        "samples": s["samples"],
        "achieved_hz": round((s["samples"] - 1) / duration_s, 2),
        "thread_cpu_s": s["thread_cpu_s"],
        "thread_pct_of_core": round(100 * s["thread_cpu_s"] / duration_s, 3),
        "us_per_sample": round(1e6 * s["thread_cpu_s"] / max(s["samples"] - 2, 1), 1),
        "process_cpu_s": round(process_cpu_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured interval")
    args = parser.parse_args()
    TelemetryRecorder(rate_hz=10.0, gpu=False).start().stop()  # warm up: imports, first-call costs
    baseline_s = idle_cpu_s(args.seconds)
    rows = [measure(rate, args.seconds, gpu) for gpu in (False, True) for rate in (10.0, 50.0)]
    for r in rows:
        r["process_pct_of_core_over_idle"] = round(100 * (r["process_cpu_s"] - baseline_s) / r["seconds"], 3)
    cols = (
        "rate_hz",
        "gpus",
        "samples",
        "achieved_hz",
        "us_per_sample",
        "thread_pct_of_core",
        "process_pct_of_core_over_idle",
    )
    print(f"telemetry sampler cost, {args.seconds:g} s per row; idle process CPU {baseline_s * 1000:.1f} ms")
    print("gpus = replayed synthetic NVML devices (no GPU on this machine)")
    print("  ".join(f"{c:>28}" if i == len(cols) - 1 else f"{c:>18}" for i, c in enumerate(cols)))
    for r in rows:
        print("  ".join(f"{r[c]!s:>28}" if i == len(cols) - 1 else f"{r[c]!s:>18}" for i, c in enumerate(cols)))
    ok = all(r["thread_pct_of_core"] <= 1.0 for r in rows if r["rate_hz"] == 10.0)
    print(f"target <= 1% of one core at 10 Hz: {'met' if ok else 'MISSED'}")
    print(
        json.dumps(
            {
                "bench": "telemetry",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "nvml": "replay",
                "seconds": args.seconds,
                "idle_cpu_s": round(baseline_s, 4),
                "rows": rows,
                "target_met": ok,
            }
        )
    )


if __name__ == "__main__":
    main()
