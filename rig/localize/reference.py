"""The truth: the same checkpoint run by Transformers in float64 on the CPU, and the fresh-input mode.

Each stack's error is measured against the float64 run of its own checkpoint (two checkpoints, two references), so
that a planted fault in one checkpoint shows up as a cross-stack error that neither stack's own rounding explains.

Transformers' gpt-oss keeps two steps in float32 even when the model is float64: RMSNorm casts its input to float32,
and the rotary embedding (YaRN) computes its inverse frequencies and angles in float32. The reference replaces both on
its own instance with float64 versions (YaRN's fractional ramp recomputed from the config), so the truth is float64
throughout; attention (eager, with sinks), the router and the experts (eager loop) already follow the model's dtype.

Fresh-input mode (PyTorch's "shadow" comparison, Polygraphy's reference inputs): while the reference runs, each hf
stack's own attention and MoE block of layer L is fed the reference's input to that block (the residual entering it,
cast to the stack's dtype, through the stack's own RMSNorm), so `L.attn.fresh` / `L.moe.fresh` hold each block's own
error, without what earlier layers accumulated.
"""

from __future__ import annotations

import math
import time
import types
from typing import Any

from rig.localize.capture import Hooks, Rows, Task, hook_transformers, keep, run_transformers


def load_reference(model_dir: str) -> tuple[Any, dict[str, Any]]:
    """(GptOssForCausalLM in float64 on the CPU with float64 RMSNorm and rotary, {"what": reason}) for model_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"
    )
    model = model.to("cpu").eval()
    rope = _float64_rotary(model)
    norms = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_norm_64, module)
            norms += 1
    info = {
        "model": model_dir,
        "dtype": "float64",
        "device": "cpu",
        "attention": "eager (with sinks)",
        "experts": "eager loop",
        "rms_norm": f"float64 ({norms} norms; Transformers' own casts to float32)",
        "rotary": rope,
        "load_s": round(time.perf_counter() - t0, 3),
    }
    return model, info


def _rms_norm_64(self: Any, hidden_states: Any) -> Any:
    import torch

    x = hidden_states.to(torch.float64)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight.to(torch.float64) * x


def _float64_rotary(model: Any) -> str:
    """Makes model.model.rotary_emb compute cos and sin in float64; returns how the frequencies were obtained."""
    import torch

    rotary = model.model.rotary_emb
    cfg = model.config
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type") == "yarn":
        inv_freq = yarn_inv_freq64(cfg, rope)
        how = "YaRN inverse frequencies recomputed in float64 (fractional ramp as configured)"
    else:
        inv_freq = rotary.inv_freq.to(torch.float64)
        how = f"{rope.get('rope_type', 'default')} inverse frequencies upcast from float32; angles in float64"
    scaling = float(rotary.attention_scaling)

    def forward(_self: Any, x: Any, position_ids: Any) -> tuple[Any, Any]:
        freqs = position_ids[..., None].to(torch.float64) * inv_freq.to(x.device)
        return (freqs.cos() * scaling).to(x.dtype), (freqs.sin() * scaling).to(x.dtype)

    rotary.forward = types.MethodType(forward, rotary)
    return how


def yarn_inv_freq64(cfg: Any, rope: dict[str, Any]) -> Any:
    """YaRN's inverse frequencies in float64 (the formula of Transformers' and OpenAI's reference, no float32)."""
    import torch

    dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    base = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    factor = float(rope["factor"])
    orig = float(rope.get("original_max_position_embeddings", cfg.max_position_embeddings))
    beta_fast, beta_slow = float(rope.get("beta_fast", 32.0)), float(rope.get("beta_slow", 1.0))

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def capture_reference(
    model: Any, tasks: list[Task], fresh: dict[str, Any] | None = None
) -> tuple[dict[tuple[str, int, int], Rows], dict[str, dict[tuple[str, int, int], Rows]]]:
    """Runs the float64 reference over every task with the capture hooks.

    fresh maps a label to an hf stack's model (same checkpoint): each of its attention and MoE blocks is run on the
    reference's inputs during the same pass. Returns (reference rows, {label: fresh rows}) with the fresh rows named
    `L.attn.fresh`, `L.router.fresh`, `L.experts.fresh`, `L.weights.fresh`, `L.moe.fresh`.
    """
    hooks = Hooks()
    hook_transformers(model, hooks)
    shadows = {label: _Shadow(model, other, hooks) for label, other in (fresh or {}).items()}
    try:
        rows = run_transformers(model, tasks, hooks, on_task=[s.split for s in shadows.values()])
    finally:
        hooks.remove()
        for s in shadows.values():
            s.remove()
    return rows, {label: s.rows for label, s in shadows.items()}


class _Shadow:
    """Pre-hooks on the reference's layers that run another model's blocks on the reference's inputs."""

    def __init__(self, ref: Any, other: Any, hooks: Hooks):
        import torch

        self.hooks = hooks
        self.other = other
        self.dtype = next(other.parameters()).dtype
        self.device = next(other.parameters()).device
        self.out: dict[str, Any] = {}
        self.rows: dict[tuple[str, int, int], Rows] = {}
        self._handles = []
        self._min = torch.finfo(self.dtype).min
        for i, layer in enumerate(ref.model.layers):
            self._handles.append(layer.register_forward_pre_hook(self._attn_hook(i), with_kwargs=True))
            self._handles.append(layer.post_attention_layernorm.register_forward_pre_hook(self._moe_hook(i)))

    def _cast(self, t: Any) -> Any:
        return t.to(device=self.device, dtype=self.dtype)

    def _attn_hook(self, i: int) -> Any:
        def hook(_mod: Any, args: Any, kwargs: dict[str, Any]) -> None:
            import torch

            hidden = args[0] if args else kwargs["hidden_states"]
            layer = self.other.model.layers[i]
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.is_floating_point():
                # the reference's mask holds float64's lowest value where masked: map it to the stack dtype's.
                mask = torch.where(mask < self._min, torch.full_like(mask, self._min), mask)
                mask = self._cast(mask)
            cos, sin = kwargs["position_embeddings"]
            with torch.inference_mode():
                x = layer.input_layernorm(self._cast(hidden))
                out = layer.self_attn(
                    hidden_states=x,
                    attention_mask=mask,
                    position_embeddings=(self._cast(cos), self._cast(sin)),
                    past_key_values=None,
                )[0]
            self.out[f"{i}.attn.fresh"] = keep(out, self.hooks.rows.to(self.device), out.dtype)

        return hook

    def _moe_hook(self, i: int) -> Any:
        def hook(_mod: Any, args: Any) -> None:
            import torch

            layer = self.other.model.layers[i]
            rows = self.hooks.rows.to(self.device)
            resid = args[0]
            resid = resid[0] if resid.dim() == 3 else resid
            x = self._cast(resid.index_select(0, rows.to(resid.device)))[None]
            with torch.inference_mode():
                h = layer.post_attention_layernorm(x)
                logits, weights, experts = layer.mlp.router(h.reshape(-1, h.shape[-1]))
                out = layer.mlp(h)
            out = out[0] if isinstance(out, tuple) else out
            every = torch.arange(len(rows), device=self.device)
            self.out[f"{i}.router.fresh"] = keep(logits, every, logits.dtype)
            self.out[f"{i}.weights.fresh"] = keep(weights, every, weights.dtype)
            self.out[f"{i}.experts.fresh"] = keep(experts, every, None)
            self.out[f"{i}.moe.fresh"] = keep(out, every, out.dtype)

        return hook

    def split(self, task: Task) -> None:
        for j, pos in enumerate(task.rows):
            self.rows[task.key(pos)] = {name: arr[j].copy() for name, arr in self.out.items()}
        self.out = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
