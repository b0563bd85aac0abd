"""Benchmark: the capture's forms in isolation, on warm rows (what one generated step of a batch costs the rig).

Each form computes the same thing for B rows of V float32 logits: the log-sum-exp, the exact top-K ordered by
(logit desc, id asc) and the top-K's logprobs (rig/stacks/capture.py). Forms:

- `torch`: the torch form (what GPUs run; blocked top-K, exp2 log-sum-exp);
- `c-1`: the C form on one thread (rig/stacks/capture.c);
- `c-omp`: the C form with rows split over torch's OpenMP threads (what a CPU run uses when torch's runtime is found);
- `log_softmax+topk`: the capture before both (float32 log_softmax over the row, then torch.topk), for reference.

Inside `generate` the rows come cold from the model and the same work costs more: bench_hf.py measures that.

    .venv/bin/python benchmarks/bench_capture.py [--rows 8] [--vocab 201088] [--k 20] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=201_088)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=200, help="calls per timing block; the best of 7 blocks is kept")
    args = ap.parse_args()

    import torch

    from rig.stacks.capture import RowCapture, _capture_native, _native_lib, capture_kernel

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(args.rows, args.vocab, generator=g) * 3).to(torch.bfloat16).float()  # bf16 values, as gpt-oss
    kernel, reason = capture_kernel()
    lib = _native_lib()
    b, v, k = args.rows, args.vocab, args.k
    torch_form = RowCapture(k, native=False)

    def c_form(threads: int):
        norm = torch.empty((2, b))
        lps, ids = torch.empty((b, k)), torch.empty((b, k), dtype=torch.int32)
        ptrs = (norm.data_ptr(), norm[1].data_ptr(), lps.data_ptr(), ids.data_ptr())
        keep = (norm, lps, ids)  # the closure holds the outputs alive: the C form writes into them
        return lambda: (lib.rig_capture_rows(x.data_ptr(), b, v, k, threads, *ptrs), keep)

    def old_form():
        lp = torch.log_softmax(x, dim=-1)
        return torch.topk(lp, k, dim=-1)

    forms = {"torch": lambda: torch_form(x), "log_softmax+topk": old_form}
    if lib is not None:
        forms["c-1"] = c_form(1)
        forms["c-omp"] = c_form(torch.get_num_threads())
        forms["c (as RowCapture)"] = lambda: _capture_native(lib, x, k)

    before = machine()
    results = {}
    for name, fn in forms.items():
        for _ in range(10):
            fn()
        blocks = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            blocks.append((time.perf_counter() - t) / args.repeats)
        results[name] = {"best_ms": round(1e3 * min(blocks), 4), "median_ms": round(1e3 * statistics.median(blocks), 4)}
    after = machine()

    print(f"capture of {b} x {v} float32 rows, K = {k}; capture kernel in a run: {kernel} ({reason})")
    print_machine(before, after)
    print(f"{'form':>20} {'best ms':>9} {'median ms':>10}")
    for name, r in results.items():
        print(f"{name:>20} {r['best_ms']:>9.3f} {r['median_ms']:>10.3f}")
    print(json.dumps({"bench": "capture", "rows": b, "vocab": v, "k": k, "machine_before": before, "results": results}))


if __name__ == "__main__":
    main()
