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
_LINUX = sys.platform.startswith("linux")
_PROC = "/proc"


# ---------------------------------------------------------------------------------------------------- host


def _read_fd(path: str, size: int = 65536) -> bytes:
    """The first `size` bytes of a file, by open-read-close of the descriptor (no Python file object)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


class _Proc:
    """CPU seconds and RSS bytes of one process: preads of its kept-open /proc/PID/stat and statm on Linux, else psutil.

    Kept-open files are several times cheaper than psutil's open-read-close per call, and they stay bound to the
    process they were opened for (a dead process reads as an error, never as a reused pid). The RSS comes from statm,
    as psutil's does: stat's RSS field is the kernel's approximate per-CPU counter on recent kernels (here it read
    35 pages low; on a machine with many cores it can be off by far more). `ppid`: the parent the process was found
    under; opening fails (ProcessLookupError) if the pid now names a process with another parent (the child ended
    and its pid was reused between the listing and the open).
    """

    __slots__ = ("fds", "pid", "proc")

    def __init__(self, pid: int, proc: Any = None, ppid: int | None = None):
        self.pid, self.proc, self.fds = pid, proc, None
        if proc is not None:
            return
        self.fds = [os.open(f"{_PROC}/{pid}/stat", os.O_RDONLY)]
        try:
            self.fds.append(os.open(f"{_PROC}/{pid}/statm", os.O_RDONLY))
            if ppid is not None and int(self._stat()[1]) != ppid:
                raise ProcessLookupError(pid)
        except BaseException:
            self.close()
            raise

    def _stat(self) -> list[bytes]:
        stat = os.pread(self.fds[0], 4096, 0)
        if not stat:
            raise ProcessLookupError(self.pid)
        return stat[stat.rindex(b")") + 2 :].split()  # fields from "state" (3rd) on: ppid 4th, utime 14th, stime 15th

    def read(self) -> tuple[float, int]:
        """(user + system CPU seconds, RSS bytes); raises OSError or psutil.Error once the process is gone."""
        if self.fds is None:
            t = self.proc.cpu_times()
            return t.user + t.system, self.proc.memory_info().rss
        f = self._stat()
        rss_pages = int(os.pread(self.fds[1], 256, 0).split()[1])
        return (int(f[11]) + int(f[12])) / _CLK_TCK, rss_pages * _PAGE_BYTES

    def close(self) -> None:
        for fd in self.fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = None


def _descendants_from_task_files(root: int) -> dict[int, int]:
    """{pid: parent pid} of every descendant of `root`, from /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).

    Costs a few reads per thread of the tree, whatever else runs on the machine. The kernel builds these lists
    without freezing the tree, so a child forked or reparented during the walk can be missed: the next listing finds it.
    """
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        parent = stack.pop()
        try:
            tids = os.listdir(f"{_PROC}/{parent}/task")
        except OSError:  # gone
            continue
        for tid in tids:
            try:
                data = _read_fd(f"{_PROC}/{parent}/task/{tid}/children")
            except OSError:  # that thread ended
                continue
            for child in map(int, data.split()):
                if child not in found and child != root:
                    found[child] = parent
                    stack.append(child)
    return found


def _descendants_from_scan(root: int) -> dict[int, int]:
    """{pid: parent pid} of every descendant of `root`, from the parent pid in every /proc/PID/stat.

    What psutil's children() does, without its file objects and Process objects: one open-read-close per process on
    the machine, so its cost grows with the machine's process count (kernel threads included).
    """
    kids: dict[int, list[int]] = {}
    for name in os.listdir(_PROC):
        if not name.isdigit():
            continue
        try:
            stat = _read_fd(f"{_PROC}/{name}/stat", 4096)
            ppid = int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])
        except (OSError, ValueError, IndexError):  # gone, or an unreadable line
            continue
        kids.setdefault(ppid, []).append(int(name))
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        parent = stack.pop()
        for child in kids.get(parent, ()):
            if child not in found and child != root:
                found[child] = parent
                stack.append(child)
    return found


class _CpuFreq:
    """Mean current CPU frequency (MHz), as psutil.cpu_freq().current reports it, from kept-open files on Linux.

    Linux: the "cpu MHz" lines of /proc/cpuinfo (what psutil reads on x86), else each cpufreq policy's
    scaling_cur_freq (kHz); one pread per file, no glob, no open per call. Elsewhere: psutil.cpu_freq().
    `unsupported`: why no frequency can be read here, else None.
    """

    def __init__(self, ps: Any):
        self._ps, self._fds, self._cpuinfo, self._size = ps, [], None, 1 << 16
        self.unsupported: str | None = None
        if not _LINUX:
            try:
                if ps.cpu_freq() is None:
                    self.unsupported = "psutil.cpu_freq() returned None"
            except Exception as exc:  # psutil raises assorted OSErrors on odd kernels
                self.unsupported = f"{type(exc).__name__}: {exc}"
            return
        try:
            self._cpuinfo = os.open(f"{_PROC}/cpuinfo", os.O_RDONLY)
            if self._from_cpuinfo() is not None:
                return
        except (OSError, ValueError):
            pass
        self.close()
        import glob

        for pattern in ("/sys/devices/system/cpu/cpufreq/policy[0-9]*", "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"):
            for path in glob.glob(pattern):
                with contextlib.suppress(OSError):
                    self._fds.append(os.open(f"{path}/scaling_cur_freq", os.O_RDONLY))
            if self._fds:
                break
        try:
            if self._from_sysfs() is not None:
                return
        except (OSError, ValueError):
            pass
        self.close()
        self.unsupported = "no 'cpu MHz' line in /proc/cpuinfo and no readable cpufreq scaling_cur_freq"

    def _from_cpuinfo(self) -> float | None:
        while len(data := os.pread(self._cpuinfo, self._size, 0)) >= self._size:  # seq_file: read it whole
            self._size *= 2
        mhz = [float(line.split(b":", 1)[1]) for line in data.split(b"\n") if line[:7].lower() == b"cpu mhz"]
        return sum(mhz) / len(mhz) if mhz else None

    def _from_sysfs(self) -> float | None:
        khz = [int(os.pread(fd, 64, 0)) for fd in self._fds]
        return sum(khz) / len(khz) / 1000 if khz else None

    def read(self) -> float | None:
        """The mean current frequency in MHz, or None."""
        if self.unsupported:
            return None
        try:
            if self._cpuinfo is not None:
                return self._from_cpuinfo()
            if self._fds:
                return self._from_sysfs()
        except (OSError, ValueError):
            return None
        f = self._ps.cpu_freq()
        return f.current if f is not None else None

    def close(self) -> None:
        for fd in (*self._fds, *(() if self._cpuinfo is None else (self._cpuinfo,))):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds, self._cpuinfo = [], None


class HostSampler:
    """Host readings: this process and its children (e.g. vLLM's engine), and the whole system.

    proc_cpu_pct: CPU use of the process tree in % of one core (can exceed 100); sys_cpu_pct: all cores, 0-100;
    rss_mib / rss_tree_mib: resident memory of this process / of the process tree (MiB); cpu_freq_mhz: mean
    current CPU frequency (MHz), read at most once a second (null between). CPU shares are measured against real
    time, whatever clock the recorder uses.

    Per sample: preads of /proc/PID/stat and statm per process of the tree and one of /proc/stat. Children are listed
    again every `children_refresh_s` and the frequency read every CPU_FREQ_PERIOD_S, each less often when one
    listing or reading costs more than EXTRA_SHARE of a core over its period (listing children scans every process
    on the machine where the kernel lacks /proc/PID/task/TID/children; /proc/cpuinfo grows with the core count), so
    that a large machine does not raise the sampler's cost. A child found later has its CPU counted from then on.
    """

    COLUMNS = ("proc_cpu_pct", "sys_cpu_pct", "rss_mib", "rss_tree_mib", "cpu_freq_mhz")
    CPU_FREQ_PERIOD_S = 1.0
    EXTRA_SHARE = 0.001  # at most 0.1% of one core each for listing children and for reading the frequency

    def __init__(self, children_refresh_s: float = 2.0):
        import psutil

        self._ps = psutil
        self._self = None
        if _LINUX:
            with contextlib.suppress(OSError):
                self._self = _Proc(os.getpid())
        if self._self is None:  # no /proc: psutil for everything
            self._self = _Proc(os.getpid(), proc=psutil.Process())
        self._list_children = self._psutil_children
        if self._self.fds is not None:
            task = f"{_PROC}/{os.getpid()}/task/{threading.get_native_id()}/children"
            self._list_children = _descendants_from_task_files if os.path.exists(task) else _descendants_from_scan
        self._children: dict[int, list] = {}  # pid -> [_Proc, last cpu seconds or None]
        self._refresh_s = children_refresh_s
        self.unsupported: dict[str, str] = {}
        self._next_refresh = self._next_freq = 0.0
        self._stat_fd = None
        with contextlib.suppress(OSError):
            self._stat_fd = os.open(f"{_PROC}/stat", os.O_RDONLY) if _LINUX else None
        self._last_wall = time.monotonic()
        self._last_self_cpu = self._self.read()[0]
        self._last_sys = self._sys_times()
        self._freq = _CpuFreq(psutil)
        if self._freq.unsupported:
            self.unsupported["cpu_freq_mhz"] = self._freq.unsupported

    def _psutil_children(self, root: int) -> dict[int, Any]:
        """{pid: psutil.Process} of every descendant (where /proc cannot be read directly)."""
        try:
            return {p.pid: p for p in self._self.proc.children(recursive=True)}
        except self._ps.Error:
            return {}

    def _sys_times(self) -> tuple[float, float]:
        """(busy, idle) CPU time of the whole system, in the kernel's units."""
        if self._stat_fd is not None:
            v = [int(x) for x in os.pread(self._stat_fd, 4096, 0).split(b"\n", 1)[0].split()[1:9]]
            return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4]  # user nice system irq softirq steal
        t = self._ps.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0) - idle, idle

    def _refresh_children(self) -> None:
        live = self._list_children(self._self.pid)
        for pid in set(self._children) - set(live):
            self._children.pop(pid)[0].close()
        for pid, ref in live.items():  # ref: the parent's pid (from /proc), or the child's psutil.Process
            if pid not in self._children:
                try:
                    proc = _Proc(pid, proc=ref) if self._self.fds is None else _Proc(pid, ppid=ref)
                except OSError:  # gone since the listing
                    continue
                self._children[pid] = [proc, None]

    def read(self) -> dict:
        """One row of COLUMNS; the CPU shares cover the time since the previous read."""
        wall = time.monotonic()
        if wall >= self._next_refresh:
            c0 = time.thread_time()
            self._refresh_children()
            self._next_refresh = wall + max(self._refresh_s, (time.thread_time() - c0) / self.EXTRA_SHARE)
        self_cpu, rss = self._self.read()
        cpu_delta_s, rss_tree = self_cpu - self._last_self_cpu, rss
        self._last_self_cpu = self_cpu
        for pid, entry in list(self._children.items()):
            try:
                cpu, child_rss = entry[0].read()
            except (OSError, ValueError, IndexError, self._ps.Error):
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
        if wall >= self._next_freq and "cpu_freq_mhz" not in self.unsupported:
            c0 = time.thread_time()
            freq = self._freq.read()
            self._next_freq = wall + max(self.CPU_FREQ_PERIOD_S, (time.thread_time() - c0) / self.EXTRA_SHARE)
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
        self._freq.close()
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


def _single_column(field: str) -> str | None:
    """The one GPU column a raw reading of `field` fills unchanged, or None (several columns, or a conversion)."""
    try:
        cols = columns_from_raw(field, 7)
    except (TypeError, KeyError, IndexError):
        return None
    return next(iter(cols)) if len(cols) == 1 and next(iter(cols.values())) == 7 else None


_SINGLE_COLUMN = {f: _single_column(f) for f in GPU_FIELDS}  # e.g. power -> power_mw; None -> columns_from_raw


class _StopSignal:
    """A stop flag with threading.Event's is_set/set/wait, whose wait(timeout) is one lock acquire.

    Event.wait builds a Condition waiter per call; the sampler waits once per tick, and that Python work was a
    measurable part of its CPU time. Only the recorder sets it, once.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # let any other waiter through
            return True
        return self._set


class _Device:
    """Per-device state: supported fields, the energy counter's reset-corrected running total, error counts."""

    def __init__(self, info: dict, unsupported: dict[str, str]):
        self.info, self.unsupported = info, unsupported
        self.fields = [f for f in GPU_FIELDS if f not in unsupported]
        self.next_read_s = dict.fromkeys(self.fields, -math.inf)
        # what a sample does per field: (field, minimum period or 0, the single column it fills or None)
        self.plan = [(f, FIELD_MIN_PERIOD_S.get(f, 0.0), _SINGLE_COLUMN[f]) for f in self.fields]
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
        self._stop_event = _StopSignal()
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
        self._first_tick_cpu_s: float | None = None  # thread CPU up to the end of its first sample
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
                if k == 1:
                    self._first_tick_cpu_s = time.thread_time() - cpu0
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
        host_cols = self._host_cols
        host_cols["t_s"].append(t_s)
        for c in HostSampler.COLUMNS:
            host_cols[c].append(host[c])
        read = self._backend.read if self._devices else None
        for dev in self._devices:
            if dev.lost:
                continue
            row: dict[str, Any] = {}
            index, next_read_s = dev.info["index"], dev.next_read_s
            for field, min_period_s, column in dev.plan:
                if min_period_s:
                    if now < next_read_s[field]:
                        continue
                    next_read_s[field] = now + min_period_s - 1e-9
                try:
                    raw = read(index, field)
                except NvmlGpuLost as exc:
                    dev.lost = f"{exc.nvml_name} at t={t_s:.3f}s"
                    break
                except NvmlError as exc:
                    per = dev.errors.setdefault(field, {})
                    per[exc.nvml_name] = per.get(exc.nvml_name, 0) + 1
                    continue
                if column is not None:
                    row[column] = raw
                else:
                    row.update(columns_from_raw(field, raw))
                if field == "energy":
                    row["energy_mj_since_start"] = dev.energy(raw)
            if dev.lost:
                continue
            cols = self._gpu_cols
            cols["t_s"].append(t_s)
            cols["gpu_index"].append(index)
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
