"""One step of a software bisect (build the candidate's environment, record its run, judge it), and the ordered search
over versions or dates that uses it: both endpoints re-tested first, then bisection with skips.

The reference is the good endpoint's own run, recorded in the good environment, and the floor a second run of it
there (two runs of one spec: what the stack's own noise looks like), so every candidate is judged exactly as `rig
diff REFERENCE CANDIDATE --floor REFERENCE REPLICATE` would judge it. A candidate whose environment cannot be built,
whose run fails, or whose interpreter imports another version than the one asked for is skipped, never blamed; an
endpoint that cannot be built or run ends the bisect with one line (nothing can be concluded without it).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.analysis.summary import Thresholds
from rig.bisect.envs import Base, Env, EnvError
from rig.bisect.runs import Verdict, judge, record
from rig.bisect.search import BAD, GOOD, SKIP, bisect_ordered, steps_left
from rig.bisect.state import BisectDir
from rig.errors import UserError

REFERENCE, FLOOR = "reference", "floor"
BASE_RETRIES = 3


@dataclass
class Candidate:
    """A version, date or commit: how to build its environment and what its interpreter must import."""

    key: str  # file-name safe: names the run directory, the log and the verdict
    label: str  # for people: "transformers 5.3.0"
    build: Callable[[], Env]
    expect: dict[str, str] = field(default_factory=dict)  # package -> version the probe must find ("*": any)


class Stepper:
    """Runs and judges candidates for one bisect directory; every answer is cached in its state."""

    def __init__(
        self,
        d: BisectDir,
        spec: dict[str, Any],
        suite_file: Any,
        thresholds: Thresholds,
        *,
        probe: tuple[str, ...] = (),
        timeout_s: float | None = None,
        floor: bool = True,
        tau: float | None = None,
        base: Base | None = None,
    ):
        self.d, self.spec, self.suite_file, self.thresholds = d, spec, suite_file, thresholds
        self.probe, self.timeout_s, self.use_floor, self.tau = probe, timeout_s, floor, tau
        self.base = base  # the project's environment: a step during which it changes is redone

    # ---- the reference and its floor ------------------------------------------------------------------------------
    @property
    def reference(self) -> str | None:
        return self.d.state.get(REFERENCE)

    @property
    def floor(self) -> str | None:
        return self.d.state.get(FLOOR)

    def establish_reference(self, good: Candidate) -> None:
        """Records the good endpoint's run (the reference) and its replicate (the floor), unless already done."""
        if self.reference and (self.floor or not self.use_floor):
            return
        env = self._build_or_fail(good, "the good endpoint")
        runs = [(REFERENCE, good.key)] + ([(FLOOR, f"{good.key}-replicate")] if self.use_floor else [])
        for role, key in runs:
            self.d.begin(key, f"{good.label} ({role})", env=str(env.path), changes=env.changes)
            out = record(
                env.python, self.spec, self.d.run_dir(key), self.suite_file, self.d.log_path(key),
                probe=self.probe, timeout_s=self.timeout_s,
            )  # fmt: skip
            problem = out.reason if not out.ok else _probe_mismatch(out.probe, good.expect)
            if problem:
                self.d.finish(key, SKIP, line=problem, run=out.path, seconds=round(out.seconds, 1))
                log = self.d.log_path(key)
                raise UserError(f"the good endpoint ({good.label}) could not run: {problem} (log: {log})")
            self.d.finish(key, GOOD, line=f"{role} run", run=out.path, seconds=round(out.seconds, 1), probe=out.probe)
            self.d.set(role, out.path)
        self.d.note(f"reference: {self.reference}" + (f"; floor: {self.floor}" if self.floor else "; no floor"))

    # ---- one candidate --------------------------------------------------------------------------------------------
    def cached(self, cand: Candidate) -> Verdict | None:
        step = self.d.step(cand.key)
        if step and step.get("outcome"):
            return Verdict(step["outcome"], step.get("line", ""), **step.get("counts", {}))
        return None

    def test(self, cand: Candidate) -> Verdict:
        """good / bad / skip for one candidate (cached when the bisect directory already knows it).

        The project's environment is shared: when its frozen requirements change while a step runs (someone installs
        a package into it), the step's verdict means nothing, so it is redone (twice at most), never recorded.
        """
        hit = self.cached(cand)
        if hit is not None:
            return hit
        for _ in range(BASE_RETRIES):
            before = self.base.hash if self.base else None
            verdict = self._test(cand)
            if self.base is None:
                return verdict
            now = Base.of(self.base.python)
            if now.hash == before:
                return verdict
            moved = sorted(set(now.freeze) ^ set(self.base.freeze))
            self.d.note(f"[yellow]the project's environment changed during {cand.label} ({', '.join(moved[:6])}); "
                        "redoing the step[/]")  # fmt: skip
            self.base = now
            self.d.state["steps"][cand.key].pop("outcome", None)
            self.d.save()
            if (Path(self.d.run_dir(cand.key)) / "manifest.json").exists():
                shutil.rmtree(self.d.run_dir(cand.key))
        raise UserError("the project's environment keeps changing under the bisect; rerun when it is quiet")

    def _test(self, cand: Candidate) -> Verdict:
        key = cand.key
        self.d.begin(key, cand.label)
        try:
            env = cand.build()
        except EnvError as exc:
            verdict = Verdict.skip(f"environment: {exc}")
            self.d.finish(key, SKIP, line=verdict.line, brief=verdict.brief())
            self.d.write_verdict(key, verdict)
            return verdict
        self.d.begin(key, cand.label, env=str(env.path), changes=env.changes, env_built_s=env.built_s,
                     env_cached=env.cached)  # fmt: skip
        out = record(
            env.python, self.spec, self.d.run_dir(key), self.suite_file, self.d.log_path(key),
            probe=self.probe, timeout_s=self.timeout_s,
        )  # fmt: skip
        problem = out.reason if not out.ok else _probe_mismatch(out.probe, cand.expect)
        if problem:
            verdict = Verdict.skip(problem)
        else:
            verdict = judge(self.reference, out.path, self.floor, self.thresholds, self.tau, json_path=None)
        counts = {k: getattr(verdict, k) for k in ("sequences", "identical", "divergent", "confident", "failed")}
        self.d.finish(
            key, verdict.outcome, line=verdict.line, run=out.path, seconds=round(out.seconds, 1), probe=out.probe,
            counts=counts, brief=verdict.brief(),
        )  # fmt: skip
        self.d.write_verdict(key, verdict, run=out.path, probe=out.probe, changes=env.changes)
        return verdict

    def _build_or_fail(self, cand: Candidate, what: str) -> Env:
        try:
            return cand.build()
        except EnvError as exc:
            raise UserError(f"{what} ({cand.label}): {exc}") from None


def _probe_mismatch(probe: dict[str, Any], expect: dict[str, str]) -> str:
    """Why the interpreter does not import the expected versions ('' when it does)."""
    from packaging.version import InvalidVersion, Version

    for name, version in expect.items():
        got = (probe.get("packages") or {}).get(name, {}).get("version")
        if version == "*":  # installed, whatever its version
            if got is None:
                return f"the environment does not import {name}"
            continue
        try:
            same = got is not None and Version(got) == Version(version)
        except InvalidVersion:
            same = got == version
        if not same:
            return f"the environment imports {name} {got}, not {version}"
    return ""


def run_ordered(stepper: Stepper, cands: list[Candidate], what: str) -> dict[str, Any]:
    """Re-test both endpoints, then bisect; returns the result for rig.bisect.summary."""
    d = stepper.d
    d.note(f"{len(cands)} {what} from {cands[0].label} (good) to {cands[-1].label} (bad); {len(cands) - 2} between")
    stepper.establish_reference(cands[0])
    bad = stepper.test(cands[-1])

    def report(c: Candidate, v: Verdict, left: int, window: str) -> None:
        d.report_step(c.label, v.outcome, v.line, left, window)

    report(cands[-1], bad, steps_left(len(cands) - 2), "")
    if bad.outcome == SKIP:
        raise UserError(f"the bad endpoint ({cands[-1].label}) could not run: {bad.line}")
    if bad.outcome == GOOD:
        return {"found": False, "why": f"{cands[-1].label} agrees with {cands[0].label}: nothing to bisect",
                "endpoint": cands[-1].key, "first_bad": None, "verdict": bad.line}  # fmt: skip

    known = {i: v for i, c in enumerate(cands[1:-1], start=1) if (v := _outcome(d, c.key))}

    def test(i: int) -> str:
        return stepper.test(cands[i]).outcome

    def on_step(i: int, outcome: str, lo: int, hi: int) -> None:
        untested = sum(1 for j in range(lo + 1, hi) if not _outcome(d, cands[j].key))
        window = f"window {cands[lo].label} .. {cands[hi].label} ({untested} untested between)"
        report(cands[i], stepper.cached(cands[i]) or Verdict.skip(""), steps_left(untested), window)

    res = bisect_ordered(len(cands), test, done=known, on_step=on_step)
    return {
        "found": True,
        "first_bad": cands[res.first_bad].key,
        "last_good": cands[res.last_good].key,
        "skipped_between": [cands[i].key for i in res.skipped_between],
        "labels": {c.key: c.label for c in cands},
        "tested": {cands[i].key: o for i, o in res.tested.items()},
    }


def run_scan(stepper: Stepper, cands: list[Candidate], what: str) -> dict[str, Any]:
    """Every candidate against the reference, in order (`--scan`): answers "does any of them change the numbers",
    which a bisect cannot when a change is undone later. The first bad one is reported like a bisect's."""
    d = stepper.d
    d.note(f"scanning {len(cands)} {what} from {cands[0].label} (the reference) to {cands[-1].label}")
    stepper.establish_reference(cands[0])
    outcomes: dict[str, str] = {cands[0].key: GOOD}
    for n, cand in enumerate(cands[1:], start=1):
        v = stepper.test(cand)
        outcomes[cand.key] = v.outcome
        d.report_step(cand.label, v.outcome, v.line, len(cands) - 1 - n)
    order = [c.key for c in cands]
    first_bad = next((k for k in order if outcomes[k] == BAD), None)
    last_good = None
    if first_bad is not None:
        last_good = next(k for k in reversed(order[: order.index(first_bad)]) if outcomes[k] == GOOD)
    between = order[order.index(last_good) + 1 : order.index(first_bad)] if first_bad else []
    return {
        "found": first_bad is not None,
        "why": None if first_bad else f"every {what[:-1]} that ran agrees with {cands[0].label}",
        "first_bad": first_bad,
        "last_good": last_good,
        "skipped_between": between,
        "labels": {c.key: c.label for c in cands},
        "tested": outcomes,
        "scan": True,
    }


def _outcome(d: BisectDir, key: str) -> str | None:
    o = d.outcome(key)
    return o if o in (GOOD, BAD, SKIP) else None


__all__ = ["BAD", "Candidate", "Stepper", "run_ordered", "run_scan"]
