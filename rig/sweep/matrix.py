"""The sweep's conclusion: every cell diffed against the reference with the floor-aware verdict, one row of metrics
per cell, and the JSON document that the terminal table and the heatmap page render.

Each cell's diff is exactly `rig diff REF CELL --floor REF REF_REPLICATE` (rig.analysis.compare.diff_paths); the
reference, its replicate and the floor pair are loaded and diffed once for the whole sweep instead of once per cell.
The first replicate is diffed against the reference without a floor (it is the floor); further replicates with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig import __version__
from rig.analysis.compare import task_level
from rig.analysis.diff import PairDiff, diff_runs
from rig.analysis.load import RunData, load_run
from rig.analysis.summary import Thresholds, diff_document
from rig.files import now_iso

SWEEP_VERSION = 1

# (key, column label, unit, which way is better: "high", "low" or None) for every metric of the matrix
METRICS: tuple[tuple[str, str, str, str | None], ...] = (
    ("share_identical", "identical", "share of sequences", "high"),
    ("confident", "confident", "sequences", "low"),
    ("near_tie", "near-tie", "sequences", None),
    ("tf_mean_abs_delta", "mean |d|", "nats", "low"),
    ("tf_max_abs_delta", "max |d|", "nats", "low"),
    ("accuracy", "accuracy", "share of prompts", "high"),
    ("tokens_per_s", "tok/s", "tokens per second", "high"),
    ("j_per_token", "J/tok", "joules per token", "low"),
)


class ReferenceDiffer:
    """Diffs cells against one reference run with one floor pair, loading and diffing those once."""

    def __init__(self, reference: Path, replicate: Path | None, thresholds: Thresholds = Thresholds(), seed: int = 0):
        self.reference = load_run(reference)
        self.thresholds, self.seed = thresholds, seed
        self.floor: PairDiff | None = None
        self.floor_task: dict[str, Any] | None = None
        if replicate is not None:
            self.floor = diff_runs(self.reference, load_run(replicate), decode_context=False)
            self.floor_task = task_level(self.floor, seed)

    def diff(self, cell: Path, *, with_floor: bool = True) -> dict[str, Any]:
        """The `rig diff` document of REF against `cell` (with the floor unless `with_floor` is False)."""
        run = load_run(cell)
        floor = self.floor if with_floor else None
        cross = diff_runs(self.reference, run, floor=floor)
        return diff_document(
            cross,
            floor=floor,
            thresholds=self.thresholds,
            task=task_level(cross, self.seed),
            floor_task=self.floor_task if floor is not None else None,
        )

    def reference_run(self) -> RunData:
        return self.reference


def run_metrics(manifest: dict[str, Any]) -> dict[str, Any]:
    """tokens_per_s (generated tokens over generation seconds) and j_per_token (where a GPU was sampled) of a run."""
    counts, timings = manifest.get("counts") or {}, manifest.get("timings") or {}
    tel = manifest.get("telemetry") or {}
    gen_s = timings.get("generate_s")
    tokens = counts.get("tokens")
    return {
        "tokens": tokens,
        "generate_s": gen_s,
        "tokens_per_s": round(tokens / gen_s, 3) if tokens and gen_s else None,
        "j_per_token": tel.get("generate_j_per_token")
        if tel.get("generate_j_per_token") is not None
        else tel.get("j_per_token"),
    }


def diff_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """The matrix columns a diff document gives, for its run B (the cell)."""
    s, tf, task = doc["summary"], doc.get("teacher_forced") or {}, doc.get("task") or {}
    return {
        "share_identical": s.get("share_identical"),
        "confident": s.get("confident"),
        "near_tie": s.get("near_tie"),
        "divergent": s.get("divergent"),
        "sequences": s.get("sequences"),
        "tf_mean_abs_delta": tf.get("mean_abs_delta"),
        "tf_max_abs_delta": tf.get("max_abs_delta"),
        "tf_source": tf.get("source"),
        "accuracy": task.get("accuracy_b"),
        "accuracy_ci95": task.get("accuracy_b_ci95"),
        "accuracy_diff": task.get("diff"),
        "accuracy_diff_ci95": task.get("ci95"),
    }


def reference_metrics(doc: dict[str, Any] | None) -> dict[str, Any]:
    """The reference row: agreement with itself, and its accuracy (run A of any of its diffs)."""
    task = (doc or {}).get("task") or {}
    return {
        "share_identical": 1.0,
        "confident": 0,
        "near_tie": 0,
        "tf_mean_abs_delta": 0.0,
        "tf_max_abs_delta": 0.0,
        "accuracy": task.get("accuracy_a"),
        "accuracy_ci95": task.get("accuracy_a_ci95"),
    }


def sweep_document(
    plan: dict[str, Any], rows: list[dict[str, Any]], *, executor: str, timings: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document of a sweep (docs/sweep.md, "The sweep document")."""
    cells = [r for r in rows if r["role"] == "cell"]
    diverged = [r["id"] for r in cells if (r.get("verdict") or {}).get("exit_code") == 1]
    failed = [r["id"] for r in rows if r["status"] in ("failed", "not run") or r.get("error")]
    skipped = [r["id"] for r in rows if r["status"] == "skipped"]
    ref = next(r for r in rows if r["role"] == "reference")
    if ref["status"] != "complete":
        exit_code, line = 2, f"the reference cell {ref['label']} is {ref['status']}: {ref.get('reason')}"
    elif failed:
        exit_code = 2
        line = f"INCOMPLETE: {len(failed)} cell(s) failed ({', '.join(failed[:3])}); run the same command to resume"
    elif diverged:
        exit_code = 1
        line = f"DIVERGED: {len(diverged)} of {len(cells)} cells differ from the reference beyond the floor"
    else:
        exit_code = 0
        ran = len(cells) - len([c for c in cells if c["status"] == "skipped"])
        line = f"AGREE: {ran} of {len(cells)} cells agree with the reference within the floor"
    if skipped:
        line += f"; {len(skipped)} skipped"
    return {
        "rig_sweep": SWEEP_VERSION,
        "rig_version": __version__,
        "created_at": now_iso(),
        "executor": executor,
        "axes": plan["axes"],
        "base": plan["base"],
        "reference": plan["reference"],
        "replicates": plan["replicates"],
        "suite": plan.get("suite"),
        "metrics": [{"key": k, "label": label, "unit": u, "better": b} for k, label, u, b in METRICS],
        "cells": rows,
        "timings": timings,
        "verdict": {"exit_code": exit_code, "line": line, "diverged": diverged, "failed": failed, "skipped": skipped},
    }
