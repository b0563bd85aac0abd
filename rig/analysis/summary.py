"""What a diff concludes: aggregates, the manifest comparison, the noise-floor table and the exit-code verdict.

rig.analysis.diff computes per-sequence columns for a pair of runs; this module turns them into the numbers people
read and
CI gates on, and into one JSON document (`rig diff --json`) whose "sequences" list loads with pandas.json_normalize.
Definitions, the floor rule and the thresholds: docs/metrics.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rig.analysis.diff import PairDiff
from rig.analysis.results import CLASSES
from rig.analysis.stats import bootstrap_paired, clears_rate, clears_value, sign_test_p
from rig.harmony import CHANNELS

DOC_VERSION = 1
N_BINS = 20


@dataclass(frozen=True)
class Thresholds:
    """What `rig diff` tolerates before exiting 1. None disables a check."""

    max_divergent_share: float | None = None  # share of sequences that diverge anywhere
    max_confident: int | None = 0  # sequences whose first divergence is a confident disagreement
    max_mean_abs_delta: float | None = None  # teacher-forced mean |delta logprob|, nats
    max_spikes: int | None = None  # isolated |delta| spikes on identical prefixes (None: reported, never fail)
    alpha: float = 0.01  # level of the floor tests (one-sided)
    min_effect: float | None = None  # nats of drift excess over the floor that count (None: half a logit rounding step)


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _counts(cls: np.ndarray) -> dict[str, int]:
    c = np.bincount(cls.astype(np.int64), minlength=len(CLASSES))
    return {name: int(c[i]) for i, name in enumerate(CLASSES)}


def histogram(d: np.ndarray, max_len: int, n_bins: int = N_BINS) -> dict[str, list[int]]:
    """First-divergence positions in integer bins [edges[i], edges[i+1]) of equal width covering 0..max_len."""
    width = max(1, math.ceil(max(max_len, 1) / n_bins))
    edges = list(range(0, width * (math.ceil(max(max_len, 1) / width) + 1), width))
    counts = np.bincount(d // width, minlength=len(edges) - 1)[: len(edges) - 1] if len(d) else np.zeros(len(edges) - 1)
    return {"edges": edges, "counts": [int(x) for x in counts]}


def summarize(pair: PairDiff) -> dict[str, Any]:
    """Aggregates over the matched sequences: shares, class counts, median first divergence, histogram, breakdowns."""
    s = pair.seq
    n = len(s.d)
    div = s.d >= 0
    counts = _counts(s.cls)
    n_div = int(div.sum())
    greedy = pair.mode.get("mode") == "greedy"
    out: dict[str, Any] = {
        "sequences": n,
        "identical": counts["identical"],
        "divergent": n_div,
        "share_identical": _f(counts["identical"] / n) if n else None,
        "share_divergent": _f(n_div / n) if n else None,
        **{k: counts[k] for k in CLASSES[1:]},
        "confident_share": _f(counts["confident"] / n) if n else None,
        "vllm_rule_holds": int((s.vllm_rule & div).sum()) if greedy else None,
        "vllm_rule_fails": int((~s.vllm_rule & div).sum()) if greedy else None,
        "median_first_divergence": _f(np.median(s.d[div])) if n_div else None,
        "position_histogram": histogram(s.d[div], int(max(s.len_a.max(initial=0), s.len_b.max(initial=0)))),
        "dropped_prompts": len(pair.dropped),
        "unmatched_sequences": pair.unmatched,
    }
    out["by_category"] = _breakdown(s.category, s.cls, None)
    out["by_channel"] = _breakdown(np.array([CHANNELS[c] if c >= 0 else "" for c in s.channel]), s.cls, div)
    kind = np.where(s.special, "special", "text")
    out["by_token_kind"] = _breakdown(kind, s.cls, div)
    return out


def _breakdown(labels: np.ndarray, cls: np.ndarray, mask: np.ndarray | None) -> dict[str, dict[str, Any]]:
    if mask is not None:
        labels, cls = labels[mask], cls[mask]
    out = {}
    for label in sorted(set(labels.tolist())):
        sel = labels == label
        c = _counts(cls[sel])
        n = int(sel.sum())
        out[str(label)] = {
            "sequences": n,
            **c,
            "divergent": n - c["identical"],
            "share_identical": _f(c["identical"] / n) if n else None,
        }
    return out


def rows(pair: PairDiff) -> list[dict[str, Any]]:
    """One JSON-ready dict per matched sequence (flat, for pandas.json_normalize)."""
    s, a = pair.seq, pair.a
    greedy = pair.mode.get("mode") == "greedy"
    ctx = iter(pair.context)
    out = []
    for i in range(len(s.d)):
        d = int(s.d[i])
        div = d >= 0
        c = next(ctx, {}) if div and pair.context else {}
        out.append(
            {
                "prompt_id": a.prompt_ids[int(s.prompt[i])],
                "sample": int(s.sample[i]),
                "category": str(s.category[i]),
                "identical": not div,
                "first_divergence": d if div else None,
                "len_a": int(s.len_a[i]),
                "len_b": int(s.len_b[i]),
                "token_a": int(s.token_a[i]) if div and s.token_a[i] >= 0 else None,
                "token_b": int(s.token_b[i]) if div and s.token_b[i] >= 0 else None,
                "margin_a": _f(s.margin_a[i]),
                "margin_b": _f(s.margin_b[i]),
                "class": CLASSES[int(s.cls[i])],
                "vllm_rule": bool(s.vllm_rule[i]) if div and greedy else None,
                "mean_abs_delta_prefix": _f(s.mean_abs_delta[i]) if s.mean_abs_delta is not None else None,
                "channel": CHANNELS[int(s.channel[i])] if div else None,
                "token_kind": ("special" if s.special[i] else "text") if div else None,
                "context_before": c.get("before"),
                "continuation_a": c.get("a"),
                "continuation_b": c.get("b"),
            }
        )
    return out


# ---- manifests ---------------------------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = value
    return out


def manifest_sections(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flattened manifest sections compared between runs: run, spec, stack (resolved values), model, suite."""
    stack = m.get("stack") or {}
    resolved = {
        k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
        for k, v in (stack.get("resolved") or {}).items()
    }
    return {
        "run": {"kind": m.get("kind"), "status": m.get("status"), "spec_hash": m.get("spec_hash")},
        "spec": _flat(m.get("spec") or {}),
        "stack": _flat({"stack": stack.get("stack"), **resolved}),
        "model": _flat(m.get("model") or {}),
        "suite": _flat(m.get("suite") or {}),
    }


def manifest_diff(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"section", "key", "a", "b"}] for every differing leaf: run, spec, resolved stack, model, suite, environment."""
    out = []
    sa, sb = manifest_sections(ma), manifest_sections(mb)
    for section in sa:
        fa, fb = sa[section], sb[section]
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key) or (key in fa) != (key in fb):
                out.append({"section": section, "key": key, "a": fa.get(key), "b": fb.get(key)})
    ea, eb = ma.get("environment"), mb.get("environment")
    if ea or eb:
        from rig.telemetry.envinfo import diff as env_diff

        pairs = env_diff(ea or {}, eb or {})
        out += [{"section": "environment", "key": k, "a": va, "b": vb} for k, va, vb in pairs]
    return out


def matrix(pairs: dict[tuple[int, int], dict[str, Any]], n: int) -> dict[str, list[list[float | None]]]:
    """Pairwise matrices (n x n) of share identical and median first divergence from summaries keyed (i, j)."""
    share = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    median = [[None] * n for _ in range(n)]
    for (i, j), summ in pairs.items():
        share[i][j] = share[j][i] = summ["share_identical"]
        median[i][j] = median[j][i] = summ["median_first_divergence"]
    return {"share_identical": share, "median_first_divergence": median}


# ---- floor and verdict -------------------------------------------------------------------------------------------

RATE_METRICS = (  # name, numerator key, denominator key, where (summary or teacher)
    ("share_divergent", "divergent", "sequences", "summary"),
    ("confident_share", "confident", "sequences", "summary"),
    ("top1_disagreement", "top1_disagreements", "n_positions", "teacher"),
)
VALUE_METRICS = ("mean_abs_delta", "p99_abs_delta", "max_abs_delta", "mean_kl")


def floor_table(cross: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, Any]]:
    """Each floor-checked metric: {"metric", "cross", "floor", "clears", "p", "rule"} (docs/metrics.md, "Floor")."""
    out = []
    for name, num, den, where in RATE_METRICS:
        c, f = cross[where], floor[where]
        x, n, xf, nf = c.get(num), c.get(den), f.get(num), f.get(den)
        if None in (x, n, xf, nf):
            verdict = {"clears": None, "p": None, "rule": "no data"}
            cv = fv = None
        else:
            verdict = clears_rate(x, n, xf, nf)
            cv, fv = (x / n if n else None), (xf / nf if nf else None)
        out.append({"metric": name, "cross": _f(cv), "floor": _f(fv), **verdict})
    for name in VALUE_METRICS:
        cv, fv = cross["teacher"].get(name), floor["teacher"].get(name)
        out.append({"metric": name, "cross": _f(cv), "floor": _f(fv), **clears_value(cv, fv)})
    return out


def drift_test(cross: PairDiff, floor: PairDiff, alpha: float, min_effect: float | None = None) -> dict[str, Any]:
    """Does the cross pair drift more than the floor pair? A paired one-sided sign test over sequences of their
    common-prefix mean |delta| (nats), matched by (prompt, sample), with the effect size beside it.

    clears: p < alpha and the mean excess exceeds half a rounding step of the logits (what the precision explains).
    """

    def keyed(pair: PairDiff) -> dict[tuple[str, int], float]:
        s = pair.seq
        vals = s.mean_abs_delta if s.mean_abs_delta is not None else np.full(len(s.d), np.nan)
        return {(pair.a.prompt_ids[int(p)], int(m)): float(v) for p, m, v in zip(s.prompt, s.sample, vals, strict=True)}

    c, f = keyed(cross), keyed(floor)
    keys = [k for k in c if k in f and np.isfinite(c[k]) and np.isfinite(f[k])]
    cv, fv = np.array([c[k] for k in keys]), np.array([f[k] for k in keys])
    diff = cv - fv
    n_up, n_down = int((diff > 0).sum()), int((diff < 0).sum())
    p = sign_test_p(n_up, n_down)
    boot = bootstrap_paired(fv, cv, seed=0) if len(keys) else {"diff": None, "lo": None, "hi": None}
    if min_effect is None:
        min_effect = cross.tau_info.get("grid", 0.0) / 2 if cross.tau_info.get("grid") else 0.0
    effect = boot["diff"]
    clears = bool(len(keys) and p < alpha and effect is not None and effect > min_effect)
    return {
        "test": "paired sign test over sequences, one-sided: cross mean |delta| > floor mean |delta|",
        "sequences": len(keys),
        "higher": n_up,
        "lower": n_down,
        "p": p,
        "alpha": alpha,
        "effect_nats": _f(effect),
        "effect_ci95": [_f(boot["lo"]), _f(boot["hi"])],
        "min_effect_nats": min_effect,
        "cross_mean": _f(cv.mean()) if len(cv) else None,
        "floor_mean": _f(fv.mean()) if len(fv) else None,
        "clears": clears,
    }


def verdict(doc: dict[str, Any], th: Thresholds, drift: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"exit_code": 0 or 1, "failed": [...], "within_floor": [...], "line": one sentence} (docs/metrics.md,
    "Verdict").

    Confident splits (margins at or above tau) fail beyond max_confident; with a floor whose own replicates split
    confidently, only a confident share that clears the floor's (two-proportion test at alpha) fails. With a floor,
    drift that clears it (drift_test) fails. User thresholds on the divergent share and the mean |delta| fail when
    set. Spikes fail only beyond --max-spikes.
    """
    summ, teacher = doc["summary"], doc["teacher_forced"]
    floor_summ = (doc.get("floor") or {}).get("summary")
    failed, within = [], []
    n_conf = summ.get("confident") or 0
    if th.max_confident is not None and n_conf > th.max_confident:
        entry = {"metric": "confident", "value": n_conf, "limit": th.max_confident}
        if floor_summ and (floor_summ.get("confident") or 0) > 0:
            test = clears_rate(n_conf, summ["sequences"], floor_summ["confident"], floor_summ["sequences"], th.alpha)
            entry["floor_test"] = test
            (failed if test["clears"] else within).append(entry)
        else:
            failed.append(entry)
    for metric, value, limit in (
        ("share_divergent", summ.get("share_divergent"), th.max_divergent_share),
        ("mean_abs_delta", teacher.get("mean_abs_delta"), th.max_mean_abs_delta),
        ("spikes", len(doc.get("spikes") or []), th.max_spikes),
    ):
        if limit is not None and value is not None and value > limit:
            failed.append({"metric": metric, "value": value, "limit": limit})
    if drift is not None:
        entry = {
            "metric": "drift_vs_floor",
            "value": drift["effect_nats"],
            "limit": drift["min_effect_nats"],
            "p": drift["p"],
        }
        (failed if drift["clears"] else within).append(entry)
    code = 1 if failed else 0
    return {
        "exit_code": code,
        "failed": failed,
        "within_floor": within,
        "thresholds": asdict(th),
        "line": verdict_line(doc, failed, drift),
    }


def verdict_line(doc: dict[str, Any], failed: list[dict[str, Any]], drift: dict[str, Any] | None) -> str:
    """The verdict in one sentence, with its reason."""
    s = doc["summary"]
    tau = doc.get("tau")
    head = (
        f"{s['identical']} of {s['sequences']} sequences identical; {s.get('confident', 0)} confident, "
        f"{s.get('near_tie', 0)} near-tie, {s.get('sampled', 0)} sampled splits (tau {tau:.3g} nats)"
    )
    if drift is not None:
        head += (
            f"; drift {drift['cross_mean'] or 0:.3g} vs floor {drift['floor_mean'] or 0:.3g} nats "
            f"(excess {drift['effect_nats'] or 0:.3g}, sign test p={drift['p']:.2g})"
        )
    if not failed:
        return f"AGREE: {head}."
    reasons = ", ".join(
        f"{f['metric']} {f['value']:.3g} > {f['limit']:.3g}"
        if isinstance(f["value"], float)
        else f"{f['metric']} {f['value']} > {f['limit']}"
        for f in failed
    )
    return f"DIVERGED ({reasons}): {head}."


def pair_document(pair: PairDiff, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready description of one pair (without the per-sequence rows)."""
    return {
        "a": _run_ref(pair.a),
        "b": _run_ref(pair.b),
        "tau": pair.tau,
        "tau_reason": pair.tau_info.get("why"),
        "logit_grid": pair.tau_info.get("grids"),
        "sampling": pair.mode,
        "prompts": {"compared": len(pair.common), "dropped": pair.dropped},
        "summary": summarize(pair),
        "teacher_forced": pair.teacher,
        "teacher_forced_prefix": pair.prefix,
        "task": task,
    }


def _run_ref(run: Any) -> dict[str, Any]:
    m = run.manifest
    return {
        "path": str(run.path),
        "name": run.name,
        "spec_hash": m.get("spec_hash"),
        "kind": m.get("kind"),
        "stack": (m.get("stack") or {}).get("stack") or (m.get("spec") or {}).get("stack"),
    }


def diff_document(
    cross: PairDiff,
    *,
    floor: PairDiff | None = None,
    thresholds: Thresholds = Thresholds(),
    task: dict[str, Any] | None = None,
    floor_task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole `rig diff` result: pair documents, manifest diff, floor table, per-sequence rows and the verdict."""
    doc = {"rig_diff": DOC_VERSION, **pair_document(cross, task)}
    doc["manifest_diff"] = manifest_diff(cross.a.manifest, cross.b.manifest)
    doc["floor"] = pair_document(floor, floor_task) if floor is not None else None
    doc["floor_check"] = (
        floor_table(
            {"summary": doc["summary"], "teacher": doc["teacher_forced"]},
            {"summary": doc["floor"]["summary"], "teacher": doc["floor"]["teacher_forced"]},
        )
        if floor is not None
        else None
    )
    doc["spikes"] = [{**s, "localize": _localize(cross, s["prompt_id"], s["pos"], s["sample"])} for s in cross.spikes]
    doc["drift_vs_floor"] = (
        drift_test(cross, floor, thresholds.alpha, thresholds.min_effect) if floor is not None else None
    )
    doc["sequences"] = rows(cross)
    for r in doc["sequences"]:
        if r["first_divergence"] is not None and r["class"] != "prefix":
            r["localize"] = _localize(cross, r["prompt_id"], r["first_divergence"], r["sample"])
    doc["verdict"] = verdict(doc, thresholds, doc["drift_vs_floor"])
    return doc


def _localize(pair: PairDiff, prompt_id: str, pos: int, sample: int) -> str:
    """The `rig layers` command that explains one split or spike (docs/layers.md)."""
    from rig.localize.targets import command_line

    return command_line(pair.a.path, pair.b.path, prompt_id, pos, sample)


def clean(o: Any) -> Any:
    """A JSON-safe copy: NumPy scalars and arrays to Python, NaN and inf to None, other objects to str."""
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    if isinstance(o, bool | np.bool_):
        return bool(o)
    if isinstance(o, int | np.integer):
        return int(o)
    if isinstance(o, float | np.floating):
        return _f(o)
    if o is None or isinstance(o, str):
        return o
    return str(o)


def dumps(doc: dict[str, Any]) -> str:
    """JSON text (NaN written as null)."""
    return json.dumps(clean(doc), indent=1, allow_nan=False)
