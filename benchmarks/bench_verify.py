"""Benchmark of the run integrity checks on a million-token run: what every reader pays, and what `rig verify` does.

Builds, through the real RunWriter, one run of 2,000 prompts x 500 tokens, top-20 (the size of the runs of
benchmarks/bench_diff.py: 250 parts of 8 sequences), then times, each with nothing of the run cached in Python (the
files are in the page cache, as they are after the first read):

- the read-time check without part checksums (manifest, prompts, completions, every part's footer, schema, rows,
  coverage, counts): what `RunReader(path)` would cost without sha256;
- sha256 of every part alone;
- the read-time check as every reader runs it (the above plus sha256 of every part);
- `load_run` (the check, then decoding every part into arrays), the same without the check (what it cost before),
  and decoding alone (`ParquetFile.read`, as load_run);
- the full check of `rig verify` (the read-time check plus decoding every part and matching its rows to completions).

pyarrow runs on one thread. Best of --repeat, CPU / wall seconds; a table for people and one JSON line last.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_verify.py [--prompts 2000 --tokens 500] [--keep DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

from rig.analysis.load import load_run  # noqa: E402
from rig.files import sha256_file  # noqa: E402
from rig.run.spec import RunSpec  # noqa: E402
from rig.run.store import RunReader, RunWriter  # noqa: E402
from rig.run.suite import Prompt, token_hash  # noqa: E402
from rig.run.verify import check_run  # noqa: E402
from rig.stacks.base import SequenceResult  # noqa: E402

K, VOCAB, BATCH = 20, 200_000, 8


def build(path: Path, n_prompts: int, n_tokens: int, seed: int = 0) -> Path:
    """One generate run of n_prompts x n_tokens with top-K, written part by part through RunWriter."""
    rng = np.random.default_rng(seed)
    prompts = [Prompt(f"p{i:05d}", (200006, 1, i), token_hash([200006, 1, i]), "tokens") for i in range(n_prompts)]
    spec = RunSpec(model="bench", logprobs=K, batch_size=BATCH)
    n_parts = (n_prompts + BATCH - 1) // BATCH
    w = RunWriter(path)
    w.create(
        {
            "kind": "generate",
            "spec": spec.to_dict(),
            "spec_hash": spec.hash(),
            "suite": {"name": "bench", "hash": "bench", "n_prompts": n_prompts},
            "stack": {"stack": "hf", "resolved": {}},
            "parts_plan": {str(j): len(prompts[j * BATCH : (j + 1) * BATCH]) for j in range(n_parts)},
        },
        prompts,
        force=True,
    )
    for j in range(n_parts):
        results = []
        for p in prompts[j * BATCH : (j + 1) * BATCH]:
            tok = (rng.zipf(1.3, n_tokens) % VOCAB).astype(np.int32)
            ids = np.concatenate([tok[:, None], rng.integers(0, VOCAB, (n_tokens, K - 1), dtype=np.int32)], axis=1)
            lps = -np.sort(rng.exponential(1.0, (n_tokens, K)), axis=1).astype(np.float32)
            results.append(SequenceResult(p.id, 0, tok, lps[:, 0].copy(), ids, lps, "length"))
        comps = [
            {"prompt_id": r.prompt_id, "sample": 0, "finish_reason": "length", "n_tokens": n_tokens, "text": ""}
            for r in results
        ]
        w.write_part(j, results, comps)
    w.finish()
    return path


def _timed(fn, repeat: int) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c, time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="Build the run here (reused when it is already there).")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-verify-"))
    run = root / "run"
    if not (run / "manifest.json").exists():
        t = time.perf_counter()
        build(run, args.prompts, args.tokens)
        print(f"built {run} in {time.perf_counter() - t:.1f} s")
    parts = sorted((run / "tokens").glob("part-*.parquet"))
    size = sum(p.stat().st_size for p in parts)
    for p in parts:  # warm the page cache: every row below reads files already read once
        p.read_bytes()

    def decode_only() -> None:
        for p in parts:
            pq.ParquetFile(p, read_dictionary=["prompt_id"]).read(use_threads=False)

    def checked(**kw):
        def fn() -> None:
            assert check_run(run, **kw).ok

        return fn

    def load_unchecked() -> None:
        """load_run as it was before the integrity check: RunReader parsed and re-hashed prompts.jsonl only."""
        saved = RunReader.check
        RunReader.check = lambda self, **kw: self.prompts  # noqa: E731
        try:
            load_run(run)
        finally:
            RunReader.check = saved

    rows = {
        "read-time check, no part checksums": checked(checksums=False),
        "sha256 of every part alone": lambda: [sha256_file(p) for p in parts],
        "read-time check as every reader runs it (with sha256)": checked(checksums=True),
        "decode only (ParquetFile.read, as load_run)": decode_only,
        "load_run without the check (prompts re-hashed only, as before)": load_unchecked,
        "load_run (check with sha256 + decode into arrays)": lambda: load_run(run),
        "rig verify's full check (check + decode + rows matched)": checked(checksums=True, decode=True),
    }
    result = {"tokens": args.prompts * args.tokens, "parts": len(parts), "part_bytes": size, "seconds": {}}
    print(
        f"{args.prompts * args.tokens:,} tokens, {len(parts)} parts, {size / 2**20:.1f} MiB of Parquet; best of "
        f"{args.repeat}, CPU / wall s"
    )
    for name, fn in rows.items():
        cpu, wall = _timed(fn, args.repeat)
        result["seconds"][name] = {"cpu": round(cpu, 3), "wall": round(wall, 3)}
        print(f"  {name:<64} {cpu:6.3f} / {wall:6.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
