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
from rig.harmony import STOP_TOKEN_IDS as DEFAULT_STOP_TOKEN_IDS
from rig.stacks import stack_names

DTYPES = ("bfloat16", "float16", "float32")
QUANTIZATIONS = ("auto", "mxfp4", "dequantize", "none")
STACKS = stack_names()


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None = "",
    factory: Any = None,
    **cli: Any,
) -> Any:
    """A spec field with its command-line option: help text, choices and flag name live on the field itself, and
    rig.cli.options generates `rig run` / `rig score` options from them, so a field cannot drift from its flag.

    flag "" derives `--field-name` from the field's name; flag None keeps the field out of the command line (TOML only).
    Extra keywords (multiple, metavar, secondary) go to the click option.
    """
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SamplingSpec:
    """How tokens are chosen. Every field is passed explicitly to every stack (no stack default leaks in); each field's
    help says which stacks honour it."""

    temperature: float = option(0.0, "0 is greedy. All stacks.")
    top_p: float = option(1.0, "1.0 disables. All stacks.")
    top_k: int = option(0, "0 disables (gpt-oss's generation config would otherwise apply 50 in hf). All stacks.")
    max_new_tokens: int = option(64, "Tokens to generate per sequence. All stacks.")
    stop_token_ids: tuple[int, ...] = option(
        DEFAULT_STOP_TOKEN_IDS,
        "Stop token ID, repeatable; harmony's <|return|> and <|call|> by default. The stop token is recorded.",
        flag="--stop-token-id",
        multiple=True,
    )
    seed: int = option(0, "Sampling seed: per request in vllm and openai, per batch in hf; keys the coupled noise.")
    samples: int = option(1, "Samples per prompt. All stacks.")
    coupled: bool | None = option(
        None,
        "Shared Gumbel noise keyed by (seed, prompt id, sample, position) when sampling, applied identically by hf and "
        "vllm, so equal logits give equal tokens. [default: on when sampling]",
        flag="--coupled/--no-coupled",
    )

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
    """One stack configuration. Fields that a stack does not use are still recorded (and hashed)."""

    stack: str = option("hf", "Inference stack.", choices=STACKS)
    model: str = option("", "Local model directory or hub id (openai: the served model name).")
    revision: str | None = option(None, "Hub revision (commit) of the model.")
    dtype: str = option("bfloat16", "Activation dtype.", choices=DTYPES)
    quantization: str = option("auto", "MXFP4 path.", choices=QUANTIZATIONS)
    attention: str = option("auto", "Attention implementation or backend (hf: eager, flex_attention, ...).")
    experts: str = option("auto", "MoE experts implementation (hf: eager, grouped_mm, batched_mm).")
    device: str = option("auto", "cpu, cuda, cuda:1 ...")
    logprobs: int = option(20, "Top-K alternatives recorded per token, 0..20.")
    batch_size: int = option(8, "Sequences per batch (and per tokens/ part).")
    max_model_len: int | None = option(None, "vLLM context length.")
    sampling: SamplingSpec = option(factory=SamplingSpec, flag=None)
    engine_args: tuple[tuple[str, Any], ...] = option(
        (),
        "Extra stack argument, repeatable (vLLM engine arguments; VLLM_* become environment variables).",
        flag="--engine-arg",
        multiple=True,
        metavar="NAME=VALUE",
    )
    base_url: str | None = option(None, "openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = option(None, "openai: the model name the server expects (default: --model).", flag=None)
    api_key_env: str | None = option(
        None, "openai: name of the environment variable holding the API key (the key itself is never stored)."
    )
    concurrency: int = option(8, "openai: requests in flight.")
    request_timeout_s: float = option(120.0, "openai: seconds before a request is retried.", flag=None)

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


def read_spec_file(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """(the TOML table of a spec file, its name for messages); ({}, "spec") without a file. UserError when the file is
    missing or not valid TOML."""
    if path is None:
        return {}, "spec"
    try:
        return tomllib.loads(Path(path).read_text()), str(path)
    except FileNotFoundError:
        raise UserError(f"{path}: spec file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """RunSpec from an optional TOML file, then overrides ("sampling.x" keys address the sampling table).

    Overrides whose value is None are ignored, so unset CLI flags leave the file's values alone.
    """
    data, source = read_spec_file(path)
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
