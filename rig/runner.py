"""Drive a stack over a suite into a run directory: batching, telemetry, manifest, resume.

The batches are a pure function of the prompts and the spec (prompt order, then sample index, cut every batch_size
sequences), so a killed run resumes by regenerating only the parts that are not on disk, and ends with the same tokens
as an uninterrupted run. Scoring (`rig score`) is the same loop over a source run's completions with `Stack.score`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.runs import RunReader, RunWriter
from rig.spec import RunSpec
from rig.stacks import get_stack
from rig.stacks.base import Request, SequenceResult, Stack
from rig.suite import Prompt, Suite, decode, parse_channels


def plan_batches(requests: Sequence[Request], batch_size: int) -> list[list[Request]]:
    return [list(requests[i : i + batch_size]) for i in range(0, len(requests), batch_size)]


def generation_requests(prompts: Sequence[Prompt], samples: int) -> list[Request]:
    return [Request(p, s) for p in prompts for s in range(samples)]


def scoring_requests(source: RunReader, prompts: Sequence[Prompt]) -> list[Request]:
    seqs = source.sequences()
    by_id = {p.id: p for p in prompts}
    out = []
    for c in source.completions:
        key = (c["prompt_id"], c["sample"])
        out.append(Request(by_id[c["prompt_id"]], c["sample"], seqs.get(key, [])))
    return out


def completion_record(result: SequenceResult) -> dict[str, Any]:
    """completions.jsonl row for one sequence: decoded text and harmony channels."""
    channels = parse_channels(result.token_ids)
    return {
        "prompt_id": result.prompt_id,
        "sample": int(result.sample),
        "finish_reason": result.finish_reason,
        "n_tokens": int(len(result.token_ids)),
        "text": decode(result.token_ids),
        "analysis": channels["analysis"],
        "final": channels["final"],
        "timings": result.timings,
    }


HASH_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rig" / "model-file-hashes.json"


def model_record(model: str) -> dict[str, Any]:
    """The model's path and the sha256 of each of its files (cached by size and mtime across runs)."""
    from rig.tiny import model_file_hashes

    path = Path(model)
    if path.is_dir():
        return {"path": str(path.resolve()), "files": model_file_hashes(path, cache=HASH_CACHE)}
    return {"path": model, "files": None, "note": "hub id: files are hashed only for local directories"}


def _telemetry(spec: RunSpec, rate_hz: float | None) -> Any:
    if not rate_hz:
        return None
    from rig.telemetry import TelemetryRecorder

    return TelemetryRecorder(rate_hz=rate_hz, gpu=spec.stack != "openai")


def _environment(spec: RunSpec) -> dict[str, Any]:
    from rig.envinfo import capture

    # torch facts (TF32 flags, cuDNN) describe the process that runs the model: for hf that is this one; vLLM's
    # engine runs in a child that records its own.
    return capture(torch=spec.stack == "hf")


def execute(
    spec: RunSpec,
    out: str | Path,
    *,
    suite: Suite | None = None,
    source: RunReader | None = None,
    force: bool = False,
    resume: bool = False,
    telemetry_hz: float | None = 10.0,
    progress: Callable[[int, int], None] | None = None,
    stack: Stack | None = None,
) -> Path:
    """Run (or resume) a generation, or a scoring of `source`, into `out`. Returns the run directory.

    A stack instance may be passed in (tests share one engine); it is then neither loaded nor closed here.
    """
    writer = RunWriter(out)
    kind = "score" if source is not None else "generate"
    if resume:
        manifest = writer.reopen()
        prompts = [Prompt.from_json(r) for r in RunReader(out, check_parts=False).prompts.values()]
        spec = RunSpec.from_dict(manifest["spec"], source=f"{out}/manifest.json")
        kind = manifest["kind"]
        if kind == "score":
            source = RunReader(manifest["source_run"]["path"])
            if source.tokens_hash() != manifest["source_run"]["tokens_hash"]:
                raise UserError(f"{source.path}: its tokens changed since the scoring started; rescore with --force")
    else:
        if source is not None:
            prompts = [Prompt.from_json(r) for r in source.prompts.values()]
            suite_entry = source.manifest["suite"]
        else:
            assert suite is not None
            prompts = list(suite.prompts)
            suite_entry = suite.manifest_entry()
        manifest = {
            "kind": kind,
            "spec": spec.to_dict(),
            "spec_hash": spec.hash(),
            "suite": suite_entry,
            "model": model_record(spec.model) if spec.stack != "openai" else {"path": spec.model, "files": None},
            "stack": {},
            "environment": _environment(spec),
        }
        if source is not None:
            manifest["source_run"] = {
                "path": str(source.path.resolve()),
                "name": source.name,
                "spec_hash": source.manifest["spec_hash"],
                "tokens_hash": source.tokens_hash(),
            }
    requests = (
        scoring_requests(source, prompts) if kind == "score" else generation_requests(prompts, spec.sampling.samples)
    )
    batches = plan_batches(requests, spec.batch_size)

    rec = _telemetry(spec, telemetry_hz)
    own_stack = stack is None
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if rec:
        rec.start()
        rec.mark("load")
    try:
        # The stack loads before anything is written: an unknown model or a dead endpoint leaves no directory behind.
        if own_stack:
            stack = get_stack(spec.stack)(spec)
            stack.load()
    except BaseException:
        if rec:
            rec.stop()
        raise
    timings["load_s"] = round(time.perf_counter() - t_start, 3)
    try:
        if not resume:
            manifest["parts_plan"] = {str(i): len(b) for i, b in enumerate(batches)}
            writer.create(manifest, prompts, force=force)
        done = writer.complete_parts()
        writer.manifest["stack"] = stack.describe()
        writer.write_manifest()
    except BaseException:
        if rec:
            rec.stop()
        if own_stack:
            stack.close()
        raise
    try:
        t_gen = time.perf_counter()
        for index, batch in enumerate(batches):
            if index in done:
                if progress:
                    progress(index + 1, len(batches))
                continue
            if rec:
                rec.mark("batch", index=index)
            results = stack.score(batch) if kind == "score" else stack.generate(batch)
            n_tokens = int(sum(len(r.token_ids) for r in results))
            if rec:
                rec.add_tokens(n_tokens)  # credited to this batch's phase
                rec.mark("write", index=index)
            writer.write_part(index, results, [completion_record(r) for r in results])
            if progress:
                progress(index + 1, len(batches))
        timings["generate_s"] = round(time.perf_counter() - t_gen, 3)
        writer.manifest["stack"] = stack.describe()
    except BaseException as exc:
        if rec:
            writer.manifest["telemetry"] = rec.stop(tokens=writer.manifest["counts"]["tokens"])
            rec.write(Path(out) / "telemetry")
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        writer.finish("failed", error=message, timings=timings)
        raise
    finally:
        if own_stack and stack is not None:
            stack.close()
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    if rec:
        writer.manifest["telemetry"] = rec.stop(tokens=writer.manifest["counts"]["tokens"])
        rec.write(Path(out) / "telemetry")
    writer.finish("complete", timings=timings)
    return Path(out)
