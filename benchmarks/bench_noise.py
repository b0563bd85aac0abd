"""Benchmark: what coupled sampling's shared Gumbel noise costs, before (pcg64-v0, NumPy on the CPU) and after
(counter-v1, torch integer operations on the logits' device).

Two measurements, in one process, repeats interleaved, medians reported:

1. the noise alone, per sampling step and sequence: `couple_logits` over [B, 201088] float32 logits (scale, then add
   the noise) with the old generator (NumPy PCG64 per row, stacked, copied to the device) against the new one, by
   each of its paths (the default for the device, the staged torch operations, the fused compiled kernel);
2. on the tiny gpt-oss through the `hf` stack (the `_Capture` processor): decode time per step and sequence of plain
   greedy decoding against coupled sampling with each generator (every sequence runs max_new_tokens steps).

    .venv/bin/python benchmarks/bench_noise.py --model /tmp/tiny [--device cpu|cuda] [--batch-size 8] [--tokens 32]

On a CUDA machine `--device cuda` measures the generator there (the decode part then runs the tiny model on the GPU:
its step is far shorter than gpt-oss-20b's, so read the absolute microseconds, not the share). Prints a table for
people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

VOCAB = 201088


def legacy_couple_logits(logits, keys, *, seed, temperature, top_k=0, top_p=1.0):
    """couple_logits as it was before counter-v1: NumPy PCG64 noise per row, stacked, copied to the logits' device."""
    import numpy as np
    import torch

    from rig.stacks.noise import pcg64_noise_np
    from rig.stacks.sampling import mask_and_scale

    x = mask_and_scale(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    noise = np.stack([pcg64_noise_np(seed, pid, s, p, x.shape[-1]) for pid, s, p in keys])
    return x + torch.from_numpy(noise).to(x.device)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_generator(device: str, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per step and sequence of couple_logits with each generator on [batch, VOCAB] logits."""
    import torch

    from rig.stacks.noise import FUSED_ENV
    from rig.stacks.sampling import couple_logits

    logits = torch.randn(batch, VOCAB, device=device)
    default = "fused" if device.startswith("cuda") else "NumPy blocks" if device == "cpu" else "staged"
    fns = {
        "pcg64-v0": (legacy_couple_logits, "auto"),
        f"counter-v1 ({default}, the default)": (couple_logits, "auto"),
        "counter-v1 staged torch": (couple_logits, "0"),
        "counter-v1 fused": (couple_logits, "1"),
        "scale only": (lambda x, keys, **kw: x.float() / kw["temperature"], "auto"),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(repeats + 1):
        keys = [("fact-capital-au", i, rep) for i in range(batch)]
        for name, (fn, fused) in fns.items():
            os.environ[FUSED_ENV] = fused
            if device == "cpu" and name == "counter-v1 staged torch":
                os.environ[FUSED_ENV] = "0"
                fn = _staged_on_cpu
            _sync(device)
            t0 = time.perf_counter()
            fn(logits, keys, seed=0, temperature=1.0)
            _sync(device)
            if rep:  # the first round warms caches, the token table and compiles the fused kernel
                times[name].append((time.perf_counter() - t0) * 1e3 / batch)
    os.environ.pop(FUSED_ENV, None)
    return {name: statistics.median(v) for name, v in times.items()}


def _staged_on_cpu(logits, keys, *, seed, temperature, top_k=0, top_p=1.0):
    """couple_logits through the staged torch operations on the CPU (the stacks use the NumPy blocks there)."""
    from rig.stacks.noise import add_counter_noise_torch_, row_keys
    from rig.stacks.sampling import mask_and_scale

    k0, k1 = row_keys(seed, keys)
    return add_counter_noise_torch_(mask_and_scale(logits, temperature=temperature), k0, k1)


def bench_decode(model: str, device: str, batch: int, tokens: int, repeats: int) -> dict[str, float]:
    """Median ms per decode step and sequence on the tiny model: greedy, coupled (counter-v1), coupled (pcg64-v0)."""
    import rig.stacks.hf as hf
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite
    from rig.stacks.base import Request

    prompts = load_suite("default").prompts[:batch]
    requests = [Request(p) for p in prompts]
    new = hf.couple_logits
    greedy = SamplingSpec(max_new_tokens=tokens, stop_token_ids=(-1,))
    coupled = SamplingSpec(max_new_tokens=tokens, stop_token_ids=(-1,), temperature=1.0)
    stack = hf.HFStack(RunSpec(stack="hf", model=model, device=device, batch_size=batch, sampling=coupled))
    stack.load()
    runs = {
        "greedy": (greedy, new, "greedy"),
        "coupled counter-v1": (coupled, new, "coupled"),
        "coupled pcg64-v0": (coupled, legacy_couple_logits, "coupled"),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for rep in range(repeats + 1):
            for name, (sampling, fn, mode) in runs.items():
                stack.spec = stack.spec.replace(sampling=sampling)
                stack._mode = mode
                hf.couple_logits = fn
                _sync(device)
                t0 = time.perf_counter()
                out = stack.generate(requests)
                _sync(device)
                steps = out[0].timings["batch_steps"]
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1e3 / (steps * len(requests)))
    finally:
        hf.couple_logits = new
        stack.close()
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-decode", action="store_true", help="only the generator micro-benchmark")
    args = ap.parse_args()

    import torch

    from rig.testing.tiny import build_tiny_model

    result: dict[str, object] = {
        "device": args.device,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "vocab": VOCAB,
    }
    gen = bench_generator(args.device, args.batch_size, args.repeats)
    result["noise_ms_per_step_per_seq"] = {k: round(v, 4) for k, v in gen.items()}
    print(f"couple_logits on [{args.batch_size}, {VOCAB}] on {args.device}, ms per step and sequence (median):")
    for name, v in gen.items():
        print(f"  {name:<36} {v:9.3f}")
    if not args.skip_decode:
        if not Path(args.model, "model.safetensors").exists():
            build_tiny_model(args.model)
        dec = bench_decode(args.model, args.device, args.batch_size, args.tokens, args.repeats)
        base = dec["greedy"]
        result["decode_ms_per_step_per_seq"] = {k: round(v, 4) for k, v in dec.items()}
        result["coupling_overhead_ms_per_step_per_seq"] = {
            k: round(v - base, 4) for k, v in dec.items() if k != "greedy"
        }
        print(f"tiny gpt-oss, hf, batch {args.batch_size}, {args.tokens} tokens, ms per step and sequence (median):")
        for name, v in dec.items():
            extra = "" if name == "greedy" else f"   overhead {v - base:+.3f} ({100 * (v - base) / base:+.0f}%)"
            print(f"  {name:<20} {v:9.3f}{extra}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
