"""The sweep matrix in the terminal: one row per cell, one column per metric, the verdict first and last.

Rendered from the sweep document (rig.sweep.matrix.sweep_document), like `rig diff` renders its own document, so
the terminal, sweep.json and sweep.html always show the same numbers.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rig.report.terminal import fmt as report_fmt

VERDICT_STYLE = {0: "green", 1: "bold red", 2: "yellow"}


def fmt(x: Any, digits: int = 3) -> str:
    """A cell of the sweep matrix: rig's table format at 3 significant digits."""
    return report_fmt(x, digits)


def metric_text(row: dict[str, Any], key: str) -> str:
    """One matrix cell as text: accuracy with its 95% interval, |delta| marked when it comes from the prefix."""
    m = row.get("metrics") or {}
    value = m.get(key)
    if key == "accuracy" and value is not None and m.get("accuracy_ci95"):
        lo, hi = m["accuracy_ci95"]
        return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"
    if key == "share_identical" and value is not None:
        return f"{value:.2f}"
    return fmt(value)


def status_text(row: dict[str, Any]) -> Text:
    if row["status"] == "skipped":
        return Text("skipped", style="dim")
    if row["status"] in ("failed", "not run"):
        return Text(row["status"], style="yellow")
    if row.get("error"):
        return Text("no diff", style="yellow")
    v = row.get("verdict") or {}
    if row["role"] == "reference":
        return Text("reference", style="bold")
    if row["role"] == "replicate" and code_of(row) == 0:
        return Text("replicate", style="green")
    code = v.get("exit_code")
    word = {0: "agree", 1: "diverged"}.get(code, "?")
    return Text(word, style=VERDICT_STYLE.get(code, ""))


def code_of(row: dict[str, Any]) -> int | None:
    return (row.get("verdict") or {}).get("exit_code")


def print_sweep(console: Console, doc: dict[str, Any]) -> None:
    """The verdict line, the matrix (one column per axis, then the verdict and the metrics), then the reasons of
    skipped and failed cells."""
    v = doc["verdict"]
    console.print(Text(v["line"], style=VERDICT_STYLE.get(v["exit_code"], "")))
    table = Table(title=f"sweep against {doc['reference']}", title_justify="left", pad_edge=False)
    axes = [a["key"] for a in doc["axes"]]
    for key in axes:
        table.add_column(key, overflow="fold")
    table.add_column("verdict")
    for m in doc["metrics"]:
        table.add_column(m["label"], justify="right")
    for row in doc["cells"]:
        values = [fmt(row["values"].get(k)) for k in axes]
        if row["role"] == "replicate":
            values = [f"{x} (rep {row['replica']})" if i == len(values) - 1 else x for i, x in enumerate(values)]
        cells = [metric_text(row, m["key"]) if row["status"] == "complete" else "" for m in doc["metrics"]]
        table.add_row(*values, status_text(row), *cells)
    console.print(table)
    tf = {(r.get("metrics") or {}).get("tf_source") for r in doc["cells"] if r["role"] != "reference"} - {None}
    what = " on identical prefix tokens" if tf == {"prefix"} else " teacher-forced" if tf else ""
    console.print(
        Text(f"|d|: |delta logprob| (nats){what}; accuracy with its 95% interval; J/tok where a GPU was sampled.")
    )
    for row in doc["cells"]:
        reason = row.get("reason") if row["status"] != "complete" else row.get("error")
        if reason:
            console.print(Text(f"{row['status']:>8} {row['label']}: {reason}", style="dim"))
    t = doc.get("timings") or {}
    console.print(
        Text(
            f"{t.get('cells_run', 0)} cells run ({t.get('cells_tried', 0)} tried) in {fmt(t.get('runs_s'))} s; "
            f"driver {fmt(t.get('driver_s'))} s "
            f"({fmt(t.get('driver_s_per_cell'))} s per cell, diffs included); executor {doc['executor']}",
            style="dim",
        )
    )
