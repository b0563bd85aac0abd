"""The kernels table, for a terminal (rich) and for the HTML report (a pure function of the JSON document).

Why this exists: a run produces a row per input case; a reader wants one line per kernel x implementation x dtype
with its worst case. Both renderers work from the JSON document only, so a result file renders the same anywhere.
"""

from __future__ import annotations

import html
from typing import Any

_ORDER = {"fail": 0, "pass": 1, "skip": 2}


def _num(x: Any) -> float:
    if isinstance(x, str):
        return float(x)
    return float("-inf") if x is None else float(x)


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per (kernel, impl, dtype): the worst case's error and ratio, the invariance and determinism over all
    cases (False if any case was False, None if none was checked), the verdict (fail if any case failed) and the
    first failure's reason."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in doc.get("rows", []):
        groups.setdefault((row["kernel"], row["impl"], row["dtype"]), []).append(row)
    lines = []
    for (kernel, impl, dtype), rows in groups.items():
        worst = max(rows, key=lambda r: _num(r.get("max_err_ulp")))
        ratios = [r["ratio"] for r in rows if r.get("ratio") is not None]

        def flag(key: str, rows=rows) -> bool | None:
            seen = [r[key] for r in rows if r.get(key) is not None]
            return None if not seen else all(seen)

        failed = [r for r in rows if r["verdict"] == "fail"]
        verdict = "fail" if failed else ("skip" if all(r["verdict"] == "skip" for r in rows) else "pass")
        lines.append(
            {
                "kernel": kernel,
                "impl": impl,
                "dtype": dtype,
                "max_err_ulp": worst.get("max_err_ulp"),
                "worst_input": worst.get("input"),
                "ratio": max(ratios, key=_num) if ratios else None,
                "batch_invariant": flag("batch_invariant"),
                "deterministic": flag("deterministic"),
                "verdict": verdict,
                "reason": (failed[0]["reason"] if failed else rows[0].get("reason", "")) if verdict != "pass" else "",
                "cases": len(rows),
            }
        )
    return lines


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def _flag(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "NO")


def print_table(doc: dict[str, Any], console: Any = None) -> None:
    """The kernel x implementation x dtype table on a rich console, then skipped implementations and failures."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    table = Table(
        title=f"kernels on {doc.get('device')}: error against float64 in rounding steps of the output "
        "dtype, ratio to plain torch at the same dtype (pass <= 2x)"
    )
    for col in (
        "kernel",
        "implementation",
        "dtype",
        "max err ulp",
        "worst input",
        "ratio",
        "batch-inv",
        "determ",
        "verdict",
    ):
        table.add_column(col, justify="right" if col in ("max err ulp", "ratio") else "left", no_wrap=True)
    lines = summarize(doc)
    for line in (x for x in lines if x["verdict"] != "skip"):
        table.add_row(
            line["kernel"],
            line["impl"],
            line["dtype"],
            _fmt(line["max_err_ulp"]),
            escape(line["worst_input"] or "-"),
            _fmt(line["ratio"]),
            _flag(line["batch_invariant"]),
            _flag(line["deterministic"]),
            line["verdict"],
            style="bold red" if line["verdict"] == "fail" else "",
        )
    console.print(table)
    for line in (x for x in lines if x["verdict"] == "skip"):
        console.print(
            f"skipped  {line['kernel']:<11} {escape(line['impl'])}: {escape(line['reason'])}", highlight=False
        )
    s = doc.get("summary", {})
    console.print(
        f"{s.get('pass', 0)} passed, {s.get('fail', 0)} failed, {s.get('skip', 0)} skipped in {s.get('seconds', 0)} s",
        highlight=False,
    )
    for note in s.get("not_batch_invariant", []):
        console.print(f"[yellow]NOTE[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    for reason in s.get("failures", []):
        console.print(f"[red]FAIL[/red] {escape(reason)}", highlight=False, soft_wrap=True)


def report_html(doc: dict[str, Any]) -> str:
    """An HTML fragment (one <table class="kernels">, no external assets) for a kernels JSON document."""
    e = html.escape
    head = (
        "kernel",
        "implementation",
        "dtype",
        "max err (ulp)",
        "worst input",
        "ratio to torch",
        "batch-invariant",
        "deterministic",
        "verdict",
    )
    versions = {(i["kernel"], i["name"]): i.get("version") for i in doc.get("implementations", [])}
    s = doc.get("summary", {})
    caption = (
        f"<caption>{s.get('pass', 0)} passed, {s.get('fail', 0)} failed, {s.get('skip', 0)} skipped; errors "
        "in rounding steps of the output dtype against float64; pass: at most 2x the plain-torch error"
        "</caption>"
    )
    out = [
        f'<table class="kernels" data-device="{e(str(doc.get("device")))}">',
        caption,
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for line in summarize(doc):
        v = line["verdict"]
        version = versions.get((line["kernel"], line["impl"]))
        impl = e(line["impl"]) + (f' <span class="version">{e(str(version))}</span>' if version else "")
        verdict = e(v) + (f'<div class="reason">{e(line["reason"])}</div>' if line["reason"] else "")
        cells = (
            e(line["kernel"]),
            impl,
            e(line["dtype"]),
            e(_fmt(line["max_err_ulp"])),
            e(line["worst_input"] or "-"),
            e(_fmt(line["ratio"])),
            e(_flag(line["batch_invariant"])),
            e(_flag(line["deterministic"])),
            verdict,
        )
        out.append(f'<tr class="verdict-{e(v)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)
