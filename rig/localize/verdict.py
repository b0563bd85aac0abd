"""Per position: every block's errors, the router decisions, the first bad block and the one-line cause.

The rule (docs/layers.md, "The first bad block"). For each block, in forward order (embedding; per layer attention,
router, MoE, residual; final norm; logits):
- `cross` is the error between the two stacks, `a` and `b` each stack's error against the float64 run of its own
  checkpoint, all as relative L2 (||x - y|| / ||reference||) and in rounding steps of the coarser dtype;
- the block's *baseline* is what rounding in that dtype explains: the smaller of the two stacks' errors against
  float64 (among the stacks of the coarser dtype, when the dtypes differ). This is FlashAttention's test turned
  symmetric: a kernel passes when its error is within a factor of a plain same-dtype computation's error, and here
  the better of the two stacks is that same-dtype computation;
- a block is *bad* when cross > FACTOR x baseline and cross > FLOOR_STEPS rounding steps. Two stacks that each round
  honestly differ by at most about the sum of their errors (under 2x the larger), so with FACTOR 4 a bad block is
  one where one stack (or one checkpoint) computes something else.
A *router flip* is a layer where the two stacks' chosen expert sets differ; its margins are each stack's gap between
its k-th and (k+1)-th router logits. The cause is whichever comes first in forward order: a flip (at its router), or
the first bad block; else "no block stands out: accumulated rounding".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rig.localize.capture import BLOCK_NAMES, BLOCKS, Rows
from rig.localize.metrics import coarser, compare, router_margin

FACTOR = 4.0  # cross error over the dtype baseline that makes a block bad
FLOOR_STEPS = 4.0  # ... and the cross error must exceed this many rounding steps (at the tensor's largest element)


def block_order(n_layers: int) -> list[tuple[int | None, str]]:
    """(layer, block) in forward order; layer None for embed, norm and logits."""
    order: list[tuple[int | None, str]] = [(None, "embed")]
    order += [(i, b) for i in range(n_layers) for b in BLOCKS]
    return order + [(None, "norm"), (None, "logits")]


def key(layer: int | None, block: str) -> str:
    return block if layer is None else f"{layer}.{block}"


def compare_position(
    a: Rows,
    b: Rows,
    ref_a: Rows,
    ref_b: Rows,
    *,
    n_layers: int,
    dtypes: tuple[str, str],
    labels: tuple[str, str],
    fresh: tuple[Rows | None, Rows | None] = (None, None),
    same_checkpoint: bool = True,
    factor: float = FACTOR,
    floor_steps: float = FLOOR_STEPS,
) -> dict[str, Any]:
    """{"blocks", "router", "first_bad", "router_flip", "cause"} for one position (see the module docstring)."""
    coarse = coarser(*dtypes)
    judged = [i for i in (0, 1) if dtypes[i] == coarse]
    blocks = []
    for layer, block in block_order(n_layers):
        name = key(layer, block)
        cross = compare(a[name], b[name], coarse, scale=ref_a[name])
        errs = [compare(a[name], ref_a[name], dtypes[0]), compare(b[name], ref_b[name], dtypes[1])]
        baseline = min(errs[i]["rel_l2"] for i in judged)
        ratio = _ratio(cross["rel_l2"], baseline)
        row = {
            "layer": layer,
            "block": block,
            "cross": cross,
            "a_vs_ref": errs[0],
            "b_vs_ref": errs[1],
            "baseline": baseline,
            "ratio": ratio,
            "bad": bool(ratio > factor and cross["steps"] > floor_steps),
        }
        for side, rows, dtype, ref in (("a", fresh[0], dtypes[0], ref_a), ("b", fresh[1], dtypes[1], ref_b)):
            fname = name + ".fresh"
            if rows is not None and fname in rows:
                row[f"fresh_{side}_vs_ref"] = compare(rows[fname], ref[name], dtype)
        blocks.append(row)
    router = [_router_layer(i, a, b, ref_a, ref_b, fresh) for i in range(n_layers)]
    first_bad = next((r for r in blocks if r["bad"]), None)
    flip = next((r for r in router if r["flip"]), None)
    return {
        "blocks": blocks,
        "router": router,
        "first_bad": _first_bad(first_bad, same_checkpoint, labels) if first_bad else None,
        "router_flip": flip,
        "cause": cause(first_bad, flip, n_layers, coarse, labels, same_checkpoint),
    }


def _ratio(cross: float, baseline: float) -> float:
    if not math.isfinite(cross):
        return math.inf
    if cross == 0.0:
        return 0.0
    return cross / baseline if baseline > 0 else math.inf


def _experts(rows: Rows, layer: int, suffix: str = "") -> list[int]:
    return [int(e) for e in np.asarray(rows[f"{layer}.experts{suffix}"]).ravel()]


def _router_layer(i: int, a: Rows, b: Rows, ref_a: Rows, ref_b: Rows, fresh: tuple[Any, Any]) -> dict[str, Any]:
    ea, eb, ra, rb = _experts(a, i), _experts(b, i), _experts(ref_a, i), _experts(ref_b, i)
    out = {
        "layer": i,
        "experts_a": ea,
        "experts_b": eb,
        "experts_ref_a": ra,
        "experts_ref_b": rb,
        "weights_a": [float(w) for w in np.ravel(a[f"{i}.weights"])],
        "weights_b": [float(w) for w in np.ravel(b[f"{i}.weights"])],
        "margin_a": router_margin(a[f"{i}.router"], len(ea)),
        "margin_b": router_margin(b[f"{i}.router"], len(eb)),
        "margin_ref_a": router_margin(ref_a[f"{i}.router"], len(ra)),
        "margin_ref_b": router_margin(ref_b[f"{i}.router"], len(rb)),
        "flip": set(ea) != set(eb),
        "a_matches_ref": set(ea) == set(ra),
        "b_matches_ref": set(eb) == set(rb),
    }
    for side, rows in (("a", fresh[0]), ("b", fresh[1])):
        if rows is not None and f"{i}.experts.fresh" in rows:
            out[f"experts_fresh_{side}"] = _experts(rows, i, ".fresh")
    return out


def _first_bad(row: dict[str, Any], same_checkpoint: bool, labels: tuple[str, str]) -> dict[str, Any]:
    ea, eb = row["a_vs_ref"]["rel_l2"], row["b_vs_ref"]["rel_l2"]
    if not same_checkpoint:
        culprit = "checkpoints"
    else:
        culprit = "a" if ea >= eb else "b"
    return {
        "layer": row["layer"],
        "block": row["block"],
        "ratio": row["ratio"],
        "steps": row["cross"]["steps"],
        "culprit": culprit,
        "culprit_label": {"a": labels[0], "b": labels[1]}.get(culprit, "the checkpoints"),
    }


def _fmt_set(experts: list[int]) -> str:
    return "{" + ",".join(str(e) for e in experts) + "}"


def _fmt_margin(m: float | None) -> str:
    return "n/a" if m is None else f"{m:.2g}"


def _where(layer: int | None, block: str) -> str:
    return f"{BLOCK_NAMES[block]} at layer {layer}" if layer is not None else f"the {BLOCK_NAMES[block]}"


def cause(
    bad: dict[str, Any] | None,
    flip: dict[str, Any] | None,
    n_layers: int,
    dtype: str,
    labels: tuple[str, str],
    same_checkpoint: bool,
) -> str:
    """The one line per position (see the module docstring for which event wins)."""
    order = block_order(n_layers)
    bad_at = order.index((bad["layer"], bad["block"])) if bad else None
    flip_at = order.index((flip["layer"], "router")) if flip else None
    la, lb = labels
    if flip is not None and (bad_at is None or flip_at <= bad_at):
        if same_checkpoint:
            agrees = [lab for lab, ok in ((la, flip["a_matches_ref"]), (lb, flip["b_matches_ref"])) if ok]
            verdict = f"float64 picks {_fmt_set(flip['experts_ref_a'])}" + (f" with {agrees[0]}" if agrees else "")
        else:
            verdict = (
                f"float64 picks {_fmt_set(flip['experts_ref_a'])} on {la}'s checkpoint, "
                f"{_fmt_set(flip['experts_ref_b'])} on {lb}'s"
            )
        return (
            f"router flip at layer {flip['layer']} (experts {_fmt_set(flip['experts_a'])} vs "
            f"{_fmt_set(flip['experts_b'])}, margin {_fmt_margin(flip['margin_a'])} {la} / "
            f"{_fmt_margin(flip['margin_b'])} {lb}; {verdict})"
        )
    if bad is not None:
        ratio = bad["ratio"]
        times = "inf" if not math.isfinite(ratio) else f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
        line = f"{_where(bad['layer'], bad['block'])} exceeds its {dtype} baseline {times}x"
        if not same_checkpoint:
            return line + " (the checkpoints differ; each stack is compared with its own float64 reference)"
        ea, eb = bad["a_vs_ref"]["rel_l2"], bad["b_vs_ref"]["rel_l2"]
        worse, better = (la, lb) if ea >= eb else (lb, la)
        spread = _ratio(max(ea, eb), min(ea, eb))
        far = "inf" if not math.isfinite(spread) else f"{spread:.0f}" if spread >= 10 else f"{spread:.1f}"
        return line + f" ({worse} is {far}x further from float64 than {better})"
    return "no block stands out: accumulated rounding"
