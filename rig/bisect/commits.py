"""`rig bisect commits --repo PATH --good SHA --bad SHA --spec SPEC`: `git bisect run` over a stack's source history.

The bisect works in its own clone (DIR/src, `git clone --shared`: the user's repository and its bisect state are never
touched) and bisects with `--no-checkout`: git only moves BISECT_HEAD, and each step exports that commit with `git
archive` into a fresh directory and installs it from there into an overlay environment over the project's one (pure
Python stacks such as Transformers build in seconds; rig.bisect.envs). A fresh directory per commit also keeps uv
from reusing a wheel it built from the same path at another commit. Environments are cached per commit.

`git bisect run` calls back `python -m rig.bisect.commits step DIR`, whose exit code is the verdict: 0 good, 1 bad,
125 skip (did not build, install or run), 128 abort. Both endpoints are tested before git starts (the good one is
the reference, and its replicate the floor). Killed and rerun, the bisect starts git's search again and every commit
already judged answers from the bisect directory in milliseconds.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from rich.console import Console

from rig.analysis.summary import Thresholds
from rig.bisect.envs import Base, Envs, Sources
from rig.bisect.ordered import Candidate, Stepper
from rig.bisect.runs import EXIT_ABORT, EXIT_FOR, spec_and_suite
from rig.bisect.search import GOOD, SKIP, steps_left
from rig.bisect.state import BisectDir
from rig.bisect.summary import finish
from rig.errors import UserError


def git(repo: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise UserError(f"git {' '.join(args)}: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    return res.stdout.strip()


def _clone(repo: Path, src: Path) -> None:
    if (src / ".git").exists() or (src / "HEAD").exists():
        git(src, "fetch", "--quiet", "--tags", str(repo.resolve()), "+refs/heads/*:refs/remotes/origin/*", check=False)
        return
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise UserError(f"--repo {repo}: not a git repository")
    res = subprocess.run(
        ["git", "clone", "--quiet", "--shared", "--no-checkout", str(repo.resolve()), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise UserError(f"cannot clone {repo}: {res.stderr.strip()}")


def _export(src: Path, sha: str, dest: Path) -> Path:
    """The tree of commit `sha`, written into dest (replaced)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(src), "archive", "--format=tar", sha], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


class _Context:
    """What both the driver and each `git bisect run` step rebuild from the bisect directory's state."""

    def __init__(self, d: BisectDir, args: dict[str, Any]):
        self.d, self.args = d, args
        self.src = d.path / "src"
        self.sources = Sources(**{k: tuple(v) if isinstance(v, list) else v for k, v in args["sources"].items()})
        self.thresholds = Thresholds(**args["thresholds"])
        base = Base.of(args["base_python"])
        self.base = base
        cache = Path(args["cache_dir"]) if args.get("cache_dir") else None
        self.envs = Envs(base, self.sources, cache, without=tuple(args.get("without") or ()))
        self.stepper = Stepper(
            d,
            d.state["spec"],
            d.path / "suite.json",
            self.thresholds,
            probe=tuple(args.get("probe") or ()),
            timeout_s=args.get("timeout_s"),
            floor=args["floor"],
            tau=args.get("tau"),
            base=base,
        )

    def candidate(self, sha: str) -> Candidate:
        short = sha[:12]
        subject = git(self.src, "log", "-1", "--format=%s", sha)[:60]
        key = f"commit-{short}"

        def build():
            tree = _export(self.src, sha, self.d.path / "checkouts" / short)
            project = tree / self.args["subdir"] if self.args.get("subdir") else tree
            try:
                return self.envs.overlay(key, [str(project)], self.d.log_path(key), identity=sha)
            finally:
                shutil.rmtree(tree, ignore_errors=True)

        return Candidate(key, f"{short} {subject}", build, expect={p: "*" for p in self.args.get("probe") or ()})


def bisect_commits(
    directory: Path,
    repo: Path,
    good: str,
    bad: str,
    spec_arg: str,
    *,
    suite_arg: str | None,
    sources: Sources,
    thresholds: Thresholds,
    base_python: str,
    subdir: str | None = None,
    probe: tuple[str, ...] = (),
    cache_dir: Path | None = None,
    floor: bool = True,
    tau: float | None = None,
    timeout_s: float | None = None,
    without: tuple[str, ...] = (),
    retry_skips: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Drive `git bisect run` over the commits from good to bad; returns the result (also in DIR/bisect.json)."""
    args = {
        "repo": str(repo.resolve()), "good": good, "bad": bad, "spec": str(Path(spec_arg).resolve()),
        "suite": suite_arg, "sources": sources.to_dict(), "thresholds": thresholds.__dict__, "floor": floor,
        "tau": tau, "timeout_s": timeout_s, "base_python": base_python, "subdir": subdir, "probe": list(probe),
        "cache_dir": str(cache_dir) if cache_dir else None, "without": sorted(without),
    }  # fmt: skip
    d = BisectDir(directory, "commits", args, console)
    with d.open():
        if retry_skips:
            d.forget_skips()
        if d.state.get("spec") is None:
            d.set("spec", spec_and_suite(spec_arg, suite_arg, d.path / "suite.json"))
        _clone(repo, d.path / "src")
        ctx = _Context(d, d.state["args"])
        good_sha = git(ctx.src, "rev-parse", "--verify", f"{good}^{{commit}}")
        bad_sha = git(ctx.src, "rev-parse", "--verify", f"{bad}^{{commit}}")
        n = int(git(ctx.src, "rev-list", "--count", f"{good_sha}..{bad_sha}") or 0)
        d.note(f"{n} commits from {good_sha[:12]} (good, excluded) to {bad_sha[:12]} (bad)")
        good_c, bad_c = ctx.candidate(good_sha), ctx.candidate(bad_sha)
        ctx.stepper.establish_reference(good_c)
        verdict = ctx.stepper.test(bad_c)
        d.report_step(bad_c.label, verdict.outcome, verdict.line, steps_left(max(n - 1, 0)))
        labels = {good_c.key: good_c.label, bad_c.key: bad_c.label}
        if verdict.outcome == SKIP:
            raise UserError(f"the bad endpoint ({bad_c.label}) could not run: {verdict.line}")
        if verdict.outcome == GOOD:
            result = {"found": False, "why": f"{bad_c.label} agrees with {good_c.label}: nothing to bisect"}
            return finish(d, result, thresholds=thresholds, tau=tau)
        first_bad, candidates = _git_bisect_run(d, ctx.src, good_sha, bad_sha)
        d.reload()  # the steps wrote their verdicts
        parents = git(ctx.src, "rev-parse", f"{first_bad}^@").split()
        for sha in {first_bad, *candidates, *parents}:
            c = ctx.candidate(sha)
            labels[c.key] = c.label
        parent_keys = [f"commit-{p[:12]}" for p in parents]
        result = {
            "found": True,
            "what": "commit",
            "first_bad": f"commit-{first_bad[:12]}",
            "last_good": next((k for k in parent_keys if d.outcome(k) == GOOD), (parent_keys or [None])[0]),
            "skipped_between": [f"commit-{s[:12]}" for s in candidates if s != first_bad],
            "labels": labels,
            "commit": first_bad,
        }
        return finish(d, result, thresholds=thresholds, tau=tau)


def _git_bisect_run(d: BisectDir, src: Path, good: str, bad: str) -> tuple[str, list[str]]:
    """Runs git's search with this module's step as the verdict; returns (first bad sha, the ambiguous candidates)."""
    git(src, "bisect", "reset", check=False)
    git(src, "bisect", "start", "--no-checkout", bad, good)
    log = d.path / "logs" / "git-bisect.log"
    cmd = ["git", "-C", str(src), "bisect", "run", sys.executable, "-m", "rig.bisect.commits", "step", str(d.path)]
    lines: list[str] = []
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            lines.append(line.rstrip())
            if line.strip():
                d.note(f"  {line.rstrip()}", markup=False)
        rc = proc.wait()
    try:
        text = "\n".join(lines)
        if rc != 0 and "first bad commit" not in text:
            raise UserError(f"git bisect run stopped (exit {rc}): {' | '.join(lines[-3:])} (log: {log})")
        first_bad = git(src, "rev-parse", "refs/bisect/bad")
        ambiguous = []
        if "only 'skip'ped commits left" in text:
            ambiguous = [ln.split()[0] for ln in lines if len(ln.split()) > 0 and _is_sha(ln.split()[0])]
        return first_bad, ambiguous
    finally:
        git(src, "bisect", "reset", check=False)


def _is_sha(word: str) -> bool:
    return len(word) == 40 and all(c in "0123456789abcdef" for c in word)


def step(directory: Path) -> int:
    """One `git bisect run` step: judge BISECT_HEAD; the exit code is the verdict."""
    import json

    state = json.loads((directory / "bisect.json").read_text())
    d = BisectDir(directory, "commits", state["args"], Console(stderr=True))
    d.state = state  # the driver holds the lock and does not write while git runs this step
    ctx = _Context(d, state["args"])
    sha = git(ctx.src, "rev-parse", "BISECT_HEAD")
    cand = ctx.candidate(sha)
    verdict = ctx.stepper.test(cand)
    d.report_step(cand.label, verdict.outcome, verdict.line, None)  # git prints the steps left
    return EXIT_FOR[verdict.outcome]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "step":
        try:
            sys.exit(step(Path(sys.argv[2])))
        except UserError as exc:
            print(f"rig: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_ABORT)
        except Exception:  # noqa: BLE001 - a bug must stop git bisect, never read as a verdict
            import traceback

            traceback.print_exc()
            sys.exit(EXIT_ABORT)
    print("usage: python -m rig.bisect.commits step BISECT_DIR", file=sys.stderr)
    sys.exit(EXIT_ABORT)
