"""Running one suite on many endpoints: remote ones concurrently, local ones one after another, all resumable.

A provider comparison is only as good as its weakest run: one endpoint that times out half-way must not cost the
others their results, and rerunning the command must finish what is missing without redoing what is done. So every
endpoint records into its own run directory under OUT/runs/NAME (rig.run.runner, one part per batch), and on a rerun
each directory is reused when complete, resumed when failed or killed, and refused (before anything runs) when it was
recorded with another spec or suite, unless --force. Endpoints whose stack computes on this machine (hf, vllm: the
class fact `gpu_telemetry`) run one after another, since they compete for the same CPU or GPU; the others (openai,
stub) run in a thread each, alongside. Each endpoint other than the reference also teacher-forces the reference's
tokens (OUT/scored/NAME, `rig score`) where its stack can, with the same loaded stack.

What happened to each endpoint, attempt by attempt (action, tokens, generation seconds, request and retry counts, the
error line), is returned as `Outcome`s and kept in OUT/compare.json across reruns.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.compare.endpoints import CompareConfig, Endpoint
from rig.errors import UserError
from rig.files import now_iso
from rig.run.store import RunReader
from rig.run.suite import Suite

ProgressFactory = Callable[[str], Callable[[int, int], None]]


class Interrupted(Exception):
    """Raised inside a thread's run when the command was interrupted: the run is marked failed, and resumable."""


@dataclass
class Outcome:
    """One endpoint's state: its run, its scored run of the reference, and every attempt at them."""

    name: str
    run: str
    scored: str | None = None
    status: str = "pending"  # complete, failed, skipped
    error: str | None = None
    score_status: str | None = None  # complete, failed, unsupported, skipped (the reference failed)
    score_error: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return RunReader(path, check_parts=False).manifest
    except Exception:  # noqa: BLE001 - an unreadable directory is handled as "not ours" by the caller
        return None


def plan_run(path: Path, spec_hash: str, suite_hash: str, force: bool) -> str:
    """new, reused, resume or rerun for a run directory; UserError when it holds another spec's or suite's run."""
    if not path.exists() or not any(path.iterdir()):
        return "new"
    m = _manifest(path)
    same = m is not None and m.get("spec_hash") == spec_hash and (m.get("suite") or {}).get("hash") == suite_hash
    if not same:
        if force:
            return "rerun"
        what = (
            "an unreadable run"
            if m is None
            else f"spec {m.get('spec_hash')}, suite {(m.get('suite') or {}).get('hash')}"
        )
        raise UserError(
            f"{path} holds {what}, not spec {spec_hash} on suite {suite_hash}; pass --force to rerun it, or use "
            "another --out"
        )
    return "reused" if m.get("status") == "complete" else "resume"


class Driver:
    """Runs every endpoint of a CompareConfig on a suite into OUT; see the module docstring."""

    def __init__(
        self,
        config: CompareConfig,
        suite: Suite,
        out: str | Path,
        *,
        score: bool = True,
        force: bool = False,
        telemetry_hz: float = 0.0,
        previous: dict[str, Any] | None = None,
        log: Callable[[str], None] = lambda line: None,
        progress: ProgressFactory | None = None,
    ):
        self.config, self.suite, self.out = config, suite, Path(out)
        self.score, self.force, self.telemetry_hz = score, force, telemetry_hz
        self.log, self.progress = log, progress
        self.outcomes = {
            e.name: Outcome(e.name, str(self.out / "runs" / e.name), attempts=list(_previous_attempts(previous, e)))
            for e in config.endpoints
        }
        self._ref_done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.plans = {e.name: plan_run(self.run_dir(e), e.spec.hash(), suite.hash, force) for e in config.endpoints}

    def run_dir(self, e: Endpoint) -> Path:
        return self.out / "runs" / e.name

    def scored_dir(self, e: Endpoint) -> Path:
        return self.out / "scored" / e.name

    # ---- scheduling ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Outcome]:
        """Runs every endpoint (remote ones in threads, local ones here, the reference first in its group)."""
        ref = self.config.reference
        ordered = sorted(self.config.endpoints, key=lambda e: e.name != ref)
        remote = [e for e in ordered if not e.local]
        local = [e for e in ordered if e.local]
        with ThreadPoolExecutor(max_workers=max(1, len(remote)), thread_name_prefix="rig-compare") as pool:
            futures = [pool.submit(self._job, e) for e in remote]
            try:
                for e in local:
                    self._job(e)
            except BaseException:  # Ctrl-C: the threads stop after their batch in flight (their runs stay resumable)
                self._stop.set()
                raise
            finally:
                if not self._ref_done.is_set() and all(e.name != ref for e in remote):
                    self._ref_done.set()  # stopped before the reference ran: release the waiting threads
            for f in futures:
                f.result()
        return self.outcomes

    def _progress(self, name: str) -> Callable[[int, int], None]:
        """The runner's per-batch callback: reports progress, and stops the run once the command is interrupted."""
        bar = self.progress(name) if self.progress else None

        def update(done: int, total: int) -> None:
            if self._stop.is_set():
                raise Interrupted("interrupted (rig compare was stopped); rerun to resume")
            if bar:
                bar(done, total)

        return update

    def _job(self, e: Endpoint) -> None:
        out = self.outcomes[e.name]
        is_ref = e.name == self.config.reference
        stack = None
        try:
            try:
                stack = self._generate(e, out)
            finally:
                if is_ref:
                    self._ref_done.set()
            if not is_ref and self.score and out.status == "complete":
                self._ref_done.wait()
                stack = self._score(e, out, stack)
        finally:
            if stack is not None:
                stack.close()

    def _load(self, e: Endpoint) -> Any:
        from rig.stacks import get_stack

        stack = get_stack(e.spec.stack)(e.spec)
        stack.load()
        return stack

    # ---- one endpoint -------------------------------------------------------------------------------------------
    def _generate(self, e: Endpoint, out: Outcome) -> Any:
        """Generates (or resumes, or reuses) the endpoint's run; returns the loaded stack (or None)."""
        from rig.run import runner

        action, path = self.plans[e.name], self.run_dir(e)
        if action == "reused":
            out.status = "complete"
            self.log(f"{e.name}: complete run reused ({path})")
            return None
        before = ((_manifest(path) or {}).get("counts") or {}).get("tokens", 0) if action == "resume" else 0
        attempt: dict[str, Any] = {"action": action, "at": now_iso(), "tokens_before": before}
        stack = None
        self.log(f"{e.name}: {'resuming' if action == 'resume' else 'starting'} {e.spec.stack} run")
        try:
            stack = self._load(e)
            bar = self._progress(e.name)
            if action == "resume":
                runner.execute(None, path, resume=True, telemetry_hz=self.telemetry_hz, progress=bar, stack=stack)
            else:
                runner.execute(
                    e.spec,
                    path,
                    suite=self.suite,
                    force=action == "rerun",
                    telemetry_hz=self.telemetry_hz,
                    progress=bar,
                    stack=stack,
                )
            out.status, out.error = "complete", None
        except Exception as exc:  # noqa: BLE001 - one endpoint's failure must not cost the others their results
            out.status, out.error = "failed", _line(exc)
            attempt["error"] = out.error
            self._write_log(e, exc)
            self.log(f"{e.name}: FAILED: {out.error}")
        m = _manifest(path) or {}
        attempt["tokens"] = ((m.get("counts") or {}).get("tokens", 0) or 0) - before
        attempt["generate_s"] = (m.get("timings") or {}).get("generate_s") if out.status == "complete" else None
        attempt["requests"] = _requests(stack, m)
        with self._lock:
            out.attempts.append(attempt)
        if out.status == "complete":
            self.log(f"{e.name}: complete ({(m.get('counts') or {}).get('sequences')} sequences)")
        return stack

    def _score(self, e: Endpoint, out: Outcome, stack: Any) -> Any:
        """Teacher-forces the reference's tokens under this endpoint's stack into OUT/scored/NAME."""
        from rig.run import runner

        ref = self.outcomes[self.config.reference]
        if ref.status != "complete":
            out.score_status = "skipped"
            return stack
        path = self.scored_dir(e)
        source = RunReader(self.run_dir(self.config.endpoint(self.config.reference)))
        m = _manifest(path) if path.exists() else None
        same = m is not None and (m.get("source_run") or {}).get("tokens_hash") == source.tokens_hash()
        same = same and m.get("spec_hash") == e.spec.hash()
        out.scored = str(path)
        if same and m.get("status") == "complete":
            out.score_status = "complete"
            return stack
        try:
            stack = stack or self._load(e)
            if same:
                runner.execute(None, path, resume=True, telemetry_hz=0, stack=stack)
            else:
                runner.execute(e.spec, path, source=source, force=True, telemetry_hz=0, stack=stack)
            out.score_status, out.score_error = "complete", None
        except Exception as exc:  # noqa: BLE001 - e.g. a chat-only endpoint cannot score; the run still stands
            unsupported = isinstance(exc, UserError) and "only chat" in str(exc)
            out.score_status, out.score_error = ("unsupported" if unsupported else "failed"), _line(exc)
            self._write_log(e, exc, what="score")
            self.log(f"{e.name}: teacher-forcing the reference failed: {out.score_error}")
        return stack

    def _write_log(self, e: Endpoint, exc: BaseException, what: str = "run") -> None:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with open(logs / f"{e.name}.log", "a", encoding="utf-8") as f:
            f.write(f"--- {now_iso()} {what} failed\n{text}\n")


def _line(exc: BaseException) -> str:
    """One line for an error: a UserError's message, or any other exception's type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, UserError):
        return text or "error"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _requests(stack: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The openai stack's request counts ({"requests", "retries", "failed"}) for this attempt, or None."""
    if stack is not None:
        try:
            req = stack.describe().get("requests")
        except Exception:  # noqa: BLE001 - describe() of a stack that failed to load
            req = None
        if req:
            return dict(req)
    return (manifest.get("stack") or {}).get("requests")


def _previous_attempts(previous: dict[str, Any] | None, e: Endpoint) -> list[dict[str, Any]]:
    """Attempts recorded by earlier invocations for this endpoint with the same spec (else none)."""
    for ep in (previous or {}).get("endpoints") or []:
        if ep.get("name") == e.name and ep.get("spec_hash") == e.spec.hash():
            return list((ep.get("outcome") or {}).get("attempts") or [])
    return []
