"""Capture overhead of `rig layers`: one position on the tiny model in hf and vllm plus the float64 reference.

Target: under 30 s on a 2-core CI-type machine, vLLM's import and engine start included. Each repeat runs
`rig.localize.layers.localize` in a fresh interpreter (the imports of torch, Transformers and vLLM are paid as a user
pays them) on one position (a prompt of the default suite, teacher-forced), and reports the wall time, the children's
CPU time, where the time went (the vLLM child: start-up and capture; this process: hf load and capture, reference load
and capture with the fresh-input pass), and the bytes kept per position (activations: layers x hidden; logits: one
vocabulary row). The machine may be shared: the load average before and after is printed, and a load above the core
count inflates the figures.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_layers.py [--repeats 1] [--layers 2] [--model DIR]
Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, machine  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from rig.localize.layers import localize, side_from_spec
from rig.localize.targets import Target
from rig.run.spec import RunSpec
from rig.run.suite import load_suite

if __name__ == "__main__":
    model, pos = sys.argv[1], int(sys.argv[2])
    prompt = next(p for p in load_suite("default").prompts if p.id == "reason-mc-physics")
    cont = tuple(prompt.token_ids[-pos:]) if pos else ()
    target = Target(prompt.id, 0, pos, ("requested",), tuple(prompt.token_ids), cont, int(prompt.token_ids[0]), None)
    a = side_from_spec(RunSpec(stack="hf", model=model, dtype="bfloat16"), "hf")
    b = side_from_spec(RunSpec(stack="vllm", model=model, dtype="bfloat16", max_model_len=1024), "vllm")
    doc = localize(a, b, [target])
    ref = next(iter(doc["references"].values()))
    print(json.dumps({
        "wall_s": time.perf_counter() - t0,
        "timings": doc["timings"],
        "hf": {k: doc["a"]["capture"][k] for k in ("load_s", "capture_s")},
        "vllm": {k: doc["b"]["capture"][k] for k in ("engine_start_s", "capture_s", "process_wall_s")},
        "reference": {k: ref[k] for k in ("load_s", "capture_s")},
        "bytes_per_position": {"hf": doc["a"]["bytes_per_position"], "vllm": doc["b"]["bytes_per_position"],
                               "reference": ref["bytes_per_position"]},
        "cause": doc["positions"][0]["cause"],
        "prefix_tokens": doc["positions"][0]["prefix_tokens"],
        "architecture": doc["architecture"],
    }))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2, help="Depth of the tiny model to build (ignored with --model).")
    ap.add_argument("--model", type=Path, default=None, help="An existing checkpoint directory.")
    ap.add_argument("--pos", type=int, default=8, help="The position (its prefix: the prompt plus pos tokens).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as tmp:
        model = args.model
        if model is None:
            from rig.testing.tiny import build_tiny_model

            model = Path(tmp) / "tiny"
            build_tiny_model(model, layers=args.layers, with_tokenizer=False)
        rows = []
        for _ in range(args.repeats):
            load_before = machine()["load_avg"]
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(model), str(args.pos)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-4000:])
                raise SystemExit(f"the benchmark child failed (exit {out.returncode})")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["process_wall_s"] = wall
            res["children_cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            res["load_before"], res["load_after"] = load_before, machine()["load_avg"]
            rows.append(res)
    best = min(rows, key=lambda r: r["process_wall_s"])
    print(f"rig layers, one position ({best['prefix_tokens']}-token prefix), tiny model {best['architecture']}")
    print(f"{'step':48s} {'seconds':>8s}")
    lines = [
        ("whole run, fresh process (wall), target 30 s", best["process_wall_s"]),
        ("  CPU time of the processes (all children)", best["children_cpu_s"]),
        ("  vLLM child: wall (import + engine + capture)", best["vllm"]["process_wall_s"]),
        ("    engine start (LLM(), after the import)", best["vllm"]["engine_start_s"]),
        ("    capture (prefill with hooks + logits)", best["vllm"]["capture_s"]),
        ("  hf: load (HFStack.load)", best["hf"]["load_s"]),
        ("  hf: capture", best["hf"]["capture_s"]),
        ("  float64 reference: load", best["reference"]["load_s"]),
        ("  float64 reference: capture (+ fresh-input pass)", best["reference"]["capture_s"]),
    ]
    for name, value in lines:
        print(f"{name:48s} {value:8.2f}")
    print(f"bytes kept per position: {best['bytes_per_position']} (logits row: {4 * best['architecture']['vocab']})")
    print(f"load average before/after: {best['load_before']} / {best['load_after']} on {os.cpu_count()} cores")
    walls = [round(r["process_wall_s"], 2) for r in rows]
    print(f"machine: {cpu_model()}; every repeat's wall s (fresh process): {walls}")
    print(
        json.dumps(
            {
                "bench": "layers",
                "repeats": args.repeats,
                "best": best,
                "all_wall_s": [r["process_wall_s"] for r in rows],
            }
        )
    )


if __name__ == "__main__":
    main()
