"""The end of a bisect: one sentence naming the first bad setting, version, day or commit, the full diff of its run
against the reference (diff.json, as `rig diff --json` writes it), a report page (report.html, as `rig report`
writes it), and summary.md with every step, so the answer can be checked without rerunning anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig.analysis.summary import Thresholds
from rig.bisect.runs import judge
from rig.bisect.state import BisectDir


def _label(result: dict[str, Any], key: str | None) -> str:
    if key is None:
        return "-"
    return (result.get("labels") or {}).get(key, key)


def sentence(result: dict[str, Any], brief: str = "") -> str:
    """The answer in one sentence."""
    if result.get("sentence"):
        return result["sentence"]
    what = result.get("what", "candidate")
    if not result.get("found") or not result.get("first_bad"):
        return result.get("why") or f"no bad {what} found"
    bad, good = _label(result, result["first_bad"]), _label(result, result.get("last_good"))
    skipped = [_label(result, k) for k in result.get("skipped_between") or []]
    if skipped:
        return (
            f"the first bad {what} is one of {', '.join([*skipped, bad])}: {', '.join(skipped)} could not be "
            f"tested (skipped), {bad} is bad {brief}, {good} is good".replace("  ", " ")
        )
    return f"{bad} is the first bad {what} {brief}; {good} is the last good one".replace("  ", " ")


def finish(d: BisectDir, result: dict[str, Any], *, thresholds: Thresholds, tau: float | None = None) -> dict[str, Any]:
    """Writes diff.json, report.html and summary.md, prints the summary, stores the result; returns the result."""
    reference, floor = d.state.get("reference"), d.state.get("floor")
    first_bad = result.get("first_bad")
    step = d.step(first_bad) if first_bad else None
    brief = ""
    if step and step.get("run") and reference:
        verdict = judge(reference, step["run"], floor, thresholds, tau, json_path=d.path / "diff.json")
        brief = verdict.brief()
        result["verdict"] = verdict.line
        result["diff"] = str(d.path / "diff.json")
        result["report"] = _report(d, reference, step["run"], floor, tau)
        result["reproduce"] = f"rig diff {reference} {step['run']}" + (f" --floor {reference} {floor}" if floor else "")
    result["sentence"] = sentence(result, brief)
    steps = [d.state["steps"][k] for k in d.state["order"]]
    result["steps"] = len(steps)
    result["runs_recorded"] = sum(1 for s in steps if s.get("run") and not s.get("reused") and s.get("seconds"))
    result["runs_reused"] = sum(1 for s in steps if s.get("reused"))
    result["summary"] = str(d.path / "summary.md")
    d.set("result", result)
    (d.path / "summary.md").write_text(summary_markdown(d, result))
    return result


def _report(d: BisectDir, reference: str, run: str, floor: str | None, tau: float | None) -> str | None:
    from rig.report.html import build_report

    try:
        return str(build_report([reference, run], d.path / "report.html", floor=(reference, floor) if floor else None,
                                tau=tau))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the answer stands without the page; say why it is missing
        d.note(f"[yellow]report.html not written:[/] {type(exc).__name__}: {exc}")
        return None


def summary_markdown(d: BisectDir, result: dict[str, Any]) -> str:
    """summary.md: the answer, how to check it, what differs, and every step."""
    state = d.state
    lines = [f"# rig bisect {state['mode']}", "", f"**{result['sentence']}**", ""]
    if result.get("verdict"):
        what = "the first bad run" if result.get("first_bad") else "the bad endpoint"
        lines += [f"Verdict of {what} against the reference: {result['verdict']}", ""]
    if result.get("reproduce"):
        lines += ["Check it:", "", "```", result["reproduce"], "```", ""]
    lines += [f"Reference: `{state.get('reference')}`; floor: `{state.get('floor') or 'none'}`.", ""]
    roles = {"first_bad": "first bad", "last_good": "last good", "endpoint": "bad endpoint's"}
    for role, what in roles.items():
        step = d.step(result[role]) if result.get(role) else None
        if step and isinstance(step.get("changes"), dict):
            moved = ", ".join(f"{n} {a or '(absent)'} -> {b}" for n, (a, b) in sorted(step["changes"].items()))
            lines += [f"The {what} environment differs from the project's in: {moved or 'nothing'}.", ""]
    if result.get("changed_packages"):
        moved = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in result["changed_packages"].items())
        lines += [f"Packages that changed between the last good and the first bad day: {moved}.", ""]
    if result.get("minimal"):
        lines += ["Minimal set of changes: " + "; ".join(result["minimal_text"]), ""]
    for note in state.get("base_changes") or []:
        lines += [f"Warning: the base environment changed during the bisect: {', '.join(note['moved'][:10])}", ""]
    lines += [
        f"{result['steps']} steps; {result['runs_recorded']} runs recorded, {result['runs_reused']} reused.",
        "",
        "| # | step | outcome | seconds | verdict |",
        "|---:|---|---|---:|---|",
    ]
    for i, key in enumerate(state["order"], start=1):
        s = state["steps"][key]
        text = (s.get("brief") or s.get("line") or "").replace("|", "/")
        lines.append(f"| {i} | {s.get('label', key)} | {s.get('outcome') or 'unfinished'} | {s.get('seconds', '')} | "
                     f"{text} |")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["finish", "sentence", "summary_markdown", "Path"]
