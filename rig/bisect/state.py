"""The bisect directory: every step's run, verdict and log, and a JSON state that makes a killed bisect resumable.

    BISECT_DIR/
      bisect.json        mode, the arguments that define the search, the reference and floor runs, every step
                         (key, label, outcome, verdict line, run, log, seconds) and, at the end, the result
      suite.json         the prompts every run of this bisect generates from (the reference's, token IDs and all)
      runs/KEY/          one run directory per step (KEY: a spec hash, "transformers-5.3.0", a commit, a date)
      logs/KEY.log       what building the step's environment and recording its run printed
      verdicts/KEY.json  the step's verdict and summary counts against the reference (with the floor)
      diff.json, report.html, summary.md       written when the search ends (rig.bisect.summary)

bisect.json is rewritten atomically after every step, so a kill at any moment loses at most the step in progress,
whose run then resumes from its last complete part. Rerunning the same command on the same directory resumes; a
different search in the same directory is refused. A lock file keeps two bisects out of one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from rig.errors import UserError
from rig.files import atomic_write_json, now_iso

STATE_VERSION = 1


class BisectDir:
    """One bisect's directory and its state. Use `open()` as a context manager (it holds the lock)."""

    def __init__(self, path: str | Path, mode: str, args: dict[str, Any], console: Console | None = None):
        self.path = Path(path).resolve()
        self.mode = mode
        self.args = args
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.state: dict[str, Any] = {}
        self._lock_fh: Any = None
        self._t0 = time.perf_counter()

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    @contextmanager
    def open(self) -> Iterator[BisectDir]:
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("runs", "logs", "verdicts"):
            (self.path / sub).mkdir(exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "w")  # noqa: SIM115 - held for the whole bisect
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise UserError(f"{self.path}: another bisect is running in this directory") from None
        try:
            self._load_or_create()
            yield self
        finally:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    def _load_or_create(self) -> None:
        state_path = self.path / "bisect.json"
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except json.JSONDecodeError:
                raise UserError(f"{state_path}: not valid JSON; remove the directory to start over") from None
            if state.get("mode") != self.mode or state.get("args") != _jsonable(self.args):
                raise UserError(
                    f"{self.path} holds another bisect ({state.get('mode')}: {_brief(state.get('args'))}); "
                    "use another --dir, or delete it to start over"
                )
            self.state = state
            done = sum(1 for s in state["steps"].values() if s.get("outcome"))
            if done:
                self.console.print(f"[bold]resuming[/] {self.path}: {done} step(s) already done are reused")
        else:
            self.state = {
                "rig_bisect": STATE_VERSION,
                "mode": self.mode,
                "args": _jsonable(self.args),
                "created_at": now_iso(),
                "steps": {},
                "order": [],
                "result": None,
            }
            self.save()

    def reload(self) -> None:
        """Re-reads the state (another process, such as a `git bisect run` step, wrote it)."""
        self.state = json.loads((self.path / "bisect.json").read_text())

    def save(self) -> None:
        self.state["updated_at"] = now_iso()
        atomic_write_json(self.path / "bisect.json", self.state)

    def write_verdict(self, key: str, verdict: Any, **extra: Any) -> None:
        """verdicts/KEY.json: the step's verdict and what it was run with."""
        atomic_write_json(self.verdict_path(key), {"key": key, **verdict.to_dict(), **extra})

    # ---- paths --------------------------------------------------------------------------------------------------
    def run_dir(self, key: str) -> Path:
        return self.path / "runs" / key

    def log_path(self, key: str) -> Path:
        return self.path / "logs" / f"{key}.log"

    def verdict_path(self, key: str) -> Path:
        return self.path / "verdicts" / f"{key}.json"

    # ---- steps --------------------------------------------------------------------------------------------------
    def step(self, key: str) -> dict[str, Any] | None:
        """The recorded step (None when never started)."""
        return self.state["steps"].get(key)

    def outcome(self, key: str) -> str | None:
        """good / bad / skip of a finished step, else None."""
        s = self.step(key)
        return s.get("outcome") if s else None

    def begin(self, key: str, label: str, **info: Any) -> dict[str, Any]:
        step = self.state["steps"].setdefault(key, {"key": key, "label": label})
        step.update(info, label=label, started_at=now_iso())
        if key not in self.state["order"]:
            self.state["order"].append(key)
        self.save()
        return step

    def finish(self, key: str, outcome: str, **info: Any) -> dict[str, Any]:
        step = self.state["steps"][key]
        step.update(info, outcome=outcome, finished_at=now_iso())
        self.save()
        return step

    def forget_skips(self) -> int:
        """Drops the verdict of every skipped step (a transient failure), so that a resumed bisect tests it again."""
        n = 0
        for step in self.state["steps"].values():
            if step.get("outcome") == "skip":
                step.pop("outcome")
                step["retried"] = step.get("retried", 0) + 1
                n += 1
        if n:
            self.save()
            self.note(f"{n} skipped step(s) will be tested again")
        return n

    def set(self, name: str, value: Any) -> None:
        self.state[name] = _jsonable(value)
        self.save()

    # ---- progress -----------------------------------------------------------------------------------------------
    def report_step(self, label: str, outcome: str, line: str, left: int | None, window: str = "") -> None:
        """One progress line: steps done and (at most) left (None: unknown), the step's outcome and the window."""
        done = sum(1 for s in self.state["steps"].values() if s.get("outcome"))
        colour = {"good": "green", "bad": "red", "skip": "yellow"}.get(outcome, "white")
        elapsed = time.perf_counter() - self._t0
        left_text = "" if left is None else (f"{left} left, " if left else "none left, ")
        self.console.print(
            f"[bold]step {done}[/] ({left_text}{elapsed:.0f} s) {label}: [{colour}]{outcome}[/]"
            + (f"  {window}" if window else "")
        )
        if line:
            self.console.print(f"    {line}", highlight=False, markup=False)

    def note(self, text: str, markup: bool = True) -> None:
        self.console.print(text, highlight=False, markup=markup)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _brief(args: Any) -> str:
    if not isinstance(args, dict):
        return "?"
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items()) if v not in (None, [], ""))[:160]


def env_for_child() -> dict[str, str]:
    """The environment a step's child process gets: ours, without what would let the parent's packages leak in."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
