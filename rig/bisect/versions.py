"""`rig bisect versions` (one package's released versions) and `rig bisect dates` (every dependency as of a date).

Versions: the releases between --good and --bad come from the package index (rig.bisect.index); each gets an overlay
environment that differs from the project's environment only in that package and whatever its version forces
(rig.bisect.envs), built once and cached. Both endpoints are re-tested first (the good one becomes the reference and
its replicate the floor), then the releases are bisected; a release that fails to install or import is skipped.

Dates: for "something changed between March and June" when the culprit package is unknown. Each day's environment
resolves the project's requirements with uv's --exclude-newer (the end of that day, UTC); the bisect names the first
bad day, and the summary lists the packages whose versions differ between the last good and the first bad day: the
candidates, each of which `rig bisect versions` can then confirm.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from rig.analysis.summary import Thresholds
from rig.bisect.envs import Base, Envs, Sources, canonical
from rig.bisect.index import versions_between
from rig.bisect.ordered import Candidate, Stepper, run_ordered, run_scan
from rig.bisect.runs import spec_and_suite
from rig.bisect.state import BisectDir
from rig.bisect.summary import finish
from rig.errors import UserError


def _prepare(d: BisectDir, spec_arg: str, suite_arg: str | None, base_python: str) -> tuple[dict[str, Any], Path, Base]:
    """The spec, the suite file (written once) and the base environment (its hash checked against the state's)."""
    suite_file = d.path / "suite.json"
    if d.state.get("spec") is None:
        spec = spec_and_suite(spec_arg, suite_arg, suite_file)
        d.set("spec", spec)
    base = Base.of(base_python)
    recorded = d.state.get("base")
    if recorded is None:
        d.set("base", {"python": base.python, "hash": base.hash, "freeze": list(base.freeze)})
    elif recorded["hash"] != base.hash:
        was = set(recorded.get("freeze", []))
        moved = sorted(set(base.freeze) ^ was)
        d.note(
            f"[yellow]warning:[/] the base environment changed since this bisect began ({', '.join(moved[:6])}"
            f"{' ...' if len(moved) > 6 else ''}); steps done before and after are not strictly comparable"
        )
        d.state.setdefault("base_changes", []).append({"hash": base.hash, "moved": moved})
        d.save()
    return d.state["spec"], suite_file, base


def bisect_versions(
    directory: Path,
    package: str,
    good: str,
    bad: str,
    spec_arg: str,
    *,
    suite_arg: str | None,
    sources: Sources,
    thresholds: Thresholds,
    base_python: str,
    cache_dir: Path | None = None,
    pre: bool = False,
    floor: bool = True,
    tau: float | None = None,
    timeout_s: float | None = None,
    scan: bool = False,
    without: tuple[str, ...] = (),
    retry_skips: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Bisect (or scan) `package`'s releases from good to bad; returns the result (also in DIR/bisect.json)."""
    package = canonical(package)
    args = {
        "package": package, "good": good, "bad": bad, "spec": str(Path(spec_arg).resolve()), "suite": suite_arg,
        "sources": sources.to_dict(), "thresholds": thresholds.__dict__, "pre": pre, "floor": floor, "tau": tau,
        "scan": scan, "base_python": base_python, "without": sorted(without),
    }  # fmt: skip
    d = BisectDir(directory, "versions", args, console)
    with d.open():
        if retry_skips:
            d.forget_skips()
        spec, suite_file, base = _prepare(d, spec_arg, suite_arg, base_python)
        if d.state.get("candidates") is None:
            d.set("candidates", versions_between(package, good, bad, sources, pre=pre))
        versions: list[str] = d.state["candidates"]
        envs = Envs(base, sources, cache_dir, without=without)

        def candidate(version: str) -> Candidate:
            key = f"{package}-{version}"
            return Candidate(
                key,
                f"{package} {version}",
                lambda: envs.overlay(key, [f"{package}=={version}"], d.log_path(key)),
                expect={package: version},
            )

        stepper = Stepper(d, spec, suite_file, thresholds, probe=(package,), timeout_s=timeout_s, floor=floor, tau=tau)
        cands = [candidate(v) for v in versions]
        result = (run_scan if scan else run_ordered)(stepper, cands, "versions")
        result["what"] = "version"
        return finish(d, result, thresholds=thresholds, tau=tau)


# ---- dates ------------------------------------------------------------------------------------------------------


def _days(good: str, bad: str) -> list[str]:
    try:
        g, b = dt.date.fromisoformat(good), dt.date.fromisoformat(bad)
    except ValueError as exc:
        raise UserError(f"dates are YYYY-MM-DD: {exc}") from None
    if g == b:
        raise UserError("--good and --bad are the same day")
    step = 1 if g < b else -1
    return [(g + dt.timedelta(days=i * step)).isoformat() for i in range(abs((b - g).days) + 1)]


def default_requirements(base: Base) -> list[str]:
    """The base's top-level distributions (`uv pip tree --depth 0`: nothing installed depends on them), unpinned, with
    the rig's own (editable) requirements in its place, extras included where installed; a date's resolution brings
    every dependency along. pip and editable installs are left out."""
    import subprocess

    from rig.bisect.envs import _uv

    res = _uv(["pip", "tree", "--python", base.python, "--depth", "0"], check=True)
    names = [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith((" ", "("))]
    code = "import importlib.metadata as m; print(chr(10).join(m.requires('inference-rig') or []))"
    rig_reqs = subprocess.run([base.python, "-c", code], capture_output=True, text=True, check=False).stdout
    installed = base.versions()
    for req in rig_reqs.splitlines():
        name = canonical(re.split(r"[<>=!~ \[;]", req.strip())[0])
        if name in installed:
            names.append(name)
    editable = {canonical(ln.split("#egg=")[-1]) for ln in base.freeze if ln.startswith("-e ")}
    skip = editable | {"inference-rig", "pip"}
    return sorted({canonical(n) for n in names} - skip)


def default_keep(base: Base) -> dict[str, str]:
    """Distributions with a local version label (torch 2.13.0+cpu): builds from special indexes, kept as they are."""
    return {name: v for name, v in base.versions().items() if "+" in v}


def bisect_dates(
    directory: Path,
    good: str,
    bad: str,
    spec_arg: str,
    *,
    suite_arg: str | None,
    requirements_file: Path | None,
    keep: tuple[str, ...],
    sources: Sources,
    thresholds: Thresholds,
    base_python: str,
    cache_dir: Path | None = None,
    floor: bool = True,
    tau: float | None = None,
    timeout_s: float | None = None,
    without: tuple[str, ...] = (),
    retry_skips: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Bisect the days from good to bad, each an environment of the requirements as of that day."""
    args = {
        "good": good, "bad": bad, "spec": str(Path(spec_arg).resolve()), "suite": suite_arg,
        "requirements": str(requirements_file) if requirements_file else None, "keep": sorted(keep),
        "sources": sources.to_dict(), "thresholds": thresholds.__dict__, "floor": floor, "tau": tau,
        "base_python": base_python, "without": sorted(without),
    }  # fmt: skip
    d = BisectDir(directory, "dates", args, console)
    with d.open():
        if retry_skips:
            d.forget_skips()
        spec, suite_file, base = _prepare(d, spec_arg, suite_arg, base_python)
        if requirements_file:
            reqs = [ln.split("#")[0].strip() for ln in requirements_file.read_text().splitlines()]
            reqs = [r for r in reqs if r and not r.startswith("-")]
        else:
            reqs = default_requirements(base)
        versions = base.versions()
        kept = {**default_keep(base), **{canonical(k): versions.get(canonical(k), "") for k in keep}}
        missing = sorted(k for k, v in kept.items() if not v)
        if missing:
            raise UserError(f"--keep {missing[0]}: not installed in the base environment")
        envs = Envs(base, sources, cache_dir, without=without)
        if d.state.get("base_versions") is None:
            d.set("base_versions", versions)

        def candidate(day: str) -> Candidate:
            key = f"date-{day}"
            return Candidate(key, day, lambda: envs.dated(key, reqs, f"{day}T23:59:59Z", kept, d.log_path(key)))

        stepper = Stepper(d, spec, suite_file, thresholds, timeout_s=timeout_s, floor=floor, tau=tau, base=base)
        result = run_ordered(stepper, [candidate(day) for day in _days(good, bad)], "days")
        result["what"] = "day"
        if result.get("first_bad") and result.get("last_good"):
            result["changed_packages"] = changed_between(d, result["last_good"], result["first_bad"])
        return finish(d, result, thresholds=thresholds, tau=tau)


def changed_between(d: BisectDir, good_key: str, bad_key: str) -> dict[str, list[str | None]]:
    """{package: [version on the good day, version on the bad day]}, from what each day's environment changed."""
    base = {n: v for n, v in (d.state.get("base_versions") or {}).items()}

    def versions(key: str) -> dict[str, str | None]:
        changes = (d.step(key) or {}).get("changes") or {}
        return {**base, **{n: new for n, (_, new) in changes.items()}}

    a, b = versions(good_key), versions(bad_key)
    return {n: [a.get(n), b.get(n)] for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)}
