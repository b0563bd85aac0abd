"""The terminal view of a diff: rich tables for people, built from the same JSON document `rig diff --json` writes.

Printing from the document (not from the arrays) keeps the terminal, the JSON file and the HTML report in step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rig.analysis.results import Divergence

MAX_MANIFEST_ROWS = 40
SHOWN_CLASSES = (Divergence.IDENTICAL, Divergence.NEAR_TIE, Divergence.CONFIDENT, Divergence.PREFIX)


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell ('-' for None)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[Any]:
    """A rich Progress on stderr (hidden when stderr is not a terminal); yields a loader callback factory."""
    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with prog:

        def factory(label: str):
            task = prog.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

            return update

        yield factory


def print_manifest_diff(console: Console, rows: list[dict[str, Any]], a: str, b: str) -> None:
    if not rows:
        console.print("[green]manifests: spec, stack, model, suite and environment agree[/green]")
        return
    t = Table(title="What differs between the manifests", title_justify="left")
    for col in ("section", "key", a, b):
        t.add_column(col, overflow="fold")
    for r in rows[:MAX_MANIFEST_ROWS]:
        t.add_row(r["section"], r["key"], fmt(r["a"]), fmt(r["b"]))
    if len(rows) > MAX_MANIFEST_ROWS:
        t.add_row("...", f"{len(rows) - MAX_MANIFEST_ROWS} more (see --json)", "", "")
    console.print(t)


SUMMARY_ROWS = (
    ("sequences", "summary", "sequences"),
    ("share identical", "summary", "share_identical"),
    ("divergent", "summary", "divergent"),
    ("  near-tie flips", "summary", "near_tie"),
    ("  confident disagreements", "summary", "confident"),
    ("  prefix (one run stopped)", "summary", "prefix"),
    ("  vLLM rule holds / fails", "summary", ("vllm_rule_holds", "vllm_rule_fails")),
    ("median first divergence", "summary", "median_first_divergence"),
    ("teacher-forced positions", "teacher", "n_positions"),
    ("mean |delta| (nats)", "teacher", "mean_abs_delta"),
    ("p99 |delta| (nats)", "teacher", "p99_abs_delta"),
    ("max |delta| (nats)", "teacher", "max_abs_delta"),
    ("exp(mean |delta|)", "teacher", "exp_mean_abs_delta"),
    ("top-1 agreement", "teacher", "top1_agreement"),
    ("mean KL(A||B) (nats)", "teacher", "mean_kl"),
)
FLOOR_OF = {
    "divergent": "share_divergent",
    "confident": "confident_share",
    "top1_agreement": "top1_disagreement",
    "mean_abs_delta": "mean_abs_delta",
    "exp_mean_abs_delta": "mean_abs_delta",
    "p99_abs_delta": "p99_abs_delta",
    "max_abs_delta": "max_abs_delta",
    "mean_kl": "mean_kl",
}


def _cell(doc: dict[str, Any], where: str, key: Any) -> str:
    src = doc["summary"] if where == "summary" else doc["teacher_forced"]
    if isinstance(key, tuple):
        return " / ".join(fmt(src.get(k)) for k in key)
    return fmt(src.get(key))


def print_summary(console: Console, doc: dict[str, Any]) -> None:
    floor = doc.get("floor")
    src = doc["teacher_forced"].get("source")
    t = Table(title=f"Summary (tau {doc['tau']:g} nats; teacher-forced from the {src})", title_justify="left")
    t.add_column("metric")
    t.add_column(f"{doc['a']['name']} vs {doc['b']['name']}", justify="right")
    clears = {}
    if floor:
        t.add_column(f"floor {floor['a']['name']} vs {floor['b']['name']}", justify="right")
        t.add_column("clears floor")
        clears = {r["metric"]: r["clears"] for r in doc["floor_check"]}
    for label, where, key in SUMMARY_ROWS:
        cells = [label, _cell(doc, where, key)]
        if floor:
            cells.append(_cell(floor, where, key))
            c = clears.get(FLOOR_OF.get(key if isinstance(key, str) else ""), "")
            cells.append(
                "" if c == "" else Text("yes", "red") if c else Text("within floor", "green") if c is False else "-"
            )
        t.add_row(*cells)
    console.print(t)


def print_breakdowns(console: Console, summary: dict[str, Any]) -> None:
    for key, title in (("by_category", "category"), ("by_channel", "channel at d"), ("by_token_kind", "token at d")):
        data = summary.get(key) or {}
        if not data:
            continue
        t = Table(title=f"By {title}", title_justify="left")
        for col in (title, "sequences", *(c.label for c in SHOWN_CLASSES)):
            t.add_column(col, justify="right" if col != title else "left")
        for label, c in data.items():
            t.add_row(label, *(fmt(c[k]) for k in ("sequences", *(c.key for c in SHOWN_CLASSES))))
        console.print(t)


def print_sequences(console: Console, rows: list[dict[str, Any]], limit: int) -> None:
    div = [r for r in rows if not r["identical"]]
    if not div:
        return
    t = Table(title=f"First divergences ({min(limit, len(div))} of {len(div)})", title_justify="left")
    for col in ("prompt", "s", "d", "class", "margin A", "margin B", "vLLM", "channel", "context | A | B"):
        t.add_column(col, overflow="fold")
    for r in div[:limit]:
        ctx = Text()
        ctx.append(repr(r.get("context_before") or "")[-40:], "dim")
        ctx.append(" | ")
        ctx.append(repr(r.get("continuation_a") or ""), "cyan")
        ctx.append(" | ")
        ctx.append(repr(r.get("continuation_b") or ""), "magenta")
        t.add_row(
            r["prompt_id"],
            str(r["sample"]),
            fmt(r["first_divergence"]),
            r["class"],
            fmt(r["margin_a"], 3),
            fmt(r["margin_b"], 3),
            fmt(r["vllm_rule"]),
            r["channel"] or "",
            ctx,
        )
    console.print(t)
    _print_localize(console, [r for r in div[:limit] if r.get("localize")], "a split")


TASK_COLUMNS = (
    "prompts x samples",
    "acc A [95% CI]",
    "acc B [95% CI]",
    "B - A",
    "95% CI (prompts)",
    "95% CI (prompts, samples)",
    "prompts B>A / A>B / tie (p)",
    "A only / B only",
    "McNemar p",
    "no final A / B",
)


def _ci(pair: Any) -> str:
    return "-" if not pair else f"[{fmt(pair[0], 3)}, {fmt(pair[1], 3)}]"


def task_row(x: dict[str, Any]) -> list[str]:
    """One row of TASK_COLUMNS from a task document (rig.analysis.scoring.compare_task): the terminal and the report
    show the same numbers."""
    pl = x.get("prompt_level") or {}
    samples = x.get("samples_max") or 1
    prompt_cmp = f"{pl['b_better']} / {pl['a_better']} / {pl['ties']} ({fmt(pl.get('sign_test_p'), 3)})" if pl else "-"
    return [
        f"{x['n_prompts']} x {samples}",
        f"{fmt(x['accuracy_a'], 3)} {_ci(x.get('accuracy_a_ci95'))}",
        f"{fmt(x['accuracy_b'], 3)} {_ci(x.get('accuracy_b_ci95'))}",
        fmt(x["diff"], 3),
        _ci(x.get("ci95")),
        _ci(x.get("diff_ci95_two_level")),
        prompt_cmp,
        f"{x['a_only']} / {x['b_only']}",
        fmt(x["mcnemar_p"], 3),
        f"{x['fallback_a']} / {x['fallback_b']}",
    ]


def print_task(console: Console, task: dict[str, Any] | None, floor_task: dict[str, Any] | None = None) -> None:
    if not task:
        return
    t = Table(title="Task level (references)", title_justify="left")
    t.add_column("pair")
    for col in TASK_COLUMNS:
        t.add_column(col, justify="right")
    for label, x in (("cross", task), ("floor", floor_task)):
        if x:
            t.add_row(label, *task_row(x))
    console.print(t)


def print_spikes(console: Console, spikes: list[dict[str, Any]], limit: int = 10) -> None:
    """The largest isolated |delta| spikes on identical prefixes, each with the command that localizes it."""
    if not spikes:
        return
    t = Table(title=f"spikes on identical prefixes ({len(spikes)}; largest first)", title_justify="left")
    for col in ("prompt", "sample", "pos", "token", "logprob A", "logprob B", "|delta|", "sequence median"):
        t.add_column(col)
    for s in spikes[:limit]:
        t.add_row(
            s["prompt_id"],
            str(s["sample"]),
            str(s["pos"]),
            str(s["token"]),
            fmt(s["logprob_a"]),
            fmt(s["logprob_b"]),
            fmt(s["abs_delta"]),
            fmt(s["sequence_median_abs_delta"]),
        )
    console.print(t)
    _print_localize(console, spikes[:limit], "a spike")


def _print_localize(console: Console, items: list[dict[str, Any]], what: str, limit: int = 3) -> None:
    """The `rig layers` commands that explain the first few splits or spikes (every one is in the JSON)."""
    if items:
        console.print(f"[dim]localize {what} below the token (layer, block, router decision):[/dim]")
        for item in items[:limit]:
            console.print(f"  {item['localize']}", soft_wrap=True, highlight=False)


def print_verdict(console: Console, doc: dict[str, Any]) -> None:
    """The one-line verdict (green AGREE, red DIVERGED), with the tau it used and why."""
    v = doc["verdict"]
    color = "green" if v["exit_code"] == 0 else "red"
    console.print(f"[bold {color}]{v['line']}[/bold {color}]")
    console.print(f"  tau {fmt(doc['tau'])} nats: {doc.get('tau_reason')}; sampling: {doc['sampling'].get('why')}")


def print_diff(console: Console, doc: dict[str, Any], *, rows: int = 20) -> None:
    """The whole terminal report of `rig diff`: the verdict first, then the evidence, the verdict again last."""
    p = doc["prompts"]
    console.print(
        f"[bold]rig diff[/bold] {doc['a']['path']} vs {doc['b']['path']}: {p['compared']} prompts compared"
        + (f", {len(p['dropped'])} dropped (--force)" if p["dropped"] else "")
    )
    print_verdict(console, doc)
    print_summary(console, doc)
    print_breakdowns(console, doc["summary"])
    print_sequences(console, doc["sequences"], rows)
    print_spikes(console, doc.get("spikes") or [])
    print_task(console, doc.get("task"), (doc.get("floor") or {}).get("task"))
    print_manifest_diff(console, doc["manifest_diff"], doc["a"]["name"], doc["b"]["name"])
    print_verdict(console, doc)
