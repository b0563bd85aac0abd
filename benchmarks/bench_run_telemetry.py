"""Benchmark: what telemetry adds to a run's wall time (target: at most 1% at 10 Hz).

Runs the hf stack on the tiny gpt-oss over the default suite through `rig.run.runner.execute`, with telemetry off and at
10 Hz, alternating, and reports the median wall times and the sampler thread's own CPU time as a share of the run's
wall time (the direct cost: the sampler is the only work telemetry adds). One stack instance serves every run so that
model loading is not in the comparison.

    .venv/bin/python benchmarks/bench_run_telemetry.py --model models/tiny-gpt-oss [--repeats 3]

Prints a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hz", type=float, default=10.0)
    args = ap.parse_args()

    from rig.run import runner
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.store import RunReader
    from rig.run.suite import load_suite
    from rig.stacks.hf import HFStack
    from rig.testing.tiny import build_tiny_model

    if not Path(args.model, "model.safetensors").exists():
        build_tiny_model(args.model)
    suite = load_suite("default")
    spec = RunSpec(model=args.model, sampling=SamplingSpec(max_new_tokens=args.max_new_tokens))
    stack = HFStack(spec)
    stack.load()
    walls: dict[float, list[float]] = {0.0: [], args.hz: []}
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        runner.execute(spec, Path(tmp) / "warm", suite=suite, telemetry_hz=0, stack=stack)
        for i in range(args.repeats):
            for hz in (0.0, args.hz):
                out = Path(tmp) / f"r{i}-{hz}"
                t = time.perf_counter()
                runner.execute(spec, out, suite=suite, telemetry_hz=hz, stack=stack)
                walls[hz].append(time.perf_counter() - t)
                if hz:
                    sampler = RunReader(out).manifest["telemetry"]["sampler"]
                    shares.append(100 * sampler["thread_cpu_s"] / walls[hz][-1])
    off, on = statistics.median(walls[0.0]), statistics.median(walls[args.hz])
    result = {
        "bench": "run_telemetry",
        "hz": args.hz,
        "wall_off_s": round(off, 3),
        "wall_on_s": round(on, 3),
        "wall_delta_pct": round(100 * (on - off) / off, 2),
        "sampler_cpu_share_of_wall_pct": round(statistics.median(shares), 3),
        "repeats": args.repeats,
    }
    print(
        f"hf run of the default suite ({len(suite.prompts)} prompts x {args.max_new_tokens} tokens), median of "
        f"{args.repeats}"
    )
    print(f"telemetry off: {off:.3f} s   at {args.hz:g} Hz: {on:.3f} s   difference {result['wall_delta_pct']:+.2f}%")
    print(f"sampler thread CPU time / run wall time: {result['sampler_cpu_share_of_wall_pct']:.3f}%")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
