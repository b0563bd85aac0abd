"""The provider page: each endpoint diffed against the reference, and one row per endpoint in compare.json.

A provider page (Artificial Analysis, say) shows one accuracy per provider; the rig's page shows what makes a gap
believable or not beside it: accuracy with its 95% interval over prompts and samples, the paired difference against
the reference with its interval and prompt-level tests, how many sequences came out identical, how many split
confidently (margins above tau, so not rounding), the teacher-forced drift where the endpoint returned logprobs for the
reference's tokens, and the throughput, retries and errors of getting there. Each diff is `rig diff`'s own document
(rig.analysis.compare.diff_paths, floor-aware verdict included), written to OUT/diffs/NAME.json; this module decides
the rows and the exit code, and rig.report.compare_html and the CLI only render them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig.compare.driver import Outcome
from rig.compare.endpoints import CompareConfig, Endpoint
from rig.errors import UserError
from rig.files import atomic_write_bytes, now_iso
from rig.run.suite import Suite

DOC_VERSION = 1


def _accuracy(run: str, seed: int) -> dict[str, Any] | None:
    from rig.analysis.scoring import run_accuracy, score_run
    from rig.run.store import RunReader

    return run_accuracy(score_run(RunReader(run)), seed=seed)


def _throughput(outcome: Outcome, run: str) -> dict[str, Any]:
    """Tokens per second of generation over the attempts that completed (resumed parts count once, in the attempt
    that made them); falls back to the run's manifest for a run recorded outside `rig compare`."""
    done = [a for a in outcome.attempts if a.get("generate_s")]
    tokens = sum(int(a.get("tokens") or 0) for a in done)
    seconds = sum(float(a["generate_s"]) for a in done)
    how = "attempts recorded by rig compare"
    if not done:
        from rig.compare.driver import _manifest

        m = _manifest(Path(run)) or {}
        tokens = int((m.get("counts") or {}).get("tokens") or 0)
        seconds = float((m.get("timings") or {}).get("generate_s") or 0.0)
        how = "the run's manifest"
    return {"tokens": tokens, "generate_s": seconds, "tokens_per_s": tokens / seconds if seconds else None, "how": how}


def _requests(outcome: Outcome) -> dict[str, int]:
    retries = sum(int((a.get("requests") or {}).get("retries") or 0) for a in outcome.attempts)
    failed_requests = sum(int((a.get("requests") or {}).get("failed") or 0) for a in outcome.attempts)
    failed_attempts = sum(1 for a in outcome.attempts if a.get("error"))
    return {"retries": retries, "failed_requests": failed_requests, "failed_attempts": failed_attempts}


def diff_endpoint(
    config: CompareConfig, outcomes: dict[str, Outcome], e: Endpoint, out: Path, seed: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(rig diff's document of reference vs e, or None; the reason when there is none). Writes OUT/diffs/NAME.json."""
    from rig.analysis.compare import diff_paths
    from rig.analysis.summary import dumps

    ref, mine = outcomes[config.reference], outcomes[e.name]
    if ref.status != "complete":
        return None, "the reference did not complete"
    if mine.status != "complete":
        return None, "the run did not complete"
    floor = outcomes.get(config.floor) if config.floor else None
    use_floor = floor is not None and floor.status == "complete" and e.name != config.floor
    try:
        doc = diff_paths(
            ref.run,
            mine.run,
            scored=mine.scored if mine.score_status == "complete" else None,
            floor=(ref.run, floor.run) if use_floor else None,
            floor_scored=floor.scored if use_floor and floor.score_status == "complete" else None,
            seed=seed,
        )
    except UserError as exc:
        return None, str(exc)
    path = out / "diffs" / f"{e.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (dumps(doc) + "\n").encode())
    return doc, None


def endpoint_row(e: Endpoint, role: str, outcome: Outcome, accuracy: dict | None, doc: dict | None) -> dict[str, Any]:
    """One row of the provider page (values, not formatted text)."""
    task = (doc or {}).get("task") or {}
    summary = (doc or {}).get("summary") or {}
    teacher = (doc or {}).get("teacher_forced") or {}
    verdict = (doc or {}).get("verdict") or {}
    return {
        "endpoint": e.name,
        "role": role,
        "stack": e.spec.stack,
        "model": e.spec.model,
        "status": outcome.status,
        "error": outcome.error,
        "accuracy": (accuracy or {}).get("accuracy"),
        "accuracy_ci95": (accuracy or {}).get("ci95"),
        "n_prompts": (accuracy or {}).get("n_prompts"),
        "samples": (accuracy or {}).get("samples_max"),
        "diff_vs_reference": task.get("diff"),
        "diff_ci95": task.get("diff_ci95_two_level"),
        "mcnemar_p": task.get("mcnemar_p"),
        "sign_test_p": (task.get("prompt_level") or {}).get("sign_test_p"),
        "sequences": summary.get("sequences"),
        "share_identical": summary.get("share_identical"),
        "confident": summary.get("confident"),
        "near_tie": summary.get("near_tie"),
        "sampled": summary.get("sampled"),
        "sampling_mode": ((doc or {}).get("sampling") or {}).get("mode"),
        "drift_mean_abs_delta": teacher.get("mean_abs_delta"),
        "drift_mean_kl": teacher.get("mean_kl"),
        "drift_source": teacher.get("source"),
        "teacher_forced": outcome.score_status,
        "verdict_exit_code": verdict.get("exit_code"),
        "verdict": verdict.get("line"),
        **_requests(outcome),
        "throughput": _throughput(outcome, outcome.run),
    }


def build_document(
    config: CompareConfig, suite: Suite, outcomes: dict[str, Outcome], out: str | Path, *, seed: int = 0
) -> dict[str, Any]:
    """Diffs every endpoint against the reference and returns the compare document (rows, endpoints, exit code)."""
    out = Path(out)
    rows, endpoints = [], []
    for e in config.endpoints:
        outcome = outcomes[e.name]
        role = "reference" if e.name == config.reference else "floor" if e.name == config.floor else "endpoint"
        accuracy = _accuracy(outcome.run, seed) if outcome.status == "complete" else None
        doc, why = (None, None) if role == "reference" else diff_endpoint(config, outcomes, e, out, seed)
        rows.append(endpoint_row(e, role, outcome, accuracy, doc))
        endpoints.append(
            {
                "name": e.name,
                "role": role,
                "spec": e.spec.to_dict(),
                "spec_hash": e.spec.hash(),
                "local": e.local,
                "outcome": outcome.to_dict(),
                "accuracy": accuracy,
                "diff": str(out / "diffs" / f"{e.name}.json") if doc else None,
                "diff_missing": why,
                "task": (doc or {}).get("task"),
            }
        )
    failed = [r["endpoint"] for r in rows if r["status"] != "complete"]
    diverged = [r["endpoint"] for r in rows if r["verdict_exit_code"] == 1]
    code = 2 if failed else 1 if diverged else 0
    if failed:
        line = f"{len(failed)} of {len(rows)} endpoints did not complete ({', '.join(failed)}); rerun to resume them"
    elif diverged:
        line = f"{len(diverged)} of {len(rows) - 1} endpoints diverge from {config.reference}: {', '.join(diverged)}"
    else:
        line = f"every endpoint agrees with {config.reference} within the verdict's rule"
    ref = config.endpoint(config.reference).spec.sampling
    return {
        "rig_compare": DOC_VERSION,
        "created_at": now_iso(),
        "endpoints_file": str(Path(config.path).resolve()),
        "out": str(out.resolve()),
        "reference": config.reference,
        "floor": config.floor,
        "suite": suite.manifest_entry(),
        "sampling": {
            "temperature": ref.temperature,
            "samples": ref.samples,
            "seed": ref.seed,
            "max_new_tokens": ref.max_new_tokens,
            "coupled": ref.use_coupled,
        },
        "choices": config.choices,
        "rows": rows,
        "endpoints": endpoints,
        "exit_code": code,
        "line": line,
    }
