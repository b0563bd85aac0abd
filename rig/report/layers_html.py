"""The report section of `rig layers`: per position, a heatmap of error by layer and block, router flips marked.

A pure function of the `rig layers --json` document (rig.localize.layers): it decides nothing. Each cell's colour is
the cross-stack error over the block's dtype baseline on a log scale (white at 1x, full red at 4 x the rule's factor);
a bad block is outlined, the first bad block and a router flip are labelled, and the tooltip (title) of each cell
gives the relative L2 errors (cross, each stack against float64, fresh input) and the rounding steps.

    html = layers_section(json.loads(Path("layers.json").read_text()))   # one <section>, inline styles only
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

BLOCKS = ("attn", "router", "moe", "resid")
HEADERS = {"attn": "attention", "router": "router", "moe": "MoE", "resid": "residual"}
FINALS = {"embed": "embedding", "norm": "final norm", "logits": "logits"}


def _num(x: Any, spec: str = ".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return format(x, spec)


def _colour(ratio: float | None, factor: float) -> str:
    """White at or below 1x, red at 4 x factor and above (log scale in between)."""
    if ratio is None:
        return "#ffffff"
    if not math.isfinite(ratio):
        t = 1.0
    elif ratio <= 1.0:
        t = 0.0
    else:
        t = min(1.0, math.log(ratio) / math.log(4.0 * factor))
    g = int(round(255 - 200 * t))
    return f"rgb(255,{g},{g})"


def _cell(row: dict[str, Any], factor: float, first: bool, flip: dict[str, Any] | None) -> str:
    ratio = row.get("ratio")
    if ratio is None and row.get("bad"):
        ratio = math.inf  # the JSON document holds an infinite ratio as null
    tip = [
        f"cross rel L2 {_num(row['cross']['rel_l2'])} ({_num(row['cross']['steps'], '.1f')} steps)",
        f"A vs float64 {_num(row['a_vs_ref']['rel_l2'])}",
        f"B vs float64 {_num(row['b_vs_ref']['rel_l2'])}",
        f"baseline {_num(row['baseline'])}",
    ]
    for side in ("a", "b"):
        fresh = row.get(f"fresh_{side}_vs_ref")
        if fresh:
            tip.append(f"{side.upper()} fresh input vs float64 {_num(fresh['rel_l2'])}")
    text = "inf" if ratio is not None and not math.isfinite(ratio) else f"{ratio:.1f}x" if ratio is not None else "-"
    marks = []
    if first:
        marks.append("first bad")
    if flip:
        marks.append(f"FLIP {flip['experts_a']} vs {flip['experts_b']}")
        tip.append(f"router flip: margins {_num(flip['margin_a'], '.2g')} / {_num(flip['margin_b'], '.2g')}")
    border = "2px solid #b00" if row.get("bad") else "1px solid #ddd"
    label = "".join(f'<div style="font-size:0.75em;color:#806">{escape(m)}</div>' for m in marks)
    return (
        f'<td title="{escape("; ".join(tip))}" style="background:{_colour(ratio, factor)};border:{border};'
        f'text-align:right;padding:2px 6px">{escape(text)}{label}</td>'
    )


def position_heatmap(p: dict[str, Any], factor: float, labels: tuple[str, str]) -> str:
    """One position's heatmap table: rows embedding, layers 0..L-1, final norm, logits; columns the blocks."""
    by = {(r["layer"], r["block"]): r for r in p["blocks"]}
    flips = {r["layer"]: r for r in p["router"] if r["flip"]}
    first = (p["first_bad"]["layer"], p["first_bad"]["block"]) if p.get("first_bad") else None
    head = "".join(f"<th>{h}</th>" for h in ("layer", *HEADERS.values(), "experts"))
    rows = []
    for name in ("embed",):
        rows.append(_final_row(by[(None, name)], FINALS[name], factor, first))
    for layer in sorted({r["layer"] for r in p["router"]}):
        router = next(r for r in p["router"] if r["layer"] == layer)
        cells = "".join(
            _cell(by[(layer, b)], factor, first == (layer, b), flips.get(layer) if b == "router" else None)
            for b in BLOCKS
        )
        experts = f"{router['experts_a']} / {router['experts_b']}" if router["flip"] else f"{router['experts_a']}"
        rows.append(f"<tr><td>{layer}</td>{cells}<td>{escape(experts)}</td></tr>")
    for name in ("norm", "logits"):
        rows.append(_final_row(by[(None, name)], FINALS[name], factor, first))
    title = f"{p['prompt_id']} #{p['sample']} pos {p['pos']} ({', '.join(k.replace('_', ' ') for k in p['kinds'])})"
    return (
        f'<div style="display:inline-block;vertical-align:top;margin:0 1.5em 1em 0">'
        f"<h3>{escape(title)}</h3><p><b>{escape(p['cause'])}</b></p>"
        f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<p class="meta">A = {escape(labels[0])}, B = {escape(labels[1])}</p></div>'
    )


def _final_row(row: dict[str, Any], name: str, factor: float, first: tuple[Any, Any] | None) -> str:
    cell = _cell(row, factor, first == (row["layer"], row["block"]), None)
    return f'<tr><td>{escape(name)}</td>{cell}<td colspan="{len(BLOCKS)}"></td></tr>'


def layers_section(doc: dict[str, Any]) -> str:
    """The whole `rig layers` section: what was compared, the rule, one heatmap per position."""
    a, b = doc["a"], doc["b"]
    rule = doc["rule"]
    labels = (a["label"], b["label"])
    intro = (
        f"<p>{escape(a['label'])} ({escape(a['dtype'])}, {escape(str(a['model']))}) vs {escape(b['label'])} "
        f"({escape(b['dtype'])}, {escape(str(b['model']))}), each against the float64 run of its own checkpoint. "
        "Cells: the cross-stack error over the dtype baseline (the smaller of the two stacks' errors against "
        "float64); "
        f"a block is bad (outlined) above {rule['factor']:g}x and {rule['floor_steps']:g} rounding steps.</p>"
    )
    if not doc["positions"]:
        return f"<section><h2>Layers</h2>{intro}<p>No positions were opened.</p></section>"
    maps = "".join(position_heatmap(p, rule["factor"], labels) for p in doc["positions"])
    return f"<section><h2>Layers</h2>{intro}<div>{maps}</div></section>"
