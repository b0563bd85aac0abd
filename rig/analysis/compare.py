"""The library entry point behind `rig diff`: load two runs (and a floor pair), diff them, decide the verdict.

    doc = diff_paths("runs/hf", "runs/vllm", scored="runs/vllm-on-hf", floor=("runs/hf", "runs/hf2"))
    doc["verdict"]["exit_code"]                      # 0 within thresholds, 1 divergent beyond them

summary.py holds the aggregates, the floor table and the verdict; rig.report renders the document. Nothing here
imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rig.analysis.diff import PairDiff, diff_runs
from rig.analysis.load import RunData, load_run
from rig.analysis.scoring import compare_task, score_run
from rig.analysis.summary import Thresholds, diff_document

ProgressFactory = Callable[[str], Callable[[int, int], None]]


def _load(path: str | Path, progress: ProgressFactory | None) -> RunData:
    return load_run(path, progress(f"loading {Path(path).name}") if progress else None)


def task_level(pair: PairDiff, seed: int = 0) -> dict[str, Any] | None:
    """Task-level comparison of a pair over its compared prompts (None when no prompt has a reference)."""
    keep = set(pair.common)
    return compare_task(score_run(pair.a.reader, keep), score_run(pair.b.reader, keep), seed=seed)


def diff_paths(
    a: str | Path,
    b: str | Path,
    *,
    scored: str | Path | None = None,
    floor: Sequence[str | Path] | None = None,
    floor_scored: str | Path | None = None,
    tau: float | None = None,
    force: bool = False,
    thresholds: Thresholds = Thresholds(),
    seed: int = 0,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Loads the runs, diffs A against B (and the floor pair), and returns the JSON-ready document with its verdict.

    Raises UserError (rig.errors) for runs that cannot be compared, before anything is written.
    """
    run_a, run_b = _load(a, progress), _load(b, progress)
    run_s = _load(scored, progress) if scored else None
    floor_pair = None
    if floor:  # first: the cross pair's tau and spikes take the floor's own noise into account
        fa = run_a if Path(floor[0]).resolve() == Path(a).resolve() else _load(floor[0], progress)
        fb = _load(floor[1], progress)
        fs = _load(floor_scored, progress) if floor_scored else None
        floor_pair = diff_runs(fa, fb, tau=tau, force=force, scored=fs, decode_context=False)
    cross = diff_runs(run_a, run_b, tau=tau, force=force, scored=run_s, floor=floor_pair)
    return diff_document(
        cross,
        floor=floor_pair,
        thresholds=thresholds,
        task=task_level(cross, seed),
        floor_task=task_level(floor_pair, seed) if floor_pair else None,
    )


__all__ = ["ProgressFactory", "Thresholds", "diff_paths", "task_level"]
