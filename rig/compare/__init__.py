"""`rig compare`: one suite on many endpoints, each diffed against a reference, as one provider page.

    endpoints.py  the ENDPOINTS.toml file: a reference, an optional floor, [[endpoint]] run specs
    driver.py     runs them (remote ones concurrently, local ones in turn), resumable, one failure isolated
    page.py       diffs each against the reference (rig diff's document and verdict) and builds the rows

    doc = run_compare("endpoints.toml", "suites/gpqa.jsonl", "out/gpqa-x16", samples=16)
    doc["rows"], doc["exit_code"]      # one row per endpoint; 0 agree, 1 diverged, 2 an endpoint did not complete

OUT holds runs/NAME (run directories), scored/NAME (the reference's tokens under NAME), diffs/NAME.json (rig diff's
JSON), logs/NAME.log (tracebacks of failures), compare.json (this document) and compare.html (the page).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rig.errors import UserError

DOC = "compare.json"
PAGE = "compare.html"


def _previous(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / DOC).read_text())
    except (OSError, ValueError):
        return None


def run_compare(
    endpoints_file: str | Path,
    suite_name: str,
    out: str | Path,
    *,
    samples: int | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    render: Any = None,
    score: bool = True,
    force: bool = False,
    telemetry_hz: float = 0.0,
    bootstrap_seed: int = 0,
    log: Callable[[str], None] = lambda line: None,
    progress: Any = None,
) -> dict[str, Any]:
    """Runs the suite on every endpoint, diffs each against the reference, writes compare.json and compare.html under
    OUT, and returns the document. UserError for bad input (before any run starts)."""
    from rig.analysis.summary import dumps
    from rig.compare.driver import Driver
    from rig.compare.endpoints import load_endpoints
    from rig.compare.page import build_document
    from rig.files import atomic_write_bytes
    from rig.report.compare_html import render_page
    from rig.run.suite import load_suite

    if samples is not None and samples < 1:
        raise UserError("--samples must be at least 1")
    overrides = {"samples": samples, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    config = load_endpoints(endpoints_file, overrides)
    suite = load_suite(suite_name, render)
    from rig.evals.scorers import check_available

    check_available({p.reference_type for p in suite.prompts})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for choice in config.choices:
        log(f"{choice['endpoint']}: {choice['choice']} ({choice['reason']})")
    driver = Driver(
        config,
        suite,
        out,
        score=score,
        force=force,
        telemetry_hz=telemetry_hz,
        previous=_previous(out),
        log=log,
        progress=progress,
    )
    outcomes = driver.run()
    doc = build_document(config, suite, outcomes, out, seed=bootstrap_seed)
    atomic_write_bytes(out / DOC, (dumps(doc) + "\n").encode())
    atomic_write_bytes(out / PAGE, render_page(doc).encode())
    return doc


__all__ = ["DOC", "PAGE", "run_compare"]
