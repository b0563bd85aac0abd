"""Benchmark: the rig's `hf` stack against bare `model.generate` with the same settings, in one process.

What it answers: how much wall time the on-device top-K capture costs (target: at most 5% at K = 20), and how much
memory the capture keeps (target: it grows with K, not with the vocabulary). Both paths share the loaded model, the
padded inputs and the GenerationConfig.

Two measures, side by side:
- **A/B pairs**: rig and bare `generate` over the whole suite alternate (A B, B A, ...); each pair gives an
  overhead, and the median over pairs is the figure (benchmarks/_common.py).
- **In-step time**: the seconds spent inside the rig's logits processor (the capture itself), summed over the run,
  as a share of the bare run. This one does not depend on run-to-run noise, so it says what the pairs should read.

    .venv/bin/python benchmarks/bench_hf.py --model models/tiny-gpt-oss [--pairs 6] [--max-new-tokens 64]

Prints the machine, a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_pairs, machine, print_machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--pairs", type=int, default=6, help="A/B pairs per K (rig and bare, alternating)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: CUDA when available)")
    ap.add_argument("--k", type=int, nargs="+", default=[20, 0])
    args = ap.parse_args()

    import torch
    from transformers import GenerationConfig

    import rig.stacks.hf as hf
    from rig.run.spec import RunSpec, SamplingSpec, to_transformers
    from rig.run.suite import load_suite
    from rig.stacks.base import Request
    from rig.testing.tiny import PAD_TOKEN_ID, build_tiny_model

    if not Path(args.model, "model.safetensors").exists():
        build_tiny_model(args.model)
    prompts = load_suite("default").prompts
    before = machine()
    results = {}
    orig_call, orig_finish = hf._Capture.__call__, hf._Capture.finish
    in_step = [0.0]  # seconds inside the rig's logits processor, summed

    def timed_call(self, input_ids, scores):  # Transformers checks a processor's signature: no extra params
        if scores.is_cuda:  # time the kernels, not their launch
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = orig_call(self, input_ids, scores)
        if scores.is_cuda:
            torch.cuda.synchronize()
        in_step[0] += time.perf_counter() - t
        return out

    for k in args.k:
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

        kept: list[int] = []

        def finish(self, last, _orig=orig_finish, _kept=kept):
            _orig(self, last)
            _kept.append(self.rec.nbytes())

        hf._Capture.__call__, hf._Capture.finish = timed_call, finish

        def rig_path(stack=stack, batches=batches):
            return sum(len(r.token_ids) for b in batches for r in stack.generate([Request(p) for p in b]))

        def bare_path(stack=stack, batches=batches, spec=spec):
            n = 0
            for b in batches:
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
                n += int((out[:, width:]).numel())
            return n

        rig_path(), bare_path()  # warm-up
        in_step[0] = 0.0
        pairs = ab_pairs(rig_path, bare_path, args.pairs, warmup=False)
        hf._Capture.__call__, hf._Capture.finish = orig_call, orig_finish
        summary = pairs.summary()
        steps = len(batches) * args.max_new_tokens
        capture_s = in_step[0] / args.pairs
        results[k] = {
            "k": k,
            "tokens": rig_path(),
            "steps_per_run": steps,
            "bare_ms_per_step": round(1e3 * summary["b_median_s"] / steps, 3),
            "capture_ms_per_step": round(1e3 * capture_s / steps, 3),
            "capture_pct_of_bare": round(100 * capture_s / summary["b_median_s"], 2),
            **summary,
            "capture_bytes_per_batch": max(kept) if kept else 0,
            "capture_bytes_per_token": round(max(kept) / (args.batch_size * args.max_new_tokens), 1) if kept else 0,
            "full_logits_bytes_per_token": 201088 * 4,
        }
        stack.close()
    after = machine()

    print(
        f"hf stack vs bare generate: {len(prompts)} prompts x {args.max_new_tokens} tokens, batch {args.batch_size}, "
        f"{args.dtype}, device {stack.device}, {args.pairs} A/B pairs per K"
    )
    print_machine(before, after)
    print(
        f"{'K':>3} {'bare ms/step':>12} {'capture ms/step':>15} {'capture %':>9} {'pairs: median':>14} "
        f"{'min':>7} {'max':>7} {'rig s':>7} {'bare s':>7} {'capture B/token':>15}"
    )
    for r in results.values():
        print(
            f"{r['k']:>3} {r['bare_ms_per_step']:>12.3f} {r['capture_ms_per_step']:>15.3f} "
            f"{r['capture_pct_of_bare']:>8.2f}% {r['overhead_pct_median_of_pairs']:>13.2f}% "
            f"{r['overhead_pct_min']:>6.2f}% {r['overhead_pct_max']:>6.2f}% {r['a_median_s']:>7.3f} "
            f"{r['b_median_s']:>7.3f} {r['capture_bytes_per_token']:>15}"
        )
    print(
        json.dumps(
            {"bench": "hf_capture", "machine_before": before, "machine_after": after, "results": list(results.values())}
        )
    )


if __name__ == "__main__":
    main()
