"""The sweep as a heatmap: cells x metrics, each column coloured from its best to its worst value, plus one grid per
metric when the sweep has exactly two axes (rows: the first axis, columns: the second).

A pure function of the sweep document (rig.sweep.matrix.sweep_document): it decides nothing, and the page opens
offline (inline CSS, no script). `render_page(doc)` is a whole page; `sweep_section(doc)` is the same content as one
<section> for a larger report.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from rig.report.assets import CSS
from rig.report.terminal import fmt

SWEEP_CSS = """
table.heat td.v{text-align:right;font-variant-numeric:tabular-nums;min-width:64px}
table.heat td.na{color:#aaa;text-align:center}
.verdict-0{color:#2e7d32;font-weight:600}.verdict-1{color:#c62828;font-weight:600}.verdict-2{color:#b26a00;font-weight:600}
.legend span{display:inline-block;width:28px;height:12px;margin-right:2px;vertical-align:middle}
"""

GRID_METRICS = ("share_identical", "confident", "tf_mean_abs_delta", "accuracy")


def _colour(t: float | None) -> str:
    """Background for a score t in [0, 1] (1 best): red through yellow to green; grey without a value."""
    if t is None:
        return "#f3f3f3"
    t = min(max(t, 0.0), 1.0)
    if t < 0.5:
        r, g = 230, 110 + 200 * t  # worst (red) to the middle (yellow)
    else:
        r, g = 230 - 300 * (t - 0.5), 210 - 20 * (t - 0.5)  # the middle to best (green)
    return f"rgb({round(r)},{round(g)},120)"


def _fmt(x: Any) -> str:
    """An escaped table cell at 3 significant digits (rig.report.terminal.fmt)."""
    return escape(fmt(x, 3))


def _scores(rows: list[dict[str, Any]], key: str, better: str | None) -> dict[str, float | None]:
    """Each row's score in [0, 1] for one metric: best 1, worst 0 among the rows that have it."""
    vals = {r["id"]: (r.get("metrics") or {}).get(key) for r in rows}
    have = [v for v in vals.values() if isinstance(v, int | float)]
    if not have or better is None:
        return {i: (0.75 if isinstance(v, int | float) else None) for i, v in vals.items()}
    lo, hi = min(have), max(have)
    out: dict[str, float | None] = {}
    for i, v in vals.items():
        if not isinstance(v, int | float):
            out[i] = None
        elif hi == lo:
            out[i] = 1.0
        else:
            t = (v - lo) / (hi - lo)
            out[i] = t if better == "high" else 1.0 - t
    return out


def _value_text(row: dict[str, Any], key: str) -> str:
    m = row.get("metrics") or {}
    v = m.get(key)
    if key == "accuracy" and v is not None and m.get("accuracy_ci95"):
        lo, hi = m["accuracy_ci95"]
        return f"{v:.2f} <small>[{lo:.2f}, {hi:.2f}]</small>"
    return _fmt(v)


def _status(row: dict[str, Any]) -> str:
    if row["status"] != "complete":
        return f'<span class="verdict-2">{escape(row["status"])}</span>'
    if row.get("error"):
        return '<span class="verdict-2">no diff</span>'
    if row["role"] == "reference":
        return "<b>reference</b>"
    code = (row.get("verdict") or {}).get("exit_code")
    word = {0: "agree", 1: "diverged"}.get(code, "?")
    title = escape((row.get("verdict") or {}).get("line") or "")
    return f'<span class="verdict-{code}" title="{title}">{word}</span>'


def matrix_table(doc: dict[str, Any]) -> str:
    """The cells x metrics heatmap."""
    rows = doc["cells"]
    metrics = doc["metrics"]
    scores = {m["key"]: _scores([r for r in rows if r["status"] == "complete"], m["key"], m["better"]) for m in metrics}
    head = "".join(f'<th title="{escape(m["unit"])}">{escape(m["label"])}</th>' for m in metrics)
    body = []
    for r in rows:
        cells = []
        for m in metrics:
            if r["status"] != "complete":
                cells.append('<td class="na"></td>')
                continue
            score = scores[m["key"]].get(r["id"])
            cells.append(f'<td class="v" style="background:{_colour(score)}">{_value_text(r, m["key"])}</td>')
        why = r.get("reason") or r.get("error") or ""
        label = escape(r["label"]) + (f'<br><small class="meta">{escape(why)}</small>' if why else "")
        body.append(f"<tr><td>{label}</td><td>{_status(r)}</td>{''.join(cells)}</tr>")
    return (
        f'<table class="heat"><thead><tr><th>cell</th><th>verdict</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def grid_tables(doc: dict[str, Any]) -> str:
    """For a two-axis sweep: one first-axis x second-axis grid per headline metric (grid cells only)."""
    axes = doc["axes"]
    if len(axes) != 2:
        return ""
    a, b = axes
    by_values = {
        (json_key(r["values"].get(a["key"])), json_key(r["values"].get(b["key"]))): r
        for r in doc["cells"]
        if r["role"] in ("reference", "cell")
    }
    better = {m["key"]: m for m in doc["metrics"]}
    out = []
    for key in GRID_METRICS:
        m = better[key]
        complete = [r for r in by_values.values() if r["status"] == "complete"]
        scores = _scores(complete, key, m["better"])
        head = "".join(f"<th>{escape(str(v))}</th>" for v in b["values"])
        body = []
        for va in a["values"]:
            tds = []
            for vb in b["values"]:
                r = by_values.get((json_key(va), json_key(vb)))
                if r is None or r["status"] != "complete":
                    tds.append(f'<td class="na">{escape(r["status"]) if r else ""}</td>')
                else:
                    mark = " *" if r["role"] == "reference" else ""
                    bg = _colour(scores.get(r["id"]))
                    tds.append(f'<td class="v" style="background:{bg}">{_value_text(r, key)}{mark}</td>')
            body.append(f"<tr><th>{escape(str(va))}</th>{''.join(tds)}</tr>")
        out.append(
            f'<div><h3>{escape(m["label"])} <small class="meta">({escape(m["unit"])})</small></h3>'
            f'<table class="heat"><thead><tr><th>{escape(a["key"])} \\ {escape(b["key"])}</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    return f'<div class="grid">{"".join(out)}</div>'


def json_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def sweep_section(doc: dict[str, Any]) -> str:
    """The sweep as one <section>: the verdict, the heatmap, the two-axis grids, timings."""
    v = doc["verdict"]
    t = doc.get("timings") or {}
    ref = next((r for r in doc["cells"] if r["role"] == "reference"), None)
    axes = ", ".join(f"{a['key']} = {', '.join(map(str, a['values']))}" for a in doc["axes"]) or "none"
    floor = f"{doc['replicates']} replicate(s) of the reference" if doc["replicates"] else "none"
    return (
        f'<section><h2>Sweep</h2><p class="verdict-{v["exit_code"]}">{escape(v["line"])}</p>'
        f'<p class="meta">axes: {escape(axes)} &middot; reference: {escape(ref["label"] if ref else "-")} '
        f"&middot; floor: {escape(floor)} &middot; executor: {escape(doc['executor'])}</p>"
        f"{matrix_table(doc)}"
        '<p class="meta legend">colour per column, worst <span style="background:rgb(230,110,120)"></span>'
        '<span style="background:rgb(230,210,120)"></span><span style="background:rgb(80,200,120)"></span> best; '
        "|d| in nats (teacher-forced where scored runs exist, else on identical prefix tokens); accuracy with its "
        "95% interval; J/tok where a GPU was sampled. Each cell's full diff: diffs/CELL.json.</p>"
        f"{grid_tables(doc)}"
        f'<p class="meta">{t.get("cells_run", 0)} cells run ({t.get("cells_tried", 0)} tried) in '
        f"{_fmt(t.get('runs_s'))} s; driver "
        f"{_fmt(t.get('driver_s'))} s ({_fmt(t.get('driver_s_per_cell'))} s per cell, diffs included).</p></section>"
    )


def render_page(doc: dict[str, Any]) -> str:
    """A whole self-contained HTML page for a sweep document."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rig sweep</title>'
        f"<style>{CSS}{SWEEP_CSS}</style></head><body><h1>rig sweep</h1>"
        f'<p class="meta">{len(doc["cells"])} cells &middot; generated {escape(doc.get("created_at") or "")} by rig '
        f"{escape(doc.get('rig_version') or '')}</p>{sweep_section(doc)}</body></html>"
    )
