"""Builds nvml_trace_synthetic.jsonl: an NVML trace made from NVML's field definitions, not recorded on a GPU.

No GPU was at hand when the telemetry tests were written, so the replay tests run on this synthetic trace. Its
numbers are chosen so the right answers are known exactly; replace or complement it with a trace recorded on real
hardware by scripts/gpu_smoke.sh (`python -m rig.telemetry record-trace PATH`).

Two devices, 4.0 s at 20 Hz. A reading at time t holds the power of the interval (t - 0.05, t] and the energy
counter at t, so the counter is the exact integral of the power:
  device 0 (all fields): 70 W until 1.0 s, 650 W until 3.0 s, 120 W until 4.0 s;
                         clock events: gpu_idle before 1 s, none 1-2 s, sw_power_cap 2-3 s, gpu_idle+sw_thermal after.
  device 1: 60 W, 300 W, 100 W over the same spans; its energy counter resets just after 2.0 s; PCIe throughput and
            volatile ECC counts are unsupported (NVMLError_NotSupported); memory "reserved" is absent (v1 memory).
Run: python tests/data/make_synthetic_trace.py   (rewrites the .jsonl beside it)
"""

import json
from pathlib import Path

RATE_HZ, SECONDS = 20, 4.0
DT_S = 1.0 / RATE_HZ
POWER_W = {0: (70, 650, 120), 1: (60, 300, 100)}
UNSUPPORTED = {
    "1": {
        "pcie_tx": "NVMLError_NotSupported",
        "pcie_rx": "NVMLError_NotSupported",
        "ecc_volatile": "NVMLError_NotSupported",
    }
}
RESET_AFTER_S = {1: 2.0}


def span(t_s: float) -> int:
    """0 idle, 1 busy, 2 tail, for the interval ending at t_s."""
    mid = t_s - DT_S / 2
    return 0 if mid < 1.0 else (1 if mid < 3.0 else 2)


def reasons(t_s: float) -> int:
    mid = t_s - DT_S / 2
    if mid < 1.0:
        return 0x1
    if mid < 2.0:
        return 0x0
    return 0x4 if mid < 3.0 else 0x1 | 0x20


def main() -> None:
    header = {
        "format": "rig-nvml-trace",
        "version": 1,
        "synthetic": True,
        "note": "built from NVML field definitions, not recorded on a GPU",
        "recorded_at": None,
        "rate_hz": RATE_HZ,
        "driver_version": "synthetic",
        "nvml_version": "synthetic",
        "cuda_driver_version": "synthetic",
        "devices": [
            {
                "index": i,
                "uuid": f"GPU-5e7e71c0-0000-4000-8000-00000000000{i}",
                "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
                "name": "SYNTHETIC (H100 80GB HBM3 field layout)",
                "compute_capability": "9.0",
                "memory_total_mib": 81559.0,
            }
            for i in (0, 1)
        ],
        "fields": [
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
        ],
        "unsupported": UNSUPPORTED,
    }
    lines = [header]
    energy_mj = {0: 123_456_789, 1: 987_654_321}
    n = round(SECONDS * RATE_HZ)
    for k in range(n + 1):
        t = round(k * DT_S, 6)
        for dev in (0, 1):
            s = span(t) if k else 0
            p_w = POWER_W[dev][s]
            if k:
                if dev in RESET_AFTER_S and round((k - 1) * DT_S, 6) == RESET_AFTER_S[dev]:
                    energy_mj[dev] = 0
                energy_mj[dev] += round(p_w * DT_S * 1000)
            values = {
                "power": p_w * 1000,
                "energy": energy_mj[dev],
                "sm_clock": (345, 1980, 1755)[s],
                "mem_clock": (1593, 2619, 2619)[s],
                "temp": (31, 58, 64)[s] + dev,
                "utilization": [(0, 100, 5)[s], (0, 43, 1)[s]],
                "memory": [(512, 70_000, 70_000)[s] * 2**20, None if dev else 460 * 2**20],
                "clock_event_reasons": reasons(t) if k else 0x1,
            }
            if dev == 0 and k % RATE_HZ == 0:  # the slow fields, once a second
                values.update(
                    {"pcie_tx": (10, 2_400_000, 800)[s], "pcie_rx": (12, 9_000_000, 900)[s], "ecc_volatile": [0, 0]}
                )
            lines.append({"t": t, "device": dev, "values": values})
    out = Path(__file__).with_name("nvml_trace_synthetic.jsonl")
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {out} ({len(lines) - 1} readings)")


if __name__ == "__main__":
    main()
