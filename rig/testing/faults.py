"""Planted faults: copies of a checkpoint with one known thing wrong, to prove that a verdict or a localizer finds it.

A verdict is only trustworthy if it says "diverged" for changes that alter the computation and "agree" for replicates.
Each fault here is a config or weight edit of a gpt-oss checkpoint directory (the tiny model in tests), written to a
new directory beside the files it does not touch, and recorded in `fault.json` there:

    plant(src, dst, Fault("sink_dropped", layer=0))               # layer 0's attention sinks to -inf (no sink)
    plant(src, dst, Fault("rope_theta", factor=1.5))               # YaRN's base theta x 1.5 (config)
    plant(src, dst, Fault("experts_per_token", value=1))           # top-k of the router (config)
    plant(src, dst, Fault("scale", layer=1, target="mlp.experts", factor=1.05))   # one layer's expert weights x 1.05
    plant(src, dst, Fault("ulp", tensor="model.layers.0.self_attn.o_proj.weight"))  # every element one ULP up
    plant(src, dst, Fault("router_bias", layer=0, value=0.5))     # one expert's router bias shifted
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError

WEIGHTS = "model.safetensors"
KINDS = ("sink_dropped", "rope_theta", "experts_per_token", "scale", "ulp", "router_bias")


@dataclass(frozen=True)
class Fault:
    """One planted fault. kind is one of KINDS; the other fields are read by that kind only."""

    kind: str
    layer: int = 0
    target: str = "mlp.experts"  # scale: the module path (inside the layer) whose tensors are scaled
    tensor: str = ""  # ulp: the full tensor name
    factor: float = 1.0  # rope_theta, scale: the multiplier
    value: float = 0.0  # experts_per_token: the new k; router_bias: the shift (added to expert 0's bias)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for tests and reports."""
        what = {
            "sink_dropped": f"layer {self.layer}: attention sinks removed",
            "rope_theta": f"rope theta x {self.factor}",
            "experts_per_token": f"experts per token = {int(self.value)}",
            "scale": f"layer {self.layer} {self.target} x {self.factor}",
            "ulp": f"{self.tensor}: every element one ULP up",
            "router_bias": f"layer {self.layer}: router bias of expert 0 + {self.value}",
        }
        return what[self.kind]


def plant(src: str | Path, dst: str | Path, fault: Fault) -> Path:
    """Copies checkpoint src to dst with the fault applied; returns dst. Refuses an unknown kind or tensor."""
    if fault.kind not in KINDS:
        raise UserError(f"unknown fault {fault.kind!r}; known: {', '.join(KINDS)}")
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if fault.kind in ("rope_theta", "experts_per_token"):
        _edit_config(dst, fault)
    else:
        _edit_weights(dst, fault)
    (dst / "fault.json").write_text(json.dumps({**asdict(fault), "description": fault.describe()}, indent=1) + "\n")
    return dst


def _edit_config(dst: Path, fault: Fault) -> None:
    path = dst / "config.json"
    config = json.loads(path.read_text())
    if fault.kind == "rope_theta":
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if "rope_theta" in rope:
            rope["rope_theta"] = float(rope["rope_theta"]) * fault.factor
        if "rope_theta" in config:
            config["rope_theta"] = float(config["rope_theta"]) * fault.factor
    else:
        config["num_experts_per_tok"] = int(fault.value)
        config["experts_per_token"] = int(fault.value)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _edit_weights(dst: Path, fault: Fault) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = dst / WEIGHTS
    tensors = load_file(path)
    prefix = f"model.layers.{fault.layer}."
    if fault.kind == "sink_dropped":
        names = [prefix + "self_attn.sinks"]
        for n in names:
            tensors[n] = torch.full_like(tensors[_known(tensors, n)], float("-inf"))
    elif fault.kind == "scale":
        names = [n for n in tensors if n.startswith(prefix + fault.target)]
        if not names:
            raise UserError(f"fault scale: no tensor under {prefix + fault.target!r}")
        for n in names:
            tensors[n] = (tensors[n].float() * fault.factor).to(tensors[n].dtype)
    elif fault.kind == "ulp":
        t = tensors[_known(tensors, fault.tensor)]
        tensors[fault.tensor] = torch.nextafter(t, torch.full_like(t, float("inf")))
    elif fault.kind == "router_bias":
        n = _known(tensors, prefix + "mlp.router.bias")
        bias = tensors[n].clone()
        bias[0] = bias[0] + fault.value
        tensors[n] = bias
    save_file(tensors, path, metadata={"format": "pt"})


def _known(tensors: dict[str, Any], name: str) -> str:
    if name not in tensors:
        raise UserError(f"fault: no tensor {name!r} in the checkpoint")
    return name
