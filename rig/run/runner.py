"""Drive a stack over a suite into a run directory: batching, telemetry, manifest, resume.

The batches are a pure function of the prompts and the spec (prompt order, then sample index, cut every batch_size
sequences), so a killed run resumes by regenerating only the parts that are not on disk, and ends with the same tokens
as an uninterrupted run. Scoring (`rig score`) is the same loop over a source run's completions with `Stack.score`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.files import model_file_hashes
from rig.harmony import decode, parse_channels
from rig.run.spec import RunSpec
from rig.run.store import RunReader, RunWriter
from rig.run.suite import Prompt, Suite
from rig.stacks import get_stack
from rig.stacks.base import Request, SequenceResult, Stack


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


def model_record(model: str, local: bool = True) -> dict[str, Any]:
    """The model's path and the sha256 of each of its files (cached by size and mtime across runs)."""
    path = Path(model)
    if not local:
        return {"path": model, "files": None}
    if path.is_dir():
        return {"path": str(path.resolve()), "files": model_file_hashes(path, cache=HASH_CACHE)}
    return {"path": model, "files": None, "note": "hub id: files are hashed only for local directories"}


@contextlib.contextmanager
def _telemetry(stack_cls: type[Stack], rate_hz: float | None) -> Iterator[Any]:
    """A started TelemetryRecorder (None when rate_hz is 0), stopped on the way out whatever happens."""
    if not rate_hz:
        yield None
        return
    from rig.telemetry.recorder import TelemetryRecorder

    rec = TelemetryRecorder(rate_hz=rate_hz, gpu=stack_cls.gpu_telemetry)
    rec.start()
    try:
        yield rec
    finally:
        if rec.running:
            rec.stop()


@contextlib.contextmanager
def _loaded(spec: RunSpec, stack_cls: type[Stack], given: Stack | None) -> Iterator[Stack]:
    """The stack, loaded; closed on the way out unless the caller passed its own (tests share one engine)."""
    if given is not None:
        yield given
        return
    stack = stack_cls(spec)
    stack.load()
    try:
        yield stack
    finally:
        stack.close()


def _environment(stack_cls: type[Stack]) -> dict[str, Any]:
    from rig.telemetry.envinfo import capture

    # torch facts (TF32 flags, cuDNN) describe the process that runs the model: for hf that is this one; vLLM's
    # engine runs in a child that records its own.
    return capture(torch=stack_cls.in_process_torch)


def _new_manifest(
    spec: RunSpec, stack_cls: type[Stack], kind: str, suite: Suite | None, source: RunReader | None
) -> tuple[dict[str, Any], list[Prompt]]:
    if source is not None:
        prompts = [Prompt.from_json(r) for r in source.prompts.values()]
        suite_entry = source.manifest["suite"]
    elif suite is not None:
        prompts, suite_entry = list(suite.prompts), suite.manifest_entry()
    else:
        raise ValueError("execute() needs a suite or a source run")
    manifest = {
        "kind": kind,
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
        "suite": suite_entry,
        "model": model_record(spec.model, stack_cls.local_model),
        "stack": {},
        "environment": _environment(stack_cls),
    }
    if source is not None:
        manifest["source_run"] = {
            "path": str(source.path.resolve()),
            "name": source.name,
            "spec_hash": source.manifest["spec_hash"],
            "tokens_hash": source.tokens_hash(),
        }
    return manifest, prompts


def execute(
    spec: RunSpec | None,
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

    A stack instance may be passed in (tests share one engine); it is then neither loaded nor closed here. The stack
    loads before anything is written, so an unknown model or a dead endpoint leaves no directory behind; a failure
    after that marks the run "failed" (resumable) and re-raises.
    """
    writer = RunWriter(out)
    kind = "score" if source is not None else "generate"
    if resume:
        manifest = writer.reopen()
        if writer.repairing:  # a complete run's damaged parts: its recorded telemetry stays (finish() keeps it)
            telemetry_hz = 0
        prompts = [Prompt.from_json(r) for r in RunReader(out, check_parts=False).prompts.values()]
        spec = RunSpec.from_dict(manifest["spec"], source=f"{out}/manifest.json")
        kind = manifest["kind"]
        if kind == "score":
            source = RunReader(manifest["source_run"]["path"])
            if source.tokens_hash() != manifest["source_run"]["tokens_hash"]:
                raise UserError(f"{source.path}: its tokens changed since the scoring started; rescore with --force")
    if spec is None:
        raise ValueError("execute() needs a spec unless it resumes")
    stack_cls = type(stack) if stack is not None else get_stack(spec.stack)
    stack_cls.check_installed()
    if not resume:
        manifest, prompts = _new_manifest(spec, stack_cls, kind, suite, source)
    requests = (
        scoring_requests(source, prompts) if kind == "score" else generation_requests(prompts, spec.sampling.samples)
    )
    batches = plan_batches(requests, spec.batch_size)

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with _telemetry(stack_cls, telemetry_hz) as rec:
        if rec:
            rec.mark("load")
        with _loaded(spec, stack_cls, stack) as live:
            timings["load_s"] = round(time.perf_counter() - t_start, 3)
            if not resume:
                manifest["parts_plan"] = {str(i): len(b) for i, b in enumerate(batches)}
                writer.create(manifest, prompts, force=force)
            done = writer.complete_parts()
            writer.manifest["stack"] = live.describe()
            engine_torch = writer.manifest["stack"].get("torch")
            if not stack_cls.in_process_torch and engine_torch:  # the engine's process ran torch: record its build
                writer.manifest["environment"]["torch"] = {**engine_torch, "process": "engine (child process)"}
            writer.write_manifest()
            try:
                t_gen = time.perf_counter()
                _run_batches(live, kind, batches, done, writer, rec, progress)
                timings["generate_s"] = round(time.perf_counter() - t_gen, 3)
                writer.manifest["stack"] = live.describe()
            except BaseException as exc:
                _record_telemetry(writer, rec, out)
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                writer.finish("failed", error=message, timings=timings)
                raise
        timings["total_s"] = round(time.perf_counter() - t_start, 3)
        _record_telemetry(writer, rec, out)
    writer.finish("complete", timings=timings)
    return Path(out)


def _run_batches(
    stack: Stack,
    kind: str,
    batches: list[list[Request]],
    done: set[int],
    writer: RunWriter,
    rec: Any,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Generates (or scores) every batch not already on disk and writes each as one part.

    Batch i + 1 is submitted before batch i is written: a stack that works in another process (vLLM's worker)
    computes while this process converts, decodes and writes, so the writing costs no engine time. Batch i is on
    disk before the wait for batch i + 1 begins, so a failure there loses nothing already generated.
    """
    todo = [i for i in range(len(batches)) if i not in done]
    total, finished = len(batches), len(batches) - len(todo)
    if progress and finished:
        progress(finished, total)

    def write(index: int, results: list[Any]) -> None:
        nonlocal finished
        writer.write_part(index, results, [completion_record(r) for r in results])
        finished += 1
        if progress:
            progress(finished, total)

    pending: tuple[int, list[Any]] | None = None
    for index in todo:
        if rec:
            rec.mark("batch", index=index)
        wait = stack.submit(batches[index], kind)
        if pending is not None:  # written while this batch runs
            write(*pending)
        results = wait()
        if rec:
            rec.add_tokens(int(sum(len(r.token_ids) for r in results)))  # credited to this batch's phase
        pending = (index, results)
    if pending is not None:
        if rec:
            rec.mark("write", index=pending[0])
        write(*pending)


def _record_telemetry(writer: RunWriter, rec: Any, out: str | Path) -> None:
    """Stops the recorder and writes its summary into the manifest and its tables into telemetry/."""
    if rec and rec.running:
        writer.manifest["telemetry"] = rec.stop(tokens=writer.manifest["counts"]["tokens"])
        rec.write(Path(out) / "telemetry")
