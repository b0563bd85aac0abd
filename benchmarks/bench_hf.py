"""Benchmark: the rig's `hf` stack against bare `model.generate` with the same settings, in one process.

What it answers: how much wall time the rig costs on the Transformers path (target: at most 5% at K = 20), and how
much memory the capture keeps (target: it grows with K, not with the vocabulary). Both paths share the loaded model,
the padded inputs and the GenerationConfig.

Three measures, side by side:
- **A/B pairs**: one batch through the rig, the same batch bare (then bare first, then the rig, ...); each pair
  gives (rig - bare) / bare and the median over pairs is the figure, with its quartiles (benchmarks/_common.py).
  Short pairs see the same machine; `--unit suite` pairs whole passes over the suite instead.
- **Capture**: the seconds spent inside the rig's logits processor (the capture itself), as a share of bare.
- **Own**: the capture plus the stack's work around `model.generate` (padding the inputs, turning the buffers into
  results). Capture and own do not depend on run-to-run noise, so they say what the pairs should read.

    .venv/bin/python benchmarks/bench_hf.py --model models/tiny-gpt-oss [--pairs 6] [--max-new-tokens 64]

Prints the machine, a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_pairs, machine, print_machine  # noqa: E402


class Timers:
    """Seconds inside the rig's logits processor and inside model.generate on the rig's path, and the capture's
    buffer sizes, collected by patching the stack for the duration of a measurement."""

    def __init__(self) -> None:
        self.in_step = 0.0
        self.generate = 0.0
        self.kept: list[int] = []

    def install(self, hf: Any) -> Any:
        import torch

        orig_call, orig_finish = hf._Capture.__call__, hf._Capture.finish
        timers = self

        def timed_call(self, input_ids, scores):  # Transformers checks a processor's signature: no extra params
            if scores.is_cuda:  # time the kernels, not their launch
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = orig_call(self, input_ids, scores)
            if scores.is_cuda:
                torch.cuda.synchronize()
            timers.in_step += time.perf_counter() - t
            return out

        def finish(self, last):
            orig_finish(self, last)
            timers.kept.append(self.rec.nbytes())

        hf._Capture.__call__, hf._Capture.finish = timed_call, finish

        def restore() -> None:
            hf._Capture.__call__, hf._Capture.finish = orig_call, orig_finish

        return restore


def measure(k: int, args: argparse.Namespace, prompts: list) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    import rig.stacks.hf as hf
    from rig.run.spec import RunSpec, SamplingSpec, to_transformers
    from rig.stacks.base import Request
    from rig.testing.tiny import PAD_TOKEN_ID

    spec = RunSpec(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        logprobs=k,
        batch_size=args.batch_size,
        sampling=SamplingSpec(max_new_tokens=args.max_new_tokens, stop_token_ids=(-1,)),
    )
    stack = hf.HFStack(spec)
    stack.load()
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    timers = Timers()
    real_generate = stack.model.generate

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        try:
            return real_generate(*a, **kw)
        finally:
            timers.generate += time.perf_counter() - t

    def rig_batch(b: list) -> int:
        stack.model.generate = timed_generate
        try:
            return sum(len(r.token_ids) for r in stack.generate([Request(p) for p in b]))
        finally:
            del stack.model.generate  # back to the class's method

    def bare_batch(b: list) -> int:
        ids = [list(p.token_ids) for p in b]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, p in enumerate(ids):
            x[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        cfg = GenerationConfig(**to_transformers(spec), pad_token_id=PAD_TOKEN_ID)
        with torch.inference_mode():
            out = stack.model.generate(
                input_ids=x.to(stack.device), attention_mask=mask.to(stack.device), generation_config=cfg
            )
        return int((out[:, width:]).numel())

    restore = timers.install(hf)
    try:
        for b in batches:  # warm-up
            rig_batch(b), bare_batch(b)
        timers.in_step = timers.generate = 0.0
        if args.unit == "batch":  # each pair: one batch through both paths, the batches in turn
            units = [[b] for b in batches] * args.pairs
        else:
            units = [batches] * args.pairs
        a_queue, b_queue = list(units), list(units)
        pairs = ab_pairs(
            lambda: [rig_batch(b) for b in a_queue.pop(0)],
            lambda: [bare_batch(b) for b in b_queue.pop(0)],
            len(units),
            warmup=False,
        )
    finally:
        restore()
    stack.close()
    summary = pairs.summary()
    steps = args.max_new_tokens * (1 if args.unit == "batch" else len(batches))
    capture_s = timers.in_step / len(units)
    own_s = (sum(pairs.a) - timers.generate + timers.in_step) / len(units)
    bare_s = summary["b_median_s"]
    return {
        "k": k,
        "unit": args.unit,
        "steps_per_unit": steps,
        "device": str(stack.device),
        "capture_kernel": stack.describe()["resolved"]["capture_kernel"],
        "bare_ms_per_step": round(1e3 * bare_s / steps, 3),
        "capture_ms_per_step": round(1e3 * capture_s / steps, 3),
        "capture_pct_of_bare": round(100 * capture_s / bare_s, 2),
        "own_ms_per_step": round(1e3 * own_s / steps, 3),
        "own_pct_of_bare": round(100 * own_s / bare_s, 2),
        **summary,
        "capture_bytes_per_batch": max(timers.kept) if timers.kept else 0,
        "capture_bytes_per_token": round(max(timers.kept) / (args.batch_size * args.max_new_tokens), 1)
        if timers.kept
        else 0,
        "full_logits_bytes_per_token": 201088 * 4,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--pairs", type=int, default=6, help="rounds over the suite per K")
    ap.add_argument(
        "--unit",
        choices=["batch", "suite"],
        default="batch",
        help="what one A/B pair times: one batch through both paths (default: a round is one pair per batch), "
        "or the whole suite (a round is one pair)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: CUDA when available)")
    ap.add_argument("--k", type=int, nargs="+", default=[20, 0])
    args = ap.parse_args()

    import torch  # noqa: F401  (loaded first, so that the machine block shows its version and threads)

    from rig.run.suite import load_suite
    from rig.testing.tiny import build_tiny_model

    if not Path(args.model, "model.safetensors").exists():
        build_tiny_model(args.model)
    prompts = load_suite("default").prompts
    before = machine()
    results = [measure(k, args, prompts) for k in args.k]
    after = machine()

    r0 = results[0]
    print(
        f"hf stack vs bare generate: {len(prompts)} prompts x {args.max_new_tokens} tokens, batch {args.batch_size}, "
        f"{args.dtype}, device {r0['device']}; {r0['pairs']} A/B pairs of one {args.unit} each per K"
    )
    print(f"capture kernel: {r0['capture_kernel']['value']} ({r0['capture_kernel']['reason']})")
    print_machine(before, after)
    print(
        f"{'K':>3} {'bare ms/step':>12} {'capture ms/step':>15} {'capture %':>9} {'own %':>7} {'pairs: median':>14} "
        f"{'q1':>7} {'q3':>7} {'rig s':>7} {'bare s':>7} {'capture B/token':>15}"
    )
    for r in results:
        print(
            f"{r['k']:>3} {r['bare_ms_per_step']:>12.3f} {r['capture_ms_per_step']:>15.3f} "
            f"{r['capture_pct_of_bare']:>8.2f}% {r['own_pct_of_bare']:>6.2f}% "
            f"{r['overhead_pct_median_of_pairs']:>13.2f}% {r['overhead_pct_q1']:>6.2f}% {r['overhead_pct_q3']:>6.2f}% "
            f"{r['a_median_s']:>7.3f} {r['b_median_s']:>7.3f} {r['capture_bytes_per_token']:>15}"
        )
    print(
        "capture: seconds inside the rig's logits processor; own: that plus the stack's work around model.generate; "
        "pairs: (rig - bare) / bare pair by pair, median and quartiles; rig s, bare s: medians per pair"
    )
    print(json.dumps({"bench": "hf_capture", "machine_before": before, "machine_after": after, "results": results}))


if __name__ == "__main__":
    main()
