"""Rows from the files benchmarks ship as: JSON lines, CSV and Parquet, read locally (nothing is downloaded).

GPQA is distributed as CSV (multi-line quoted questions), AIME sets and IFEval as JSON lines or Parquet (the hub's
dataset viewers store Parquet). Every reader returns plain dicts with the file's own column names, so the field
mapping (rig.evals.importers) is the only place that knows a benchmark's schema, and the file's sha256 is recorded
so that a suite can say exactly which bytes it came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.files import sha256_file

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def detect_format(path: Path, given: str | None = None) -> str:
    """The format named by the caller, or the one the file's suffix says; UserError when neither does."""
    if given:
        if given not in FORMATS:
            raise UserError(f"format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass --format")
    return fmt


def read_rows(path: str | Path, fmt: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, file record): every row as a dict, and {"path", "format", "bytes", "sha256", "rows"} of the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    fmt = detect_format(path, fmt)
    rows = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[fmt](path)
    if not rows:
        raise UserError(f"{path}: no rows")
    record = {
        "path": str(path.resolve()),
        "format": fmt,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "rows": len(rows),
    }
    return rows, record


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects (some datasets ship .json that way)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return [_object(row, f"{path}: item {i}") for i, row in enumerate(data)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_object(json.loads(line), f"{path}:{lineno}"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return rows


def _object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise UserError(f"{path}: no header row")
            return [dict(row) for row in reader]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not valid CSV ({exc})") from None


def _parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
