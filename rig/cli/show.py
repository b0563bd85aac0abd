"""Terminal summaries of a run directory (`rig show`) and of a rendered suite (`rig suite show`).

`rig show` runs the read-time integrity check (rig.run.verify) and, for a damaged run, still prints what the manifest
says, marks the status DAMAGED, lists every problem, and exits 2 with one line on stderr: a run that looks complete
must not pass for a sound one.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from rig.harmony import decode
from rig.run.store import MANIFEST, RunError, RunReader
from rig.run.suite import Suite
from rig.run.verify import Report, check_run


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def show_run(path: str, *, with_prompts: bool = True, console: Console | None = None) -> Report:
    """Prints the summary of a run directory and, when it is damaged, what is damaged; returns the integrity report.

    Raises RunError only when the manifest itself cannot be read (nothing to show then)."""
    console = console or Console()
    run = RunReader(path, check_parts=False)
    report = check_run(run)
    try:
        _show_manifest(run, report, with_prompts, console)
    except (KeyError, TypeError, AttributeError) as exc:
        if report.ok:
            raise RunError(f"{run.path / MANIFEST}: field {exc} is missing or malformed") from None
    if not report.ok:
        console.print(f"[bold red]DAMAGED[/bold red]: {len(report.problems)} problem(s)")
        for problem in report.problems:  # one line each, unwrapped, so that they can be grepped and pasted
            console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        console.print(report.hint(), markup=False, highlight=False, soft_wrap=True)
    return report


def _show_manifest(run: RunReader, report: Report, with_prompts: bool, console: Console) -> None:
    m = run.manifest
    spec = m["spec"]
    s = spec["sampling"]
    damaged = "" if report.ok else " - DAMAGED, see below"
    rows = [
        ("status", m["status"] + (f" ({m['error']})" if m.get("error") else "") + damaged),
        ("kind", m["kind"] + (f" of {m['source_run']['name']}" if m.get("source_run") else "")),
        ("stack / model", f"{spec['stack']} / {spec['model']}"),
        ("spec hash", m["spec_hash"]),
        ("dtype / quantization", f"{spec['dtype']} / {spec['quantization']}"),
        (
            "sampling",
            f"T={s['temperature']} top_p={s['top_p']} top_k={s['top_k']} seed={s['seed']} "
            f"samples={s['samples']} max_new={s['max_new_tokens']} coupled={s['coupled']}",
        ),
        ("top-K / batch", f"{spec['logprobs']} / {spec['batch_size']}"),
        ("suite", f"{m['suite']['name']} ({m['suite']['n_prompts']} prompts, hash {m['suite']['hash']})"),
        ("counts", ", ".join(f"{k} {v}" for k, v in m["counts"].items())),
        ("timings", ", ".join(f"{k} {v}" for k, v in (m.get("timings") or {}).items())),
        ("created / finished", f"{m.get('created_at')} / {m.get('finished_at')}"),
    ]
    console.print(_kv_table(f"run {run.name}", rows))
    resolved = (m.get("stack") or {}).get("resolved") or {}
    if resolved:
        t = Table(title="what the stack resolved", title_justify="left")
        t.add_column("choice", style="bold")
        t.add_column("value")
        t.add_column("reason", overflow="fold")
        for key, entry in resolved.items():
            t.add_row(key, str(entry.get("value")), str(entry.get("reason", "")))
        console.print(t)
    tel = m.get("telemetry") or {}
    if tel:
        gpu = tel.get("gpu") or {}
        host = tel.get("host") or {}
        rows = [
            ("duration_s", tel.get("duration_s")),
            ("tokens", tel.get("tokens")),
            ("energy_j", tel.get("energy_j")),
            ("j_per_token (generation phases)", tel.get("generate_j_per_token")),
            ("gpus", ", ".join(d.get("name", "?") for d in gpu.get("devices", [])) or gpu.get("reason", "none")),
            ("process cpu % (mean / max)", f"{host.get('proc_cpu_pct_mean')} / {host.get('proc_cpu_pct_max')}"),
            ("rss MiB (max)", host.get("rss_mib_max")),
            ("sampler cost (% of one core)", (tel.get("sampler") or {}).get("share_of_one_core_pct")),
        ]
        console.print(_kv_table(f"telemetry ({tel.get('rate_hz')} Hz)", rows))
        phases = tel.get("phases") or []
        if phases:
            t = Table(title="telemetry phases", title_justify="left")
            cols = (
                "name",
                "index",
                "duration_s",
                "tokens",
                "energy_j",
                "j_per_token",
                "mean_power_w",
                "proc_cpu_pct_mean",
            )
            for c in cols:
                t.add_column(c)
            for ph in phases[:40]:
                t.add_row(*[_fmt(ph.get(c)) for c in cols])
            if len(phases) > 40:
                t.add_row(f"... {len(phases) - 40} more", *[""] * (len(cols) - 1))
            console.print(t)
    if with_prompts:
        t = Table(title="sequences", title_justify="left")
        for c in ("prompt", "sample", "tokens", "finish", "text (start)"):
            t.add_column(c, overflow="fold" if c.startswith("text") else None)
        for c in run.completions:
            text = (c.get("final") or c.get("text") or "").replace("\n", " ")
            t.add_row(c["prompt_id"], str(c["sample"]), str(c["n_tokens"]), c["finish_reason"], text[:60])
        console.print(t)


def show_suite(suite: Suite, *, with_tokens: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    r = suite.render
    console.print(
        f"[bold]suite {suite.name}[/bold]: {len(suite.prompts)} prompts, hash {suite.hash}; harmony date "
        f"{r.conversation_date}, reasoning effort {r.reasoning_effort}, knowledge cutoff {r.knowledge_cutoff}"
    )
    for p in suite.prompts:
        console.rule(f"{p.id}  [{p.category or '-'}]  {len(p.token_ids)} tokens  sha256 {p.sha256[:12]}")
        console.print(decode(p.token_ids), markup=False, highlight=False)
        if p.reference is not None:
            console.print(f"reference ({p.reference_type}): {p.reference}", markup=False)
        if with_tokens:
            console.print(list(p.token_ids), markup=False)


# ---- commands ------------------------------------------------------------------------------------------------------


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompts/--no-prompts", default=True, show_default=True, help="List each sequence.")
def show(run_dir, prompts):
    """Summarize a run directory: status, spec, what the stack resolved, counts, timings, telemetry.

    A damaged run (rig.run.verify) is shown with its problems listed, and exits 2.
    """
    report = show_run(run_dir, with_prompts=prompts)
    if not report.ok:
        raise report.error()


@click.group()
def suite():
    """Prompt suites."""


@suite.command("show")
@click.argument("name_or_path")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date.")
@click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]))
@click.option("--tokens", is_flag=True, help="Print the token IDs too.")
def suite_show(name_or_path, conversation_date, reasoning_effort, tokens):
    """Render a suite (bundled NAME or PATH) and print each prompt with its token count."""
    from rig.run.suite import RenderOptions, load_suite

    base = RenderOptions().to_dict()
    base.update(
        {k: v for k, v in {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}.items() if v}
    )
    show_suite(load_suite(name_or_path, RenderOptions(**base)), with_tokens=tokens)


COMMANDS = (show, suite)
