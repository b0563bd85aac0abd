"""Hand-built run directories with known answers, shared by the diff, report and scoring tests.

Runs are written through the real RunWriter, so every reader check applies to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunWriter
from rig.run.suite import Prompt, token_hash
from rig.stacks.base import SequenceResult

K = 4


def prompt(pid: str, ids: tuple[int, ...] = (1, 2, 3), category: str | None = None, **kw) -> Prompt:
    return Prompt(id=pid, token_ids=ids, sha256=token_hash(ids), kind="tokens", category=category, **kw)


def topk_rows(tokens, margins=None, k: int = K, alt_base: int = 1000):
    """Top-K rows whose top-1 is the token itself, top-1 logprob -0.1, top-2 = top-1 - margin, then steps of 1 nat."""
    n = len(tokens)
    margins = np.full(n, 1.0) if margins is None else np.asarray(margins, dtype=float)
    ids = np.zeros((n, k), np.int32)
    lps = np.zeros((n, k), np.float32)
    for i, t in enumerate(tokens):
        ids[i] = [t, *[alt_base + i * 10 + j for j in range(k - 1)]]
        lps[i] = [-0.1, -0.1 - margins[i], *[-0.1 - margins[i] - 1.0 - j for j in range(k - 2)]]
    return ids, lps


def seq(pid, tokens, *, sample=0, ids=None, lps=None, logprobs=None, margins=None):
    tokens = np.asarray(tokens, np.int32)
    if ids is None:
        ids, lps = topk_rows(tokens, margins)
    logprobs = lps[:, 0] if logprobs is None else np.asarray(logprobs, np.float32)
    return SequenceResult(pid, sample, tokens, logprobs, ids, lps, "length")


def write_run(
    path: Path,
    prompts: list[Prompt],
    results: list[SequenceResult],
    *,
    k: int = K,
    kind: str = "generate",
    spec: RunSpec | None = None,
    completions: list[dict] | None = None,
    **extra,
) -> Path:
    """A complete run directory through the real RunWriter (one part)."""
    samples = 1 + max((r.sample for r in results), default=0)  # a complete run covers prompts x samples
    spec = spec or RunSpec(model="x", logprobs=k, sampling=SamplingSpec(samples=samples))
    manifest = {
        "kind": kind,
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
        "suite": {"name": "t", "hash": "h", "n_prompts": len(prompts)},
        "stack": {"stack": spec.stack, "resolved": {}},
        "parts_plan": {"0": len(results)},
        **extra,
    }
    w = RunWriter(path)
    w.create(manifest, prompts)
    comps = completions or [
        {
            "prompt_id": r.prompt_id,
            "sample": r.sample,
            "finish_reason": "length",
            "n_tokens": len(r.token_ids),
            "text": "",
            "analysis": None,
            "final": None,
            "timings": {},
        }
        for r in results
    ]
    w.write_part(0, results, comps)
    w.finish()
    return path


def scored_pair(tmp_path, delta, top1_flip_at=()):
    tokens = [5, 6, 7, 8]
    ids, lps = topk_rows(tokens)
    a = write_run(tmp_path / "a", [prompt("p0")], [seq("p0", tokens, ids=ids, lps=lps)])
    b = write_run(tmp_path / "b", [prompt("p0")], [seq("p0", [5, 6, 9, 8])])
    s_ids = ids.copy()
    for i in top1_flip_at:
        s_ids[i, [0, 1]] = s_ids[i, [1, 0]]
    s_lp = lps[:, 0] + np.asarray(delta, np.float32)
    src = {"path": str(a), "name": "a", "spec_hash": "x", "tokens_hash": "y"}
    s = write_run(
        tmp_path / "s",
        [prompt("p0")],
        [seq("p0", tokens, ids=s_ids, lps=lps, logprobs=s_lp)],
        kind="score",
        source_run=src,
    )
    return a, b, s
