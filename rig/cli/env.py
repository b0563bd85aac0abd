"""`rig env`: show this machine's environment manifest, or what differs between two runs' environments.

The environment is half of any cross-run explanation: before blaming a stack, check that the driver, CUDA, TF32
switches and library versions match. `rig env --diff RUN_A RUN_B` answers that from the runs' manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rig.errors import UserError
from rig.telemetry import envinfo


def load_environment(path: str | Path) -> dict:
    """manifest["environment"] of a run directory or a JSON file (a manifest or a `rig env --json` capture).

    Raises UserError with one line naming the file when it is missing or malformed.
    """
    p = Path(path)
    file = p / "manifest.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"{file}: no such file (expected a run directory with manifest.json, or a JSON file)")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a JSON object, found {type(data).__name__}")
    if "environment" in data:
        env = data["environment"]
    elif "schema_version" in data:  # a run manifest without an environment
        env = None
    else:  # `rig env --json` output
        env = data if "python" in data or "installed" in data else None
    if not isinstance(env, dict):
        raise UserError(f"{file}: field 'environment' is missing or not an object")
    return env


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _kv_table(title: str, rows: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(str(key), _short(value))
    return table


def _print_env(env: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    system = {f"{section}.{k}": v for section in ("python", "os", "cpu") for k, v in env.get(section, {}).items()}
    console.print(_kv_table("System", system))
    gpu = env.get("gpu", {})
    if gpu.get("available"):
        console.print(_kv_table("GPU (NVML)", {k: v for k, v in gpu.items() if k not in ("devices", "source")}))
        devices = Table(box=None)
        for col in ("index", "name", "compute_capability", "memory_total_mib", "uuid", "pci_bus_id"):
            devices.add_column(col)
        for d in gpu.get("devices", []):
            devices.add_row(
                *(
                    _short(d.get(c))
                    for c in ("index", "name", "compute_capability", "memory_total_mib", "uuid", "pci_bus_id")
                )
            )
        console.print(devices)
    else:
        console.print(_kv_table("GPU (NVML)", {"available": False, "reason": gpu.get("reason")}))
    torch = dict(env.get("torch", {}))
    backends = torch.pop("backends", {}) or {}
    console.print(_kv_table("torch", {**torch, **{f"backends.{k}": v for k, v in backends.items()}}))
    console.print(_kv_table("Key packages", env.get("packages", {})))
    console.print(_kv_table("Environment variables (numerics)", env.get("env", {}) or {"(none set)": ""}))
    console.print(_kv_table("rig", env.get("rig", {})))
    console.print(f"[dim]{len(env.get('installed', []))} installed distributions (--json lists them)[/dim]")


def _print_diff(rows: list[tuple[str, Any, Any]], name_a: str, name_b: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("no differences")
        return
    table = Table(title=f"{len(rows)} environment differences", title_justify="left")
    table.add_column("key", style="bold")
    table.add_column(name_a, overflow="fold")
    table.add_column(name_b, overflow="fold")
    for key, a, b in rows:
        table.add_row(key, _short(a), _short(b))
    console.print(table)


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--diff",
    "diff_paths",
    nargs=2,
    type=click.Path(),
    default=None,
    metavar="RUN_A RUN_B",
    help="Show only what differs between two runs' environments (run directories or JSON files).",
)
@click.option("--no-torch", is_flag=True, help="Do not import torch (faster; torch facts are left out).")
def env_command(as_json: bool, diff_paths: tuple[str, str] | None, no_torch: bool) -> None:
    """Print this machine's environment: GPUs, driver, CUDA, torch switches, packages, numerics variables.

    With --diff RUN_A RUN_B, print only the keys whose values differ between the two runs' manifests.
    Secret-looking environment values are always shown as <redacted>.
    """
    try:
        if diff_paths:
            env_a, env_b = (load_environment(p) for p in diff_paths)
            rows = envinfo.diff(env_a, env_b)
            if as_json:
                click.echo(json.dumps([{"key": k, "a": a, "b": b} for k, a, b in rows], indent=1, default=str))
            else:
                _print_diff(rows, *diff_paths)
            return
    except UserError as exc:  # one line, exit 2, even when this command runs outside rig's main group
        click.echo(f"rig: error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    env = envinfo.capture(torch=not no_torch)
    if as_json:
        click.echo(json.dumps(env, indent=1, default=str))
    else:
        _print_env(env)


COMMANDS = (env_command,)
