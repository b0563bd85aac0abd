"""Benchmark of a version bisect's costs: building an environment, revisiting it, and one cached step.

    .venv/bin/python benchmarks/bench_bisect.py --tiny models/tiny [--package transformers] \
        [--versions 5.18.0 5.17.0] [--cold-uv-cache] [--keep DIR]

Targets (the issue): a cached version step (its environment exists, tiny model) in under 15 s plus the run itself;
a new environment for one changed pure-Python package in under 30 s. Rows:

- base: reading the project's environment (interpreter facts and `uv pip freeze`), once per bisect and per step;
- new env PKG==V: `Envs.overlay` into an empty environment cache (uv resolves against the base, creates the venv and
  installs only what changed); uv's own cache as it is (warm after one download), or empty with --cold-uv-cache;
- revisit: the same call again (the environment exists);
- cached step: `Stepper.test` for a version whose environment exists, split into the run as recorded in the child
  (its manifest's total_s: stack load and generation), the rest of the child (interpreter start, imports, writing the
  run) and the rest of the step (environment lookup, verdict against the reference with its floor);
- bare run: `python -m rig run` of the same spec in the project's environment, the run "itself" for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", required=True, type=Path, help="The tiny model (rig tiny-model DIR).")
    ap.add_argument("--package", default="transformers")
    ap.add_argument("--versions", nargs="+", default=["5.18.0", "5.17.0"], help="Versions to build (the first is "
                    "also the cached step's candidate).")  # fmt: skip
    ap.add_argument("--cold-uv-cache", action="store_true", help="Build with an empty uv cache (downloads).")
    ap.add_argument("--envs-only", action="store_true", help="Only the environment rows (no runs).")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the work directory here.")
    args = ap.parse_args()

    from rig.analysis.summary import Thresholds
    from rig.bisect.envs import Base, Envs, Sources
    from rig.bisect.ordered import Candidate, Stepper
    from rig.bisect.runs import record, write_suite_file
    from rig.bisect.state import BisectDir
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-bisect-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.cold_uv_cache:
        os.environ["UV_CACHE_DIR"] = str(work / "uv-cache")
    rows: list[tuple[str, float, str]] = []

    t0 = time.perf_counter()
    base = Base.of(sys.executable)
    rows.append(("base (interpreter facts + uv pip freeze)", time.perf_counter() - t0, f"{len(base.freeze)} pins"))
    sources = Sources.configured(sys.executable)
    envs = Envs(base, sources, cache_dir=work / "envs")
    built = {}
    for v in args.versions:
        t0 = time.perf_counter()
        env = envs.overlay(f"{args.package}-{v}", [f"{args.package}=={v}"], work / "logs" / f"{v}.log")
        rows.append((f"new env {args.package}=={v}", time.perf_counter() - t0, env.describe_changes()))
        built[v] = env
    t0 = time.perf_counter()
    envs.overlay(f"{args.package}-{args.versions[0]}", [f"{args.package}=={args.versions[0]}"], work / "logs" / "x.log")
    rows.append((f"revisit {args.package}=={args.versions[0]}", time.perf_counter() - t0, "cached"))

    if args.envs_only:
        _print(rows, args)
        return
    # one cached step: reference and floor recorded in the base environment, the candidate in the cached env
    spec = RunSpec(stack="hf", model=str(args.tiny), dtype="float32", sampling=SamplingSpec(max_new_tokens=32))
    d = BisectDir(work / "bisect", "bench", {})
    with d.open():
        suite_file = write_suite_file(d.path / "suite.json", load_suite("default"))
        for role in ("reference", "floor"):
            out = record(sys.executable, spec.to_dict(), d.run_dir(role), suite_file, d.log_path(role))
            assert out.ok, out.reason
            d.set(role, out.path)
        stepper = Stepper(d, spec.to_dict(), suite_file, Thresholds(), probe=(args.package,))
        v = args.versions[0]
        cand = Candidate(f"cand-{v}", f"{args.package} {v}",
                         lambda: envs.overlay(f"{args.package}-{v}", [f"{args.package}=={v}"], d.log_path("c")),
                         expect={args.package: v})  # fmt: skip
        t0 = time.perf_counter()
        verdict = stepper.test(cand)
        step_s = time.perf_counter() - t0
        step = d.step(cand.key)
        manifest = json.loads((Path(step["run"]) / "manifest.json").read_text())
        run_s = manifest["timings"]["total_s"]
        rows.append((f"cached step {args.package} {v}", step_s, verdict.line[:60]))
        rows.append(("  of which the run (stack load + generation)", run_s, ""))
        rows.append(("  of which the child's start, imports, writing", step["seconds"] - run_s, ""))
        rows.append(("  of which the rest (env lookup, verdict)", step_s - step["seconds"], ""))
        overhead = step_s - run_s
        rows.append(("  step minus the run itself", overhead, "target < 15 s"))

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rig", "run", "--stack", "hf", "--model", str(args.tiny), "--dtype",
                    "float32", "--max-new-tokens", "32", "--out", str(work / "bare"), "-q", "--telemetry-hz", "0"],
                   check=True, capture_output=True)  # fmt: skip
    bare = time.perf_counter() - t0
    rows.append(("bare `rig run` of the same spec (base env)", bare, ""))
    rows.append(("cached step minus the bare run", step_s - bare, ""))

    _print(rows, args)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def _print(rows: list[tuple[str, float, str]], args: argparse.Namespace) -> None:
    cache = "empty (downloads)" if args.cold_uv_cache else "as is"
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores, shared); uv cache {cache}")
    print("| step | seconds | note |")
    print("|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
