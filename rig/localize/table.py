"""The terminal view of a `rig layers` document: per position, the cause line and a table of layers x blocks.

Each cell is the cross-stack error over the block's dtype baseline (rig.localize.verdict), e.g. "1.3x"; a bad block is
marked "!" (red), the first bad block "<<", and a router flip "FLIP" in the router column. Columns on the right give
each stack's relative L2 error against float64 at the residual stream, so accumulated drift is visible too. Renders
the document only: every number comes from the JSON.
"""

from __future__ import annotations

import math
from typing import Any

from rig.localize.capture import BLOCK_NAMES, BLOCKS


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if not math.isfinite(r):
        return "inf"
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def _sci(x: float | None) -> str:
    return "-" if x is None else ("inf" if not math.isfinite(x) else f"{x:.1e}")


def _cell(row: dict[str, Any], first: tuple[Any, Any] | None, flip: bool = False) -> str:
    text = "inf" if row["ratio"] is None and row["bad"] else _ratio(row["ratio"])  # JSON holds inf as null
    if row["bad"]:
        text = f"[bold red]{text}![/]"
    if first == (row["layer"], row["block"]):
        text += " <<"
    if flip:
        text += " [bold magenta]FLIP[/]"
    return text


def position_title(p: dict[str, Any]) -> str:
    kinds = ", ".join(k.replace("_", " ") for k in p["kinds"])
    return f"{p['prompt_id']} #{p['sample']} pos {p['pos']} ({kinds}; prefix {p['prefix_tokens']} tokens)"


def logprob_line(doc: dict[str, Any], p: dict[str, Any]) -> str:
    """Recorded vs teacher-forced logprobs of each run's token at the position (nats)."""
    la, lb = doc["a"]["label"], doc["b"]["label"]
    parts = []
    rec = p["recorded"]
    tf = p["teacher_forced"]
    same = p.get("token_a") == p.get("token_b")
    for tok_key, label in (("token_a", "both runs" if same else f"{la}'s"), ("token_b", f"{lb}'s")):
        tok = p.get(tok_key)
        if tok is None or (same and tok_key == "token_b"):
            continue
        here = [
            f"{name} {tf[side]['token_logprobs'].get(str(tok), float('nan')):.3f}"
            for name, side in ((la, "a"), (lb, "b"), ("float64", "ref_a"))
        ]
        parts.append(f"token {tok} ({label}): " + ", ".join(here))
    recorded = f"recorded {la} {rec.get('logprob_a'):.3f}" if rec.get("logprob_a") is not None else "recorded"
    if rec.get("logprob_b") is not None:
        recorded += f", {lb} {rec['logprob_b']:.3f}"
    return recorded + " | teacher-forced here: " + "; ".join(parts)


def render(doc: dict[str, Any], console: Any) -> None:
    """Prints every position of doc on a rich Console."""
    from rich.table import Table

    la, lb = doc["a"]["label"], doc["b"]["label"]
    console.print(
        f"[bold]rig layers[/]: {la} ({doc['a']['dtype']}, {doc['a']['model']}) vs {lb} ({doc['b']['dtype']}, "
        f"{doc['b']['model']}); cells: cross-stack error / dtype baseline, bad above {doc['rule']['factor']:g}x "
        f"and {doc['rule']['floor_steps']:g} rounding steps"
    )
    if not doc["positions"]:
        console.print("nothing to open: the runs agree and `rig diff` lists no spike (use --prompt/--pos or --top)")
    for p in doc["positions"]:
        console.print()
        console.print(f"[bold]{position_title(p)}[/]: {p['cause']}")
        console.print("  " + logprob_line(doc, p))
        if p["recorded"].get("note"):
            console.print(f"  [yellow]{p['recorded']['note']}[/]")
        first = (p["first_bad"]["layer"], p["first_bad"]["block"]) if p["first_bad"] else None
        table = Table(box=None, pad_edge=False)
        table.add_column("layer", justify="right")
        for b in BLOCKS:
            table.add_column(BLOCK_NAMES[b], justify="right")
        table.add_column(f"{la} vs f64", justify="right")
        table.add_column(f"{lb} vs f64", justify="right")
        table.add_column("experts", justify="left")
        by = {(r["layer"], r["block"]): r for r in p["blocks"]}
        routers = {r["layer"]: r for r in p["router"]}
        embed = by[(None, "embed")]
        table.add_row(
            "embed",
            _cell(embed, first),
            "",
            "",
            "",
            _sci(embed["a_vs_ref"]["rel_l2"]),
            _sci(embed["b_vs_ref"]["rel_l2"]),
            "",
        )
        for layer in sorted(routers):
            r = routers[layer]
            resid = by[(layer, "resid")]
            experts = f"{r['experts_a']} {r['experts_b']}" if r["flip"] else str(r["experts_a"])
            table.add_row(
                str(layer),
                *[_cell(by[(layer, b)], first, flip=(b == "router" and r["flip"])) for b in BLOCKS],
                _sci(resid["a_vs_ref"]["rel_l2"]),
                _sci(resid["b_vs_ref"]["rel_l2"]),
                experts,
            )
        for name in ("norm", "logits"):
            row = by[(None, name)]
            table.add_row(
                name,
                _cell(row, first),
                "",
                "",
                "",
                _sci(row["a_vs_ref"]["rel_l2"]),
                _sci(row["b_vs_ref"]["rel_l2"]),
                "",
            )
        console.print(table)
    sel = doc.get("selection") or {}
    if sel.get("skipped"):
        console.print(f"\n{sel['skipped']} more positions not opened (--limit {sel.get('limit')})")
