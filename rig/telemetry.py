"""GPU and host telemetry for a run: what the hardware did while the tokens were made.

Two runs are comparable only if the hardware behaved: a GPU that was power-capped, thermally throttled or shared
with another job makes different timing and sometimes different kernel choices. This module samples NVML (through
nvidia-ml-py) and the host (through psutil) on one background thread, keeps the phase markers the stack sets, and
computes energy (J), mean power (W) and energy per generated token (J/token) per phase.

    rec = TelemetryRecorder(rate_hz=10.0, gpu=True)   # gpu=True: try NVML, else host only, with the reason recorded
    rec.start(); rec.mark("load"); ...; rec.mark("batch", index=0, tokens=640); ...
    summary = rec.stop(tokens=total_generated)        # JSON-serializable; manifest["telemetry"]
    rec.write(run_dir / "telemetry")                  # host.parquet, gpu.parquet (if any GPU), phases.parquet

NVML is reached only through a backend object: `NvmlBackend` (the real one) or `ReplayBackend`, which replays a
JSONL trace, so the sampler's logic is tested without a GPU. Record a trace on a GPU machine with
`python -m rig.telemetry record-trace PATH --seconds 5 --rate-hz 20`. Files, fields and units: docs/telemetry.md.
`import rig.telemetry` imports neither torch nor pynvml.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

TRACE_FORMAT = "rig-nvml-trace"
SCHEMA = 1

# Raw NVML quantities, as `read(index, field)` returns them (and as a trace stores them):
#   power int mW | energy int mJ (total since driver load) | sm_clock, mem_clock int MHz | temp int C
#   utilization [gpu %, memory %] | memory [used bytes, reserved bytes or None] | clock_event_reasons int bitmask
#   pcie_tx, pcie_rx int KB/s | ecc_volatile [corrected, uncorrected] error counts since driver load
GPU_FIELDS = (
    "power",
    "energy",
    "sm_clock",
    "mem_clock",
    "temp",
    "utilization",
    "memory",
    "clock_event_reasons",
    "pcie_tx",
    "pcie_rx",
    "ecc_volatile",
)
# NVML's PCIe throughput call blocks for its 20 ms measuring window; ECC counts change rarely. Read these at most
# once per this many seconds (rows in between hold null).
FIELD_MIN_PERIOD_S = {"pcie_tx": 1.0, "pcie_rx": 1.0, "ecc_volatile": 1.0}

CLOCK_EVENT_REASONS = (  # NVML's nvmlClocksEventReason* bits
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
_MIB = 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Names of the set bits of an NVML clock-event-reason bitmask; unknown bits as "bit_N"."""
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = sum(bit for bit, _ in CLOCK_EVENT_REASONS)
    names += [f"bit_{i}" for i in range(64) if (mask & ~known) >> i & 1]
    return names


# ---------------------------------------------------------------------------------------------------- errors


class TelemetryError(Exception):
    """Base of the errors raised by this module."""


class NvmlError(TelemetryError):
    """An NVML call failed. `nvml_name` is NVML's error class name, e.g. "NVMLError_NotSupported"."""

    def __init__(self, nvml_name: str, message: str = ""):
        super().__init__(f"{nvml_name}: {message}" if message else nvml_name)
        self.nvml_name = nvml_name


class NvmlNotSupported(NvmlError):
    """The device, driver or pynvml lacks this quantity (NotSupported, FunctionNotFound, ...)."""


class NvmlNoPermission(NvmlError):
    """The quantity needs privileges this process lacks."""


class NvmlGpuLost(NvmlError):
    """The GPU fell off the bus or needs a reset; stop reading it."""


class NvmlUnavailable(NvmlError):
    """NVML cannot be used at all here: no library, no driver, a driver/library mismatch."""


class NvmlRefused(TelemetryError):
    """The importable `pynvml` module is not the one from NVIDIA's nvidia-ml-py distribution."""


_NVML_ERROR_TYPES: dict[str, type[NvmlError]] = {
    "NVMLError_NotSupported": NvmlNotSupported,
    "NVMLError_FunctionNotFound": NvmlNotSupported,
    "NVMLError_NotFound": NvmlNotSupported,
    "NVMLError_ArgumentVersionMismatch": NvmlNotSupported,
    "NVMLError_Deprecated": NvmlNotSupported,
    "NVMLError_NoPermission": NvmlNoPermission,
    "NVMLError_GpuIsLost": NvmlGpuLost,
    "NVMLError_ResetRequired": NvmlGpuLost,
    "NVMLError_LibraryNotFound": NvmlUnavailable,
    "NVMLError_DriverNotLoaded": NvmlUnavailable,
    "NVMLError_Uninitialized": NvmlUnavailable,
    "NVMLError_LibRmVersionMismatch": NvmlUnavailable,
}


def nvml_error(nvml_name: str, message: str = "") -> NvmlError:
    """Our typed error for an NVML error class name."""
    return _NVML_ERROR_TYPES.get(nvml_name, NvmlError)(nvml_name, message)


def _from_pynvml(exc: Exception) -> NvmlError:
    name = type(exc).__name__
    if name == "NVMLError":
        name = f"NVMLError_{getattr(exc, 'value', 'Unknown')}"
    return nvml_error(name, str(exc))


# ---------------------------------------------------------------------------------------------------- clocks


class Clock:
    """Real time for the sampler: monotonic seconds, and waits that a stop request ends early."""

    def now(self) -> float:
        return time.monotonic()

    def wait_until(self, deadline_s: float, stop: threading.Event) -> bool:
        """Sleeps until `deadline_s` (clock seconds); returns True if a stop was requested."""
        remaining_s = deadline_s - self.now()
        return stop.wait(remaining_s) if remaining_s > 0 else stop.is_set()

    def attach(self) -> None:
        """A sampler thread is about to wait on this clock."""

    def detach(self) -> None:
        """That sampler thread has ended."""

    def interrupt(self) -> None:
        """Wakes a waiting sampler (after its stop event was set)."""


class ManualClock(Clock):
    """A clock that moves only when `advance()` is called, in lock step with the sampler thread.

    `advance(s)` steps time to each tick the sampler waits for and lets it take that sample before going on, so a
    test sees exactly rate_hz * s samples, whatever the machine's load.
    """

    def __init__(self, start_s: float = 0.0, timeout_s: float = 30.0):
        self._now_s = start_s
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._attached = 0
        self._deadline_s: float | None = None

    def now(self) -> float:
        return self._now_s

    def attach(self) -> None:
        with self._cond:
            self._attached += 1

    def detach(self) -> None:
        with self._cond:
            self._attached -= 1
            self._deadline_s = None
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, deadline_s: float, stop: threading.Event) -> bool:
        with self._cond:
            self._deadline_s = deadline_s
            self._cond.notify_all()
            while self._now_s < deadline_s and not stop.is_set():
                self._cond.wait()
            self._deadline_s = None
            return stop.is_set()

    def advance(self, seconds: float) -> None:
        """Moves time forward by `seconds`, letting an attached sampler take every tick due on the way."""
        with self._cond:
            target_s = self._now_s + seconds
            while self._attached:
                give_up = time.monotonic() + self._timeout_s
                while self._attached and self._deadline_s is None:  # the sampler is busy: wait until it parks
                    if not self._cond.wait(timeout=max(0.0, give_up - time.monotonic())):
                        raise TimeoutError("sampler thread did not come back to wait on the clock")
                if not self._attached or self._deadline_s > target_s + 1e-12:
                    break
                self._now_s = max(self._now_s, self._deadline_s)
                self._deadline_s = None
                self._cond.notify_all()
            self._now_s = target_s


# ---------------------------------------------------------------------------------------------------- backends


def check_pynvml_distribution() -> str:
    """Path of the `pynvml` module if NVIDIA's nvidia-ml-py distribution provides it; raises NvmlRefused otherwise.

    The unofficial `pynvml` distribution used to ship its own pynvml.py over NVIDIA's; it is refused. Nothing is
    imported here.
    """
    spec = importlib.util.find_spec("pynvml")
    if spec is None or not spec.origin:
        raise NvmlUnavailable("NVMLError_LibraryNotFound", "no pynvml module: pip install nvidia-ml-py")
    origin = Path(spec.origin).resolve()
    try:
        official = importlib.metadata.distribution("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        raise NvmlRefused(f"pynvml at {origin} is not from the nvidia-ml-py distribution (not installed)") from None
    owned = {Path(official.locate_file(f)).resolve() for f in official.files or () if f.name == "pynvml.py"}
    if origin not in owned:
        raise NvmlRefused(f"pynvml at {origin} is not the file nvidia-ml-py installed")
    try:
        shim = importlib.metadata.distribution("pynvml")
    except importlib.metadata.PackageNotFoundError:
        return str(origin)
    if any(f.name == "pynvml.py" for f in shim.files or ()):
        raise NvmlRefused(f"the unofficial pynvml {shim.version} distribution overwrites nvidia-ml-py's pynvml.py")
    return str(origin)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """The real NVML, through nvidia-ml-py's `pynvml` (imported in `init()`, never at module import)."""

    name = "nvml"

    def __init__(self) -> None:
        self._nv: Any = None
        self._handles: list[Any] = []
        self._memory_v1: set[int] = set()

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._nv.NVMLError as exc:
            raise _from_pynvml(exc) from None

    def init(self) -> None:
        """Loads NVML. Raises NvmlRefused, NvmlUnavailable or another NvmlError."""
        check_pynvml_distribution()
        import pynvml

        self._nv = pynvml
        self._call(pynvml.nvmlInit)
        count = self._call(pynvml.nvmlDeviceGetCount)
        self._handles = [self._call(pynvml.nvmlDeviceGetHandleByIndex, i) for i in range(count)]

    def shutdown(self) -> None:
        if self._nv is not None:
            with contextlib.suppress(self._nv.NVMLError):
                self._nv.nvmlShutdown()
            self._nv = None

    def system_info(self) -> dict:
        """Driver version, CUDA driver version ("12.4") and NVML version."""
        nv, info = self._nv, {}
        for key, fn in (
            ("driver_version", "nvmlSystemGetDriverVersion"),
            ("nvml_version", "nvmlSystemGetNVMLVersion"),
            ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion"),
        ):
            try:
                value = self._call(getattr(nv, fn))
            except NvmlError as exc:
                value = None
                info.setdefault("errors", {})[key] = exc.nvml_name
            if key == "cuda_driver_version" and isinstance(value, int):
                value = f"{value // 1000}.{value % 1000 // 10}"
            info[key] = _text(value) if value is not None else None
        return info

    def devices(self) -> list[dict]:
        """One dict per NVML device: index, uuid, pci_bus_id, name, compute_capability, memory_total_mib."""
        nv, out = self._nv, []
        for i, h in enumerate(self._handles):
            dev = {
                "index": i,
                "uuid": _text(self._call(nv.nvmlDeviceGetUUID, h)),
                "pci_bus_id": _text(self._call(nv.nvmlDeviceGetPciInfo, h).busId),
                "name": _text(self._call(nv.nvmlDeviceGetName, h)),
            }
            try:
                major, minor = self._call(nv.nvmlDeviceGetCudaComputeCapability, h)
                dev["compute_capability"] = f"{major}.{minor}"
                dev["memory_total_mib"] = self._call(nv.nvmlDeviceGetMemoryInfo, h).total / _MIB
            except NvmlError:
                pass
            out.append(dev)
        return out

    def read(self, index: int, field: str) -> Any:
        """The raw value of one GPU_FIELDS quantity (units in the GPU_FIELDS comment); raises an NvmlError."""
        nv, h = self._nv, self._handles[index]
        if field == "power":
            return self._call(nv.nvmlDeviceGetPowerUsage, h)
        if field == "energy":
            return self._call(nv.nvmlDeviceGetTotalEnergyConsumption, h)
        if field in ("sm_clock", "mem_clock"):
            kind = nv.NVML_CLOCK_SM if field == "sm_clock" else nv.NVML_CLOCK_MEM
            return self._call(nv.nvmlDeviceGetClockInfo, h, kind)
        if field == "temp":
            return self._call(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        if field == "utilization":
            u = self._call(nv.nvmlDeviceGetUtilizationRates, h)
            return [u.gpu, u.memory]
        if field == "memory":
            if index not in self._memory_v1:
                try:
                    m = self._call(nv.nvmlDeviceGetMemoryInfo, h, nv.nvmlMemory_v2)
                    return [m.used, m.reserved]
                except NvmlNotSupported:
                    self._memory_v1.add(index)
            return [self._call(nv.nvmlDeviceGetMemoryInfo, h).used, None]
        if field == "clock_event_reasons":
            fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
            )
            if fn is None:
                raise NvmlNotSupported("NVMLError_FunctionNotFound", "this pynvml has no clock event reasons")
            return self._call(fn, h)
        if field in ("pcie_tx", "pcie_rx"):
            counter = nv.NVML_PCIE_UTIL_TX_BYTES if field == "pcie_tx" else nv.NVML_PCIE_UTIL_RX_BYTES
            return self._call(nv.nvmlDeviceGetPcieThroughput, h, counter)
        if field == "ecc_volatile":
            return [
                self._call(nv.nvmlDeviceGetTotalEccErrors, h, kind, nv.NVML_VOLATILE_ECC)
                for kind in (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
            ]
        raise KeyError(field)


class ReplayBackend:
    """Replays a JSONL NVML trace (see `record_trace`) as if it were NVML, on the recorder's clock.

    A read at clock time t after `init()` returns, per device and field, the last recorded value at or before t
    (the first one before the trace starts). Fields the header lists as unsupported raise the recorded NVML error.
    `loop=True` repeats the trace (the energy counter keeps rising); otherwise the last values hold.
    `unsupported={index: {field: nvml_error_name}}` adds unsupported fields on top of the trace's.
    """

    name = "replay"

    def __init__(
        self,
        path: str | os.PathLike,
        clock: Clock | None = None,
        *,
        loop: bool = False,
        unsupported: dict[int, dict[str, str]] | None = None,
    ):
        self.path = Path(path)
        self.clock = clock or Clock()
        self.loop = loop
        lines = [json.loads(s) for s in self.path.read_text().splitlines() if s.strip()]
        if not lines or lines[0].get("format") != TRACE_FORMAT:
            raise TelemetryError(f"{self.path}: first line is not a {TRACE_FORMAT} header")
        self.header = lines[0]
        self._unsupported = {int(k): dict(v) for k, v in self.header.get("unsupported", {}).items()}
        for index, fields in (unsupported or {}).items():
            self._unsupported.setdefault(index, {}).update(fields)
        self._series: dict[tuple[int, str], tuple[list[float], list[Any]]] = {}
        for rec in lines[1:]:
            items = [(f, v) for f, v in rec.get("values", {}).items()]
            items += [(f, nvml_error(e)) for f, e in rec.get("errors", {}).items()]
            for field, value in items:
                times, values = self._series.setdefault((rec["device"], field), ([], []))
                times.append(float(rec["t"]))
                values.append(value)
        self.duration_s = max((s[0][-1] for s in self._series.values()), default=0.0)
        self._t0 = 0.0

    def init(self) -> None:
        self._t0 = self.clock.now()

    def shutdown(self) -> None:
        pass

    def system_info(self) -> dict:
        info = {k: self.header.get(k) for k in ("driver_version", "nvml_version", "cuda_driver_version")}
        return {
            **info,
            "trace": str(self.path),
            "synthetic": bool(self.header.get("synthetic")),
            "note": self.header.get("note"),
        }

    def devices(self) -> list[dict]:
        return [dict(d) for d in self.header["devices"]]

    def read(self, index: int, field: str) -> Any:
        name = self._unsupported.get(index, {}).get(field)
        if name:
            raise nvml_error(name, "listed as unsupported in the trace")
        series = self._series.get((index, field))
        if series is None:
            raise nvml_error("NVMLError_NoData", f"trace has no {field} for device {index}")
        times, values = series
        t_s, laps = self.clock.now() - self._t0, 0
        if self.loop and self.duration_s > 0:
            laps, t_s = divmod(t_s, self.duration_s + 1e-9)
        i = max(bisect.bisect_right(times, t_s + 1e-9) - 1, 0)
        value = values[i]
        if isinstance(value, NvmlError):
            raise type(value)(value.nvml_name, str(value))
        if field == "energy" and laps:
            value += int(laps) * values[-1]
        return value


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

# gpu.parquet columns (beyond t_s, gpu_index, uuid, pci_bus_id, phase) and the raw field each comes from
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


def _columns(field: str, raw: Any) -> dict:
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


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
                row.update(_columns(field, raw))
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
        self._summary = self._summarize(tokens)
        return self._summary

    @property
    def summary(self) -> dict | None:
        """The summary dict once stopped, else None."""
        return self._summary

    def __enter__(self) -> TelemetryRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- results

    def _phases(self) -> list[dict]:
        marks = list(self._marks)
        if not marks or marks[0][0] > 0:
            marks.insert(0, (0.0, "unmarked", {}))
        out = []
        for i, (start_s, name, attrs) in enumerate(marks):
            end_s = marks[i + 1][0] if i + 1 < len(marks) else self._t_end_s
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

    def _device_series(self) -> list[tuple]:
        """Per device: (t_s, energy_mj_since_start, power_mw) as float arrays, NaN where a reading is missing."""
        import numpy as np

        def floats(name, sel):
            col = self._gpu_cols[name]
            return np.asarray([np.nan if col[i] is None else col[i] for i in sel], dtype=float)

        t, gi = np.asarray(self._gpu_cols["t_s"], dtype=float), np.asarray(self._gpu_cols["gpu_index"])
        out = []
        for dev in self._devices:
            sel = np.flatnonzero(gi == dev.info["index"])
            out.append((t[sel], floats("energy_mj_since_start", sel), floats("power_mw", sel)))
        return out

    @staticmethod
    def _energy_j(series: list[tuple], t0_s: float, t1_s: float) -> list[float | None]:
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

    def _summarize(self, tokens: int | None) -> dict:
        import numpy as np

        def stat(values, fn):
            v = [x for x in values if x is not None]
            return None if not v else round(float(fn(np.asarray(v, dtype=float))), 3)

        def total(values):
            v = [x for x in values if x is not None]
            return round(sum(v), 3) if v else None

        phases, series = self._phases(), self._device_series()
        host_t = np.asarray(self._host_cols["t_s"])
        for ph in phases:
            per_dev = self._energy_j(series, ph["start_s"], ph["end_s"])
            ph["energy_j"] = total(per_dev) if self._devices else None
            ph["energy_j_by_gpu"] = [None if e is None else round(e, 3) for e in per_dev]
            ph["mean_power_w"] = (
                round(ph["energy_j"] / ph["duration_s"], 3)
                if ph["energy_j"] is not None and ph["duration_s"] > 0
                else None
            )
            ph["j_per_token"] = (
                round(ph["energy_j"] / ph["tokens"], 6) if ph["energy_j"] is not None and ph["tokens"] else None
            )
            sel = np.flatnonzero((host_t >= ph["start_s"]) & (host_t <= ph["end_s"]))
            ph["proc_cpu_pct_mean"] = stat([self._host_cols["proc_cpu_pct"][i] for i in sel], np.mean)
        hc, gc = self._host_cols, self._gpu_cols
        devices = []
        for dev, e_j in zip(self._devices, self._energy_j(series, 0.0, self._t_end_s), strict=True):
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
        duration_s = self._t_end_s
        share_pct = round(100 * self._thread_cpu_s / duration_s, 3) if duration_s else None
        return {
            "schema": SCHEMA,
            "started_at": self.started_at,
            "rate_hz": self.rate_hz,
            "duration_s": round(duration_s, 3),
            "sampler": {
                "samples": len(hc["t_s"]),
                "ticks_skipped": self._ticks_skipped,
                "error": self._thread_error,
                "thread_cpu_s": round(self._thread_cpu_s, 4),
                "share_of_one_core_pct": share_pct,
            },
            "host": {
                "samples": len(hc["t_s"]),
                "unsupported": dict(self._host.unsupported),
                "proc_cpu_pct_mean": stat(hc["proc_cpu_pct"], np.mean),
                "proc_cpu_pct_max": stat(hc["proc_cpu_pct"], np.max),
                "sys_cpu_pct_mean": stat(hc["sys_cpu_pct"], np.mean),
                "rss_mib_max": stat(hc["rss_mib"], np.max),
                "rss_tree_mib_max": stat(hc["rss_tree_mib"], np.max),
                "cpu_freq_mhz_mean": stat(hc["cpu_freq_mhz"], np.mean),
            },
            "gpu": {**self._gpu_status, "devices": devices},
            "energy_j": energy_j,
            "tokens": all_tokens,
            "j_per_token": round(energy_j / all_tokens, 6) if energy_j is not None and all_tokens else None,
            "generate_j_per_token": round(gen_e / sum(phase_tokens), 6) if gen_e is not None and phase_tokens else None,
            "phases": phases,
        }

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Writes host.parquet, gpu.parquet (when a GPU was sampled) and phases.parquet atomically; returns paths."""
        import pyarrow as pa

        if self._summary is None:
            raise RuntimeError("write() before stop()")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        phases = self._summary["phases"]
        starts = [ph["start_s"] for ph in phases]

        def phase_of(ts):
            return [phases[max(bisect.bisect_right(starts, t + 1e-9) - 1, 0)]["name"] if phases else None for t in ts]

        meta = {
            "rig.telemetry": json.dumps(
                {
                    "schema": SCHEMA,
                    "started_at": self.started_at,
                    "rate_hz": self.rate_hz,
                    "gpu": {k: v for k, v in self._gpu_status.items()},
                }
            )
        }
        f64, i64, i32 = pa.float64(), pa.int64(), pa.int32()
        host_types = {"t_s": f64, **dict.fromkeys(HostSampler.COLUMNS, f64)}
        tables = {
            "host": pa.table(
                {
                    **{c: pa.array(self._host_cols[c], host_types[c]) for c in host_types},
                    "phase": pa.array(phase_of(self._host_cols["t_s"]), pa.string()),
                }
            )
        }
        if self._devices:
            gc = self._gpu_cols
            by_index = {d.info["index"]: d.info for d in self._devices}
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

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


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


# ---------------------------------------------------------------------------------------------------- traces


def record_trace(path: str | os.PathLike, seconds: float = 5.0, rate_hz: float = 20.0, backend: Any = None) -> Path:
    """Records raw NVML readings of every device to a JSONL trace that ReplayBackend replays; returns the path.

    Line 1 is the header (devices, driver, unsupported fields with their NVML error names, "synthetic": false);
    each further line is one reading: {"t": seconds since start, "device": index, "values": {field: raw}}, with
    "errors": {field: nvml_error_name} when a supported field failed. Fields in FIELD_MIN_PERIOD_S are read at most
    that often.
    """
    backend = backend or NvmlBackend()
    backend.init()
    try:
        devices = backend.devices()
        unsupported: dict[str, dict[str, str]] = {}
        for d in devices:
            for field in GPU_FIELDS:
                try:
                    backend.read(d["index"], field)
                except NvmlError as exc:
                    unsupported.setdefault(str(d["index"]), {})[field] = exc.nvml_name
        header = {
            "format": TRACE_FORMAT,
            "version": 1,
            "synthetic": False,
            "note": "recorded with rig.telemetry",
            "recorded_at": _now_iso(),
            "rate_hz": rate_hz,
            **backend.system_info(),
            "devices": devices,
            "fields": list(GPU_FIELDS),
            "unsupported": unsupported,
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        next_read: dict[tuple[int, str], float] = {}
        with out.open("w") as fh:
            fh.write(json.dumps(header) + "\n")
            t0, k = time.monotonic(), 0
            while (now := time.monotonic()) - t0 <= seconds:
                for d in devices:
                    rec: dict[str, Any] = {"t": round(now - t0, 6), "device": d["index"], "values": {}}
                    for field in GPU_FIELDS:
                        if field in unsupported.get(str(d["index"]), {}) or now < next_read.get((d["index"], field), 0):
                            continue
                        next_read[(d["index"], field)] = now + FIELD_MIN_PERIOD_S.get(field, 0.0) - 1e-9
                        try:
                            rec["values"][field] = backend.read(d["index"], field)
                        except NvmlError as exc:
                            rec.setdefault("errors", {})[field] = exc.nvml_name
                    fh.write(json.dumps(rec) + "\n")
                k += 1
                time.sleep(max(0.0, t0 + k / rate_hz - time.monotonic()))
    finally:
        backend.shutdown()
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rig.telemetry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rt = sub.add_parser("record-trace", help="record raw NVML readings to a JSONL trace for the replay tests")
    rt.add_argument("path")
    rt.add_argument("--seconds", type=float, default=5.0)
    rt.add_argument("--rate-hz", type=float, default=20.0)
    args = parser.parse_args()
    try:
        written = record_trace(args.path, seconds=args.seconds, rate_hz=args.rate_hz)
    except TelemetryError as exc:
        raise SystemExit(f"record-trace: {exc}") from None
    print(f"wrote {written} ({sum(1 for _ in written.open()) - 1} readings)")
