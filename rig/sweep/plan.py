"""What a sweep runs: a base spec, a grid of settings, the reference cell and its replicates, as a list of cells.

A grid axis names a RunSpec field (`dtype`, `batch_size`, `attention`, ...), a sampling field (`temperature`, or
`sampling.temperature`), or anything else, which becomes an engine argument (`kv_cache_dtype`, `engine.max_num_seqs`).
Every combination of the axes' values is a cell with its own RunSpec; the reference is one of them (by default the
first value of every axis), and `replicates` more runs of the reference's spec make the noise floor of every verdict.

The plan is a pure function of its inputs, and each cell's directory is named after its values and its spec hash, so
running the same command again finds every cell where it left it (`plan.json` records the plan; a different plan in
the same directory is refused).

    base, grid, options = load_sweep_spec("sweep.toml", overrides={"model": "models/tiny"})
    plan = make_plan(base, parse_grid(["dtype=bfloat16,float32", "batch_size=1,8"], grid), reference={}, replicates=1)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.run.spec import RunSpec, SamplingSpec

PLAN_FILE = "plan.json"
RUNS_DIR = "runs"
PLAN_VERSION = 1
_RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunSpec)}
_SAMPLING_FIELDS = {f.name: f for f in dataclasses.fields(SamplingSpec)}
_NOT_AXES = {"sampling", "engine_args", "stop_token_ids"}


@dataclass(frozen=True)
class Axis:
    """One grid axis: the spec field it sets and its values, in the order given."""

    key: str  # as the user wrote it (the label)
    target: str  # "run", "sampling" or "engine"
    name: str  # the field or engine argument name
    values: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.target, "name": self.name, "values": list(self.values)}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its spec, where it lives (relative to the sweep directory) and its role."""

    id: str  # unique within the sweep: the directory name
    role: str  # "reference", "replicate" or "cell"
    values: dict[str, Any]  # axis key -> value
    spec: RunSpec
    replica: int = 0  # 1.. for replicates of the reference

    @property
    def label(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.values.items()) or "base"
        return f"{text} (replicate {self.replica})" if self.role == "replicate" else text

    @property
    def dir(self) -> str:
        return f"{RUNS_DIR}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "label": self.label,
            "values": self.values,
            "replica": self.replica,
            "dir": self.dir,
            "spec_hash": self.spec.hash(),
            "spec": self.spec.to_dict(),
        }


@dataclass(frozen=True)
class Plan:
    base: RunSpec
    axes: tuple[Axis, ...]
    cells: tuple[Cell, ...]  # reference first, then its replicates, then the other cells in grid order
    replicates: int
    extra: dict[str, Any] = field(default_factory=dict)  # suite entry, telemetry rate, scoring: recorded, compared

    @property
    def reference(self) -> Cell:
        return next(c for c in self.cells if c.role == "reference")

    @property
    def replicas(self) -> list[Cell]:
        return [c for c in self.cells if c.role == "replicate"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rig_sweep_plan": PLAN_VERSION,
            "base": self.base.to_dict(),
            "axes": [a.to_dict() for a in self.axes],
            "replicates": self.replicates,
            "reference": self.reference.id,
            "cells": [c.to_dict() for c in self.cells],
            **self.extra,
        }


# ---- the grid ------------------------------------------------------------------------------------------------------


def axis_target(key: str) -> tuple[str, str]:
    """("run" | "sampling" | "engine", name) for a grid key."""
    if key.startswith("sampling."):
        name, target = key.split(".", 1)[1], "sampling"
    elif key.startswith(("engine.", "engine_args.")):
        return "engine", key.split(".", 1)[1]
    elif key in _RUN_FIELDS:
        name, target = key, "run"
    elif key in _SAMPLING_FIELDS:
        name, target = key, "sampling"
    else:
        return "engine", key
    known = _RUN_FIELDS if target == "run" else _SAMPLING_FIELDS
    if name not in known or name in _NOT_AXES:
        raise UserError(f"grid axis {key!r}: not a field that a grid can vary")
    return target, name


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _coerce(target: str, name: str, value: Any, key: str) -> Any:
    """A grid value in the type of its spec field (engine arguments keep what they parsed as)."""
    if target == "engine":
        return value
    f = (_RUN_FIELDS if target == "run" else _SAMPLING_FIELDS)[name]
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, str):
                value = {"true": True, "false": False}[value.lower()]
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"grid axis {key!r}: value {value!r} is not a valid {kind}") from None
    return value


def parse_grid(items: list[str] | tuple[str, ...], table: dict[str, Any] | None = None) -> list[Axis]:
    """Axes from `--grid KEY=V1,V2` options (after the spec file's `[grid]` table, which they override by key)."""
    raw: dict[str, list[Any]] = {}
    for key, values in (table or {}).items():
        raw[str(key)] = list(values) if isinstance(values, list) else [values]
    for item in items:
        if "=" not in item:
            raise UserError(f"--grid {item!r}: expected KEY=VALUE1,VALUE2,...")
        key, _, rest = item.partition("=")
        values = [_parse_value(v.strip()) for v in rest.split(",") if v.strip() != ""]
        raw[key.strip()] = values
    axes = []
    for key, values in raw.items():
        if not values:
            raise UserError(f"grid axis {key!r} has no values")
        target, name = axis_target(key)
        coerced = tuple(_coerce(target, name, v, key) for v in values)
        if len(set(map(json.dumps, coerced))) != len(coerced):
            raise UserError(f"grid axis {key!r} repeats a value")
        axes.append(Axis(key, target, name, coerced))
    return axes


def apply_values(base: RunSpec, axes: list[Axis] | tuple[Axis, ...], values: tuple[Any, ...]) -> RunSpec:
    """The base spec with each axis set to its value (the spec validates itself: a bad value is a UserError)."""
    run, sampling, engine = {}, {}, dict(base.engine_args)
    for axis, value in zip(axes, values, strict=True):
        {"run": run, "sampling": sampling, "engine": engine}[axis.target][axis.name] = value
    try:
        s = dataclasses.replace(base.sampling, **sampling)
        return dataclasses.replace(base, sampling=s, engine_args=tuple(sorted(engine.items())), **run)
    except TypeError as exc:
        raise UserError(f"grid: {exc}") from None


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", str(value)).strip("_") or "x"


def make_plan(
    base: RunSpec,
    axes: list[Axis],
    *,
    reference: dict[str, Any] | None = None,
    replicates: int = 1,
    extra: dict[str, Any] | None = None,
) -> Plan:
    """Every cell of the grid, the reference cell (given values, else the first of every axis) and its replicates."""
    if replicates < 0:
        raise UserError("replicates must be >= 0")
    ref_values = _reference_values(axes, reference or {})
    cells: list[Cell] = []
    ref_cell = None
    for combo in itertools.product(*(a.values for a in axes)):
        spec = apply_values(base, axes, combo)
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        cell_id = "_".join(_slug(v) for v in combo) or "base"
        cell = Cell(f"{cell_id}-{spec.hash()[:8]}", "cell", values, spec)
        if combo == ref_values:
            ref_cell = dataclasses.replace(cell, role="reference")
        else:
            cells.append(cell)
    assert ref_cell is not None
    reps = [
        dataclasses.replace(ref_cell, role="replicate", replica=i, id=f"{ref_cell.id}-rep{i}")
        for i in range(1, replicates + 1)
    ]
    seen: dict[str, str] = {}
    for c in [ref_cell, *cells]:
        other = seen.setdefault(c.spec.hash(), c.label)
        if other != c.label:
            raise UserError(f"grid: cells {other!r} and {c.label!r} have the same spec (an axis changes nothing)")
    return Plan(base, tuple(axes), (ref_cell, *reps, *cells), replicates, dict(extra or {}))


def _reference_values(axes: list[Axis], reference: dict[str, Any]) -> tuple[Any, ...]:
    keys = {a.key for a in axes}
    unknown = sorted(set(reference) - keys)
    if unknown:
        raise UserError(f"reference names {unknown[0]!r}, which is not a grid axis ({', '.join(sorted(keys))})")
    out = []
    for a in axes:
        if a.key not in reference:
            out.append(a.values[0])
            continue
        value = _coerce(a.target, a.name, reference[a.key], a.key)
        if value not in a.values:
            raise UserError(f"reference {a.key}={value!r} is not one of the axis' values {list(a.values)}")
        out.append(value)
    return tuple(out)


def parse_assignments(text: str | None) -> dict[str, Any]:
    """`KEY=VALUE,KEY=VALUE` (the --reference option) as a dict."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in part:
            raise UserError(f"--reference {text!r}: expected KEY=VALUE,KEY=VALUE")
        key, _, value = part.partition("=")
        out[key.strip()] = _parse_value(value.strip())
    return out


# ---- the spec file -------------------------------------------------------------------------------------------------


def load_sweep_spec(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> tuple[RunSpec, dict[str, Any], dict[str, Any]]:
    """(base RunSpec, [grid] table, [sweep] table) from an optional TOML file, flags overriding its spec fields.

    The file is an ordinary spec file (docs/stacks.md) plus an optional `[grid]` table (`dtype = ["bfloat16",
    "float32"]`) and `[sweep]` table (`reference = {dtype = "float32"}`, `replicates = 2`).
    """
    from rig.run.spec import read_spec_file

    data, source = read_spec_file(path)
    grid = data.pop("grid", {}) or {}
    sweep = data.pop("sweep", {}) or {}
    if not isinstance(grid, dict) or not isinstance(sweep, dict):
        raise UserError(f"{source}: [grid] and [sweep] must be tables")
    unknown = sorted(set(sweep) - {"reference", "replicates"})
    if unknown:
        raise UserError(f"{source} [sweep]: unknown field {unknown[0]!r} (known: reference, replicates)")
    data.setdefault("sampling", {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("sampling."):
            data["sampling"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return RunSpec.from_dict(data, source=source), grid, sweep


# ---- plan.json -----------------------------------------------------------------------------------------------------


def write_plan(plan: Plan, out: Path) -> None:
    """Records the plan in OUT/plan.json, or checks that the one there is the same plan (the same cells)."""
    from rig.files import atomic_write_json

    path = out / PLAN_FILE
    new = plan.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        old_cells = {c["id"]: c["spec_hash"] for c in old.get("cells", [])}
        new_cells = {c["id"]: c["spec_hash"] for c in new["cells"]}
        if old_cells != new_cells or old.get("suite", {}).get("hash") != new.get("suite", {}).get("hash"):
            raise UserError(
                f"{out}: holds another sweep (its plan.json lists other cells or another suite); "
                "use another --out, or the same grid and spec to continue it"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, new)


def read_plan(out: Path) -> dict[str, Any]:
    path = out / PLAN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{out}: not a sweep directory ({PLAN_FILE} is missing)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg})") from None


def plan_from_dict(d: dict[str, Any]) -> Plan:
    """The Plan recorded in plan.json (to resume a sweep from its directory alone)."""
    if d.get("rig_sweep_plan") != PLAN_VERSION:
        raise UserError(f"plan.json: format {d.get('rig_sweep_plan')!r}; this rig reads {PLAN_VERSION}")
    axes = tuple(Axis(a["key"], a["target"], a["name"], tuple(a["values"])) for a in d["axes"])
    cells = tuple(
        Cell(c["id"], c["role"], dict(c["values"]), RunSpec.from_dict(c["spec"], "plan.json"), int(c.get("replica", 0)))
        for c in d["cells"]
    )
    known = {"rig_sweep_plan", "base", "axes", "replicates", "reference", "cells"}
    extra = {k: v for k, v in d.items() if k not in known}
    return Plan(RunSpec.from_dict(d["base"], "plan.json"), axes, cells, int(d["replicates"]), extra)
