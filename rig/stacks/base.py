"""The Stack interface: what every inference stack must give the rig.

A stack has three jobs. `generate` turns prompts (token IDs) into generated tokens, each with its raw log-probability
(log-softmax of the logits before temperature, top-k or top-p) and its top-K alternatives. `score` teacher-forces given
continuations and returns the same record shape. `describe` says what the stack actually resolved at load time, each
choice with its reason, because silent fallbacks (MXFP4 dequantized to bf16, a different attention backend) are the
commonest cause of divergence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.errors import UserError
from rig.run.spec import RunSpec
from rig.run.suite import Prompt


@dataclass
class Request:
    """One sequence to produce: a prompt and a sample index; for scoring, the continuation to teacher-force."""

    prompt: Prompt
    sample: int = 0
    continuation: np.ndarray | None = None


@dataclass
class SequenceResult:
    """Per generated (or scored) token: id, raw logprob (nats), top-K ids and logprobs (best first)."""

    prompt_id: str
    sample: int
    token_ids: np.ndarray  # int32 [n]
    logprobs: np.ndarray  # float32 [n]
    topk_ids: np.ndarray  # int32 [n, K]
    topk_logprobs: np.ndarray  # float32 [n, K]
    finish_reason: str  # "stop" or "length" ("scored" for teacher-forced rows)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_ids = np.asarray(self.token_ids, dtype=np.int32)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32)
        n = len(self.token_ids)
        self.topk_ids = np.asarray(self.topk_ids, dtype=np.int32).reshape(n, -1) if n else np.zeros((0, 0), np.int32)
        self.topk_logprobs = np.asarray(self.topk_logprobs, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, 0))


class Stack(ABC):
    """Base class: holds the spec and the record of resolved choices.

    The class attributes are the facts the runner needs about a stack, so that no caller asks "is this openai?".
    """

    name: str = "base"
    local_model: bool = True  # reads model files from disk: the manifest records their sha256
    gpu_telemetry: bool = True  # computes on this machine: telemetry samples its GPUs through NVML
    in_process_torch: bool = True  # runs torch in the rig's own process: the environment records that torch
    requires: tuple[str, ...] = ()  # modules that must be importable for load() (checked first, for one clear line)

    @classmethod
    def check_installed(cls) -> None:
        """Raises UserError naming the extra to install when one of `requires` is missing (imports nothing).

        A stack that needs packages (hf: torch; vllm: vllm, which runs torch in its worker) is also checked for a
        torchvision built for another torch, which breaks loading any model (rig.stacks.torch_companion_hint).
        """
        import importlib.util

        from rig.stacks import install_hint, torch_companion_hint

        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                raise UserError(install_hint(cls.name, module))
        if cls.requires and (hint := torch_companion_hint()):
            raise UserError(hint)

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self._resolved: dict[str, dict[str, Any]] = {}
        self._extra: dict[str, Any] = {}

    def resolve(self, key: str, value: Any, reason: str) -> Any:
        """Record an automatic (or requested) choice with its reason; returns value."""
        self._resolved[key] = {"value": value, "reason": reason}
        return value

    @abstractmethod
    def load(self) -> None:
        """Load the model / start the engine / check the endpoint."""

    @abstractmethod
    def generate(self, requests: list[Request]) -> list[SequenceResult]:
        """One batch of generations, in request order."""

    @abstractmethod
    def score(self, requests: list[Request]) -> list[SequenceResult]:
        """Teacher-forced scoring of each request's continuation, in request order."""

    def submit(self, requests: list[Request], kind: str = "generate") -> Callable[[], list[SequenceResult]]:
        """Start one batch (`kind` "generate" or "score") and return the function that waits for its results.

        The runner writes the previous batch between the two calls. A stack whose work runs in another process
        (vLLM's worker) sends the batch here, so that writing overlaps the engine's work; an in-process stack has
        nothing to overlap and does the whole batch when the function is called (this default).
        """
        work = self.score if kind == "score" else self.generate
        return lambda: work(requests)

    def describe(self) -> dict[str, Any]:
        return {"stack": self.name, "resolved": dict(self._resolved), **self._extra}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model or engine."""

    def __enter__(self) -> Stack:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finish_reason(token_ids: np.ndarray, stop_ids: tuple[int, ...] | list[int]) -> str:
    return "stop" if len(token_ids) and int(token_ids[-1]) in set(stop_ids) else "length"


def truncate_at_stop(token_ids: np.ndarray, stop_ids: tuple[int, ...] | list[int]) -> int:
    """Length of the sequence up to and including the first stop token (all of it when none)."""
    hits = np.nonzero(np.isin(token_ids, np.asarray(list(stop_ids))))[0]
    return int(hits[0]) + 1 if len(hits) else len(token_ids)
