"""One run of a bisect step, inside the candidate's environment: `ENV/bin/python -m rig.bisect.worker REQUEST.json`.

The request (written by rig.bisect.runs.record) names the spec, the run directory and the suite file. The worker
first writes a probe (the versions and locations of the packages the bisect is about, as this interpreter sees them),
so the parent can check that the environment holds the candidate and not a shadowed copy; then it records the run,
resuming a run that a kill left incomplete. Exit 0 when the run is complete; anything else means it could not run
(the parent turns that into a skip, or an abort at an endpoint).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def probe(packages: list[str]) -> dict[str, Any]:
    """{"python", "prefix", "packages": {name: {"version", "file"}}} as this interpreter resolves them."""
    import importlib.metadata as md
    import importlib.util

    out: dict[str, Any] = {"python": sys.version.split()[0], "prefix": sys.prefix, "packages": {}}
    for name in packages:
        entry: dict[str, Any] = {}
        try:
            entry["version"] = md.version(name)
            dist = md.distribution(name)
            top = (dist.read_text("top_level.txt") or "").split()
            module = top[0] if top else name.replace("-", "_")
            spec = importlib.util.find_spec(module)
            entry["file"] = spec.origin if spec else None
        except md.PackageNotFoundError:
            entry["version"] = None
        except (ImportError, ValueError) as exc:
            entry["error"] = str(exc)
        out["packages"][name] = entry
    return out


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    Path(request["probe_out"]).write_text(json.dumps(probe(request.get("probe", [])), indent=1) + "\n")

    from rig.bisect.runs import load_suite_file
    from rig.run.runner import execute
    from rig.run.spec import RunSpec

    out = Path(request["out"])
    spec = RunSpec.from_dict(request["spec"], source=argv[0])
    if out.exists() and not (out / "manifest.json").exists():  # killed before the stack loaded: nothing to keep
        import shutil

        shutil.rmtree(out)
    if (out / "manifest.json").exists():
        print(f"resuming the incomplete run {out}", flush=True)
        execute(None, out, resume=True, telemetry_hz=request.get("telemetry_hz", 0.0))
    else:
        suite = load_suite_file(Path(request["suite_file"]))
        execute(spec, out, suite=suite, telemetry_hz=request.get("telemetry_hz", 0.0))
    print(f"recorded {out} (spec {spec.hash()})", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - the parent reads the log; any failure means "could not run"
        import traceback

        traceback.print_exc()
        print(f"rig.bisect.worker: could not record the run: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
