"""The endpoints file of `rig compare`: a reference and a list of endpoints, each a run spec.

    reference = "local-hf"
    floor = "local-hf-again"         # optional: a replicate of the reference, the noise floor of every verdict
    [defaults]                       # optional: RunSpec fields every endpoint starts from
    dtype = "bfloat16"
    [defaults.sampling]
    max_new_tokens = 256
    [[endpoint]]
    name = "local-hf"
    stack = "hf"
    model = "models/tiny"
    [[endpoint]]
    name = "provider-x"
    stack = "openai"
    base_url = "https://api.example.com/v1"
    model = "openai/gpt-oss-120b"
    api_key_env = "PROVIDER_X_KEY"

Each endpoint is [defaults] overlaid by its own table, then by the command line's overrides (--samples, --temperature,
--max-new-tokens, --seed, which apply to every endpoint so that all of them answer the same request). Every choice the
rig makes on the user's behalf is returned with its reason and lands in compare.json.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.run.spec import RunSpec

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RECOMMENDED_TEMPERATURE = 1.0  # gpt-oss's recommended sampling (T 1.0, top_p 1.0), used by its GPQA and AIME evals


@dataclass(frozen=True)
class Endpoint:
    name: str
    spec: RunSpec

    @property
    def local(self) -> bool:
        """Whether the stack computes on this machine (hf, vllm): such endpoints run one after another."""
        from rig.stacks import get_stack

        return bool(get_stack(self.spec.stack).gpu_telemetry)  # the class fact "computes on this machine"


@dataclass(frozen=True)
class CompareConfig:
    path: str
    reference: str
    floor: str | None
    endpoints: tuple[Endpoint, ...]
    choices: list[dict[str, str]] = field(default_factory=list)  # what the rig decided, and why

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_endpoints(path: str | Path, overrides: dict[str, Any] | None = None) -> CompareConfig:
    """Parses and checks the endpoints file; overrides are sampling fields ("samples", "temperature", ...) set on
    every endpoint. UserError (one line, naming the file and the endpoint) for anything wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: endpoints file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"reference", "floor", "defaults", "endpoint"})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (known: reference, floor, defaults, [[endpoint]])")
    tables = data.get("endpoint")
    if not isinstance(tables, list) or not tables:
        raise UserError(f"{path}: no [[endpoint]] tables")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"{path}: [defaults] must be a table of run spec fields")
    sampling_over = {k: v for k, v in (overrides or {}).items() if v is not None}
    endpoints: list[Endpoint] = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise UserError(f"{path}: endpoint {i + 1} is not a table")
        name = table.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise UserError(f"{path}: endpoint {i + 1}: 'name' must be letters, digits, '.', '_' or '-' (got {name!r})")
        if any(e.name == name for e in endpoints):
            raise UserError(f"{path}: endpoint name {name!r} is used twice")
        fields = _merge(defaults, {k: v for k, v in table.items() if k != "name"})
        fields["sampling"] = {**(fields.get("sampling") or {}), **sampling_over}
        spec = RunSpec.from_dict(fields, source=f"{path} endpoint {name!r}")
        if not spec.model:
            raise UserError(f"{path}: endpoint {name!r} has no model")
        endpoints.append(Endpoint(name, spec))
    names = [e.name for e in endpoints]
    reference = data.get("reference") or names[0]
    if reference not in names:
        raise UserError(f"{path}: reference {reference!r} is not an endpoint (endpoints: {', '.join(names)})")
    floor = data.get("floor")
    if floor is not None and (floor not in names or floor == reference):
        raise UserError(f"{path}: floor {floor!r} must name another endpoint, a replicate of the reference")
    config = CompareConfig(str(path), reference, floor, tuple(endpoints))
    return _sampling_choices(config)


def _sampling_choices(config: CompareConfig) -> CompareConfig:
    """Repeats of greedy decoding repeat the same tokens: with --samples > 1 and no temperature, the recommended
    sampling of gpt-oss (T 1.0) is used, coupled where the stack supports it; the reason is recorded."""
    choices = list(config.choices)
    out, changed = [], []
    for e in config.endpoints:
        s = e.spec.sampling
        if s.samples > 1 and s.greedy:
            e = Endpoint(e.name, e.spec.replace(sampling=dataclasses.replace(s, temperature=RECOMMENDED_TEMPERATURE)))
            changed.append(e.name)
        out.append(e)
    if changed:
        samples = max(e.spec.sampling.samples for e in out)
        choices.append(
            {
                "endpoint": "every endpoint" if len(changed) == len(out) else ", ".join(changed),
                "choice": f"temperature {RECOMMENDED_TEMPERATURE}",
                "reason": f"{samples} samples per prompt at temperature 0 would repeat one greedy answer; gpt-oss's "
                "evals sample at T 1.0 (set temperature in the file or --temperature to choose)",
            }
        )
    ref = next(e for e in out if e.name == config.reference).spec.sampling
    for e in out:
        if e.spec.sampling != ref:
            choices.append(
                {
                    "endpoint": e.name,
                    "choice": "sampling differs from the reference's",
                    "reason": "its diff compares different requests; its splits may read as sampled, not as numerics",
                }
            )
    return CompareConfig(config.path, config.reference, config.floor, tuple(out), choices)
