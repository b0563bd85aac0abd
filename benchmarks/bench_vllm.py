"""Benchmark: `rig run --stack vllm` (the library path, `rig.run.runner.execute`) against bare `LLM.generate`.

What it answers: how much wall time the rig adds around vLLM (target: at most 5%). To be fair, both paths use the same
engine in the same worker process (started once; its start is excluded), the same batches of `--batch-size` prompts
and the same SamplingParams (built by the same code). The bare path times `LLM.generate` inside the worker and leaves
its outputs unconverted; the rig path is the whole `execute()` timed in the parent: the pipe round trip, the NumPy
conversion, Parquet parts, completions (decoded text and harmony channels), the environment and the manifest. The
two paths alternate in pairs (A B, B A, ...; benchmarks/_common.py) and the overhead is the median of the per-pair
ratios. Because other load on the machine moves whole repeats, the rig path is also split within each run: wall
time of `execute()` minus the summed `LLM.generate` time its worker reported for the same batches (`batch_s`) is the
time the rig itself took. Telemetry is off (`--telemetry-hz 0`); its sampler is measured in bench_telemetry.py.

    .venv/bin/python benchmarks/bench_vllm.py --model models/tiny-gpt-oss [--pairs 5] [--max-new-tokens 64]

Prints the machine, a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--pairs", type=int, default=5, help="A/B pairs (rig and bare, alternating)")
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

    before = machine()
    inner_s: list[float] = []
    rig_own_s: list[float] = []
    tokens = [0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def rig_path():
            t0 = time.perf_counter()
            out = runner.execute(spec, Path(tmp) / f"r{next(runs)}", suite=suite, telemetry_hz=0, stack=stack)
            wall = time.perf_counter() - t0
            per_part = {c["part"]: c["timings"]["batch_s"] for c in RunReader(out).completions}
            inner_s.append(sum(per_part.values()))
            rig_own_s.append(wall - inner_s[-1])

        def bare_path():
            tokens[0] = sum(stack.generate_bare(b)["tokens"] for b in batches)

        try:
            pairs = ab_pairs(rig_path, bare_path, args.pairs, warmup=False)
        finally:
            stack.close()
    after = machine()
    summary = pairs.summary()
    split = statistics.median(own / (own + inner) for own, inner in zip(rig_own_s, inner_s, strict=True))
    bare = summary["b_median_s"]
    # The engine's own time on the rig's path against the bare path, pair by pair: when this reads like the pairs'
    # overhead, the difference is the engine's run-to-run spread, not the rig's work (which `split` measures).
    engine_pct = [100 * (inner - b) / b for inner, b in zip(inner_s, pairs.b, strict=True)]
    engine_q = statistics.quantiles(engine_pct, n=4) if len(engine_pct) > 1 else engine_pct * 3
    print(
        f"vLLM {stack.describe()['resolved']['vllm_version']['value']}, {len(suite.prompts)} prompts x "
        f"{args.max_new_tokens} tokens, batch {args.batch_size}, top-K {args.logprobs}, engine start {load_s:.1f} s "
        f"(excluded), {args.pairs} A/B pairs"
    )
    print_machine(before, after)
    steps = len(batches) * args.max_new_tokens
    print(f"bare LLM.generate: {bare:.3f} s per run, {1e3 * bare / steps:.2f} ms per decode step of a batch")
    print(f"{'path':<34}{'median wall s':>14}{'tokens/s':>10}")
    print(f"{'bare LLM.generate (in worker)':<34}{bare:>14.3f}{tokens[0] / bare:>10.1f}")
    print(
        f"{'rig runner.execute (parent)':<34}{summary['a_median_s']:>14.3f}{tokens[0] / summary['a_median_s']:>10.1f}"
    )
    print(
        f"rig overhead (target <= 5%): median of pairs {summary['overhead_pct_median_of_pairs']:.1f}% "
        f"(per pair: {', '.join(f'{x:.1f}' for x in summary['overhead_pct_per_pair'])}), within each rig run "
        f"(execute wall - LLM.generate) {split * 100:.1f}% (median {statistics.median(rig_own_s):.3f} s); "
        f"worker exit code {stack.exit_code}"
    )
    print(
        f"quartiles of the pairs: {summary['overhead_pct_q1']:.1f}% to {summary['overhead_pct_q3']:.1f}%; LLM.generate "
        f"inside the rig's runs against the bare runs, pair by pair: median {statistics.median(engine_pct):.1f}% "
        f"(quartiles {engine_q[0]:.1f}% to {engine_q[2]:.1f}%)"
    )
    print(
        json.dumps(
            {
                "bench": "vllm",
                "machine_before": before,
                "machine_after": after,
                "prompts": len(suite.prompts),
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "logprobs": args.logprobs,
                "tokens": tokens[0],
                **summary,
                "overhead_within_run_pct": round(100 * split, 2),
                "engine_in_rig_vs_bare_pct_per_pair": [round(x, 2) for x in engine_pct],
                "rig_own_s": [round(x, 3) for x in rig_own_s],
                "generate_in_rig_s": [round(x, 3) for x in inner_s],
                "load_s": round(load_s, 1),
                "worker_exit_code": stack.exit_code,
            }
        )
    )


if __name__ == "__main__":
    main()
