"""Running a sweep: every cell through an executor (local: cell after cell; Ray: cells as tasks across boxes), then
every cell diffed against the reference, and the results written beside the runs.

    OUT/plan.json           the plan (rig.sweep.plan): base spec, axes, cells and their spec hashes
    OUT/runs/<cell>-<hash>  one ordinary run directory per cell (rig show, rig diff, rig report read them)
    OUT/diffs/<cell>.json   `rig diff REF CELL --floor REF REF_REPLICATE --json` of every complete cell
    OUT/sweep.json          the matrix and the verdicts (rig.sweep.matrix.sweep_document)
    OUT/sweep.html          the heatmap page (rig.report.sweep_html)

Running the same sweep again (or `rig sweep --resume OUT`) finds complete cells cached, resumes unfinished ones from
their last committed part, and retries failed ones; a lock file keeps two drivers out of one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rig.analysis.summary import Thresholds, dumps
from rig.errors import UserError
from rig.files import atomic_write_bytes
from rig.run.store import RunReader
from rig.run.suite import Suite
from rig.sweep.cells import Outcome, run_cell
from rig.sweep.matrix import ReferenceDiffer, diff_metrics, reference_metrics, run_metrics, sweep_document
from rig.sweep.plan import Cell, Plan, write_plan

LOCK_FILE = ".sweep.lock"
Report = Callable[[Cell, Outcome, int, int], None]


class Executor(Protocol):
    name: str

    def run(
        self, cells: list[Cell], out: Path, suite: Suite, telemetry_hz: float, report: Report
    ) -> dict[str, Outcome]:
        """Brings every cell's run directory (under `out`) to complete, skipped or failed; reports each cell."""


class LocalExecutor:
    """Cell after cell in this process, straight into the sweep directory. Stops after the reference if it cannot run
    (no cell can be judged without it)."""

    name = "local"

    def run(
        self, cells: list[Cell], out: Path, suite: Suite, telemetry_hz: float, report: Report
    ) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for i, cell in enumerate(cells):
            outcome = run_cell(cell.spec, out / cell.dir, suite, telemetry_hz=telemetry_hz)
            outcomes[cell.id] = outcome
            report(cell, outcome, i + 1, len(cells))
            if cell.role == "reference" and outcome.status != "complete":
                break
        return outcomes


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on OUT/.sweep.lock for the life of the driver (released by the OS if it is killed)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another rig sweep is running on this directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def run_sweep(
    plan: Plan,
    out: str | Path,
    suite: Suite,
    executor: Executor,
    *,
    telemetry_hz: float = 0.0,
    thresholds: Thresholds = Thresholds(),
    report: Report | None = None,
    html: bool = True,
) -> dict[str, Any]:
    """Runs (or continues) the sweep in `out` and returns its document (also written to OUT/sweep.json)."""
    out = Path(out)
    t0 = time.perf_counter()
    with sweep_lock(out):
        write_plan(plan, out)
        t_runs = time.perf_counter()
        outcomes = executor.run(list(plan.cells), out, suite, telemetry_hz, report or (lambda *a: None))
        t_diffs = time.perf_counter()
        runs_s = t_diffs - t_runs
        rows = _judge(plan, out, outcomes, thresholds)
        t_end = time.perf_counter()
        ran = [o for o in outcomes.values() if o.ran in ("new", "resumed")]
        # Driver overhead: everything but the runs themselves. Locally the runs are the cells' own wall time (tries
        # that were skipped or failed included; a cached cell's check is the driver's); with Ray, the cells overlap,
        # so the whole run phase counts as runs.
        tried = [o for o in outcomes.values() if o.ran != "cached"]
        run_time = sum(o.wall_s for o in tried) if executor.name == "local" else runs_s
        driver_s = (t_end - t0) - run_time
        timings = {
            "total_s": round(t_end - t0, 3),
            "run_phase_s": round(runs_s, 3),
            "runs_s": round(run_time, 3),
            "diff_s": round(t_end - t_diffs, 3),
            "driver_s": round(driver_s, 3),
            "driver_s_per_cell": round(driver_s / max(len(plan.cells), 1), 4),
            "cells_run": len(ran),
            "cells_tried": len(tried),
        }
        doc = sweep_document(plan.to_dict(), rows, executor=executor.name, timings=timings)
        atomic_write_bytes(out / "sweep.json", (dumps(doc) + "\n").encode())
        if html:
            from rig.report.sweep_html import render_page

            atomic_write_bytes(out / "sweep.html", render_page(doc).encode())
    return doc


def _judge(plan: Plan, out: Path, outcomes: dict[str, Outcome], thresholds: Thresholds) -> list[dict[str, Any]]:
    """One row per cell: its outcome, its run's speed and energy, its diff against the reference and the verdict."""
    ref = plan.reference
    replicas = [c for c in plan.replicas if _complete(outcomes.get(c.id))]
    differ = None
    ref_error = None
    if _complete(outcomes.get(ref.id)):
        try:
            differ = ReferenceDiffer(out / ref.dir, out / replicas[0].dir if replicas else None, thresholds)
        except UserError as exc:  # a damaged reference or replicate: no cell can be judged
            ref_error = str(exc).splitlines()[0]
    (out / "diffs").mkdir(exist_ok=True)
    rows = []
    first_doc = None
    for cell in plan.cells:
        outcome = outcomes.get(cell.id) or Outcome("not run", reason="the reference cell could not run")
        row: dict[str, Any] = {**_cell_head(cell), **outcome.to_dict()}
        row.pop("detail", None)
        if outcome.status == "complete":
            row.update(run_metrics(RunReader(out / cell.dir, check_parts=False).manifest))
            if differ is None:
                row["error"] = ref_error or "the reference did not complete"
            elif cell.role != "reference":
                first_replica = cell.role == "replicate" and cell.id == replicas[0].id
                try:
                    doc = differ.diff(out / cell.dir, with_floor=not first_replica)
                except UserError as exc:
                    row["error"] = str(exc).splitlines()[0]
                else:
                    first_doc = first_doc or doc
                    atomic_write_bytes(out / "diffs" / f"{cell.id}.json", (dumps(doc) + "\n").encode())
                    row["metrics"] = diff_metrics(doc)
                    row["verdict"] = {k: doc["verdict"][k] for k in ("exit_code", "line")}
                    row["diff"] = f"diffs/{cell.id}.json"
        rows.append(row)
    for row in rows:
        if row["role"] == "reference" and row["status"] == "complete":
            row["metrics"] = reference_metrics(first_doc)
            row["verdict"] = {"exit_code": 0, "line": "the reference"}
        for key in ("tokens_per_s", "j_per_token"):
            if "metrics" in row and key in row:
                row["metrics"][key] = row[key]
    return rows


def _complete(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.status == "complete"


def _cell_head(cell: Cell) -> dict[str, Any]:
    return {
        "id": cell.id,
        "label": cell.label,
        "role": cell.role,
        "values": cell.values,
        "replica": cell.replica,
        "dir": cell.dir,
        "spec_hash": cell.spec.hash(),
        "stack": cell.spec.stack,
    }
