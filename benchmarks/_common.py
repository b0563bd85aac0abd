"""What every benchmark here shares: the machine it ran on, and A/B pairs timed side by side.

A figure like "4% overhead" means nothing without the machine and its load: the same code read 4% on a busy machine
and 37% on an idle one, because a slow baseline hides the rig's fixed costs. So each benchmark prints

- the machine: CPU model, cores usable by this process, torch threads where torch is loaded, and the load average
  before and after the measurement;
- the bare baseline's own per-step time, so that a reader can see what the overhead is a share of;
- the overhead taken pair by pair: rig and bare alternate (A B A B ...), each pair gives a ratio, and the median of
  those ratios is the figure. Pairs that ran back to back saw the same machine, so load that drifts over minutes
  cancels within a pair instead of landing on one side.

`python benchmarks/_common.py` prints the machine block alone.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rig.telemetry.envinfo import cpu_model  # noqa: E402  (light: no torch, no stack)


def machine() -> dict[str, Any]:
    """The facts a benchmark figure depends on, read now."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu_model() or platform.machine(),
        "cores": cores,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def print_machine(before: dict[str, Any], after: dict[str, Any] | None = None) -> None:
    line = f"machine: {before['cpu']}, {before['cores']} cores, python {before['python']}"
    if "torch" in before:
        line += f", torch {before['torch']} on {before['torch_threads']} threads"
    print(line)
    load = f"load average (1, 5, 15 min): before {before['load_avg']}"
    if after is not None:
        load += f", after {after['load_avg']}"
    print(load)
    if before["load_avg"][0] > 0.5 * before["cores"]:
        print("warning: the machine was busy before the run; overhead shares read low when the baseline is slowed")


@dataclass
class Pairs:
    """Wall seconds of A (the rig) and B (bare), timed in alternating pairs."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def overheads_pct(self) -> list[float]:
        return [100.0 * (x - y) / y for x, y in zip(self.a, self.b, strict=True)]

    def summary(self) -> dict[str, Any]:
        ov = self.overheads_pct
        return {
            "pairs": len(ov),
            "a_median_s": round(statistics.median(self.a), 4),
            "b_median_s": round(statistics.median(self.b), 4),
            "overhead_pct_median_of_pairs": round(statistics.median(ov), 2),
            "overhead_pct_q1": round(statistics.quantiles(ov, n=4)[0], 2) if len(ov) > 1 else ov[0],
            "overhead_pct_q3": round(statistics.quantiles(ov, n=4)[2], 2) if len(ov) > 1 else ov[0],
            "overhead_pct_min": round(min(ov), 2),
            "overhead_pct_max": round(max(ov), 2),
            "overhead_pct_per_pair": [round(x, 2) for x in ov],
        }


def ab_pairs(a: Callable[[], Any], b: Callable[[], Any], pairs: int, *, warmup: bool = True) -> Pairs:
    """Time `a` and `b` alternately; the order inside a pair flips every pair (A B, B A, ...) so neither side
    always runs second, on a warmer cache."""
    if warmup:
        a(), b()
    out = Pairs()
    for i in range(pairs):
        order = ((a, out.a), (b, out.b)) if i % 2 == 0 else ((b, out.b), (a, out.a))
        for fn, sink in order:
            t = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t)
    return out


if __name__ == "__main__":
    print_machine(machine())
