"""Benchmark of `rig diff` and `rig report` on a million generated tokens per run, on one core.

Builds, through the real RunWriter, run A (2,000 prompts x 500 tokens, top-20), run B (a perturbed copy of A that
diverges at a random position in 70% of its sequences and stops early in 5%), and S (B's stack scoring A's tokens:
A's tokens with perturbed log-probabilities). Then times the diff core (load + metrics, teacher-forced from S) and the
HTML report. Targets: diff under 2 s, report under 10 s. Prints a table for people and one JSON line last.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_diff.py [--prompts 2000 --tokens 500] [--keep DIR]
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

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

from rig.runs import RunWriter  # noqa: E402
from rig.spec import RunSpec  # noqa: E402
from rig.stacks.base import SequenceResult  # noqa: E402
from rig.suite import Prompt, token_hash  # noqa: E402

K, VOCAB, BATCH = 20, 200_000, 8


def _topk(rng: np.random.Generator, n: int, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct top-K ids (first column = the chosen token) and descending, normalized-below-1 log-probabilities."""
    steps = rng.integers(1, 10_000, size=(n, K - 1)).cumsum(axis=1)
    ids = np.concatenate([first[:, None], (first[:, None] + steps) % VOCAB], axis=1).astype(np.int32)
    gaps = rng.exponential(0.7, size=(n, K))
    gaps[:, 0] = 0.0
    z = -gaps.cumsum(axis=1)
    tail = rng.uniform(0.01, 0.3, size=n)
    lps = z - np.log(np.exp(z).sum(axis=1) + tail)[:, None]
    return ids, lps.astype(np.float32)


def _write(path: Path, prompts: list[Prompt], seqs: list[tuple], kind: str, **extra) -> None:
    spec = RunSpec(model="bench", logprobs=K)
    n_parts = (len(seqs) + BATCH - 1) // BATCH
    plan = {str(j): len(seqs[j * BATCH : (j + 1) * BATCH]) for j in range(n_parts)}
    w = RunWriter(path)
    w.create(
        {
            "kind": kind,
            "spec": spec.to_dict(),
            "spec_hash": spec.hash(),
            "suite": {"name": "bench", "hash": "bench", "n_prompts": len(prompts)},
            "stack": {"stack": "hf", "resolved": {}},
            "parts_plan": plan,
            **extra,
        },
        prompts,
        force=True,
    )
    for j in range(n_parts):
        results = [
            SequenceResult(p.id, 0, t, lp, ids, lps, "length")
            for p, t, lp, ids, lps in seqs[j * BATCH : (j + 1) * BATCH]
        ]
        comps = [
            {
                "prompt_id": r.prompt_id,
                "sample": 0,
                "finish_reason": "length",
                "n_tokens": len(r.token_ids),
                "text": "",
                "analysis": None,
                "final": None,
                "timings": {},
            }
            for r in results
        ]
        w.write_part(j, results, comps)
    w.finish()


def build(root: Path, n_prompts: int, n_tokens: int, seed: int = 0) -> dict[str, Path]:
    """Writes runs a, b and s (B's stack scoring A's tokens) under root; returns their paths."""
    rng = np.random.default_rng(seed)
    prompts = [
        Prompt(
            id=f"p{i:05d}",
            token_ids=(200006, 1, i),
            sha256=token_hash([200006, 1, i]),
            kind="tokens",
            category=("math", "code", "chat")[i % 3],
        )
        for i in range(n_prompts)
    ]
    a, b, s = [], [], []
    for p in prompts:
        tok = (rng.zipf(1.3, n_tokens) % VOCAB).astype(np.int32)
        ids, lps = _topk(rng, n_tokens, tok)
        a.append((p, tok, lps[:, 0], ids, lps))
        noise = rng.normal(0, 0.01, size=lps.shape).astype(np.float32)
        b_lps = lps + noise
        b_tok, b_ids = tok.copy(), ids.copy()
        n_b = n_tokens
        if rng.random() < 0.7:
            d = int(rng.integers(0, n_tokens))
            b_tok[d] = ids[d, 1]
            b_ids[d, [0, 1]] = ids[d, [1, 0]]
            rest = n_tokens - d - 1
            if rest:
                b_tok[d + 1 :] = (rng.zipf(1.3, rest) % VOCAB).astype(np.int32)
                b_ids[d + 1 :], b_lps[d + 1 :] = _topk(rng, rest, b_tok[d + 1 :])
            if rng.random() < 0.05:
                n_b = int(rng.integers(d + 1, n_tokens + 1))
        b.append((p, b_tok[:n_b], b_lps[:n_b, 0], b_ids[:n_b], b_lps[:n_b]))
        s_ids = ids.copy()
        swap = rng.random(n_tokens) < 0.01
        s_ids[swap, 0], s_ids[swap, 1] = ids[swap, 1], ids[swap, 0]
        s_lps = lps + rng.normal(0, 0.01, size=lps.shape).astype(np.float32)
        s.append((p, tok, s_lps[np.arange(n_tokens), np.where(swap, 1, 0)], s_ids, s_lps))
    paths = {name: root / name for name in ("a", "b", "s")}
    _write(paths["a"], prompts, a, "generate")
    _write(paths["b"], prompts, b, "generate")
    _write(paths["s"], prompts, s, "score", source_run={"path": str(paths["a"]), "name": "a"})
    return paths


def _decode_only(paths: list[Path]) -> int:
    """The floor under any loader: pyarrow decoding every tokens/ part, single-threaded; returns the row count."""
    import pyarrow.parquet as pq

    return sum(
        pq.read_table(p, use_threads=False).num_rows for r in paths for p in sorted((r / "tokens").glob("*.parquet"))
    )


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--keep", type=Path, help="build the runs here (reused when already there)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    args = ap.parse_args()
    from rig.diff import diff_runs, load_run
    from rig.report import diff_paths
    from rig.report.html import build_report

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-diff-"))
    paths = {n: root / n for n in ("a", "b", "s")}
    t_build = 0.0
    if not all((p / "manifest.json").exists() for p in paths.values()):
        t_build, _, paths = timed(build, root, args.prompts, args.tokens)
    rows = {}
    for _ in range(args.repeat):
        results = {
            "parquet decode only (3 runs)": timed(_decode_only, [paths[n] for n in ("a", "b", "s")]),
            "load (3 runs)": timed(lambda: [load_run(paths[n]) for n in ("a", "b", "s")]),
        }
        runs = results["load (3 runs)"][2]
        results["metrics"] = timed(diff_runs, runs[0], runs[1], scored=runs[2])
        results["diff core (load + metrics + document)"] = timed(diff_paths, paths["a"], paths["b"], scored=paths["s"])
        out = root / "report.html"
        results["report"] = timed(build_report, [paths["a"], paths["b"]], out, scored=[paths["s"]])
        for k, (w, c, _) in results.items():
            best = rows.get(k, (1e9, 1e9))
            rows[k] = (min(best[0], w), min(best[1], c))
    doc = diff_paths(paths["a"], paths["b"], scored=paths["s"])
    n_tokens = len(runs[0].token_id)
    print(f"{'step':42s} {'wall s':>8s} {'cpu s':>8s}")
    for k, (w, c) in rows.items():
        print(f"{k:42s} {w:8.3f} {c:8.3f}")
    print(
        f"tokens per run {n_tokens:,}, K {K}, divergent {doc['summary']['divergent']}/{doc['summary']['sequences']}, "
        f"teacher-forced positions {doc['teacher_forced']['n_positions']:,}, build {t_build:.1f} s"
    )
    diff_s, report_s = rows["diff core (load + metrics + document)"], rows["report"]
    print(
        json.dumps(
            {
                "bench": "diff",
                "tokens_per_run": n_tokens,
                "k": K,
                "diff_wall_s": round(diff_s[0], 3),
                "diff_cpu_s": round(diff_s[1], 3),
                "load_wall_s": round(rows["load (3 runs)"][0], 3),
                "decode_floor_wall_s": round(rows["parquet decode only (3 runs)"][0], 3),
                "metrics_wall_s": round(rows["metrics"][0], 3),
                "report_wall_s": round(report_s[0], 3),
                "report_cpu_s": round(report_s[1], 3),
                "diff_target_s": 2.0,
                "report_target_s": 10.0,
                "report_bytes": (root / "report.html").stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    main()
