"""NVML access for telemetry: the one place that talks to the GPU driver, or replays what it once said.

The sampler in rig.telemetry.recorder asks a backend (`init`, `shutdown`, `system_info`, `devices`, `read(index,
field)`):
`NvmlBackend` is real NVML through nvidia-ml-py (imported only in `init()`, after checking the module is NVIDIA's);
`ReplayBackend` replays a JSONL trace on a clock, so the sampler is tested without a GPU. NVML failures become the
typed errors below. `record_trace` writes the traces (on a GPU: `python -m rig.telemetry record-trace PATH`).
Fields, units and the trace format: docs/telemetry.md. `import rig.telemetry.nvml` imports neither torch nor pynvml.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from rig.files import now_iso

TRACE_FORMAT = "rig-nvml-trace"

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


def _now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a trailing "Z"."""
    return now_iso("milliseconds")


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Names of the set bits of an NVML clock-event-reason bitmask; unknown bits as "bit_N"."""
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = sum(bit for bit, _ in CLOCK_EVENT_REASONS)
    names += [f"bit_{i}" for i in range(64) if (mask & ~known) >> i & 1]
    return names


class TelemetryError(Exception):
    """Base of the errors raised by rig.telemetry.nvml and rig.telemetry.recorder."""


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
            "note": "recorded with rig.telemetry.recorder",
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
