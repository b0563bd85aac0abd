"""Benchmark: the sweep driver's own overhead per cell (everything but the runs: planning, the cache checks, the diffs
against the reference with the floor, the documents), target under 1 s per cell.

Runs a stub-stack sweep (torch-free: each run takes milliseconds, so the driver's share shows) twice in one
directory: the first pass runs every cell, the second finds them all cached, so its whole wall time is driver work.

    .venv/bin/python benchmarks/bench_sweep.py [--axes 4 4] [--prompts 29] [--tokens 64] [--out /tmp/bench-sweep]

Prints a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--axes", type=int, nargs=2, default=[4, 4], help="values on each of the two grid axes")
    ap.add_argument("--prompts", type=int, default=29)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--replicates", type=int, default=1)
    ap.add_argument("--out", default="/tmp/rig-bench-sweep")
    args = ap.parse_args()

    from rig.cli.sweep import _suite
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.sweep.driver import LocalExecutor, run_sweep
    from rig.sweep.plan import make_plan, parse_grid

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    source = {"name": "default", "prompts": args.prompts}
    suite = _suite(source)
    base = RunSpec(stack="stub", model="stub", sampling=SamplingSpec(max_new_tokens=args.tokens))
    n1, n2 = args.axes
    perturb = ",".join(str(round(0.01 * i, 3)) for i in range(n1))
    grid = parse_grid([f"perturb={perturb}", f"perturb_seed={','.join(str(i) for i in range(n2))}"])
    plan = make_plan(
        base, grid, replicates=args.replicates, extra={"suite": suite.manifest_entry(), "suite_source": source}
    )
    passes = {}
    for name in ("first (runs every cell)", "again (all cached)"):
        t0 = time.perf_counter()
        doc = run_sweep(plan, out, suite, LocalExecutor())
        passes[name] = {"wall_s": round(time.perf_counter() - t0, 3), **doc["timings"]}
    cells = len(plan.cells)
    print(
        f"stub sweep: {cells} cells ({n1} x {n2} grid + {args.replicates} replicate), "
        f"{args.prompts} prompts x {args.tokens} tokens each"
    )
    print(f"{'pass':<24} {'wall s':>8} {'runs s':>8} {'diffs s':>8} {'driver s':>9} {'driver s/cell':>14}")
    for name, t in passes.items():
        print(
            f"{name:<24} {t['wall_s']:>8.2f} {t['runs_s']:>8.2f} {t['diff_s']:>8.2f} {t['driver_s']:>9.2f} "
            f"{t['driver_s_per_cell']:>14.3f}"
        )
    print(json.dumps({"cells": cells, "prompts": args.prompts, "tokens": args.tokens, "passes": passes}))


if __name__ == "__main__":
    main()
