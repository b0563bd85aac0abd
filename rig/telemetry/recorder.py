"""GPU and host telemetry for a run: what the hardware did while the tokens were made.

Two runs are comparable only if the hardware behaved: a GPU that was power-capped, thermally throttled or shared
with another job makes different timing and sometimes different kernel choices. This module samples NVML (through
a backend from rig.telemetry.nvml) and the host (through /proc and psutil) on one background thread and keeps the phase
markers the stack sets; rig.telemetry.results turns that into energy (J), mean power (W) and energy per generated
token (J/token) per phase, the summary, and the Parquet files.

    rec = TelemetryRecorder(rate_hz=10.0, gpu=True)   # gpu=True: try NVML, else host only, with the reason recorded
    rec.start(); rec.mark("load"); ...; rec.mark("batch", index=0, tokens=640); ...
    summary = rec.stop(tokens=total_generated)        # JSON-serializable; manifest["telemetry"]
    rec.write(run_dir / "telemetry")                  # host.parquet, gpu.parquet (if any GPU), phases.parquet

NVML is reached only through a backend object: `NvmlBackend` (the real one) or `ReplayBackend`, which replays a
JSONL trace, so the sampler's logic is tested without a GPU. Record a trace on a GPU machine with
`python -m rig.telemetry record-trace PATH --seconds 5 --rate-hz 20`. Files, fields and units: docs/telemetry.md.
Public names from rig.telemetry.nvml and rig.telemetry.results stay importable from here (see __all__).
`import rig.telemetry.recorder` imports neither torch nor pynvml.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rig.telemetry.nvml import (
    _MIB,
    CLOCK_EVENT_REASONS,
    FIELD_MIN_PERIOD_S,
    GPU_FIELDS,
    TRACE_FORMAT,
    Clock,
    ManualClock,
    NvmlBackend,
    NvmlError,
    NvmlGpuLost,
    NvmlNoPermission,
    NvmlNotSupported,
    NvmlRefused,
    NvmlUnavailable,
    ReplayBackend,
    TelemetryError,
    _now_iso,
    check_pynvml_distribution,
    decode_clock_event_reasons,
    nvml_error,
    record_trace,
)
from rig.telemetry.results import (
    GPU_COLUMNS,
    SCHEMA,
    Recording,
    columns_from_raw,
    load_telemetry,
    summarize,
    write_tables,
)

__all__ = [
    "CLOCK_EVENT_REASONS",
    "FIELD_MIN_PERIOD_S",
    "GPU_COLUMNS",
    "GPU_FIELDS",
    "SCHEMA",
    "TRACE_FORMAT",
    "Clock",
    "HostSampler",
    "ManualClock",
    "NvmlBackend",
    "NvmlError",
    "NvmlGpuLost",
    "NvmlNoPermission",
    "NvmlNotSupported",
    "NvmlRefused",
    "NvmlUnavailable",
    "ReplayBackend",
    "TelemetryError",
    "TelemetryRecorder",
    "check_pynvml_distribution",
    "decode_clock_event_reasons",
    "load_telemetry",
    "nvml_error",
    "record_trace",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------------------------------------------- host


class _Proc:
    """CPU seconds and RSS bytes of one process: two preads of kept-open /proc files on Linux, else psutil.

    Kept-open files are several times cheaper than psutil's open-read-close per call, and they stay bound to the
    process they were opened for (a dead process reads as an error, never as a reused pid).
    """

    def __init__(self, proc: Any):
        self.proc, self.fds = proc, None
        if sys.platform.startswith("linux"):
            try:
                self.fds = tuple(os.open(f"/proc/{proc.pid}/{name}", os.O_RDONLY) for name in ("stat", "statm"))
            except OSError:
                self.fds = None

    def read(self) -> tuple[float, int]:
        """(user + system CPU seconds, RSS bytes); raises OSError or psutil.Error once the process is gone."""
        if self.fds is None:
            t = self.proc.cpu_times()
            return t.user + t.system, self.proc.memory_info().rss
        stat = os.pread(self.fds[0], 4096, 0)
        if not stat:
            raise ProcessLookupError(self.proc.pid)
        fields = stat[stat.rindex(b")") + 2 :].split()  # fields from "state" (3rd) on: utime is 14th, stime 15th
        rss_pages = int(os.pread(self.fds[1], 256, 0).split()[1])
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK, rss_pages * _PAGE_BYTES

    def close(self) -> None:
        for fd in self.fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = None


class HostSampler:
    """Host readings: this process and its children (e.g. vLLM's engine), and the whole system.

    proc_cpu_pct: CPU use of the process tree in % of one core (can exceed 100); sys_cpu_pct: all cores, 0-100;
    rss_mib / rss_tree_mib: resident memory of this process / of the process tree (MiB); cpu_freq_mhz: mean
    current CPU frequency (MHz), read at most once a second (null between). Children are listed again every
    `children_refresh_s`. CPU shares are measured against real time, whatever clock the recorder uses.
    """

    COLUMNS = ("proc_cpu_pct", "sys_cpu_pct", "rss_mib", "rss_tree_mib", "cpu_freq_mhz")
    CPU_FREQ_PERIOD_S = 1.0

    def __init__(self, children_refresh_s: float = 2.0):
        import psutil

        self._ps = psutil
        self._self = _Proc(psutil.Process())
        self._children: dict[int, list] = {}  # pid -> [_Proc, last cpu seconds or None]
        self._refresh_s = children_refresh_s
        self.unsupported: dict[str, str] = {}
        self._next_refresh = self._next_freq = 0.0
        self._stat_fd = None
        with contextlib.suppress(OSError):
            self._stat_fd = os.open("/proc/stat", os.O_RDONLY) if sys.platform.startswith("linux") else None
        self._last_wall = time.monotonic()
        self._last_self_cpu = self._self.read()[0]
        self._last_sys = self._sys_times()
        try:
            if psutil.cpu_freq() is None:
                self.unsupported["cpu_freq_mhz"] = "psutil.cpu_freq() returned None"
        except Exception as exc:  # psutil raises assorted OSErrors on odd kernels
            self.unsupported["cpu_freq_mhz"] = f"{type(exc).__name__}: {exc}"

    def _sys_times(self) -> tuple[float, float]:
        """(busy, idle) CPU time of the whole system, in the kernel's units."""
        if self._stat_fd is not None:
            v = [int(x) for x in os.pread(self._stat_fd, 4096, 0).split(b"\n", 1)[0].split()[1:9]]
            return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4]  # user nice system irq softirq steal
        t = self._ps.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0) - idle, idle

    def read(self) -> dict:
        """One row of COLUMNS; the CPU shares cover the time since the previous read."""
        ps, wall = self._ps, time.monotonic()
        if wall >= self._next_refresh:
            self._next_refresh = wall + self._refresh_s
            try:
                live = {p.pid: p for p in self._self.proc.children(recursive=True)}
            except ps.Error:
                live = {}
            for pid in set(self._children) - set(live):
                self._children.pop(pid)[0].close()
            for pid, p in live.items():
                if pid not in self._children:
                    self._children[pid] = [_Proc(p), None]
        self_cpu, rss = self._self.read()
        cpu_delta_s, rss_tree = self_cpu - self._last_self_cpu, rss
        self._last_self_cpu = self_cpu
        for pid, entry in list(self._children.items()):
            try:
                cpu, child_rss = entry[0].read()
            except (OSError, ValueError, IndexError, ps.Error):
                self._children.pop(pid)[0].close()
                continue
            rss_tree += child_rss
            if entry[1] is not None:
                cpu_delta_s += max(cpu - entry[1], 0.0)
            entry[1] = cpu
        busy, idle = self._sys_times()
        d_busy, d_idle = busy - self._last_sys[0], idle - self._last_sys[1]
        self._last_sys = (busy, idle)
        dt, self._last_wall = wall - self._last_wall, wall
        freq = None
        if "cpu_freq_mhz" not in self.unsupported and wall >= self._next_freq:
            self._next_freq = wall + self.CPU_FREQ_PERIOD_S
            f = ps.cpu_freq()
            freq = f.current if f is not None else None
        return {
            "proc_cpu_pct": 100.0 * cpu_delta_s / dt if dt > 0 else None,
            "sys_cpu_pct": 100.0 * d_busy / (d_busy + d_idle) if d_busy + d_idle > 0 else None,
            "rss_mib": rss / _MIB,
            "rss_tree_mib": rss_tree / _MIB,
            "cpu_freq_mhz": freq,
        }

    def close(self) -> None:
        """Closes the kept-open /proc files."""
        for entry in self._children.values():
            entry[0].close()
        self._children.clear()
        self._self.close()
        if self._stat_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._stat_fd)
            self._stat_fd = None


# ---------------------------------------------------------------------------------------------------- recorder


def _visible(devices: list[dict], env: dict) -> tuple[list[int], str]:
    """NVML indices of the GPUs this process may use, from CUDA_VISIBLE_DEVICES, and why."""
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return [d["index"] for d in devices], "all NVML devices (CUDA_VISIBLE_DEVICES unset)"
    chosen: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if item.isdigit() and int(item) < len(devices):
            chosen.append(int(item))
        elif item.startswith("GPU-") and (hits := [d["index"] for d in devices if d["uuid"].startswith(item)]):
            chosen.append(hits[0])
        elif item.startswith("MIG-"):
            return [d["index"] for d in devices], f"CUDA_VISIBLE_DEVICES={spec!r} names MIG instances: all devices"
        else:
            break  # CUDA stops at the first invalid entry
    reason = f"CUDA_VISIBLE_DEVICES={spec!r}"
    if (
        len(devices) > 1
        and any(s.strip().isdigit() for s in spec.split(","))
        and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
    ):
        reason += " (indices taken in NVML's PCI order; CUDA_DEVICE_ORDER is not PCI_BUS_ID, so CUDA may differ)"
    return list(dict.fromkeys(chosen)), reason


class _Device:
    """Per-device state: supported fields, the energy counter's reset-corrected running total, error counts."""

    def __init__(self, info: dict, unsupported: dict[str, str]):
        self.info, self.unsupported = info, unsupported
        self.fields = [f for f in GPU_FIELDS if f not in unsupported]
        self.next_read_s = dict.fromkeys(self.fields, -math.inf)
        self.last_energy_mj: int | None = None
        self.energy_since_start_mj = 0
        self.energy_resets = 0
        self.errors: dict[str, dict[str, int]] = {}
        self.lost: str | None = None

    def energy(self, raw_mj: int) -> int:
        """Energy since the first reading (mJ). A decrease of the counter is a reset: the new segment is added."""
        if self.last_energy_mj is not None:
            if raw_mj >= self.last_energy_mj:
                self.energy_since_start_mj += raw_mj - self.last_energy_mj
            else:
                self.energy_resets += 1
                self.energy_since_start_mj += raw_mj
        self.last_energy_mj = raw_mj
        return self.energy_since_start_mj


class TelemetryRecorder:
    """Samples the host and (if it can) the GPUs at `rate_hz` on one background thread, with phase markers.

    gpu=True tries NVML (or `backend`), else falls back to host-only, recording why in summary["gpu"]; gpu=False: host.
    `backend` replaces NVML (e.g. a ReplayBackend); `clock` replaces real time (e.g. a ManualClock in tests).
    Usable as a context manager; stop() is idempotent.
    """

    def __init__(
        self,
        rate_hz: float = 10.0,
        gpu: bool = True,
        *,
        backend: Any = None,
        clock: Clock | None = None,
        env: dict | None = None,
    ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.rate_hz, self.period_s = float(rate_hz), 1.0 / rate_hz
        self._want_gpu, self._backend = gpu, backend
        self.clock = clock or Clock()
        self._env = os.environ if env is None else env
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._devices: list[_Device] = []
        self._gpu_status: dict = {"status": "disabled", "reason": "gpu=False"}
        self._host: HostSampler | None = None
        self._host_cols: dict[str, list] = {c: [] for c in ("t_s", *HostSampler.COLUMNS)}
        self._gpu_cols: dict[str, list] = {c: [] for c in ("t_s", "gpu_index", *GPU_COLUMNS)}
        self._marks: list[tuple[float, str, dict]] = []
        self._t0 = 0.0
        self._t_last = -math.inf
        self._thread_cpu_s = 0.0
        self._ticks_skipped = 0
        self._thread_error: str | None = None
        self._summary: dict | None = None
        self.started_at: str | None = None

    # -- lifecycle

    def start(self) -> TelemetryRecorder:
        """Probes the GPUs once, takes the first sample and starts the sampler thread. Returns self."""
        if self._thread is not None or self._summary is not None:
            raise RuntimeError("TelemetryRecorder.start() called twice")
        self.started_at = _now_iso()
        self._host = HostSampler()
        if self._want_gpu:
            self._open_gpu()
        self._t0 = self.clock.now()
        self._sample(self._t0)
        self.clock.attach()
        self._thread = threading.Thread(target=self._run, name="rig-telemetry", daemon=True)
        self._thread.start()
        return self

    def _open_gpu(self) -> None:
        backend = self._backend or NvmlBackend()
        try:
            backend.init()
            system, devices = backend.system_info(), backend.devices()
        except NvmlRefused as exc:
            self._gpu_status = {"status": "refused", "reason": str(exc)}
            return
        except NvmlError as exc:
            backend.shutdown()
            self._gpu_status = {"status": "unavailable", "reason": str(exc)}
            return
        indices, why = _visible(devices, self._env)
        self._backend = backend
        self._gpu_status = {
            "status": "ok" if indices else "no_devices",
            "reason": why,
            "backend": backend.name,
            "system": system,
        }
        for info in (d for d in devices if d["index"] in indices):
            unsupported: dict[str, str] = {}
            for field in GPU_FIELDS:  # probe each field once; what fails is never read again
                try:
                    backend.read(info["index"], field)
                except NvmlError as exc:
                    unsupported[field] = exc.nvml_name
            self._devices.append(_Device(info, unsupported))

    def _run(self) -> None:
        cpu0, k = time.thread_time(), 1
        try:
            while not self.clock.wait_until(self._t0 + k * self.period_s, self._stop_event):
                now = self.clock.now()
                self._sample(now)
                due = math.floor((now - self._t0) / self.period_s + 1e-9) + 1
                self._ticks_skipped += max(due - (k + 1), 0)
                k = max(k + 1, due)
        except Exception as exc:  # a sampler bug: keep the run, report it in the summary and on stderr
            self._thread_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._thread_cpu_s = time.thread_time() - cpu0
            self.clock.detach()

    def _sample(self, now: float) -> None:
        t_s = now - self._t0
        self._t_last = now
        host = self._host.read()
        self._host_cols["t_s"].append(t_s)
        for c in HostSampler.COLUMNS:
            self._host_cols[c].append(host[c])
        for dev in self._devices:
            if dev.lost:
                continue
            row: dict[str, Any] = {}
            for field in dev.fields:
                if now < dev.next_read_s[field]:
                    continue
                dev.next_read_s[field] = now + FIELD_MIN_PERIOD_S.get(field, 0.0) - 1e-9
                try:
                    raw = self._backend.read(dev.info["index"], field)
                except NvmlGpuLost as exc:
                    dev.lost = f"{exc.nvml_name} at t={t_s:.3f}s"
                    break
                except NvmlError as exc:
                    per = dev.errors.setdefault(field, {})
                    per[exc.nvml_name] = per.get(exc.nvml_name, 0) + 1
                    continue
                row.update(columns_from_raw(field, raw))
                if field == "energy":
                    row["energy_mj_since_start"] = dev.energy(raw)
            if dev.lost:
                continue
            cols = self._gpu_cols
            cols["t_s"].append(t_s)
            cols["gpu_index"].append(dev.info["index"])
            for c in GPU_COLUMNS:
                cols[c].append(row.get(c))

    def mark(self, name: str, *, index: int | None = None, tokens: int | None = None, **attrs: Any) -> None:
        """Starts phase `name` now; it runs until the next mark or stop(). `tokens`: tokens generated in it."""
        if self._thread is None or self._summary is not None:
            raise RuntimeError("mark() outside start() ... stop()")
        with self._lock:
            self._marks.append((self.clock.now() - self._t0, name, {"index": index, "tokens": tokens, **attrs}))

    def add_tokens(self, tokens: int) -> None:
        """Adds `tokens` generated tokens to the current phase (for when the count is known only at its end)."""
        if self._thread is None or self._summary is not None:
            raise RuntimeError("add_tokens() outside start() ... stop()")
        with self._lock:
            if not self._marks:
                raise RuntimeError("add_tokens() before the first mark()")
            attrs = self._marks[-1][2]
            attrs["tokens"] = (attrs["tokens"] or 0) + int(tokens)

    def recording(self) -> Recording:
        """What this recorder measured, as values (after stop())."""
        return Recording(
            started_at=self.started_at,
            rate_hz=self.rate_hz,
            t_end_s=self._t_end_s,
            marks=self._marks,
            host_cols=self._host_cols,
            gpu_cols=self._gpu_cols,
            devices=self._devices,
            gpu_status=self._gpu_status,
            host_unsupported=dict(self._host.unsupported),
            thread_cpu_s=self._thread_cpu_s,
            ticks_skipped=self._ticks_skipped,
            thread_error=self._thread_error,
        )

    @property
    def running(self) -> bool:
        """Started and not yet stopped."""
        return self._thread is not None and self._summary is None

    def stop(self, tokens: int | None = None) -> dict:
        """Stops sampling (thread joined, NVML shut down) and returns the summary. `tokens`: all tokens generated."""
        if self._summary is not None:
            return self._summary
        if self._thread is None:
            raise RuntimeError("stop() before start()")
        self._stop_event.set()
        self.clock.interrupt()
        self._thread.join()
        now = self.clock.now()
        try:
            if now > self._t_last:
                self._sample(now)
        finally:
            self._host.close()
            if self._backend is not None and self._gpu_status.get("status") in ("ok", "no_devices"):
                self._backend.shutdown()
        self._t_end_s = now - self._t0
        self._summary = summarize(self.recording(), tokens)
        return self._summary

    @property
    def summary(self) -> dict | None:
        """The summary dict once stopped, else None."""
        return self._summary

    def __enter__(self) -> TelemetryRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Writes host.parquet, gpu.parquet (when a GPU was sampled) and phases.parquet atomically; returns paths."""
        if self._summary is None:
            raise RuntimeError("write() before stop()")
        return write_tables(self.recording(), self._summary, directory)
