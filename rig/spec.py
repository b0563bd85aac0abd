"""What to run: the run specification, its canonical hash, and one translator per stack.

Two runs can only be compared when each says exactly what was asked of the stack. `RunSpec` is that request: a frozen
dataclass built from a TOML file and/or command-line flags (flags win), rejected field by field when unknown, hashed
from its canonical JSON so that two run directories can tell whether they asked for the same thing.

Each SamplingSpec field says which stacks honour it. The translators (`to_transformers`, `to_vllm`, `to_openai`) are
the only places that map the rig's fields onto a stack's own names, so a reader can audit them side by side.

    spec = load_spec("spec.toml", {"stack": "vllm", "sampling.temperature": 1.0})
    spec.hash()   # 16 hex digits of sha256 over the canonical JSON
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError

# Harmony's stop tokens for a whole answer: <|return|> and <|call|>. <|end|> (200007) only closes the analysis message.
HARMONY_RETURN = 200002
HARMONY_CALL = 200012
DEFAULT_STOP_TOKEN_IDS = (HARMONY_RETURN, HARMONY_CALL)

DTYPES = ("bfloat16", "float16", "float32")
QUANTIZATIONS = ("auto", "mxfp4", "dequantize", "none")
STACKS = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class SamplingSpec:
    """How tokens are chosen. Every field is passed explicitly to every stack (no stack default leaks in).

    temperature     all stacks. 0 means greedy.
    top_p           all stacks. 1.0 disables.
    top_k           all stacks. 0 disables (the gpt-oss generation config would otherwise apply top_k=50 in hf).
    max_new_tokens  all stacks.
    stop_token_ids  all stacks; harmony's <|return|> and <|call|> by default. The stop token itself is recorded.
    seed            all stacks: per request in vllm and openai, per batch in hf; keys the coupled noise.
    samples         samples per prompt (all stacks).
    coupled         temperature > 0 only: shared Gumbel noise keyed by (seed, prompt id, sample, position), applied
                    identically by hf and vllm, so equal logits give equal tokens. None means "on when sampling".
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = DEFAULT_STOP_TOKEN_IDS
    seed: int = 0
    samples: int = 1
    coupled: bool | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def use_coupled(self) -> bool:
        """Whether coupled (shared-noise) sampling applies: on by default whenever the run samples."""
        if self.greedy:
            return False
        return True if self.coupled is None else bool(self.coupled)


@dataclass(frozen=True)
class RunSpec:
    """One stack configuration. Fields that a stack does not use are still recorded (and hashed).

    engine_args holds extra stack arguments as sorted (name, value) pairs, e.g. vLLM's kv_cache_dtype.
    api_key_env names the environment variable holding an endpoint's key; the key itself is never stored.
    """

    stack: str = "hf"
    model: str = ""
    revision: str | None = None
    dtype: str = "bfloat16"
    quantization: str = "auto"
    attention: str = "auto"
    experts: str = "auto"
    device: str = "auto"
    logprobs: int = 20
    batch_size: int = 8
    max_model_len: int | None = None
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    engine_args: tuple[tuple[str, Any], ...] = ()
    base_url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The canonical dict: plain JSON types, engine_args as a sorted mapping."""
        d = dataclasses.asdict(self)
        d["sampling"]["stop_token_ids"] = list(self.sampling.stop_token_ids)
        d["engine_args"] = dict(self.engine_args)
        return d

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """16 hex digits of sha256 over the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "spec") -> RunSpec:
        """Build from a (possibly partial) dict; unknown fields are rejected by name."""
        d = dict(d)
        sampling = d.pop("sampling", {}) or {}
        _reject_unknown(d, {f.name for f in dataclasses.fields(cls)} - {"sampling"}, source)
        _reject_unknown(sampling, {f.name for f in dataclasses.fields(SamplingSpec)}, f"{source} [sampling]")
        if "stop_token_ids" in sampling:
            sampling["stop_token_ids"] = tuple(int(t) for t in sampling["stop_token_ids"])
        if "engine_args" in d:
            ea = d["engine_args"]
            items = ea.items() if isinstance(ea, dict) else ea
            d["engine_args"] = tuple(sorted((str(k), v) for k, v in items))
        try:
            return cls(sampling=SamplingSpec(**sampling), **d)
        except TypeError as exc:  # wrong type for a field
            raise UserError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


def _reject_unknown(d: dict[str, Any], known: set[str], source: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _validate(spec: RunSpec) -> None:
    s = spec.sampling
    checks = [
        (spec.stack in STACKS, f"stack must be one of {', '.join(STACKS)}, not {spec.stack!r}"),
        (spec.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, not {spec.dtype!r}"),
        (spec.quantization in QUANTIZATIONS, f"quantization must be one of {', '.join(QUANTIZATIONS)}"),
        (0 <= spec.logprobs <= 20, "logprobs (top-K) must be between 0 and 20"),
        (spec.batch_size >= 1, "batch_size must be at least 1"),
        (spec.concurrency >= 1, "concurrency must be at least 1"),
        (s.temperature >= 0, "temperature must be >= 0"),
        (0 < s.top_p <= 1, "top_p must be in (0, 1]"),
        (s.top_k >= 0, "top_k must be >= 0 (0 disables)"),
        (s.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
        (s.samples >= 1, "samples must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"invalid spec: {message}")


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """RunSpec from an optional TOML file, then overrides ("sampling.x" keys address the sampling table).

    Overrides whose value is None are ignored, so unset CLI flags leave the file's values alone.
    """
    data: dict[str, Any] = {}
    source = "spec"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: spec file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML ({exc})") from None
    data.setdefault("sampling", {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("sampling."):
            data["sampling"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return RunSpec.from_dict(data, source=source)


def parse_engine_args(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`NAME=VALUE` strings to a dict; VALUE is parsed as JSON when it can be (numbers, true, null), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--engine-arg {item!r}: expected NAME=VALUE")
        name, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[name.strip()] = value
    return out


# ---- translators: the only places that speak a stack's own parameter names ---------------------------------------


def to_transformers(spec: RunSpec) -> dict[str, Any]:
    """GenerationConfig fields for Transformers. Every sampling field is explicit: the gpt-oss generation config on the
    hub sets do_sample=True and an unset top_k resolves to 50, so nothing may be left to defaults.

    Coupled sampling runs Transformers in greedy mode over logits that the rig's processor has already scaled and
    perturbed, so do_sample is False there too.
    """
    s = spec.sampling
    native_sampling = not s.greedy and not s.use_coupled
    return {
        "do_sample": native_sampling,
        "temperature": s.temperature if native_sampling else 1.0,
        "top_k": (s.top_k or None) if native_sampling else None,
        "top_p": s.top_p if native_sampling else 1.0,
        "min_p": None,
        "typical_p": 1.0,
        "repetition_penalty": 1.0,
        "num_beams": 1,
        "max_new_tokens": s.max_new_tokens,
        "min_new_tokens": 0,
        "eos_token_id": list(s.stop_token_ids),
    }


def to_vllm(spec: RunSpec, seed: int | None = None) -> dict[str, Any]:
    """SamplingParams fields for vLLM. Stops are handled by token ID (the rig's tokens are the harmony tokens, not a
    tokenizer's EOS), logprobs are raw (vLLM's default logprobs_mode). Coupled sampling asks vLLM for greedy decoding
    over logits that the rig's logits processor has already scaled and perturbed.
    """
    s = spec.sampling
    native = not s.greedy and not s.use_coupled
    return {
        "n": 1,
        "temperature": s.temperature if native else 0.0,
        "top_p": s.top_p if native else 1.0,
        "top_k": (s.top_k or -1) if native else -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": seed if native else None,
        "max_tokens": s.max_new_tokens,
        "stop_token_ids": list(s.stop_token_ids),
        "ignore_eos": True,
        "logprobs": spec.logprobs,
        "detokenize": False,
        "skip_special_tokens": False,
    }


def to_openai(spec: RunSpec, seed: int | None = None) -> dict[str, Any]:
    """Body fields for an OpenAI-compatible /v1/completions request (vLLM's extensions where named)."""
    s = spec.sampling
    body: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_new_tokens,
        "logprobs": spec.logprobs,
        "seed": seed,
        # vLLM extensions (ignored by servers that do not know them)
        "top_k": s.top_k or -1,
        "stop_token_ids": list(s.stop_token_ids),
        "ignore_eos": True,
        "skip_special_tokens": False,
        "return_tokens_as_token_ids": True,
    }
    return body
