"""`python -m rig.telemetry record-trace PATH`: record raw NVML readings for the replay tests."""

import argparse

from rig.telemetry.nvml import TelemetryError, record_trace

parser = argparse.ArgumentParser(prog="python -m rig.telemetry", description=__doc__.split("\n\n")[0])
sub = parser.add_subparsers(dest="cmd", required=True)
rt = sub.add_parser("record-trace", help="record raw NVML readings to a JSONL trace for the replay tests")
rt.add_argument("path")
rt.add_argument("--seconds", type=float, default=5.0)
rt.add_argument("--rate-hz", type=float, default=20.0)
args = parser.parse_args()
try:
    written = record_trace(args.path, seconds=args.seconds, rate_hz=args.rate_hz)
except TelemetryError as exc:
    raise SystemExit(f"record-trace: {exc}") from None
print(f"wrote {written} ({sum(1 for _ in written.open()) - 1} readings)")
