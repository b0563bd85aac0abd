"""Recording a candidate's run in its own environment, and judging it against the reference: one step of a bisect.

A step's run happens in a child process (`ENV/bin/python -m rig.bisect.worker`), for three reasons: the candidate's
packages live in another environment; a candidate that cannot import or crashes must become a skip, never a crash of
the bisect; and each run starts from a clean process (a stack's memory, threads and torch state do not carry over).
The child dies with its parent (PR_SET_PDEATHSIG on Linux), so killing a bisect never leaves a run writing behind it.

The verdict is `rig diff`'s, floor-aware: the candidate against the reference, with a replicate of the reference as
the floor (docs/metrics.md, "The verdict and exit codes"). Exit codes follow `git bisect run`: 0 good, 1 bad, 125 skip
(could not build or run: never blamed), 128 abort (bad input or a bug: anything but 0-127 stops `git bisect`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.analysis.summary import Thresholds
from rig.bisect.search import BAD, GOOD, SKIP
from rig.bisect.state import env_for_child
from rig.errors import UserError
from rig.files import atomic_write_json

EXIT_GOOD, EXIT_BAD, EXIT_SKIP, EXIT_ABORT = 0, 1, 125, 128
EXIT_FOR = {GOOD: EXIT_GOOD, BAD: EXIT_BAD, SKIP: EXIT_SKIP}
LOG_TAIL_LINES = 6


# ---- the prompts every step generates from ----------------------------------------------------------------------


def write_suite_file(path: Path, suite: Any) -> Path:
    """suite.json: the suite's manifest entry and its rendered prompts (token IDs), for the workers to rebuild it."""
    atomic_write_json(path, {"entry": suite.manifest_entry(), "prompts": [p.to_json() for p in suite.prompts]})
    return path


def suite_file_from_run(path: Path, run: Path) -> Path:
    """suite.json holding exactly the prompts of a recorded run (same IDs, token IDs and suite hash)."""
    from rig.run.store import RunReader

    reader = RunReader(run)
    atomic_write_json(path, {"entry": reader.manifest["suite"], "prompts": list(reader.prompts.values())})
    return path


def load_suite_file(path: Path) -> Any:
    from rig.run.suite import Prompt, RenderOptions, Suite

    data = json.loads(Path(path).read_text())
    entry = data["entry"]
    return Suite(
        name=entry["name"],
        prompts=tuple(Prompt.from_json(p) for p in data["prompts"]),
        render=RenderOptions(**entry.get("render", {})),
        hash=entry["hash"],
    )


# ---- recording a run in a child process -------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What recording one run gave: ok, or the reason it could not run (the tail of its log)."""

    ok: bool
    path: str
    seconds: float
    reason: str = ""
    probe: dict[str, Any] = field(default_factory=dict)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def record(
    python: str | Path,
    spec: dict[str, Any],
    out: Path,
    suite_file: Path,
    log: Path,
    *,
    probe: tuple[str, ...] = (),
    timeout_s: float | None = None,
    telemetry_hz: float = 0.0,
) -> RunOutcome:
    """Record (or finish, or reuse) the run of `spec` into `out` with the interpreter `python`; never raises for a
    candidate that cannot run: the outcome says why, and the log holds everything it printed."""
    out = Path(out)
    if _complete(out):
        return RunOutcome(True, str(out), 0.0, probe=_read_json(log.with_name(f"{log.stem}.probe.json")))
    request = log.with_name(f"{log.stem}.request.json")
    probe_path = log.with_name(f"{log.stem}.probe.json")
    atomic_write_json(
        request,
        {
            "spec": spec,
            "out": str(out),
            "suite_file": str(suite_file),
            "probe": list(probe),
            "probe_out": str(probe_path),
            "telemetry_hz": telemetry_hz,
        },
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {python} -m rig.bisect.worker {request}\n")
        fh.flush()
        try:
            proc = subprocess.Popen(
                [str(python), "-m", "rig.bisect.worker", str(request)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env_for_child(),
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            return RunOutcome(False, str(out), 0.0, f"cannot start {python}: {exc}")
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return RunOutcome(False, str(out), time.perf_counter() - t0, f"timed out after {timeout_s:.0f} s")
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    seconds = time.perf_counter() - t0
    probe_info = _read_json(probe_path)
    if rc != 0 or not _complete(out):
        return RunOutcome(False, str(out), seconds, f"exit {rc}: {log_tail(log)}", probe_info)
    return RunOutcome(True, str(out), seconds, probe=probe_info)


def _complete(run: Path) -> bool:
    try:
        return json.loads((run / "manifest.json").read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last meaningful lines of a log, joined on one line (progress bars and blank lines dropped)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln.strip() for ln in text if ln.strip() and "\r" not in ln and not ln.startswith("$ ")]
    return " | ".join(keep[-lines:])[-600:]


# ---- the verdict ------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A candidate judged against the reference: good, bad or skip, with the sentence and counts behind it."""

    outcome: str
    line: str
    sequences: int = 0
    identical: int = 0
    divergent: int = 0
    confident: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FOR[self.outcome]

    def brief(self) -> str:
        """'(5 of 6 splits confident; 2 of 8 sequences identical)' or the drift that failed it."""
        if self.outcome == SKIP:
            return f"(skipped: {self.line})"
        parts = []
        if self.divergent:
            parts.append(f"{self.confident} of {self.divergent} splits confident")
        parts.append(f"{self.identical} of {self.sequences} sequences identical")
        drift = next((f for f in self.failed if f.get("metric") == "drift_vs_floor"), None)
        if drift:
            parts.append(f"drift {drift['value']:.3g} nats over the floor, p={drift.get('p', float('nan')):.2g}")
        return "(" + "; ".join(parts) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}

    @classmethod
    def skip(cls, reason: str) -> Verdict:
        return cls(SKIP, reason)


def judge(
    reference: str | Path,
    candidate: str | Path,
    floor: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    tau: float | None = None,
    json_path: Path | None = None,
) -> Verdict:
    """`rig diff REFERENCE CANDIDATE --floor REFERENCE FLOOR` as a Verdict; UserError when they cannot be compared.

    A candidate directory that fails its checks is a skip (it did not produce a readable run).
    """
    from rig.analysis.compare import diff_paths
    from rig.analysis.summary import dumps
    from rig.run.store import RunError

    try:
        doc = diff_paths(
            reference,
            candidate,
            floor=(reference, floor) if floor else None,
            thresholds=thresholds,
            tau=tau,
        )
    except RunError as exc:
        if Path(str(exc).split(":")[0]).resolve().is_relative_to(Path(candidate).resolve()):
            return Verdict.skip(f"the candidate run is unreadable: {exc}")
        raise
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(dumps(doc) + "\n")
    s, v = doc["summary"], doc["verdict"]
    return Verdict(
        BAD if v["exit_code"] else GOOD,
        v["line"],
        sequences=int(s.get("sequences") or 0),
        identical=int(s.get("identical") or 0),
        divergent=int(s.get("divergent") or 0),
        confident=int(s.get("confident") or 0),
        failed=v.get("failed") or [],
    )


def thresholds_from(opts: dict[str, Any]) -> Thresholds:
    """Thresholds from the CLI's verdict options (the same names and meaning as `rig diff`'s)."""
    mc = opts.get("max_confident", 0)
    return Thresholds(
        max_divergent_share=opts.get("max_divergent_share"),
        max_confident=None if mc is not None and mc < 0 else mc,
        max_mean_abs_delta=opts.get("max_mean_abs_delta"),
        alpha=opts.get("alpha", 0.01),
        min_effect=opts.get("min_effect"),
    )


def spec_and_suite(spec_arg: str, suite_arg: str | None, suite_out: Path) -> dict[str, Any]:
    """The spec dict from a TOML file or a run directory, and suite.json written for it.

    A run directory gives its spec and its prompts (so the bisect regenerates exactly what it generated); a TOML file
    gives the spec and `--suite` (default "default") the prompts.
    """
    from rig.run.spec import load_spec
    from rig.run.suite import load_suite

    path = Path(spec_arg)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise UserError(f"{spec_arg}: neither a TOML spec file nor a run directory")
        manifest = json.loads(manifest_path.read_text())
        if suite_arg:
            write_suite_file(suite_out, load_suite(suite_arg))
        else:
            suite_file_from_run(suite_out, path)
        return manifest["spec"]
    spec = load_spec(path)
    write_suite_file(suite_out, load_suite(suite_arg or "default"))
    return spec.to_dict()


def python_of(env_python: str | None) -> str:
    return env_python or sys.executable
