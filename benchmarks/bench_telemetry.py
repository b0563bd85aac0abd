"""What the telemetry sampler costs: CPU time as a share of one core, at 10 Hz and 50 Hz, fixed costs included.

The sampler runs beside the model on the same host, so it must stay cheap (target: at most 1% of one core at
10 Hz, its fixed costs included, over a run as long as a real one: --seconds, default 60). Per row:

- thread: the sampler thread's own CPU time (time.thread_time inside the thread; what a run's manifest records as
  telemetry.sampler.thread_cpu_s) as a share of one core over the recording;
- fixed: what does not grow with the run's length: start() on the caller's thread (host sampler set-up, GPU probe,
  first sample, thread start), the thread's first tick, and stop() (last sample, summary); in ms and as a share;
- total: start() + sampler thread + stop() CPU over the recording, the figure held against the 1% target;
- a cross-check: the process's CPU time from before start() to after stop() while the main thread sleeps, minus
  that of the same sleep without a recorder.

"cold" is measured once, first: importing rig.telemetry.recorder and the first start()/stop() in a fresh process
(psutil, and numpy for the summary). A real run has already imported numpy and importlib.metadata (torch,
transformers), so most of it is not telemetry's there; it is shown apart and not in the rows.

No GPU here: NVML is replaced by ReplayBackend (tests/data/nvml_trace_synthetic.jsonl, 2 devices, looped), so the
GPU rows cover the sampler's own bookkeeping and the replay's Python, not the NVML driver calls (tens of
microseconds each on real hardware; PCIe throughput is read at most once a second because it blocks for 20 ms).

--extra-processes N starts N sleeping processes that are not the recorder's children (reparented to init), as on a
machine with many processes or kernel threads: the host sampler's cost must not grow with them.

Run: .venv/bin/python benchmarks/bench_telemetry.py [--seconds 60] [--extra-processes 1000]
Prints the machine, a table, then one JSON line last.
"""

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, print_machine  # noqa: E402

TRACE = ROOT / "tests" / "data" / "nvml_trace_synthetic.jsonl"
TARGET_PCT = 1.0


def cold_start_ms() -> dict:
    """CPU ms of the first import and the first start()/stop() in this process."""
    c0 = time.process_time()
    from rig.telemetry.recorder import TelemetryRecorder

    c1 = time.process_time()
    rec = TelemetryRecorder(rate_hz=10.0, gpu=False).start()
    c2 = time.process_time()
    rec.stop()
    c3 = time.process_time()
    return {
        "import_ms": round(1e3 * (c1 - c0), 1),
        "first_start_ms": round(1e3 * (c2 - c1), 1),
        "first_stop_ms": round(1e3 * (c3 - c2), 1),
    }


def start_strangers(n: int, seconds: float) -> list[int]:
    """Pids of `n` sleeping processes started through a shell that exits at once, so they are not our children."""
    if n <= 0:
        return []
    script = f"for i in $(seq {n}); do sleep {seconds:.0f} >/dev/null 2>&1 </dev/null & echo $!; done"
    return [int(pid) for pid in subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout.split()]


def idle_cpu_s(seconds: float) -> float:
    """Process CPU seconds used while the main thread sleeps `seconds` (nothing else running)."""
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0


def measure(rate_hz: float, seconds: float, gpu: bool) -> dict:
    from rig.telemetry.nvml import ReplayBackend
    from rig.telemetry.recorder import TelemetryRecorder

    backend = ReplayBackend(TRACE, loop=True) if gpu else None
    rec = TelemetryRecorder(rate_hz=rate_hz, gpu=gpu, backend=backend)
    gc.collect()  # the benchmark's own garbage is not collected on the sampler's clock
    p0, t0 = time.process_time(), time.thread_time()
    rec.start()
    start_s = time.thread_time() - t0
    time.sleep(seconds)  # the main thread idles: the process's CPU time is the recorder's
    t1 = time.thread_time()
    summary = rec.stop()
    stop_s = time.thread_time() - t1
    process_cpu_s = time.process_time() - p0
    s, duration_s = summary["sampler"], summary["duration_s"]
    thread_s, first_s = rec._thread_cpu_s, getattr(rec, "_first_tick_cpu_s", None) or 0.0
    fixed_s = start_s + first_s + stop_s
    ticks = s["samples"] - 2  # the thread's samples: not the one in start() nor the one in stop()
    return {
        "rate_hz": rate_hz,
        "gpus": len(summary["gpu"]["devices"]),
        "seconds": duration_s,
        "samples": s["samples"],
        "achieved_hz": round((s["samples"] - 1) / duration_s, 2),
        "ticks_skipped": s["ticks_skipped"],
        "thread_cpu_s": round(thread_s, 4),
        "thread_pct_of_core": round(100 * thread_s / duration_s, 3),
        "us_per_tick": round(1e6 * (thread_s - first_s) / max(ticks - 1, 1), 1),
        "start_ms": round(1e3 * start_s, 2),
        "first_tick_ms": round(1e3 * first_s, 2),
        "stop_ms": round(1e3 * stop_s, 2),
        "fixed_ms": round(1e3 * fixed_s, 2),
        "fixed_pct_of_core": round(100 * fixed_s / duration_s, 3),
        "total_pct_of_core": round(100 * (start_s + thread_s + stop_s) / duration_s, 3),
        "process_cpu_s": round(process_cpu_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording (a real run's)")
    parser.add_argument("--extra-processes", type=int, default=0, help="sleeping processes to add to the machine")
    args = parser.parse_args()
    strangers = start_strangers(args.extra_processes, 6 * args.seconds + 60)
    try:
        run(args, strangers)
    finally:
        for pid in strangers:  # only the processes started above, by pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # gone (reaped by init) before a next benchmark counts processes
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in strangers):
            time.sleep(0.1)


def run(args: argparse.Namespace, strangers: list[int]) -> None:
    before = machine()
    before["processes"] = sum(1 for name in os.listdir("/proc") if name.isdigit()) if os.path.isdir("/proc") else None
    cold = cold_start_ms()
    from rig.telemetry.recorder import TelemetryRecorder

    TelemetryRecorder(rate_hz=10.0, gpu=False).start().stop()  # warm: later rows see what a real run sees
    time.sleep(1.0)
    baseline_s = idle_cpu_s(args.seconds)
    rows = [measure(rate, args.seconds, gpu) for gpu in (False, True) for rate in (10.0, 50.0)]
    after = machine()
    for r in rows:
        r["process_pct_of_core_over_idle"] = round(
            100 * (r["process_cpu_s"] - baseline_s * r["seconds"] / args.seconds) / r["seconds"], 3
        )
    cols = (
        ("rate_hz", 7),
        ("gpus", 4),
        ("samples", 7),
        ("achieved_hz", 11),
        ("us_per_tick", 11),
        ("thread_pct_of_core", 18),
        ("start_ms", 8),
        ("first_tick_ms", 13),
        ("stop_ms", 7),
        ("fixed_pct_of_core", 17),
        ("total_pct_of_core", 17),
        ("process_pct_of_core_over_idle", 29),
    )
    print_machine(before, after)
    print(f"telemetry sampler cost, {args.seconds:g} s per row; idle process CPU {baseline_s * 1000:.1f} ms")
    added = f"{len(strangers)} sleeping ones added by --extra-processes"
    print(f"processes on the machine: {before['processes']} ({added})")
    print(
        f"cold, once per process (not in the rows): import {cold['import_ms']} ms, first start() "
        f"{cold['first_start_ms']} ms, first stop() {cold['first_stop_ms']} ms"
    )
    print("gpus = replayed synthetic NVML devices (no GPU here; the driver's own cost is not in these numbers)")
    print("  ".join(f"{c:>{w}}" for c, w in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>{w}}" for c, w in cols))
    ok = all(r["total_pct_of_core"] <= TARGET_PCT for r in rows if r["rate_hz"] == 10.0)
    print(f"target total (fixed costs included) <= {TARGET_PCT:g}% of one core at 10 Hz: {'met' if ok else 'MISSED'}")
    print(
        json.dumps(
            {
                "bench": "telemetry",
                "machine": before,
                "load_avg_before": before["load_avg"],
                "load_avg_after": after["load_avg"],
                "nvml": "replay",
                "seconds": args.seconds,
                "extra_processes": len(strangers),
                "cold": cold,
                "idle_cpu_s": round(baseline_s, 4),
                "rows": rows,
                "target_pct": TARGET_PCT,
                "target_met": ok,
            }
        )
    )


if __name__ == "__main__":
    main()
