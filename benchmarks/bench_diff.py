"""Benchmark of `rig diff` and `rig report` on a million generated tokens per run, on one core.

Builds, through the real RunWriter, run A (2,000 prompts x 500 tokens, top-20), run B (a perturbed copy of A that
diverges at a random position in 70% of its sequences and stops early in 5%), and S (B's stack scoring A's tokens:
A's tokens with perturbed log-probabilities). Then times, separately, the two-run diff (A against B, teacher-forced
metrics on the common prefix: the issue's case) and the three-run diff (--scored S), each as load, metrics and the
whole core (rig.report.diff_paths: load + metrics + JSON-ready document), the HTML report, and `rig diff` as a user
runs it (a fresh process: imports and the harmony encoding's load included). Targets: two-run diff under 2 s, report
under 10 s. Best of --repeat; prints a table for people and one JSON line last.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_diff.py [--prompts 2000 --tokens 500] [--keep DIR] [--no-cli]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

from rig.run.spec import RunSpec  # noqa: E402
from rig.run.store import RunWriter  # noqa: E402
from rig.run.suite import Prompt, token_hash  # noqa: E402
from rig.stacks.base import SequenceResult  # noqa: E402

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
    """The floor under any loader: pyarrow decoding every tokens/ part as load_run does (ParquetFile.read, one
    thread, prompt_id dictionary-encoded); returns the row count."""
    import pyarrow.parquet as pq

    return sum(
        pq.ParquetFile(p, read_dictionary=["prompt_id"]).read(use_threads=False).num_rows
        for r in paths
        for p in sorted((r / "tokens").glob("part-*.parquet"))
    )


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - w, time.process_time() - c, out


def cli(*args: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, exit code) of `python -m rig ARGS` in a fresh process: interpreter start, imports,
    the harmony encoding's load and the terminal output included."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "rig", *args], env=env, stdout=subprocess.DEVNULL).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - w, cpu, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--keep", type=Path, help="build the runs here (reused when already there)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    ap.add_argument("--no-cli", action="store_true", help="skip the whole-CLI timing (a fresh process per repeat)")
    args = ap.parse_args()
    from rig.analysis.compare import diff_paths
    from rig.analysis.diff import diff_runs
    from rig.analysis.load import load_run
    from rig.harmony import encoding as harmony_encoding
    from rig.report.html import build_report

    harmony_encoding()  # its one-time load (about 0.3 s) is in the CLI row only
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-diff-"))
    paths = {n: root / n for n in ("a", "b", "s")}
    a, b, s = (str(paths[n]) for n in ("a", "b", "s"))
    t_build = 0.0
    if not all((p / "manifest.json").exists() for p in paths.values()):
        t_build, _, paths = timed(build, root, args.prompts, args.tokens)
    rows: dict[str, tuple[float, float]] = {}

    def keep(name: str, result: tuple) -> object:
        best = rows.get(name, (1e9, 1e9))
        rows[name] = (min(best[0], result[0]), min(best[1], result[1]))
        return result[2]

    for _ in range(args.repeat):
        # the case: two runs, teacher-forced metrics (delta, top-1, KL) on their common prefix
        keep("A B: parquet decode only", timed(_decode_only, [paths["a"], paths["b"]]))
        ra, rb = keep("A B: load", timed(lambda: [load_run(a), load_run(b)]))
        keep("A B: metrics", timed(diff_runs, ra, rb))
        del ra, rb  # each step starts with nothing loaded, as `rig diff` does: fresh pages cost here (sys time)
        doc2 = keep("A B: diff core (load+metrics+document)", timed(diff_paths, a, b))
        # with a scored run: teacher-forced metrics from S over every position (prefix: delta statistics only)
        keep("A B S: parquet decode only", timed(_decode_only, [paths[n] for n in ("a", "b", "s")]))
        ra, rb, rs = keep("A B S: load", timed(lambda: [load_run(a), load_run(b), load_run(s)]))
        keep("A B S: metrics", timed(diff_runs, ra, rb, scored=rs))
        del ra, rb, rs
        doc3 = keep("A B S: diff core (load+metrics+document)", timed(diff_paths, a, b, scored=s))
        keep("report A B --scored S (HTML)", timed(build_report, [a, b], root / "report.html", scored=[s]))
        if not args.no_cli:
            keep("rig diff A B (whole CLI, fresh process)", cli("diff", a, b))
            keep("rig diff A B --scored S (whole CLI)", cli("diff", a, b, "--scored", s))
    print(f"{'step':42s} {'wall s':>8s} {'cpu s':>8s}")
    for k, (w, c) in rows.items():
        print(f"{k:42s} {w:8.3f} {c:8.3f}")
    n_tokens = doc2["teacher_forced"]["n_positions"]
    print(
        f"tokens per run {doc3['teacher_forced']['n_positions']:,}, K {K}, divergent {doc2['summary']['divergent']}/"
        f"{doc2['summary']['sequences']}, prefix positions {n_tokens:,}, build {t_build:.1f} s, best of {args.repeat}"
    )

    def pick(name: str) -> dict[str, float]:
        w, c = rows[name]
        return {"wall_s": round(w, 3), "cpu_s": round(c, 3)}

    out = {
        "bench": "diff",
        "tokens_per_run": doc3["teacher_forced"]["n_positions"],
        "k": K,
        "diff_2run": pick("A B: diff core (load+metrics+document)"),
        "diff_3run": pick("A B S: diff core (load+metrics+document)"),
        "load_2run": pick("A B: load"),
        "decode_floor_2run": pick("A B: parquet decode only"),
        "metrics_2run": pick("A B: metrics"),
        "metrics_3run": pick("A B S: metrics"),
        "report": pick("report A B --scored S (HTML)"),
        "diff_target_s": 2.0,
        "report_target_s": 10.0,
        "report_bytes": (root / "report.html").stat().st_size,
    }
    if not args.no_cli:
        out["cli_2run"] = pick("rig diff A B (whole CLI, fresh process)")
        out["cli_3run"] = pick("rig diff A B --scored S (whole CLI)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
