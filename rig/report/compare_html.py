"""The `rig compare` page: compare.json rendered as one self-contained HTML file (no network), deciding nothing.

The same table the terminal prints, then what a reader needs to believe it: accuracy per endpoint with its 95%
interval as a dot plot, each endpoint's paired comparison with the reference (difference, intervals, sign test over
prompts, McNemar), per-prompt pass rates side by side (where endpoints disagree on a question, and by how much), the
attempts behind each run (resumes, errors, retries), the choices the rig made and why, and the suite's provenance.
`render_page(doc)` is a pure function of the document.
"""

from __future__ import annotations

import html
import json
from typing import Any

from rig.report.assets import CSS

EXTRA_CSS = """
.bar{display:inline-block;height:10px;background:#1f77b4;vertical-align:middle}
td.rate{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#c62828;font-weight:600}.agree{color:#2e7d32;font-weight:600}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
table.page td{white-space:nowrap}table.page td:last-child{white-space:normal;min-width:220px}
"""


def _e(x: Any) -> str:
    return html.escape("-" if x is None else str(x))


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Any) -> str:
    return "" if not ci or ci[0] is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _table(head: list[str], rows: list[list[Any]], cls: str = "summary") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{th}</tr>{body}</table>'


def _main_table(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["rows"]:
        status = (
            '<span class="agree">complete</span>'
            if r["status"] == "complete"
            else f'<span class="failed">failed</span>: {_e(r["error"])}'
        )
        diff = "(reference)" if r["role"] == "reference" else "-"
        if r["diff_vs_reference"] is not None:
            diff = f"{100 * r['diff_vs_reference']:+.1f} pp{_ci(r['diff_ci95'])}"
        drift = "-"
        if r["drift_mean_abs_delta"] is not None:
            drift = f"{r['drift_mean_abs_delta']:.4f} ({_e(r['drift_source'])})"
        tps = (r.get("throughput") or {}).get("tokens_per_s")
        verdict = {0: '<span class="agree">agree</span>', 1: '<span class="failed">DIVERGED</span>'}.get(
            r["verdict_exit_code"], "-"
        )
        rows.append(
            [
                f"<b>{_e(r['endpoint'])}</b> ({_e(r['stack'])}, {_e(r['role'])})",
                status,
                _e(f"{_pct(r['accuracy'])}{_ci(r['accuracy_ci95'])}"),
                _e(diff),
                _e("-" if r["share_identical"] is None else f"{_pct(r['share_identical'])} of {r['sequences']}"),
                _e(r["confident"]),
                _e(drift),
                _e(None if tps is None else f"{tps:.1f}"),
                _e(r["retries"]),
                _e(r["failed_attempts"]),
                verdict + (f"<br><small>{_e(r['verdict'])}</small>" if r["verdict"] else ""),
            ]
        )
    head = ["endpoint", "status", "accuracy [95% CI]", "vs reference [95% CI]", "identical", "confident splits"]
    head += ["TF drift, nats", "tokens/s", "retries", "errors", "verdict"]
    return _table(head, rows, cls="summary page")


def _dot_plot(doc: dict[str, Any]) -> str:
    """Accuracy with its 95% interval per endpoint, as an inline SVG (0 to 100%)."""
    rows = [r for r in doc["rows"] if r["accuracy"] is not None]
    if not rows:
        return ""
    w, left, step = 640, 180, 26
    h = 30 + step * len(rows)
    x = lambda v: left + (w - left - 20) * v  # noqa: E731 - a one-line scale
    parts = [f'<svg class="plot" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{x(t):.1f}" y1="8" x2="{x(t):.1f}" y2="{h - 18}" stroke="#eee"/>')
        parts.append(f'<text class="tk" x="{x(t):.1f}" y="{h - 4}" text-anchor="middle">{int(100 * t)}%</text>')
    for i, r in enumerate(rows):
        y = 20 + step * i
        lo, hi = r["accuracy_ci95"] or [r["accuracy"], r["accuracy"]]
        color = "#d62728" if r["role"] == "reference" else "#1f77b4"
        parts.append(f'<text class="al" x="{left - 8}" y="{y + 4}" text-anchor="end">{_e(r["endpoint"])}</text>')
        parts.append(f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(r["accuracy"]):.1f}" cy="{y}" r="4" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _paired(doc: dict[str, Any]) -> str:
    rows = []
    for e in doc["endpoints"]:
        t = e.get("task")
        if not t:
            if e["role"] != "reference":
                rows.append([_e(e["name"]), *["-"] * 7, _e(e.get("diff_missing"))])
            continue
        pl = t.get("prompt_level") or {}
        rows.append(
            [
                _e(e["name"]),
                _e(f"{100 * t['diff']:+.1f} pp" if t.get("diff") is not None else None),
                _e(_ci(t.get("ci95")).strip()),
                _e(_ci(t.get("diff_ci95_two_level")).strip()),
                _e(None if t.get("diff_se") is None else f"{100 * t['diff_se']:.1f} pp"),
                _e(f"{pl.get('b_better')} / {pl.get('a_better')} / {pl.get('ties')}"),
                _e(f"{pl.get('sign_test_p', 1):.3g}"),
                _e(f"{t['a_only']} / {t['b_only']} (p {t['mcnemar_p']:.3g})"),
                "",
            ]
        )
    head = ["endpoint", "B - A", "95% CI, prompts", "95% CI, prompts and samples", "SE (clustered)"]
    head += ["prompts better / worse / tied", "sign test p", "samples A only / B only (McNemar)", "note"]
    return _table(head, rows)


def _pass_rates(doc: dict[str, Any], limit: int = 400) -> str:
    names = [e["name"] for e in doc["endpoints"] if e.get("accuracy")]
    if not names:
        return "<p>No endpoint has scored prompts.</p>"
    rates = {e["name"]: e["accuracy"]["pass_rates"] for e in doc["endpoints"] if e.get("accuracy")}
    prompts = list(dict.fromkeys(p for n in names for p in rates[n]))
    spread = {p: max(rates[n].get(p, 0) for n in names) - min(rates[n].get(p, 0) for n in names) for p in prompts}
    prompts.sort(key=lambda p: -spread[p])
    rows = []
    for p in prompts[:limit]:
        cells = []
        for n in names:
            v = rates[n].get(p)
            bar = "" if v is None else f'<span class="bar" style="width:{int(60 * v)}px"></span> '
            cells.append(f'<span class="rate">{bar}{_e(None if v is None else f"{v:.2f}")}</span>')
        rows.append([_e(p), *cells, _e(f"{spread[p]:.2f}")])
    note = f"<p>{len(prompts) - limit} more prompts not shown.</p>" if len(prompts) > limit else ""
    return _table(["prompt", *names, "spread"], rows) + note


def _attempts(doc: dict[str, Any]) -> str:
    rows = []
    for e in doc["endpoints"]:
        o = e["outcome"]
        for a in o["attempts"]:
            req = a.get("requests") or {}
            rows.append(
                [
                    _e(e["name"]),
                    _e(a.get("at")),
                    _e(a.get("action")),
                    _e(a.get("tokens")),
                    _e(a.get("generate_s")),
                    _e(req.get("retries")),
                    _e(a.get("error")),
                ]
            )
        if o.get("score_status") not in (None, "complete"):
            rows.append(
                [_e(e["name"]), "", "teacher-forcing", "", "", "", _e(o.get("score_error") or o["score_status"])]
            )
    return _table(["endpoint", "at", "action", "tokens", "generate s", "retries", "error"], rows)


def render_page(doc: dict[str, Any]) -> str:
    """The whole page (one HTML string) for a compare document."""
    s, sm = doc["suite"], doc["sampling"]
    color = {0: "agree", 1: "failed"}.get(doc["exit_code"], "failed")
    choices = "".join(
        f"<li><b>{_e(c['endpoint'])}</b>: {_e(c['choice'])} ({_e(c['reason'])})</li>" for c in doc.get("choices") or []
    )
    source = s.get("source")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rig compare</title>"
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>"
        f"<h1>rig compare</h1><p class='{color}'>{_e(doc['line'])}</p>"
        f"<p class='meta'>suite {_e(s['name'])} ({_e(s['n_prompts'])} prompts, hash {_e(s['hash'])}), "
        f"x{_e(sm['samples'])} samples at T={_e(sm['temperature'])}, seed {_e(sm['seed'])}"
        f"{', coupled noise' if sm['coupled'] else ''}; reference {_e(doc['reference'])}"
        f"{', floor ' + _e(doc['floor']) if doc['floor'] else ''}; {_e(doc['created_at'])}</p>"
        f"<h2>Endpoints</h2>{_main_table(doc)}{_dot_plot(doc)}"
        f"<h2>Paired comparison with the reference</h2>{_paired(doc)}"
        f"<h2>Pass rate per prompt</h2><p class='meta'>Largest spread between endpoints first.</p>{_pass_rates(doc)}"
        f"<h2>Attempts</h2>{_attempts(doc)}"
        + (f"<h2>Choices the rig made</h2><ul>{choices}</ul>" if choices else "")
        + (f"<h2>Suite provenance</h2><pre>{_e(json.dumps(source, indent=1))}</pre>" if source else "")
        + "</body></html>"
    )
