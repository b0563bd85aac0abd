"""Telemetry: the sampler's logic on a replayed NVML trace, and the host sampler for real.

No GPU is at hand here, so NVML is replaced by rig.telemetry.nvml.ReplayBackend over
tests/data/nvml_trace_synthetic.jsonl, a
trace built from NVML's field definitions (its header says "synthetic": true; see tests/data/make_synthetic_trace.py
for the exact powers, so the expected energies below are exact). A ManualClock moves time in lock step with the
sampler thread, so sample counts are exact whatever the machine's load. scripts/gpu_smoke.sh checks the real NVML path.
"""

import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rig.telemetry import nvml
from rig.telemetry import recorder as telemetry
from rig.telemetry.nvml import (
    ManualClock,
    NvmlGpuLost,
    NvmlNoPermission,
    NvmlNotSupported,
    NvmlRefused,
    NvmlUnavailable,
    ReplayBackend,
    decode_clock_event_reasons,
    nvml_error,
    record_trace,
)
from rig.telemetry.recorder import TelemetryRecorder, load_telemetry

TRACE = Path(__file__).parent / "data" / "nvml_trace_synthetic.jsonl"


class CountingReplay(ReplayBackend):
    """ReplayBackend that counts reads per (device, field) and shutdowns."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: dict[tuple[int, str], int] = {}
        self.shutdowns = 0

    def read(self, index, field):
        self.reads[(index, field)] = self.reads.get((index, field), 0) + 1
        return super().read(index, field)

    def shutdown(self):
        self.shutdowns += 1


def replay_recorder(rate_hz=10.0, **backend_kwargs):
    clock = ManualClock()
    backend = CountingReplay(TRACE, clock, **backend_kwargs)
    return TelemetryRecorder(rate_hz=rate_hz, backend=backend, clock=clock), clock, backend


def scripted_run(rate_hz=10.0, **backend_kwargs):
    """load 0-1 s, batch (400 tokens) 1-3 s, cooldown 3-4 s; stop(tokens=400) at 4 s."""
    rec, clock, backend = replay_recorder(rate_hz, **backend_kwargs)
    rec.start()
    rec.mark("load")
    clock.advance(1.0)
    rec.mark("batch", index=0, tokens=400)
    clock.advance(2.0)
    rec.mark("cooldown")
    clock.advance(1.0)
    return rec, rec.stop(tokens=400), backend


def test_trace_is_labelled_synthetic():
    header = json.loads(TRACE.read_text().splitlines()[0])
    assert header["synthetic"] is True
    assert header["note"] == "built from NVML field definitions, not recorded on a GPU"


def test_import_pulls_in_neither_torch_nor_pynvml():
    code = (
        "import sys, rig.telemetry.nvml, rig.telemetry.recorder, rig.telemetry.envinfo; "
        "print('torch' in sys.modules, 'pynvml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(("rate_hz", "seconds"), [(10.0, 4.0), (25.0, 2.0)])
def test_sampling_rate_is_exact_on_a_manual_clock(rate_hz, seconds):
    rec, clock, _ = replay_recorder(rate_hz)
    rec.start()
    clock.advance(seconds)
    summary = rec.stop()
    expected = round(rate_hz * seconds) + 1  # the first sample at start, then one per tick
    assert summary["sampler"]["samples"] == expected
    assert summary["sampler"]["ticks_skipped"] == 0
    assert [d["samples"] for d in summary["gpu"]["devices"]] == [expected, expected]
    assert summary["duration_s"] == pytest.approx(seconds)


def test_phase_energy_power_and_energy_per_token():
    _, s, _ = scripted_run()
    phases = {ph["name"]: ph for ph in s["phases"]}
    assert [ph["name"] for ph in s["phases"]] == ["load", "batch", "cooldown"]
    # device 0: 70 / 650 / 120 W; device 1: 60 / 300 / 100 W over 1 s / 2 s / 1 s
    assert phases["load"]["energy_j_by_gpu"] == pytest.approx([70.0, 60.0])
    assert phases["batch"]["energy_j_by_gpu"] == pytest.approx([1300.0, 600.0])
    assert phases["batch"]["energy_j"] == pytest.approx(1900.0)
    assert phases["batch"]["mean_power_w"] == pytest.approx(950.0)
    assert phases["batch"]["duration_s"] == pytest.approx(2.0)
    assert phases["batch"]["j_per_token"] == pytest.approx(1900.0 / 400)
    assert phases["batch"]["index"] == 0 and phases["batch"]["tokens"] == 400
    assert phases["cooldown"]["energy_j"] == pytest.approx(220.0)
    assert phases["load"]["j_per_token"] is None
    assert s["energy_j"] == pytest.approx(2250.0)
    assert s["j_per_token"] == pytest.approx(2250.0 / 400)
    assert s["generate_j_per_token"] == pytest.approx(1900.0 / 400)
    json.dumps(s)  # the summary goes into manifest.json


def test_phase_bounds_between_samples_are_interpolated():
    rec, clock, _ = replay_recorder(10.0)
    rec.start()
    clock.advance(0.55)
    rec.mark("warmup")  # before the first mark: an "unmarked" phase
    clock.advance(0.5)  # 1.05 s
    rec.mark("batch", tokens=100)
    clock.advance(0.4)  # 1.45 s
    s = rec.stop()
    names = [ph["name"] for ph in s["phases"]]
    assert names == ["unmarked", "warmup", "batch"]
    warmup, batch = s["phases"][1], s["phases"][2]
    assert warmup["energy_j_by_gpu"] == pytest.approx([0.45 * 70 + 0.05 * 650, 0.45 * 60 + 0.05 * 300])
    assert batch["energy_j_by_gpu"] == pytest.approx([0.4 * 650, 0.4 * 300])
    assert s["tokens"] == 100  # no stop(tokens=...): the phases' tokens


def test_tokens_known_only_at_the_end_of_a_phase():
    rec, clock, _ = replay_recorder(10.0)
    rec.start()
    rec.mark("load")
    clock.advance(1.0)
    rec.mark("batch", index=0)
    clock.advance(1.0)
    rec.add_tokens(150)
    rec.add_tokens(50)
    rec.mark("write", index=0)
    clock.advance(0.5)
    s = rec.stop()
    batch = s["phases"][1]
    assert batch["tokens"] == 200 and batch["j_per_token"] == pytest.approx((650 + 300) / 200)
    assert s["tokens"] == 200 and s["phases"][2]["tokens"] is None
    with pytest.raises(RuntimeError):
        rec.add_tokens(1)


def test_energy_counter_reset_accumulates_segments():
    _, s, _ = scripted_run()
    dev1 = s["gpu"]["devices"][1]
    assert dev1["energy_counter_resets"] == 1
    assert dev1["energy_j"] == pytest.approx(60 + 600 + 100)
    assert s["gpu"]["devices"][0]["energy_counter_resets"] == 0
    dev = telemetry._Device({"index": 0}, {})
    assert [dev.energy(v) for v in (1000, 1500, 200, 700, 700)] == [0, 500, 700, 1200, 1200]
    assert dev.energy_resets == 1


def test_power_integral_when_the_energy_counter_is_unsupported():
    _, s, _ = scripted_run(unsupported={0: {"energy": "NVMLError_NotSupported"}})
    dev0 = s["gpu"]["devices"][0]
    assert dev0["unsupported"]["energy"] == "NVMLError_NotSupported"
    assert dev0["energy_method"] == "power_integral"
    # the trapezoid smears each power step over one 0.1 s sample interval
    assert dev0["energy_j"] == pytest.approx(1490.0, rel=0.03)
    assert s["gpu"]["devices"][1]["energy_method"] == "energy_counter"


def test_unsupported_fields_are_probed_once_skipped_and_listed(tmp_path):
    rec, s, backend = scripted_run()
    dev1 = s["gpu"]["devices"][1]
    assert dev1["unsupported"] == {f: "NVMLError_NotSupported" for f in ("pcie_tx", "pcie_rx", "ecc_volatile")}
    assert s["gpu"]["devices"][0]["unsupported"] == {}
    for field in ("pcie_tx", "pcie_rx", "ecc_volatile"):
        assert backend.reads[(1, field)] == 1
    assert backend.reads[(1, "power")] == 1 + 41  # the probe, then every sample
    assert backend.reads[(0, "pcie_tx")] == 1 + 5  # slow field: at most once a second (0, 1, 2, 3, 4 s)
    rec.write(tmp_path)
    gpu = load_telemetry(tmp_path)["gpu"].to_pylist()
    dev1_rows = [r for r in gpu if r["gpu_index"] == 1]
    assert all(r["pcie_tx_kb_s"] is None and r["ecc_volatile_corrected"] is None for r in dev1_rows)
    assert all(r["mem_reserved_mib"] is None for r in dev1_rows)
    assert all(r["power_mw"] is not None for r in dev1_rows)


def test_clock_event_reasons_are_decoded(tmp_path):
    assert decode_clock_event_reasons(0) == []
    assert decode_clock_event_reasons(0x1 | 0x4 | 0x20) == ["gpu_idle", "sw_power_cap", "sw_thermal_slowdown"]
    assert decode_clock_event_reasons(0x8 | 0x40 | 0x80 | 0x100 | 0x2 | 0x10) == [
        "applications_clocks_setting",
        "hw_slowdown",
        "sync_boost",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "display_clock_setting",
    ]
    assert decode_clock_event_reasons(0x400 | 1 << 12) == ["reliability", "bit_12"]
    rec, s, _ = scripted_run()
    rec.write(tmp_path)
    rows = load_telemetry(tmp_path)["gpu"].to_pylist()
    by_t = {round(r["t_s"], 3): r for r in rows if r["gpu_index"] == 0}
    assert by_t[0.5]["clock_event_names"] == ["gpu_idle"]
    assert by_t[1.5]["clock_event_names"] == []
    assert by_t[2.5]["clock_event_reasons"] == 0x4 and by_t[2.5]["clock_event_names"] == ["sw_power_cap"]
    assert by_t[3.5]["clock_event_names"] == ["gpu_idle", "sw_thermal_slowdown"]
    share = s["gpu"]["devices"][0]["clock_event_share"]
    assert share["sw_power_cap"] == pytest.approx(10 / 41, abs=1e-3)  # samples at 2.1 .. 3.0 s


def test_written_files_have_units_and_phases(tmp_path):
    rec, s, _ = scripted_run()
    paths = rec.write(tmp_path / "run" / "telemetry")
    assert sorted(paths) == ["gpu", "host", "phases"]
    tables = load_telemetry(tmp_path / "run")  # a run directory works too
    gpu, host, phases = tables["gpu"], tables["host"], tables["phases"]
    assert gpu.num_rows == 2 * 41 and host.num_rows == 41
    for col in (
        "power_mw",
        "energy_mj",
        "sm_clock_mhz",
        "mem_clock_mhz",
        "temp_c",
        "gpu_util_pct",
        "mem_used_mib",
        "mem_reserved_mib",
        "pcie_tx_kb_s",
        "ecc_volatile_uncorrected",
        "uuid",
        "pci_bus_id",
        "phase",
    ):
        assert col in gpu.column_names
    for col in ("t_s", "proc_cpu_pct", "sys_cpu_pct", "rss_mib", "cpu_freq_mhz", "phase"):
        assert col in host.column_names
    rows = {round(r["t_s"], 3): r for r in gpu.to_pylist() if r["gpu_index"] == 0}
    assert rows[2.0]["phase"] == "batch" and rows[0.5]["phase"] == "load" and rows[3.5]["phase"] == "cooldown"
    assert rows[2.0]["power_mw"] == 650_000 and rows[2.0]["uuid"].startswith("GPU-")
    assert rows[4.0]["energy_mj_since_start"] == 1_490_000
    assert phases.column("name").to_pylist() == ["load", "batch", "cooldown"]
    assert phases.column("energy_j").to_pylist() == pytest.approx([130.0, 1900.0, 220.0])
    meta = json.loads(gpu.schema.metadata[b"rig.telemetry"])
    assert meta["rate_hz"] == 10.0 and meta["gpu"]["system"]["synthetic"] is True


def test_clean_shutdown_and_idempotent_stop():
    rec, clock, backend = replay_recorder()
    with rec:
        clock.advance(0.3)
        thread = rec._thread
        assert thread.is_alive()
    assert not thread.is_alive()
    first = rec.summary
    assert rec.stop() is first and rec.stop(tokens=5) is first
    assert backend.shutdowns == 1
    with pytest.raises(RuntimeError):
        rec.mark("late")
    with pytest.raises(RuntimeError):
        rec.start()


def test_cuda_visible_devices_selects_gpus():
    clock = ManualClock()
    rec = TelemetryRecorder(
        backend=ReplayBackend(TRACE, clock),
        clock=clock,
        env={"CUDA_VISIBLE_DEVICES": "GPU-5e7e71c0-0000-4000-8000-000000000001"},
    )
    rec.start()
    clock.advance(1.0)
    s = rec.stop()
    assert [d["index"] for d in s["gpu"]["devices"]] == [1]
    assert "CUDA_VISIBLE_DEVICES" in s["gpu"]["reason"]
    assert s["energy_j"] == pytest.approx(60.0)
    devices = [{"index": i, "uuid": f"GPU-{i}"} for i in range(3)]
    assert telemetry._visible(devices, {"CUDA_VISIBLE_DEVICES": "2,0"})[0] == [2, 0]
    assert telemetry._visible(devices, {"CUDA_VISIBLE_DEVICES": "1,x,2"})[0] == [1]  # CUDA stops at "x"
    assert telemetry._visible(devices, {"CUDA_VISIBLE_DEVICES": ""})[0] == []
    assert "PCI" in telemetry._visible(devices, {"CUDA_VISIBLE_DEVICES": "0"})[1]


def test_nvml_errors_map_to_typed_errors():
    assert isinstance(nvml_error("NVMLError_NotSupported"), NvmlNotSupported)
    assert isinstance(nvml_error("NVMLError_FunctionNotFound"), NvmlNotSupported)
    assert isinstance(nvml_error("NVMLError_NoPermission"), NvmlNoPermission)
    assert isinstance(nvml_error("NVMLError_GpuIsLost"), NvmlGpuLost)
    assert isinstance(nvml_error("NVMLError_LibraryNotFound"), NvmlUnavailable)
    err = nvml_error("NVMLError_Timeout", "slow")
    assert type(err) is nvml.NvmlError and err.nvml_name == "NVMLError_Timeout" and "slow" in str(err)


def test_lost_gpu_stops_that_device(tmp_path):
    trace = tmp_path / "lost.jsonl"
    lines = TRACE.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        rec = json.loads(line)
        if rec["device"] == 0 and rec["t"] >= 1.0:
            rec["errors"] = {"power": "NVMLError_GpuIsLost"}
            del rec["values"]["power"]
        out.append(json.dumps(rec))
    trace.write_text("\n".join(out) + "\n")
    clock = ManualClock()
    rec = TelemetryRecorder(backend=ReplayBackend(trace, clock), clock=clock)
    rec.start()
    clock.advance(2.0)
    s = rec.stop()
    dev0 = s["gpu"]["devices"][0]
    assert dev0["lost"].startswith("NVMLError_GpuIsLost") and dev0["samples"] == 10  # 0.0 .. 0.9 s
    assert s["gpu"]["devices"][1]["samples"] == 21


def test_no_nvml_here_falls_back_to_host_only():
    try:
        importlib.metadata.distribution("nvidia-ml-py")
        nvml.NvmlBackend().init()
        pytest.skip("NVML works on this machine")
    except (nvml.NvmlError, NvmlRefused, importlib.metadata.PackageNotFoundError):
        pass
    rec = TelemetryRecorder(rate_hz=20.0, gpu=True)
    rec.start()
    time.sleep(0.2)
    s = rec.stop()
    assert s["gpu"]["status"] in ("unavailable", "refused") and s["gpu"]["reason"]
    assert s["gpu"]["devices"] == [] and s["energy_j"] is None and s["host"]["samples"] >= 2


def test_the_unofficial_pynvml_distribution_is_refused(monkeypatch):
    real = importlib.metadata.distribution

    def without_nvidia_ml_py(name):
        if name == "nvidia-ml-py":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("no pynvml module installed")
    monkeypatch.setattr(importlib.metadata, "distribution", without_nvidia_ml_py)
    with pytest.raises(NvmlRefused, match="nvidia-ml-py"):
        nvml.check_pynvml_distribution()
    s = TelemetryRecorder(rate_hz=20.0).start().stop()
    assert s["gpu"]["status"] == "refused" and "nvidia-ml-py" in s["gpu"]["reason"]


def test_host_sampler_for_real(tmp_path):
    rec = TelemetryRecorder(rate_hz=20.0, gpu=False)
    rec.start()
    time.sleep(0.5)
    s = rec.stop()
    assert s["gpu"]["status"] == "disabled"
    rec.write(tmp_path)
    tables = load_telemetry(tmp_path)
    assert "gpu" not in tables
    host = tables["host"]
    assert host.num_rows >= 5 and s["host"]["samples"] == host.num_rows
    assert min(host.column("rss_mib").to_pylist()) > 0
    assert s["host"]["rss_mib_max"] > 0 and s["sampler"]["thread_cpu_s"] >= 0
    assert s["duration_s"] == pytest.approx(0.5, abs=0.3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_host_sampler_finds_children_and_grandchildren():
    code = "import subprocess, time; x = b'x' * (48 << 20); subprocess.Popen(['sleep', '30']); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    host, found = telemetry.HostSampler(), {}
    try:
        deadline = time.monotonic() + 10
        while True:
            host._next_refresh = 0.0  # list the children again at this read
            row = host.read()
            found = telemetry._descendants_from_scan(os.getpid())
            done = len(found) >= 2 and len(host._children) >= 2 and row["rss_tree_mib"] - row["rss_mib"] >= 40
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found[child.pid] == os.getpid() and any(ppid == child.pid for ppid in found.values())
        if os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children"):
            assert telemetry._descendants_from_task_files(os.getpid()) == found
        assert set(host._children) == set(found)
        assert row["rss_tree_mib"] - row["rss_mib"] >= 40  # the child's 48 MiB
    finally:
        host.close()
        for pid in [p for p, ppid in found.items() if ppid == child.pid]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # the grandchild this test started
        child.kill()
        child.wait()
    host = telemetry.HostSampler()
    try:
        host.read()
        assert child.pid not in host._children
    finally:
        host.close()


def test_record_trace_writes_what_replay_reads(tmp_path):
    path = record_trace(tmp_path / "t.jsonl", seconds=0.3, rate_hz=20.0, backend=ReplayBackend(TRACE))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["format"] == "rig-nvml-trace"
    assert lines[0]["synthetic"] is True  # recorded from a replay of the synthetic trace: the label carries over
    assert lines[0]["unsupported"]["1"]["ecc_volatile"] == "NVMLError_NotSupported"
    assert len(lines) - 1 >= 2 * 3  # >= 3 ticks x 2 devices
    assert lines[1]["values"]["power"] == 70_000
    replay = ReplayBackend(path)
    replay.init()
    assert replay.read(0, "power") == 70_000 and [d["index"] for d in replay.devices()] == [0, 1]
    with pytest.raises(NvmlNotSupported):
        replay.read(1, "pcie_rx")
