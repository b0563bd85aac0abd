"""What a finished telemetry recording becomes: phases with their energy, the run's summary, and Parquet files.

rig.telemetry.recorder samples; this module reads what a stopped `TelemetryRecorder` kept (its host and GPU columns,
phase
marks and per-device state) and turns it into the JSON-serializable summary (manifest["telemetry"]) and the files
host.parquet, gpu.parquet and phases.parquet, which `load_telemetry` reads back. It is split from the sampler so
that each stays one job: energy per phase (J, from NVML's counter or the power integral), mean power (W) and
J/token here, the sampling thread there. numpy and pyarrow are imported only inside the functions.
Files, columns and units: docs/telemetry.md.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig.telemetry.nvml import _MIB, decode_clock_event_reasons

SCHEMA = 1


# gpu.parquet columns (beyond t_s, gpu_index, uuid, pci_bus_id, phase); rig.telemetry.recorder fills them from raw
# NVML fields
GPU_COLUMNS = (
    "power_mw",
    "energy_mj",
    "energy_mj_since_start",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temp_c",
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "mem_reserved_mib",
    "clock_event_reasons",
    "clock_event_names",
    "pcie_tx_kb_s",
    "pcie_rx_kb_s",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
)


def columns_from_raw(field: str, raw: Any) -> dict:
    """The GPU_COLUMNS values one raw NVML reading of `field` fills (memory in MiB, clock event names decoded)."""
    if field == "power":
        return {"power_mw": raw}
    if field == "energy":
        return {"energy_mj": raw}
    if field in ("sm_clock", "mem_clock", "temp"):
        return {{"sm_clock": "sm_clock_mhz", "mem_clock": "mem_clock_mhz", "temp": "temp_c"}[field]: raw}
    if field == "utilization":
        return {"gpu_util_pct": raw[0], "mem_util_pct": raw[1]}
    if field == "memory":
        return {"mem_used_mib": raw[0] / _MIB, "mem_reserved_mib": None if raw[1] is None else raw[1] / _MIB}
    if field == "clock_event_reasons":
        return {"clock_event_reasons": raw, "clock_event_names": decode_clock_event_reasons(raw)}
    if field in ("pcie_tx", "pcie_rx"):
        return {f"{field}_kb_s": raw}
    if field == "ecc_volatile":
        return {"ecc_volatile_corrected": raw[0], "ecc_volatile_uncorrected": raw[1]}
    raise KeyError(field)


def split_phases(marks: list[tuple[float, str, dict]], t_end_s: float) -> list[dict]:
    """The phases between marks (start_s, end_s, duration_s in s); time before the first mark is "unmarked"."""
    marks = list(marks)
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0.0, "unmarked", {}))
    out = []
    for i, (start_s, name, attrs) in enumerate(marks):
        end_s = marks[i + 1][0] if i + 1 < len(marks) else t_end_s
        if name == "unmarked" and end_s <= start_s:
            continue
        extra = {k: v for k, v in attrs.items() if k not in ("index", "tokens")}
        out.append(
            {
                "name": name,
                "index": attrs.get("index"),
                "tokens": attrs.get("tokens"),
                "attrs": extra,
                "start_s": start_s,
                "end_s": end_s,
                "duration_s": end_s - start_s,
            }
        )
    return out


def device_series(gpu_cols: dict[str, list], devices: list[Any]) -> list[tuple]:
    """Per device: (t_s, energy_mj_since_start, power_mw) as float arrays, NaN where a reading is missing."""
    import numpy as np

    def floats(name, sel):
        col = gpu_cols[name]
        return np.asarray([np.nan if col[i] is None else col[i] for i in sel], dtype=float)

    t, gi = np.asarray(gpu_cols["t_s"], dtype=float), np.asarray(gpu_cols["gpu_index"])
    out = []
    for dev in devices:
        sel = np.flatnonzero(gi == dev.info["index"])
        out.append((t[sel], floats("energy_mj_since_start", sel), floats("power_mw", sel)))
    return out


def energy_j_by_device(series: list[tuple], t0_s: float, t1_s: float) -> list[float | None]:
    """Energy (J) per device between two times: from the energy counter, else the trapezoid of power."""
    import numpy as np

    out: list[float | None] = []
    for ts, e, p in series:
        if (ok := ~np.isnan(e)).any():
            out.append(float(np.interp(t1_s, ts[ok], e[ok]) - np.interp(t0_s, ts[ok], e[ok])) / 1000.0)
        elif (ok := ~np.isnan(p)).any():
            inside = ts[ok][(ts[ok] > t0_s) & (ts[ok] < t1_s)]
            grid = np.concatenate([[t0_s], inside, [t1_s]])
            pw = np.interp(grid, ts[ok], p[ok])
            out.append(float(np.sum((pw[1:] + pw[:-1]) * np.diff(grid)) / 2.0) / 1000.0)
        else:
            out.append(None)
    return out


@dataclass
class Recording:
    """What a stopped recorder measured, as values: summarize() and write_tables() read only these.

    Times are seconds since the recording started; host and GPU columns are lists of readings (units in the column
    names); devices carry their NVML info, the fields they support, error counts and energy-counter resets.
    """

    started_at: str  # ISO 8601 UTC
    rate_hz: float
    t_end_s: float
    marks: list[tuple[float, str, dict]]  # (t_s, phase name, attributes)
    host_cols: dict[str, list]
    gpu_cols: dict[str, list]
    devices: list[Any]  # each with .info, .fields, .unsupported, .errors, .lost, .energy_resets
    gpu_status: dict[str, Any]
    host_unsupported: dict[str, str]
    thread_cpu_s: float
    ticks_skipped: int
    thread_error: str | None


def summarize(rec: Recording, tokens: int | None) -> dict:
    """The summary of a recording (JSON-serializable). `tokens`: all tokens generated."""
    import numpy as np

    def stat(values, fn):
        v = [x for x in values if x is not None]
        return None if not v else round(float(fn(np.asarray(v, dtype=float))), 3)

    def total(values):
        v = [x for x in values if x is not None]
        return round(sum(v), 3) if v else None

    phases, series = split_phases(rec.marks, rec.t_end_s), device_series(rec.gpu_cols, rec.devices)
    host_t = np.asarray(rec.host_cols["t_s"])
    for ph in phases:
        per_dev = energy_j_by_device(series, ph["start_s"], ph["end_s"])
        ph["energy_j"] = total(per_dev) if rec.devices else None
        ph["energy_j_by_gpu"] = [None if e is None else round(e, 3) for e in per_dev]
        ph["mean_power_w"] = (
            round(ph["energy_j"] / ph["duration_s"], 3) if ph["energy_j"] is not None and ph["duration_s"] > 0 else None
        )
        ph["j_per_token"] = (
            round(ph["energy_j"] / ph["tokens"], 6) if ph["energy_j"] is not None and ph["tokens"] else None
        )
        sel = np.flatnonzero((host_t >= ph["start_s"]) & (host_t <= ph["end_s"]))
        ph["proc_cpu_pct_mean"] = stat([rec.host_cols["proc_cpu_pct"][i] for i in sel], np.mean)
    hc, gc = rec.host_cols, rec.gpu_cols
    devices = []
    for dev, e_j in zip(rec.devices, energy_j_by_device(series, 0.0, rec.t_end_s), strict=True):
        sel = [i for i, g in enumerate(gc["gpu_index"]) if g == dev.info["index"]]

        def col(name, sel=sel):
            return [gc[name][i] for i in sel]

        reasons: dict[str, int] = {}
        for names in col("clock_event_names"):
            for n in names or ():
                reasons[n] = reasons.get(n, 0) + 1
        ecc = [v for v in col("ecc_volatile_uncorrected") if v is not None]
        devices.append(
            {
                **dev.info,
                "samples": len(sel),
                "unsupported": dict(dev.unsupported),
                "errors": dev.errors,
                "lost": dev.lost,
                "energy_j": None if e_j is None else round(e_j, 3),
                "energy_method": "energy_counter"
                if "energy" in dev.fields
                else ("power_integral" if "power" in dev.fields else None),
                "energy_counter_resets": dev.energy_resets,
                "power_w_mean": stat(col("power_mw"), lambda a: a.mean() / 1000),
                "power_w_max": stat(col("power_mw"), lambda a: a.max() / 1000),
                "sm_clock_mhz_mean": stat(col("sm_clock_mhz"), np.mean),
                "sm_clock_mhz_min": stat(col("sm_clock_mhz"), np.min),
                "mem_clock_mhz_mean": stat(col("mem_clock_mhz"), np.mean),
                "temp_c_max": stat(col("temp_c"), np.max),
                "gpu_util_pct_mean": stat(col("gpu_util_pct"), np.mean),
                "mem_used_mib_max": stat(col("mem_used_mib"), np.max),
                "clock_event_share": {n: round(c / max(len(sel), 1), 4) for n, c in sorted(reasons.items())},
                "ecc_volatile_uncorrected_delta": ecc[-1] - ecc[0] if ecc else None,
            }
        )
    energy_j = total([d["energy_j"] for d in devices]) if devices else None
    phase_tokens = [ph["tokens"] for ph in phases if ph["tokens"]]
    all_tokens = tokens if tokens is not None else (sum(phase_tokens) if phase_tokens else None)
    gen_e = total([ph["energy_j"] for ph in phases if ph["tokens"]])
    duration_s = rec.t_end_s
    share_pct = round(100 * rec.thread_cpu_s / duration_s, 3) if duration_s else None
    return {
        "schema": SCHEMA,
        "started_at": rec.started_at,
        "rate_hz": rec.rate_hz,
        "duration_s": round(duration_s, 3),
        "sampler": {
            "samples": len(hc["t_s"]),
            "ticks_skipped": rec.ticks_skipped,
            "error": rec.thread_error,
            "thread_cpu_s": round(rec.thread_cpu_s, 4),
            "share_of_one_core_pct": share_pct,
        },
        "host": {
            "samples": len(hc["t_s"]),
            "unsupported": dict(rec.host_unsupported),
            "proc_cpu_pct_mean": stat(hc["proc_cpu_pct"], np.mean),
            "proc_cpu_pct_max": stat(hc["proc_cpu_pct"], np.max),
            "sys_cpu_pct_mean": stat(hc["sys_cpu_pct"], np.mean),
            "rss_mib_max": stat(hc["rss_mib"], np.max),
            "rss_tree_mib_max": stat(hc["rss_tree_mib"], np.max),
            "cpu_freq_mhz_mean": stat(hc["cpu_freq_mhz"], np.mean),
        },
        "gpu": {**rec.gpu_status, "devices": devices},
        "energy_j": energy_j,
        "tokens": all_tokens,
        "j_per_token": round(energy_j / all_tokens, 6) if energy_j is not None and all_tokens else None,
        "generate_j_per_token": round(gen_e / sum(phase_tokens), 6) if gen_e is not None and phase_tokens else None,
        "phases": phases,
    }


def write_tables(rec: Recording, summary: dict, directory: str | os.PathLike) -> dict[str, Path]:
    """Writes the tables of a recording (whose summary is `summary`) to `directory` atomically; returns {name: path}."""
    import pyarrow as pa

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    phases = summary["phases"]
    starts = [ph["start_s"] for ph in phases]

    def phase_of(ts):
        return [phases[max(bisect.bisect_right(starts, t + 1e-9) - 1, 0)]["name"] if phases else None for t in ts]

    meta = {
        "rig.telemetry": json.dumps(
            {
                "schema": SCHEMA,
                "started_at": rec.started_at,
                "rate_hz": rec.rate_hz,
                "gpu": {k: v for k, v in rec.gpu_status.items()},
            }
        )
    }
    f64, i64, i32 = pa.float64(), pa.int64(), pa.int32()
    host_types = dict.fromkeys(rec.host_cols, f64)  # t_s and HostSampler.COLUMNS
    tables = {
        "host": pa.table(
            {
                **{c: pa.array(rec.host_cols[c], host_types[c]) for c in host_types},
                "phase": pa.array(phase_of(rec.host_cols["t_s"]), pa.string()),
            }
        )
    }
    if rec.devices:
        gc = rec.gpu_cols
        by_index = {d.info["index"]: d.info for d in rec.devices}
        types = {
            "t_s": f64,
            "gpu_index": i32,
            "power_mw": i64,
            "energy_mj": i64,
            "energy_mj_since_start": i64,
            "sm_clock_mhz": i32,
            "mem_clock_mhz": i32,
            "temp_c": i32,
            "gpu_util_pct": i32,
            "mem_util_pct": i32,
            "mem_used_mib": f64,
            "mem_reserved_mib": f64,
            "clock_event_reasons": i64,
            "clock_event_names": pa.list_(pa.string()),
            "pcie_tx_kb_s": i64,
            "pcie_rx_kb_s": i64,
            "ecc_volatile_corrected": i64,
            "ecc_volatile_uncorrected": i64,
        }
        cols = {c: pa.array(gc[c], types[c]) for c in ("t_s", "gpu_index")}
        cols["uuid"] = pa.array([by_index[i]["uuid"] for i in gc["gpu_index"]], pa.string())
        cols["pci_bus_id"] = pa.array([by_index[i]["pci_bus_id"] for i in gc["gpu_index"]], pa.string())
        cols["phase"] = pa.array(phase_of(gc["t_s"]), pa.string())
        cols.update({c: pa.array(gc[c], types[c]) for c in GPU_COLUMNS})
        tables["gpu"] = pa.table(cols)
    rows = [{**ph, "attrs": json.dumps(ph["attrs"], sort_keys=True)} for ph in phases]
    tables["phases"] = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("name", pa.string()),
                ("index", i64),
                ("tokens", i64),
                ("attrs", pa.string()),
                ("start_s", f64),
                ("end_s", f64),
                ("duration_s", f64),
                ("energy_j", f64),
                ("energy_j_by_gpu", pa.list_(f64)),
                ("mean_power_w", f64),
                ("j_per_token", f64),
                ("proc_cpu_pct_mean", f64),
            ]
        ),
    )
    return {
        name: _write_parquet(table.replace_schema_metadata(meta), out / f"{name}.parquet")
        for name, table in tables.items()
    }


def _write_parquet(table, path: Path) -> Path:
    import pyarrow.parquet as pq

    from rig.files import atomic_replace

    return atomic_replace(path, lambda tmp: pq.write_table(table, tmp))


def load_telemetry(run_dir: str | os.PathLike) -> dict:
    """The telemetry tables of a run: {"host", "gpu", "phases"} -> pyarrow.Table, for the files that exist.

    `run_dir` is a run directory or its telemetry/ folder.
    """
    import pyarrow.parquet as pq

    d = Path(run_dir)
    if (d / "telemetry").is_dir():
        d = d / "telemetry"
    return {
        name: pq.read_table(d / f"{name}.parquet")
        for name in ("host", "gpu", "phases")
        if (d / f"{name}.parquet").exists()
    }
