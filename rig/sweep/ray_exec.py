"""Cells as Ray tasks across boxes, their run directories brought back to the driver part by part.

`rig sweep --ray ADDRESS` connects to a running cluster (the driver must run on one of its nodes: `ray start --head`
there, `ray start --address HEAD:6379` on every other box) and submits one task per cell that is not already complete
in the sweep directory. Every node needs the rig installed and the model at the same path (or a hub id).

What a cell asks of the cluster, per stack (`cell_options`): a stack that computes on its node (Stack.gpu_telemetry:
hf, vllm) takes one GPU per cell on a cluster with GPUs (vLLM: tensor_parallel_size x pipeline_parallel_size), or
`--gpus-per-cell`; a client of a remote server (openai) and the stub take none; every cell takes one CPU. `--place
STACK=RESOURCE` sends the cells of a stack to nodes started with that custom resource (`ray start --resources
'{"h100": 1}'`), so hf cells land on the RTX box and vLLM cells on the H100 box.

Nothing recorded is lost when a worker dies. A `CellSink` actor, pinned to the driver's node, owns the sweep directory
there. The task runs the cell in a scratch directory on its node (rig.sweep.cells.run_cell) and, after every batch,
sends the sink the new token parts, completions.jsonl and then manifest.json, each written atomically, the manifest
last: the driver's copy is a valid run directory at every moment, and a part counts there once its manifest record
has arrived. A task whose worker or node dies is retried by Ray (`--ray-retries`); the retry starts from the driver's
copy, so it regenerates only the parts that never reached the driver. A finished task sends every file, and the
driver checks the copy (sha256 of every part against its record) before it diffs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.files import atomic_write_bytes, now_iso
from rig.run.spec import RunSpec
from rig.run.store import RunError, RunReader
from rig.run.suite import Suite
from rig.sweep.cells import MANIFEST, Outcome, committed_parts, run_cell, run_state
from rig.sweep.plan import Cell

ATTEMPTS_LOG = "ray-attempts.jsonl"
PLACE_AMOUNT = 0.01  # of a custom resource per cell: a placement mark, the GPUs limit concurrency


# ---- what a cell asks of the cluster --------------------------------------------------------------------------------


def cell_gpus(spec: RunSpec) -> float:
    """GPUs one cell of this spec needs on a GPU cluster: its stack's fact, before any override."""
    from rig.stacks import get_stack

    if spec.device == "cpu" or not get_stack(spec.stack).gpu_telemetry:
        return 0.0  # runs on the CPU, or a client of a server elsewhere
    if spec.stack == "vllm":
        args = dict(spec.engine_args)
        return float(int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1)))
    return 1.0


def cell_options(
    spec: RunSpec, *, cluster_gpus: float, place: dict[str, str], gpus_per_cell: float | None, retries: int
) -> dict[str, Any]:
    """Ray task options for one cell: CPUs, GPUs, placement resource and retries."""
    gpus = 0.0
    if cluster_gpus > 0 and cell_gpus(spec) > 0:
        gpus = gpus_per_cell if gpus_per_cell is not None else cell_gpus(spec)
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus, "max_retries": retries, "retry_exceptions": False}
    if spec.stack in place:
        options["resources"] = {place[spec.stack]: PLACE_AMOUNT}
    return options


# ---- the driver's side: a sink for every cell's files ---------------------------------------------------------------


class CellSink:
    """Owns the sweep directory on the driver's node: snapshots of cells for retries, atomic writes of their files."""

    def __init__(self, root: str):
        self.root = Path(root)

    def snapshot(self, rel: str) -> list[tuple[str, bytes]]:
        """Every file of the driver's copy of a cell (empty when it holds no manifest: nothing committed)."""
        base = self.root / rel
        if not (base / MANIFEST).exists():
            return []
        files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [(str(p.relative_to(base)), p.read_bytes()) for p in files]

    def put(self, rel: str, files: list[tuple[str, bytes]], keep: list[str] | None = None) -> int:
        """Writes the files in the order given, each atomically; with `keep`, removes any other file. Returns bytes."""
        base = self.root / rel
        total = 0
        for name, data in files:
            atomic_write_bytes(base / name, data)
            total += len(data)
        if keep is not None:
            wanted = set(keep)
            for p in base.rglob("*"):
                if p.is_file() and str(p.relative_to(base)) not in wanted:
                    p.unlink()
        return total

    def clear(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def attempt(self, record: dict[str, Any]) -> None:
        """Appends one line to OUT/ray-attempts.jsonl: which node and process ran (or resumed) which cell."""
        with open(self.root / ATTEMPTS_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")


class _Pusher:
    """Sends a cell's files to the sink as they are committed: parts, then completions.jsonl, then manifest.json."""

    def __init__(self, scratch: Path, sink: Any, rel: str):
        self.scratch, self.sink, self.rel = scratch, sink, rel
        self.sent: dict[str, tuple[int, int]] = {}

    def _changed(self, names: list[str]) -> list[tuple[str, bytes]]:
        out = []
        for name in names:
            path = self.scratch / name
            if not path.is_file():
                continue
            st = path.stat()
            if self.sent.get(name) != (st.st_size, st.st_mtime_ns):
                out.append((name, path.read_bytes()))
                self.sent[name] = (st.st_size, st.st_mtime_ns)
        return out

    def after_batch(self, done: int, total: int) -> None:
        import ray

        parts = sorted(str(p.relative_to(self.scratch)) for p in (self.scratch / "tokens").glob("part-*.parquet"))
        files = self._changed([*parts, "completions.jsonl", "prompts.jsonl", MANIFEST])
        if files:
            ray.get(self.sink.put.remote(self.rel, files))

    def finish(self) -> None:
        """Every file (telemetry included), the manifest last; the driver's copy then mirrors the scratch directory."""
        import ray

        names = sorted(
            str(p.relative_to(self.scratch))
            for p in self.scratch.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        names = [n for n in names if n != MANIFEST] + [MANIFEST]
        ray.get(self.sink.put.remote(self.rel, self._changed(names), keep=names))


def _scratch_root(sweep_key: str) -> Path:
    return Path(tempfile.gettempdir()) / f"rig-sweep-{os.getuid()}" / sweep_key


def _cell_task(spec_dict: dict[str, Any], rel: str, suite: Suite, sink: Any, telemetry_hz: float, key: str) -> dict:
    """One cell on a Ray worker: restore the driver's copy, run (or resume) it, send its files back."""
    import ray

    spec = RunSpec.from_dict(spec_dict, source="sweep plan")
    scratch = _scratch_root(key) / rel
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name, data in ray.get(sink.snapshot.remote(rel)):
        atomic_write_bytes(scratch / name, data)
    restored = committed_parts(scratch) if (scratch / MANIFEST).exists() else 0
    if not (scratch / MANIFEST).exists():
        shutil.rmtree(scratch)
    ctx = ray.get_runtime_context()
    sink.attempt.remote(
        {
            "cell": rel,
            "pid": os.getpid(),
            "host": platform.node(),
            "node_id": ctx.get_node_id(),
            "restored_parts": restored,
            "at": now_iso(),
        }
    )
    pusher = _Pusher(scratch, sink, rel)
    outcome = run_cell(spec, scratch, suite, telemetry_hz=telemetry_hz, progress=pusher.after_batch)
    if (scratch / MANIFEST).exists():
        pusher.finish()
    elif outcome.status == "skipped":
        ray.get(sink.clear.remote(rel))
    result = outcome.to_dict()
    result["host"] = platform.node()
    shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):  # the empty scratch folders above it, up to the sweep's own
        os.removedirs(scratch.parent)
    return result


# ---- the executor ----------------------------------------------------------------------------------------------------


class RayExecutor:
    """Runs cells as Ray tasks on the cluster at `address` ("auto", "HOST:PORT"); see the module docstring."""

    name = "ray"

    def __init__(
        self, address: str, *, retries: int = 3, place: dict[str, str] | None = None, gpus_per_cell: float | None = None
    ):
        self.address, self.retries = address, retries
        self.place = dict(place or {})
        self.gpus_per_cell = gpus_per_cell

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise UserError("rig sweep --ray needs Ray: pip install 'inference-rig[ray]'") from None
        try:
            ray.init(address=self.address, namespace="rig-sweep", log_to_driver=False, ignore_reinit_error=True)
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds for an unreachable or unknown cluster
            raise UserError(
                f"cannot connect to the Ray cluster at {self.address}: {str(exc).splitlines()[0]}"
            ) from None
        return ray

    def run(self, cells: list[Cell], out: Path, suite: Suite, telemetry_hz: float, report: Any) -> dict[str, Outcome]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._connect()
        outcomes: dict[str, Outcome] = {}
        key = hashlib.sha256(f"{socket.gethostname()}:{out.resolve()}".encode()).hexdigest()[:12]
        try:
            sink = (
                ray.remote(num_cpus=0)(CellSink)
                .options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), False)
                )
                .remote(str(out.resolve()))
            )
            task = ray.remote(_cell_task)
            cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
            pending: dict[Any, tuple[Cell, float]] = {}
            done_count = 0
            for cell in cells:
                cached = _cached(out / cell.dir, cell.spec)
                if cached is not None:
                    outcomes[cell.id] = cached
                    done_count += 1
                    report(cell, cached, done_count, len(cells))
                    continue
                opts = cell_options(
                    cell.spec,
                    cluster_gpus=cluster_gpus,
                    place=self.place,
                    gpus_per_cell=self.gpus_per_cell,
                    retries=self.retries,
                )
                ref = task.options(**opts).remote(cell.spec.to_dict(), cell.dir, suite, sink, telemetry_hz, key)
                pending[ref] = (cell, time.perf_counter())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell, t0 = pending.pop(ref)
                    outcome = _collect(ray, ref, out / cell.dir, cell.spec, time.perf_counter() - t0)
                    outcomes[cell.id] = outcome
                    done_count += 1
                    report(cell, outcome, done_count, len(cells))
            ray.kill(sink)
        finally:
            ray.shutdown()
        return outcomes


def _cached(path: Path, spec: RunSpec) -> Outcome | None:
    """A complete, sound run already on the driver: nothing to submit."""
    if run_state(path, spec.hash()) != "complete":
        return None
    try:
        RunReader(path)
    except RunError:
        return None
    return Outcome("complete", "cached")


def _collect(ray: Any, ref: Any, path: Path, spec: RunSpec, wall_s: float) -> Outcome:
    """The task's outcome; a complete cell's copy on the driver is checked before it counts."""
    from ray.exceptions import RayError

    try:
        result = ray.get(ref)
    except RayError as exc:  # the retries are spent: the worker or its node kept dying
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Outcome("failed", reason=f"{type(exc).__name__}: {first}", wall_s=wall_s)
    result.pop("host", None)
    outcome = Outcome(**result)
    if outcome.status == "complete":
        try:
            RunReader(path)
        except RunError as exc:
            return Outcome("failed", reason=f"the copy on the driver does not check out: {exc}", wall_s=wall_s)
    return outcome
