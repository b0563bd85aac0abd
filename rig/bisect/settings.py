"""`rig bisect settings GOOD_RUN BAD_RUN`: the smallest set of spec changes that reproduces the bad verdict.

Two runs often differ in several fields at once (stack, dtype, quantization, attention, experts implementation, batch
size, engine arguments such as the KV-cache dtype). The changes from the good spec to the bad one are the fields
whose values differ (each sampling field and each engine argument on its own); delta debugging (rig.bisect.search.
ddmin) tests subsets of them applied to the good spec, in the current environment, until no single change can be
dropped. One change left means that change alone reproduces it; several mean they interact (none reproduces it
without the others), reported as a set.

Runs are keyed by spec hash: the good and bad runs themselves, runs found under --reuse directories (same prompts,
complete) and runs this bisect recorded before are reused, so only missing configurations are run. A configuration
that the spec rejects or that fails to run is a skip (ddmin treats it as "does not reproduce").
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rig.analysis.summary import Thresholds
from rig.bisect.runs import Verdict, judge, record, suite_file_from_run
from rig.bisect.search import BAD, GOOD, SKIP, ddmin
from rig.bisect.state import BisectDir
from rig.bisect.summary import finish
from rig.errors import UserError

UNSET = "(unset)"


@dataclass(frozen=True)
class Change:
    """One field from the good spec's value to the bad spec's (engine arguments: None when absent)."""

    path: str  # "dtype", "sampling.temperature", "engine_args.kv_cache_dtype"
    good: Any
    bad: Any

    def text(self) -> str:
        def show(v: Any) -> str:
            return UNSET if v is None and self.path.startswith("engine_args.") else str(v)

        name = self.path.replace("engine_args.", "engine arg ")
        return f"{name} {show(self.good)} -> {show(self.bad)}"


def spec_changes(good: dict[str, Any], bad: dict[str, Any]) -> list[Change]:
    """Every differing leaf of two canonical spec dicts, in the spec's field order."""
    out = []
    for key in good.keys() | bad.keys():
        a, b = good.get(key), bad.get(key)
        if key in ("sampling", "engine_args"):
            a, b = a or {}, b or {}
            keys = sorted(a.keys() | b.keys())
            out += [Change(f"{key}.{k}", a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
        elif a != b:
            out.append(Change(key, a, b))
    import dataclasses

    from rig.run.spec import RunSpec

    # RunSpec's field order (stack, model, dtype, ... batch_size, sampling, engine_args): the manifest's is sorted.
    order = {f.name: i for i, f in enumerate(dataclasses.fields(RunSpec))}
    return sorted(out, key=lambda c: (order.get(c.path.split(".")[0], len(order)), c.path))


def apply_changes(good: dict[str, Any], changes: tuple[Change, ...]) -> dict[str, Any]:
    """The good spec dict with the given changes applied (an engine argument set to None is removed)."""
    spec = json.loads(json.dumps(good))
    for c in changes:
        if "." in c.path:
            table, key = c.path.split(".", 1)
            spec.setdefault(table, {})
            if c.bad is None and table == "engine_args":
                spec[table].pop(key, None)
            else:
                spec[table][key] = c.bad
        else:
            spec[c.path] = c.bad
    return spec


def _manifest(run: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{run}: not a run directory (no readable manifest.json)") from None


def index_runs(dirs: list[Path], suite_hash: str) -> dict[str, str]:
    """{spec_hash: run path} of complete generate runs with the same prompts under the given directories."""
    found: dict[str, str] = {}
    for root in dirs:
        for manifest in sorted(Path(root).glob("**/manifest.json")):
            try:
                m = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if m.get("status") == "complete" and m.get("kind") == "generate" and m["suite"].get("hash") == suite_hash:
                found.setdefault(m["spec_hash"], str(manifest.parent))
    return found


def bisect_settings(
    directory: Path,
    good_run: Path,
    bad_run: Path,
    *,
    thresholds: Thresholds,
    reuse: list[Path] | None = None,
    floor_run: Path | None = None,
    floor: bool = True,
    tau: float | None = None,
    timeout_s: float | None = None,
    python: str | None = None,
    retry_skips: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Delta debugging over the spec fields in which two runs differ; returns the result (also in bisect.json)."""
    from rig.run.spec import RunSpec

    gm, bm = _manifest(good_run), _manifest(bad_run)
    for run, m in ((good_run, gm), (bad_run, bm)):
        if m.get("status") != "complete" or m.get("kind") != "generate":
            what = f"{m.get('kind')}, {m.get('status')}"
            raise UserError(f"{run}: a complete generated run is needed (this one is {what})")
    if gm["suite"]["hash"] != bm["suite"]["hash"]:
        raise UserError(f"{good_run} and {bad_run} generated from different prompts (suite hash differs)")
    changes = spec_changes(gm["spec"], bm["spec"])
    if not changes:
        raise UserError(f"{good_run} and {bad_run} have the same spec ({gm['spec_hash']}): no setting to bisect")
    args = {
        "good": str(good_run.resolve()),
        "bad": str(bad_run.resolve()),
        "floor_run": str(floor_run) if floor_run else None,
        "thresholds": thresholds.__dict__,
        "floor": floor,
        "tau": tau,
        "reuse": [str(p) for p in reuse or []],
    }
    d = BisectDir(directory, "settings", args, console)
    python = python or sys.executable
    with d.open():
        if retry_skips:
            d.forget_skips()
        suite_file = d.path / "suite.json"
        if not suite_file.exists():
            suite_file_from_run(suite_file, good_run)
        known = index_runs([*(reuse or []), d.path / "runs"], gm["suite"]["hash"])
        known.update({gm["spec_hash"]: str(good_run.resolve()), bm["spec_hash"]: str(bad_run.resolve())})
        reference = str(good_run.resolve())
        d.set("reference", reference)
        d.note(f"{len(changes)} changes from {good_run} to {bad_run}: " + "; ".join(c.text() for c in changes))

        # the floor: a replicate of the good spec in this environment (or the run given)
        if floor and not d.state.get("floor"):
            if floor_run:
                d.set("floor", str(floor_run.resolve()))
            else:
                key = f"{gm['spec_hash']}-replicate"
                d.begin(key, "good spec (floor replicate)")
                out = record(python, gm["spec"], d.run_dir(key), suite_file, d.log_path(key), timeout_s=timeout_s)
                if not out.ok:
                    d.finish(key, SKIP, line=out.reason)
                    raise UserError(f"the good spec could not run here: {out.reason} (log: {d.log_path(key)})")
                d.finish(key, GOOD, line="floor replicate", run=out.path, seconds=round(out.seconds, 1))
                d.set("floor", out.path)
        floor_path = d.state.get("floor")

        def test(subset: tuple[Change, ...]) -> Verdict:
            label = " + ".join(c.text() for c in subset) if subset else "good spec"
            try:
                spec = RunSpec.from_dict(apply_changes(gm["spec"], subset), source="bisect")
            except UserError as exc:
                key = "invalid-" + "-".join(c.path for c in subset)
                d.begin(key, label)
                d.finish(key, SKIP, line=f"not a valid spec: {exc}")
                return Verdict.skip(str(exc))
            key = f"spec-{spec.hash()}"
            step = d.step(key)
            if step and step.get("outcome"):
                return Verdict(step["outcome"], step.get("line", ""), **step.get("counts", {}))
            d.begin(key, label, changes=[c.path for c in subset], spec_hash=spec.hash())
            reused = spec.hash() in known
            if reused:
                run, seconds = known[spec.hash()], 0.0
            else:
                out = record(python, spec.to_dict(), d.run_dir(key), suite_file, d.log_path(key), timeout_s=timeout_s)
                if not out.ok:
                    d.finish(key, SKIP, line=out.reason, run=out.path, seconds=round(out.seconds, 1))
                    return Verdict.skip(out.reason)
                run, seconds = out.path, out.seconds
                known[spec.hash()] = run
            verdict = judge(reference, run, floor_path, thresholds, tau)
            counts = {k: getattr(verdict, k) for k in ("sequences", "identical", "divergent", "confident", "failed")}
            d.finish(key, verdict.outcome, line=verdict.line, run=run, seconds=round(seconds, 1), reused=reused,
                     counts=counts, brief=verdict.brief())  # fmt: skip
            d.write_verdict(key, verdict, run=run, spec=spec.to_dict(), changes=[c.text() for c in subset])
            return verdict

        def ddtest(subset: tuple[Change, ...]) -> str:
            v = test(subset)
            d.report_step(" + ".join(c.text() for c in subset), v.outcome, v.line, None)
            return v.outcome

        full = test(tuple(changes))
        d.report_step("all changes (the bad spec)", full.outcome, full.line, None)
        if full.outcome != BAD:
            result = {"found": False, "why": f"{bad_run} agrees with {good_run} under the verdict: nothing to bisect"
                      if full.outcome == GOOD else f"the bad spec could not be tested: {full.line}"}  # fmt: skip
            return finish(d, result, thresholds=thresholds, tau=tau)
        dd = ddmin(changes, ddtest)
        minimal = tuple(dd.minimal)
        final = test(minimal)
        key = f"spec-{RunSpec.from_dict(apply_changes(gm['spec'], minimal)).hash()}"
        texts = [c.text() for c in minimal]
        if len(minimal) == 1:
            head = f"{texts[0]} alone reproduces it"
        else:
            head = f"{' and '.join(texts)} together reproduce it (no smaller set does: they interact)"
        steps = [d.state["steps"][k] for k in d.state["order"]]
        recorded = sum(1 for s in steps if s.get("run") and not s.get("reused") and s.get("outcome") != SKIP)
        reused = sum(1 for s in steps if s.get("reused"))
        result = {
            "found": True,
            "what": "setting",
            "first_bad": key,
            "last_good": None,
            "minimal": [c.path for c in minimal],
            "minimal_text": texts,
            "changes": [c.text() for c in changes],
            "tests": len(dd.tests) + 1,
            "runs_needed": recorded,
            "labels": {key: " + ".join(texts)},
            "sentence": f"{head} {final.brief()}; {recorded} runs recorded ({reused} reused, "
            f"{len(dd.tests) + 1} configurations tested)",
        }
        return finish(d, result, thresholds=thresholds, tau=tau)


__all__ = ["Change", "GOOD", "apply_changes", "bisect_settings", "spec_changes"]
