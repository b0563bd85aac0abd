"""Benchmark: what telemetry adds to a run's wall time (target: at most 1% at 10 Hz).

Runs the hf stack on the tiny gpt-oss over the default suite through `rig.run.runner.execute`, with telemetry at
10 Hz (A) and off (B) in alternating pairs (benchmarks/_common.py: A B, B A, ...; the median of the per-pair
overheads is the figure), and reports the sampler thread's own CPU time as a share of each A run's wall time (the
direct cost: the sampler is the only work telemetry adds). One stack instance serves every run so that model
loading is not in the comparison.

    .venv/bin/python benchmarks/bench_run_telemetry.py --model models/tiny-gpt-oss [--pairs 5]

Prints the machine, a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_pairs, machine, print_machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--pairs", "--repeats", dest="pairs", type=int, default=5, help="A/B pairs (--repeats: old name)")
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
    shares: list[float] = []
    counter = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:

        def run(hz: float) -> None:
            out = Path(tmp) / f"r{next(counter)}-{hz:g}"
            t = time.perf_counter()
            runner.execute(spec, out, suite=suite, telemetry_hz=hz, stack=stack)
            wall = time.perf_counter() - t
            if hz:
                sampler = RunReader(out).manifest["telemetry"]["sampler"]
                shares.append(100 * sampler["thread_cpu_s"] / wall)

        before = machine()
        run(args.hz)  # warm-up pair, not counted
        run(0.0)
        shares.clear()
        pairs = ab_pairs(lambda: run(args.hz), lambda: run(0.0), args.pairs, warmup=False)
        after = machine()
    summary = pairs.summary()
    result = {
        "bench": "run_telemetry",
        "machine": before,
        "load_avg_before": before["load_avg"],
        "load_avg_after": after["load_avg"],
        "hz": args.hz,
        "wall_off_median_s": summary["b_median_s"],
        "wall_on_median_s": summary["a_median_s"],
        **{k: v for k, v in summary.items() if k.startswith("overhead") or k == "pairs"},
        "sampler_cpu_share_of_wall_pct": round(statistics.median(shares), 3),
        "sampler_cpu_share_of_wall_pct_max": round(max(shares), 3),
    }
    print_machine(before, after)
    print(
        f"hf run of the default suite ({len(suite.prompts)} prompts x {args.max_new_tokens} tokens), "
        f"{args.pairs} alternating pairs (telemetry at {args.hz:g} Hz / off)"
    )
    print(f"bare run (telemetry off): median {summary['b_median_s']:.3f} s per run")
    print(
        f"at {args.hz:g} Hz: median {summary['a_median_s']:.3f} s; overhead, median of pairs "
        f"{summary['overhead_pct_median_of_pairs']:+.2f}% (min {summary['overhead_pct_min']:+.2f}%, "
        f"max {summary['overhead_pct_max']:+.2f}%)"
    )
    print(
        f"sampler thread CPU time / run wall time: median {result['sampler_cpu_share_of_wall_pct']:.3f}%, "
        f"max {result['sampler_cpu_share_of_wall_pct_max']:.3f}%"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
