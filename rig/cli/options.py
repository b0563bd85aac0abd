"""The `rig run` / `rig score` options, generated from RunSpec's fields so that a field cannot drift from its flag.

Each field of `RunSpec` and `SamplingSpec` carries its help text, choices and flag name (rig.run.spec.option); this
module turns them into click options, with the field's default shown in the help, and turns the parsed options back
into the overrides that `load_spec` applies over a `--spec` file. Options left unset are None, so they never override
the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import click

from rig.errors import UserError


def _fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """(override key, field) for every spec field that has a command-line flag; sampling fields as "sampling.x"."""
    from rig.run.spec import RunSpec, SamplingSpec

    for f in dataclasses.fields(RunSpec):
        if f.metadata.get("flag") is not None:
            yield f.name, f
    for f in dataclasses.fields(SamplingSpec):
        if f.metadata.get("flag") is not None:
            yield f"sampling.{f.name}", f


def _default_text(f: dataclasses.Field) -> str:
    value = f.default
    if value is None or value == () or value == "":
        return ""
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value)
    return f" [default: {value}]"


def _type(f: dataclasses.Field) -> Any:
    kind = str(f.type)
    if f.metadata.get("choices"):
        return click.Choice(list(f.metadata["choices"]))
    if kind.startswith("int") or kind.startswith("tuple[int"):
        return int
    if kind.startswith("float"):
        return float
    return None


def _option(key: str, f: dataclasses.Field) -> Callable:
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    help_text = meta["help"]
    if "[default:" not in help_text:
        help_text += _default_text(f)
    extra = dict(meta.get("cli") or {})
    kwargs: dict[str, Any] = {"help": help_text, "default": None}
    if "/" in flag:  # a boolean switch pair
        return click.option(flag, f.name, **kwargs)
    typ = _type(f)
    if typ is not None:
        kwargs["type"] = typ
    return click.option(flag, f.name, **kwargs, **extra)


def spec_options(command: Callable) -> Callable:
    """Decorates a click command with one option per spec field, plus --spec FILE."""
    for key, f in reversed(list(_fields())):
        command = _option(key, f)(command)
    return click.option(
        "--spec", "spec_file", type=click.Path(dir_okay=False), help="TOML file with RunSpec fields; flags override it."
    )(command)


def build_spec(opts: dict[str, Any]):
    """The RunSpec from the --spec file (if any) and the options given; raises UserError without a model."""
    from rig.run.spec import load_spec, parse_engine_args

    overrides: dict[str, Any] = {}
    for key, f in _fields():
        value = opts.get(f.name)
        if value is None or value == ():
            continue
        if f.name == "engine_args":
            value = parse_engine_args(value)
        elif isinstance(value, tuple):
            value = list(value)
        overrides[key] = value
    spec = load_spec(opts.get("spec_file"), overrides)
    if not spec.model:
        raise UserError("no model given: pass --model DIR (or a hub id), or set model in the --spec file")
    return spec


def spec_option_names() -> set[str]:
    """The parameter names spec_options adds (so commands can split them from their own)."""
    return {f.name for _, f in _fields()} | {"spec_file"}
