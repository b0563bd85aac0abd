"""One cell of a sweep into its run directory: cached when complete, resumed when a kill left it unfinished, new
otherwise, and skipped (with the stack's one-line reason) when the stack refuses the setting before it has committed
anything: a UserError, or the ValueError or NotImplementedError a library raises for a setting it does not support.

Both executors call `run_cell`: the local one in the sweep's own directory, the Ray task in a scratch directory on its
node (rig.sweep.ray_exec copies the committed parts back to the driver as they are written).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.run.spec import RunSpec
from rig.run.store import RunError, RunReader
from rig.run.suite import Suite

MANIFEST = "manifest.json"
# What libraries raise for a setting they do not support (Transformers: sdpa or flex attention for gpt-oss on a CPU;
# vLLM's worker reports the same kinds as UserError): a refusal, like the stacks' own UserError.
REFUSALS = (ValueError, NotImplementedError)
MAX_REASON = 300


@dataclass
class Outcome:
    """What happened to one cell."""

    status: str  # "complete", "skipped" (the stack cannot run this setting), "failed" (resumable) or "not run"
    ran: str | None = None  # "new", "resumed", "cached" (complete cells)
    reason: str | None = None  # skipped or failed: the one-line message
    wall_s: float = 0.0  # time spent on this cell by its executor (load, generation, writing)
    detail: str | None = None  # failed cells: the traceback, when the failure was not a UserError

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_state(out: Path, spec_hash: str) -> str | None:
    """The status of the run in `out` ("complete", "running", "failed"), or None when there is none.

    A directory without a manifest holds nothing committed (a kill between mkdir and the first manifest write) and is
    cleared. A run of another spec is refused: the directory names carry the spec hash, so that is tampering.
    """
    path = out / MANIFEST
    if not path.exists():
        if out.exists():
            shutil.rmtree(out)
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot be read ({exc})") from None
    if manifest.get("spec_hash") != spec_hash:
        raise UserError(f"{out}: holds a run of spec {manifest.get('spec_hash')}, not {spec_hash}")
    return manifest.get("status")


def _first_line(exc: BaseException) -> str:
    """The exception's first line (UserError's own text; others prefixed with their type), at most MAX_REASON."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if not isinstance(exc, UserError):
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def committed_parts(out: Path) -> int:
    """Parts with an integrity record in the run's manifest (what a resume keeps)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return 0
    return len(((manifest.get("integrity") or {}).get("parts")) or {})


def run_cell(
    spec: RunSpec,
    out: Path,
    suite: Suite,
    *,
    telemetry_hz: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Brings the cell's run directory to complete (or says why it cannot). Never raises for a stack's failure or
    refusal; raises UserError when `out` holds a run of another spec."""
    from rig.run.runner import execute

    t0 = time.perf_counter()
    out = Path(out)
    state = run_state(out, spec.hash())  # raises (exit 2) when the directory holds another spec's run: never touched
    try:
        if state == "complete":
            try:
                RunReader(out)  # sha256 of every part against its record: a damaged run is repaired below
                return Outcome("complete", "cached", wall_s=time.perf_counter() - t0)
            except RunError:
                state = "damaged"
        if state is not None:
            execute(None, out, resume=True, telemetry_hz=telemetry_hz, progress=progress)
            ran = "resumed"
        else:
            execute(spec, out, suite=suite, telemetry_hz=telemetry_hz, progress=progress)
            ran = "new"
    except (UserError, *REFUSALS) as exc:
        # The stack refused the setting before committing anything (at load, or at its first batch): skipped, and
        # the empty run directory goes (a later sweep tries again). After committed parts: a failed, resumable run.
        reason = _first_line(exc)
        if committed_parts(out) == 0:
            shutil.rmtree(out, ignore_errors=True)
            return Outcome("skipped", reason=reason, wall_s=time.perf_counter() - t0)
        return Outcome("failed", reason=reason, wall_s=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a stack crash fails this cell; the sweep goes on and can resume it
        return Outcome(
            "failed", reason=_first_line(exc), wall_s=time.perf_counter() - t0, detail=traceback.format_exc()
        )
    return Outcome("complete", ran, wall_s=time.perf_counter() - t0)
