"""Benchmark: `rig run --stack vllm` (the library path, `rig.run.runner.execute`) against bare `LLM.generate`.

What it answers: how much wall time the rig adds around vLLM (target: at most 5%). To be fair, both paths use the same
engine in the same worker process (started once; its start is excluded), the same batches of `--batch-size` prompts
and the same SamplingParams (built by the same code). The bare path times `LLM.generate` inside the worker and leaves
its outputs unconverted; the rig path is the whole `execute()` timed in the parent: the pipe round trip, the NumPy
conversion, Parquet parts, completions (decoded text and harmony channels) and the manifest. Repeats alternate the two
paths; medians and minima (the least disturbed repeat on a shared machine) are compared. Because other load on the
machine moves whole repeats, the rig path is also split within each run: wall time of `execute()` minus the summed
`LLM.generate` time its worker reported for the same batches (`batch_s`) is the time the rig itself took. Telemetry is
off (`--telemetry-hz 0`); its sampler is measured in
bench_telemetry.py.

    .venv/bin/python benchmarks/bench_vllm.py --model /tmp/tiny1 [--repeats 3] [--max-new-tokens 64] [--batch-size 8]

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
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--logprobs", type=int, default=20)
    args = ap.parse_args()

    from rig.run import runner
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.store import RunReader
    from rig.run.suite import load_suite
    from rig.stacks.vllm import VLLMStack
    from rig.testing.tiny import build_tiny_model

    if not Path(args.model, "model.safetensors").exists():
        build_tiny_model(args.model)
    suite = load_suite("default")
    # the last vocabulary ID as the only stop token (never generated): every sequence runs to max_new_tokens
    sampling = SamplingSpec(max_new_tokens=args.max_new_tokens, stop_token_ids=(201087,))
    spec = RunSpec(
        stack="vllm",
        model=args.model,
        logprobs=args.logprobs,
        batch_size=args.batch_size,
        max_model_len=4096,
        sampling=sampling,
    )
    batches = runner.plan_batches(runner.generation_requests(suite.prompts, 1), args.batch_size)
    stack = VLLMStack(spec)
    t0 = time.perf_counter()
    stack.load()
    load_s = time.perf_counter() - t0
    stack.generate(batches[0])  # warm-up (first-call kernel setup), excluded

    bare_s, rig_s, inner_s, tokens = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(args.repeats):
                t0 = time.perf_counter()
                tokens = sum(stack.generate_bare(b)["tokens"] for b in batches)
                bare_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                out = runner.execute(spec, Path(tmp) / f"r{i}", suite=suite, telemetry_hz=0, stack=stack)
                rig_s.append(time.perf_counter() - t0)
                per_part = {c["part"]: c["timings"]["batch_s"] for c in RunReader(out).completions}
                inner_s.append(sum(per_part.values()))
        finally:
            stack.close()

    bare, rig = statistics.median(bare_s), statistics.median(rig_s)
    overhead = (rig - bare) / rig
    overhead_min = (min(rig_s) - min(bare_s)) / min(rig_s)
    split = statistics.median((r - g) / r for r, g in zip(rig_s, inner_s, strict=True))
    print(
        f"vLLM {stack.describe()['resolved']['vllm_version']['value']}, {len(suite.prompts)} prompts x "
        f"{args.max_new_tokens} tokens, batch {args.batch_size}, top-K {args.logprobs}, engine start {load_s:.1f} s "
        f"(excluded), {args.repeats} repeats"
    )
    print(f"{'path':<34}{'median wall s':>14}{'tokens/s':>10}")
    print(f"{'bare LLM.generate (in worker)':<34}{bare:>14.3f}{tokens / bare:>10.1f}")
    print(f"{'rig runner.execute (parent)':<34}{rig:>14.3f}{tokens / rig:>10.1f}")
    print(f"{'bare, fastest repeat':<34}{min(bare_s):>14.3f}{tokens / min(bare_s):>10.1f}")
    print(f"{'rig, fastest repeat':<34}{min(rig_s):>14.3f}{tokens / min(rig_s):>10.1f}")
    print(
        f"rig overhead (target <= 5%): medians {overhead * 100:.1f}%, fastest repeats {overhead_min * 100:.1f}%, "
        f"within each rig run (execute wall - LLM.generate) {split * 100:.1f}%; worker exit code {stack.exit_code}"
    )
    print(
        json.dumps(
            {
                "bench": "vllm",
                "prompts": len(suite.prompts),
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "logprobs": args.logprobs,
                "repeats": args.repeats,
                "tokens": tokens,
                "bare_s": [round(x, 3) for x in bare_s],
                "rig_s": [round(x, 3) for x in rig_s],
                "bare_median_s": round(bare, 3),
                "rig_median_s": round(rig, 3),
                "overhead": round(overhead, 4),
                "overhead_fastest": round(overhead_min, 4),
                "overhead_within_run": round(split, 4),
                "generate_in_rig_s": [round(x, 3) for x in inner_s],
                "load_s": round(load_s, 1),
                "worker_exit_code": stack.exit_code,
            }
        )
    )


if __name__ == "__main__":
    main()
