"""Benchmark: the rig's `hf` stack against bare `model.generate` with the same settings, in one process.

What it answers: how much wall time the on-device top-K capture costs (target: at most 5%), and how much memory the
capture keeps (target: it grows with K, not with the vocabulary). Both paths share the loaded model, the padded
inputs and the GenerationConfig; they alternate, repeats are interleaved, and the median is reported.

    .venv/bin/python benchmarks/bench_hf.py --model models/tiny-gpt-oss [--repeats 5] [--max-new-tokens 64]

Prints a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
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
    results = {}
    for k in (20, 0):
        spec = RunSpec(
            model=args.model,
            dtype=args.dtype,
            logprobs=k,
            batch_size=args.batch_size,
            sampling=SamplingSpec(max_new_tokens=args.max_new_tokens, stop_token_ids=(-1,)),
        )
        stack = hf.HFStack(spec)
        stack.load()
        batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]

        kept = []
        orig_finish = hf._Capture.finish

        def finish(self, last, _orig=orig_finish, _kept=kept):
            _orig(self, last)
            tensors = self.top_ids + self.top_lps + self.chosen_lp
            _kept.append(sum(t.nelement() * t.element_size() for t in tensors))

        hf._Capture.finish = finish

        def rig_path(stack=stack, batches=batches):
            n = 0
            for b in batches:
                n += sum(len(r.token_ids) for r in stack.generate([Request(p) for p in b]))
            return n

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
                    out = stack.model.generate(input_ids=x, attention_mask=mask, generation_config=cfg)
                n += int((out[:, width:]).numel())
            return n

        rig_path(), bare_path()  # warm-up
        rig_s, bare_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n_tokens = rig_path()
            rig_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            bare_path()
            bare_s.append(time.perf_counter() - t)
        hf._Capture.finish = orig_finish
        rig_med, bare_med = statistics.median(rig_s), statistics.median(bare_s)
        steps = args.max_new_tokens
        results[k] = {
            "k": k,
            "tokens": n_tokens,
            "rig_s": round(rig_med, 4),
            "bare_s": round(bare_med, 4),
            "overhead_pct": round(100 * (rig_med - bare_med) / bare_med, 2),
            "capture_bytes_per_batch": max(kept) if kept else 0,
            "capture_bytes_per_token": round(max(kept) / (args.batch_size * steps), 1) if kept else 0,
            "full_logits_bytes_per_token": 201088 * 4,
        }
        stack.close()

    print(
        f"hf stack vs bare generate: {len(prompts)} prompts x {args.max_new_tokens} tokens, batch {args.batch_size}, "
        f"{args.dtype}, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'K':>3} {'rig s':>8} {'bare s':>8} {'overhead':>9} {'capture B/token':>16} {'full logits B/token':>20}")
    for r in results.values():
        print(
            f"{r['k']:>3} {r['rig_s']:>8.3f} {r['bare_s']:>8.3f} {r['overhead_pct']:>8.2f}% "
            f"{r['capture_bytes_per_token']:>16} {r['full_logits_bytes_per_token']:>20}"
        )
    print(json.dumps({"bench": "hf_capture", "results": list(results.values())}))


if __name__ == "__main__":
    main()
