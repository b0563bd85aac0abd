"""Telemetry and environment: what the hardware did while the tokens were made, and what the run ran on.

    nvml.py      NVML access (the real backend and a replay of recorded readings), typed NVML errors
    recorder.py  the background sampler (GPU and host), phase markers
    results.py   energy, power and J/token per phase, the manifest summary, the Parquet files
    envinfo.py   the environment manifest (GPU, driver, CUDA, torch flags, packages, numerics variables), redaction

`python -m rig.telemetry record-trace PATH` records a trace on a GPU machine. Nothing here imports torch or pynvml at
import time.
"""
