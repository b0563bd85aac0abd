"""The vLLM side of `rig layers`: hooks inside vLLM's own model, in a child process that owns the engines.

    python -m rig.localize.vllm_capture JOB.pkl OUT.pkl

The parent (`start` / `VllmCapture.wait`) never imports vLLM. The child gets the environment switches before vLLM is
imported (VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the engine core, and so the model, in this process), builds each
job's engine with the same defaults as the rig's vLLM stack (`rig.stacks._vllm_worker._Engine`, plus enforce_eager so
that module hooks fire), reaches the model through `LLM.collective_rpc` (the worker's `model_runner.get_model()`),
registers forward hooks, and prefills each prefix once (max_tokens=1). One child serves every job in turn: the first
engine pays vLLM's import and start-up, each later one (after `cleanup_dist_env_and_memory`) about 3 s on 2 cores.

What is hooked in vllm/model_executor/models/gpt_oss.py, on flat [tokens, hidden] tensors:
- the first decoder layer's pre-hook: its `positions` argument, which maps the rows of each (possibly chunked)
  forward pass to positions in the prefix, and its input, the embedding rows;
- `layers[L].attn` (OAIAttention: o_proj output), `layers[L].mlp.router` (GateLinear logits),
  `layers[L].mlp` (MLPBlock: the MoE output), `model.norm` (its first output);
- `layers[L].mlp.experts.router.select_experts`, wrapped on the instance: the experts and weights vLLM's router chose;
- `layers[L]`: TransformerBlock returns (mlp_output, residual) and leaves the residual add to the next RMSNorm (fused
  add + norm), so the residual stream after layer L is rebuilt as mlp_output + residual in the activation dtype: the
  correctly rounded sum, which is what both the fused kernel and Transformers' `residual + hidden_states` store.
The logits of the kept rows come from vLLM's own `compute_logits` (its lm_head and logits processor) on the captured
final-norm rows.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import UserError

LOAD_TIMEOUT_S = 1800.0


# ---- parent side --------------------------------------------------------------------------------------------------
@dataclass
class VllmJob:
    """One engine's work: LLM() keyword arguments, environment additions, the tasks (rig.localize.capture.Task)."""

    label: str
    engine_kwargs: dict[str, Any]
    env: dict[str, str]
    reasons: dict[str, str]
    tasks: list[Any]


def plan_job(label: str, spec: Any, tasks: list[Any]) -> VllmJob:
    """A VllmJob for a vLLM RunSpec: the rig's engine plan (rig.stacks.vllm.engine_plan) with eager execution forced
    and a context length that fits the longest prefix when the spec gives none."""
    from rig.stacks.vllm import engine_plan

    kwargs, env, reasons = engine_plan(spec)
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        if int(kwargs.get(key) or 1) > 1:
            raise UserError(f"{label}: rig layers hooks vLLM's model in one worker process; {key} {kwargs[key]} > 1")
    if kwargs.get("enforce_eager") is False or "enforce_eager" not in kwargs:
        reasons["enforce_eager"] = (
            "rig layers: module hooks fire only in eager mode (compiled graphs and CUDA graphs bypass them); numerics "
            "of a compiled run can differ from this capture"
        )
    kwargs["enforce_eager"] = True
    longest = max((len(t.token_ids) for t in tasks), default=1) + 1
    if not kwargs.get("max_model_len"):
        kwargs["max_model_len"] = max(256, -(-longest // 256) * 256)
        reasons["max_model_len"] = "rig layers: the longest prefix, rounded up to 256 (the run's spec set none)"
    elif kwargs["max_model_len"] < longest:
        raise UserError(
            f"{label}: a prefix of {longest} tokens exceeds the run's max_model_len {kwargs['max_model_len']}"
        )
    return VllmJob(label, kwargs, env, reasons, list(tasks))


class VllmCapture:
    """A running capture child; `wait()` returns one result per job: {"rows", "info"}."""

    def __init__(self, jobs: list[VllmJob]):
        self.jobs = jobs
        self._dir = tempfile.TemporaryDirectory(prefix="rig-layers-")
        d = Path(self._dir.name)
        self._job, self._out = d / "job.pkl", d / "out.pkl"
        env = {}
        for job in jobs:
            env.update(job.env)
        with open(self._job, "wb") as f:
            pickle.dump({"jobs": [job.__dict__ for job in jobs]}, f)
        self.t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rig.localize.vllm_capture", str(self._job), str(self._out)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=sys.__stderr__.fileno() if sys.__stderr__ else None,  # vLLM's prints never mix into stdout
        )

    def wait(self, timeout_s: float = LOAD_TIMEOUT_S) -> list[dict[str, Any]]:
        try:
            code = self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the vLLM capture did not finish within {timeout_s:.0f} s") from None
        try:
            if not self._out.exists():
                raise RuntimeError(f"the vLLM capture process died (exit code {code}) before writing its result")
            with open(self._out, "rb") as f:
                result = pickle.load(f)
        finally:
            self._dir.cleanup()
        if "error" in result:
            kind, message = result["error"]
            if kind == "user":
                raise UserError(f"vllm: {message}")
            raise RuntimeError(f"the vLLM capture failed: {message}")
        wall = time.perf_counter() - self.t0
        for r in result["results"]:
            r["info"]["process_wall_s"] = round(wall, 3)
        return result["results"]

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)


# ---- child side ---------------------------------------------------------------------------------------------------
class _Hooks:
    """Hooks on vLLM's GptOssForCausalLM that keep the rows of the wanted positions (see the module docstring)."""

    def __init__(self, model: Any):
        self.model = model
        self.want: dict[int, int] = {}  # prefix row -> slot in the output arrays
        self.out: dict[str, np.ndarray] = {}
        self.sel: tuple[Any, Any] | None = None  # (indices into this pass's rows, slots)
        self.seen: set[int] = set()  # slots some pass has reached
        self.handles: list[Any] = []
        self.patched: list[tuple[Any, Any]] = []
        self.experts_source = "vLLM's router (select_experts)"
        inner = model.model
        layers = list(inner.layers)[inner.start_layer : inner.end_layer]
        self.handles.append(layers[0].register_forward_pre_hook(self._positions))
        for i, layer in enumerate(layers):
            self._add(layer.attn, f"{i}.attn")
            self._add(layer.mlp.router, f"{i}.router")
            self._add(layer.mlp, f"{i}.moe")
            self._add(layer, f"{i}.resid", lambda o: o[0] + o[1] if o[1] is not None else o[0])
            self._wrap_router(layer.mlp, i)
        self._add(inner.norm, "norm", lambda o: o[0] if isinstance(o, tuple) else o)

    def _positions(self, _mod: Any, args: Any) -> None:
        import torch

        positions = args[1]
        idx, slots = [], []
        pos = positions.tolist()
        first: dict[int, int] = {}
        for j, p in enumerate(pos):
            first.setdefault(int(p), j)
        for row, slot in self.want.items():
            if row in first:
                idx.append(first[row])
                slots.append(slot)
        self.sel = (torch.tensor(idx, dtype=torch.long, device=positions.device), slots) if idx else None
        self.seen.update(slots)
        self._store("embed", args[0])  # the first layer's input is the embedding (it runs before this hook)

    def _store(self, name: str, t: Any) -> None:
        if self.sel is None:
            return
        idx, slots = self.sel
        rows = t.index_select(0, idx).detach()
        rows = (rows.float() if rows.is_floating_point() else rows).cpu().numpy()
        if name not in self.out:
            dtype = np.float32 if rows.dtype.kind == "f" else np.int64
            self.out[name] = np.zeros((len(self.want), *rows.shape[1:]), dtype)
        self.out[name][slots] = rows

    def _add(self, module: Any, name: str, pick: Any = lambda o: o) -> None:
        def hook(_mod: Any, _args: Any, output: Any) -> None:
            self._store(name, pick(output))

        self.handles.append(module.register_forward_hook(hook))

    def _wrap_router(self, mlp: Any, i: int) -> None:
        router = getattr(getattr(mlp, "experts", None), "router", None)
        original = getattr(router, "select_experts", None)
        if original is None:
            self.experts_source = "top-k of the captured router logits (vLLM's router could not be wrapped)"
            return

        def select_experts(*args: Any, **kwargs: Any) -> Any:
            weights, ids = original(*args, **kwargs)
            self._store(f"{i}.weights", weights)
            self._store(f"{i}.experts", ids)
            return weights, ids

        router.select_experts = select_experts
        self.patched.append((router, "select_experts"))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for obj, name in self.patched:
            obj.__dict__.pop(name, None)


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    import gc

    import torch
    from vllm import SamplingParams

    from rig.stacks._vllm_worker import _Engine, describe_engine

    cfg = {"engine_kwargs": job["engine_kwargs"], "env": job["env"], "reasons": job["reasons"], "logprobs": 0}
    t0 = time.perf_counter()
    engine = _Engine(cfg)
    start_s = time.perf_counter() - t0
    described = describe_engine(engine)
    holder: dict[str, Any] = {}

    def grab(worker: Any) -> int:
        holder["model"] = worker.model_runner.get_model()
        return 0

    engine.llm.collective_rpc(grab)
    model = holder["model"]
    hooks = _Hooks(model)
    params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False)
    rows: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}
    t1 = time.perf_counter()
    try:
        for task in job["tasks"]:
            positions = list(task.rows)
            hooks.want = {task.rows[p]: j for j, p in enumerate(positions)}
            hooks.out, hooks.seen = {}, set()
            engine.llm.generate([{"prompt_token_ids": list(task.token_ids)}], params, use_tqdm=False)
            missing = [r for r, slot in hooks.want.items() if slot not in hooks.seen]
            if missing:
                raise RuntimeError(f"vLLM's forward pass never reached rows {missing[:5]} of {task.prompt_id}")
            with torch.inference_mode():
                normed = torch.from_numpy(hooks.out["norm"]).to(dtype=next(model.parameters()).dtype)
                logits = model.compute_logits(normed.to(next(model.parameters()).device))
            hooks.out["logits"] = logits.float().cpu().numpy()
            for j, pos in enumerate(positions):
                rows[task.key(pos)] = {name: arr[j].copy() for name, arr in hooks.out.items()}
        capture_s = time.perf_counter() - t1
    finally:
        hooks.remove()
        holder.clear()
        engine.shutdown()
        del engine, model
        gc.collect()
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    resolved = described["resolved"]
    resolved["experts_chosen"] = {"value": hooks.experts_source, "reason": "how the capture read the router's choice"}
    resolved["residual"] = {
        "value": "mlp_output + residual (rebuilt)",
        "reason": "vLLM fuses the residual add into the next RMSNorm; the sum is rebuilt in the activation dtype",
    }
    return {
        "rows": rows,
        "info": {
            "stack": "vllm",
            "resolved": resolved,
            "versions": described["extra"].get("versions"),
            "engine_kwargs": {k: v for k, v in job["engine_kwargs"].items() if k != "logits_processors"},
            "engine_start_s": round(start_s, 3),
            "capture_s": round(capture_s, 3),
        },
    }


def main(argv: list[str]) -> None:
    job_path, out_path = argv
    with open(job_path, "rb") as f:
        jobs = pickle.load(f)["jobs"]
    for job in jobs:
        for name, value in job["env"].items():
            os.environ[name] = str(value)
    try:
        result: dict[str, Any] = {"results": [_run_job(job) for job in jobs]}
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        from rig.stacks._vllm_worker import _error

        _, kind, message = _error(exc)
        if kind != "user":
            traceback.print_exc()
        result, code = {"error": (kind, message)}, 1
    tmp = Path(out_path).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, out_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skips the interpreter-exit destructors that abort after vLLM ran


if __name__ == "__main__":
    main(sys.argv[1:])
