"""The work behind `rig layers A B`: capture both stacks and the float64 references, compare, write the document.

    doc = localize_runs("runs/hf", "runs/vllm")                        # every split and spike `rig diff` finds
    doc = localize_runs("runs/hf", "runs/vllm", prompt="p1", pos=16)   # one position
    doc["positions"][0]["cause"]     # "router flip at layer 0 (experts {2,3} vs {0,3}, margin ...)"

Order of work: the vLLM capture child starts first (its import and engine start are the longest step) and runs while
this process loads the hf stacks, captures them, then loads each distinct checkpoint in float64 and captures the
reference (with the fresh-input pass of every hf stack of that checkpoint). Each model is dropped as soon as it is no
longer needed. The document is plain JSON (rig.analysis.summary.clean).
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.localize import targets as tg
from rig.localize.capture import Capture
from rig.localize.metrics import logprobs
from rig.localize.verdict import FACTOR, FLOOR_STEPS, compare_position

DOC_VERSION = 1
TOP_LOGPROBS = 5

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Side:
    """One stack to capture: its spec, a label for tables, and the identity of its checkpoint."""

    label: str
    spec: Any  # rig.run.spec.RunSpec
    checkpoint: str  # sha256 over the model's files (from the run manifest), or the resolved model path
    run: dict[str, Any]  # {"path", "name", "spec_hash"} of the run it came from (empty when built from a spec)

    @property
    def stack(self) -> str:
        return self.spec.stack


def side_from_run(reader: Any, label: str) -> Side:
    """A Side from a run directory's manifest (stack, model, dtype, engine arguments)."""
    from rig.run.spec import RunSpec

    spec = RunSpec.from_dict(reader.manifest["spec"], source=str(reader.path / "manifest.json"))
    tg.openable(spec.stack, reader.name)
    files = (reader.manifest.get("model") or {}).get("files")
    return Side(
        label,
        spec,
        _checkpoint_id(spec.model, files),
        {"path": str(reader.path), "name": reader.name, "spec_hash": reader.manifest.get("spec_hash")},
    )


def side_from_spec(spec: Any, label: str) -> Side:
    """A Side straight from a RunSpec (library use and tests: no run directory)."""
    from rig.files import model_file_hashes

    tg.openable(spec.stack, label)
    model = Path(spec.model)
    if not (model / "config.json").exists():
        raise UserError(f"{label}: model {spec.model!r} is not a local directory with config.json")
    return Side(label, spec, _checkpoint_id(spec.model, model_file_hashes(model)), {})


def _checkpoint_id(model: str, files: dict[str, str] | None) -> str:
    if files:
        blob = json.dumps(sorted(files.items()), separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]
    return "path:" + str(Path(model).resolve())


def _labels(a: Side, b: Side) -> tuple[str, str]:
    if a.label != b.label:
        return a.label, b.label
    return a.label + "-a", b.label + "-b"


def _architecture(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise UserError(f"model {model_dir!r}: no config.json (rig layers needs the checkpoint on this machine)")
    cfg = json.loads(path.read_text())
    return {
        "layers": int(cfg["num_hidden_layers"]),
        "hidden": int(cfg["hidden_size"]),
        "experts": int(cfg.get("num_local_experts", 0)),
        "top_k": int(cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 0))),
        "vocab": int(cfg["vocab_size"]),
    }


def localize_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    prompt: str | None = None,
    pos: int | None = None,
    sample: int = 0,
    top: int | None = None,
    limit: int = tg.DEFAULT_LIMIT,
    factor: float = FACTOR,
    floor_steps: float = FLOOR_STEPS,
    fresh: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`rig layers A B`: choose the positions (see rig.localize.targets), then `localize`."""
    if pos is not None and prompt is None:
        raise UserError("--pos needs --prompt ID")
    if prompt is not None and pos is None:
        raise UserError("--prompt needs --pos N")
    if prompt is not None and top is not None:
        raise UserError("give either --prompt/--pos or --top, not both")
    runs = tg.Runs(run_a, run_b)
    stacks = (runs.a.manifest["spec"]["stack"], runs.b.manifest["spec"]["stack"])
    # Label each side by its stack, or by its run's name when both runs use one stack.
    names = stacks if stacks[0] != stacks[1] else (runs.a.name, runs.b.name)
    a, b = side_from_run(runs.a, names[0]), side_from_run(runs.b, names[1])
    selection: dict[str, Any]
    if prompt is not None:
        chosen, skipped = tg.requested(runs, prompt, int(pos), sample), 0
        selection = {"mode": "requested"}
    elif top is not None:
        chosen, skipped = tg.top(runs, top), 0
        selection = {"mode": "top", "n": top}
    else:
        chosen, skipped, found = tg.from_diff(runs, limit)
        selection = {"mode": "diff", "limit": limit, **found}
    selection["skipped"] = skipped
    doc = localize(a, b, chosen, factor=factor, floor_steps=floor_steps, fresh=fresh, progress=progress)
    doc["selection"] = selection
    return doc


def localize(
    a: Side,
    b: Side,
    targets: list[tg.Target],
    *,
    factor: float = FACTOR,
    floor_steps: float = FLOOR_STEPS,
    fresh: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Captures a, b and the float64 reference of each checkpoint at every target; returns the JSON document."""
    arch = check_architectures([a, b])
    if not targets:
        return compare(a, b, [], Captured({}, {}, {}, {}), factor=factor, floor_steps=floor_steps, arch=arch)
    captured = capture({"a": a, "b": b}, targets, fresh=fresh, progress=progress)
    return compare(a, b, targets, captured, factor=factor, floor_steps=floor_steps, arch=arch, keys=("a", "b"))


def check_architectures(sides: list[Side]) -> dict[str, Any]:
    """The shared architecture of the sides' checkpoints; UserError when layers, hidden size or vocabulary differ."""
    archs = [_architecture(s.spec.model) for s in sides]
    shape = [(x["layers"], x["hidden"], x["vocab"]) for x in archs]
    if len(set(shape)) > 1:
        (la, ha, _), (lb, hb, _) = shape[0], next(s for s in shape if s != shape[0])
        raise UserError(
            f"the two models differ in shape ({la} layers x {ha} vs {lb} x {hb}): a per-layer comparison needs one "
            "architecture"
        )
    return archs[0]


@dataclass
class Captured:
    """Every side's capture, every checkpoint's float64 reference, and the fresh-input rows of the hf sides."""

    sides: dict[str, Side]
    captures: dict[str, Capture]  # side key -> capture
    references: dict[str, Capture]  # checkpoint -> reference capture
    fresh: dict[str, dict[Any, Any]]  # side key -> position key -> fresh rows
    timings: dict[str, float] = field(default_factory=dict)


def capture(
    sides: dict[str, Side], targets: list[tg.Target], *, fresh: bool = True, progress: Progress | None = None
) -> Captured:
    """Captures any number of sides at the targets: every vLLM side in one child process per environment (started
    first, running alongside), every hf side in this process, then one float64 reference per distinct checkpoint with
    the fresh-input pass of the hf sides of that checkpoint."""
    say = progress or (lambda _msg: None)
    tasks = tg.tasks(targets)
    t0 = time.perf_counter()
    captures: dict[str, Capture] = {}
    references: dict[str, Capture] = {}
    fresh_rows: dict[str, dict[Any, Any]] = {}
    children = _start_vllm({k: s for k, s in sides.items() if s.stack == "vllm"}, tasks, say)
    hf_models: dict[str, Any] = {}
    try:
        for k, side in sides.items():
            if side.stack == "hf":
                say(f"capturing {side.label} (hf, {side.spec.model})")
                captures[k], hf_models[k] = _capture_hf(side, tasks)
        for checkpoint in dict.fromkeys(s.checkpoint for s in sides.values()):
            owner = next(s for s in sides.values() if s.checkpoint == checkpoint)
            shadows = {k: m for k, m in hf_models.items() if fresh and sides[k].checkpoint == checkpoint}
            say(f"float64 reference of {owner.spec.model}" + (" (with fresh-input blocks)" if shadows else ""))
            references[checkpoint], got = _capture_reference(owner.spec.model, tasks, shadows)
            fresh_rows.update(got)
            for k in shadows:
                hf_models.pop(k)  # no longer needed: free it before the next checkpoint loads
            gc.collect()
        hf_models.clear()
        local_s = time.perf_counter() - t0
        for child in children:
            say("waiting for the vLLM capture")
            for k, result in zip(child.keys, child.wait(), strict=True):
                captures[k] = Capture(result["rows"], result["info"])
    finally:
        for child in children:
            child.kill()
    timings = {"in_process_s": round(local_s, 3), "total_s": round(time.perf_counter() - t0, 3)}
    return Captured(dict(sides), captures, references, fresh_rows, timings)


def compare(
    a: Side,
    b: Side,
    targets: list[tg.Target],
    captured: Captured,
    *,
    factor: float = FACTOR,
    floor_steps: float = FLOOR_STEPS,
    arch: dict[str, Any] | None = None,
    keys: tuple[str, str] = ("a", "b"),
) -> dict[str, Any]:
    """The JSON document for sides a and b (captured under keys) at the targets."""
    from rig.analysis.summary import clean

    arch = arch or check_architectures([a, b])
    labels = _labels(a, b)
    ka, kb = keys
    positions = []
    for t in targets:
        ra, rb = captured.references[a.checkpoint].rows[t.key], captured.references[b.checkpoint].rows[t.key]
        rows_a, rows_b = captured.captures[ka].rows[t.key], captured.captures[kb].rows[t.key]
        cmp = compare_position(
            rows_a,
            rows_b,
            ra,
            rb,
            n_layers=arch["layers"],
            dtypes=(a.spec.dtype, b.spec.dtype),
            labels=labels,
            fresh=(captured.fresh.get(ka, {}).get(t.key), captured.fresh.get(kb, {}).get(t.key)),
            same_checkpoint=a.checkpoint == b.checkpoint,
            factor=factor,
            floor_steps=floor_steps,
        )
        positions.append(_position(t, cmp, rows_a, rows_b, ra, rb))
    caps = {"a": captured.captures.get(ka), "b": captured.captures.get(kb)}
    refs = {c: captured.references[c] for c in dict.fromkeys((a.checkpoint, b.checkpoint)) if c in captured.references}
    doc = _document(a, b, positions, caps, refs, captured.timings, factor, floor_steps, arch)
    return clean(doc)


class _Child:
    def __init__(self, keys: list[str], capture: Any):
        self.keys, self.capture = keys, capture

    def wait(self) -> list[dict[str, Any]]:
        return self.capture.wait()

    def kill(self) -> None:
        self.capture.kill()


def _start_vllm(sides: dict[str, Side], tasks: list[Any], say: Progress) -> list[_Child]:
    """One capture child per distinct environment (env switches hold process-wide, from before vLLM's import)."""
    from rig.localize.vllm_capture import VllmCapture, plan_job

    groups: dict[str, list[tuple[str, Any]]] = {}
    for k, side in sides.items():
        job = plan_job(side.label, side.spec, tasks)
        groups.setdefault(json.dumps(job.env, sort_keys=True), []).append((k, job))
    children = []
    for group in groups.values():
        say(f"starting the vLLM capture ({', '.join(job.engine_kwargs['model'] for _, job in group)})")
        children.append(_Child([k for k, _ in group], VllmCapture([job for _, job in group])))
    return children


def _capture_hf(side: Side, tasks: list[Any]) -> tuple[Capture, Any]:
    from rig.localize.capture import capture_transformers
    from rig.stacks.hf import HFStack

    stack = HFStack(side.spec)
    t0 = time.perf_counter()
    stack.load()
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = capture_transformers(stack.model, tasks)
    info = {
        "stack": "hf",
        "resolved": stack.describe().get("resolved", {}),
        "load_s": round(load_s, 3),
        "capture_s": round(time.perf_counter() - t1, 3),
        "hooks": "forward hooks on model.model.layers[i].self_attn, .mlp.router, .mlp, the layer, model.norm, lm_head",
    }
    return Capture(rows, info), stack.model


def _capture_reference(model_dir: str, tasks: list[Any], shadows: dict[str, Any]) -> tuple[Capture, dict[str, Any]]:
    from rig.localize.reference import capture_reference, load_reference

    model, info = load_reference(model_dir)
    t0 = time.perf_counter()
    rows, fresh_rows = capture_reference(model, tasks, shadows)
    info["capture_s"] = round(time.perf_counter() - t0, 3)
    if shadows:
        info["fresh_input"] = sorted(shadows)
    del model
    gc.collect()
    return Capture(rows, info), fresh_rows


def _top(lp: Any, n: int = TOP_LOGPROBS) -> dict[str, list[Any]]:
    import numpy as np

    idx = np.argsort(-lp, kind="stable")[:n]
    return {"ids": [int(i) for i in idx], "logprobs": [float(lp[i]) for i in idx]}


def _position(t: tg.Target, cmp: dict[str, Any], a: Any, b: Any, ra: Any, rb: Any) -> dict[str, Any]:
    """One position's entry: where it came from, the teacher-forced logprobs here, and the comparison."""
    tokens = [tok for tok in dict.fromkeys((t.token_a, t.token_b)) if tok is not None]
    here: dict[str, Any] = {}
    for name, rows in (("a", a), ("b", b), ("ref_a", ra), ("ref_b", rb)):
        lp = logprobs(rows["logits"])
        here[name] = {"token_logprobs": {str(tok): float(lp[tok]) for tok in tokens}, "top": _top(lp)}
    return {
        "prompt_id": t.prompt_id,
        "sample": t.sample,
        "pos": t.pos,
        "kinds": list(t.kinds),
        "prefix_tokens": len(t.prompt) + t.pos,
        "token_a": t.token_a,
        "token_b": t.token_b,
        "recorded": t.recorded,
        "teacher_forced": here,
        **cmp,
    }


def _document(
    a: Side,
    b: Side,
    positions: list[dict[str, Any]],
    captures: dict[str, Capture | None],
    references: dict[str, Capture],
    timings: dict[str, Any],
    factor: float,
    floor_steps: float,
    arch: dict[str, Any],
) -> dict[str, Any]:
    labels = _labels(a, b)

    def side_doc(k: str, side: Side, label: str) -> dict[str, Any]:
        cap = captures.get(k)
        return {
            "label": label,
            "stack": side.stack,
            "dtype": side.spec.dtype,
            "model": side.spec.model,
            "checkpoint": side.checkpoint,
            "run": side.run,
            "capture": cap.info if cap else None,
            "bytes_per_position": cap.nbytes() if cap else None,
        }

    return {
        "rig_layers": DOC_VERSION,
        "a": side_doc("a", a, labels[0]),
        "b": side_doc("b", b, labels[1]),
        "architecture": arch,
        "same_checkpoint": a.checkpoint == b.checkpoint,
        "rule": {
            "metric": "rel_l2 = ||x - y|| / ||float64 reference||",
            "baseline": "the smaller of the two stacks' errors against float64 (stacks of the coarser dtype)",
            "factor": factor,
            "floor_steps": floor_steps,
            "bad": "cross > factor x baseline and cross > floor_steps rounding steps at the tensor's largest element",
        },
        "references": {k: {**c.info, "bytes_per_position": c.nbytes()} for k, c in references.items()},
        "timings": timings,
        "positions": positions,
    }
