"""Files the rig writes and hashes: atomic writes (temporary file, fsync, rename), JSON lines, UTC timestamps, and
sha256 of files and model directories. One home, so that every writer in the rig is crash-safe the same way.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rig.errors import UserError


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601 with a Z suffix ("2026-12-01T22:11:42Z")."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """Write data to path through a temporary file in the same directory and a rename (readers never see a half).

    mode sets the file's permission bits (a temporary file is created 0600); returns path.
    """

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode)

    return atomic_replace(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def read_jsonl(path: Path, *, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines):
                break  # a line cut by a kill; the resume rewrites it
            raise UserError(f"{path}:{i}: not valid JSON") from None
    return rows


def atomic_replace(path: Path, write: Any) -> Path:
    """Calls write(tmp_path) for a temporary file beside path, fsyncs it and renames it onto path; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_file_hashes(model_dir: str | Path, cache: str | Path | None = None) -> dict[str, str]:
    """{relative path: sha256} for every file of a model directory (sorted).

    With a cache file, a file whose size and modification time match the cached entry is not read again: hashing the
    real gpt-oss-20b's 13 GB on every run would cost a minute.
    """
    root = Path(model_dir)
    entries: dict[str, Any] = {}
    if cache is not None and Path(cache).exists():
        try:
            entries = json.loads(Path(cache).read_text())
        except (OSError, json.JSONDecodeError):
            entries = {}
    out, changed = {}, False
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        key = str(path.resolve())
        hit = entries.get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            digest = hit["sha256"]
        else:
            digest = sha256_file(path)
            entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            changed = True
        out[str(path.relative_to(root))] = digest
    if cache is not None and changed:
        atomic_write_json(Path(cache), entries)
    return out
