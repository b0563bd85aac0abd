"""`rig report`: one self-contained HTML file comparing runs, that opens on an air-gapped box.

Everything is inline: the CSS, a few lines of JavaScript (tooltips, a prompt filter), and the plots as SVG drawn by
rig.report.svg. The first run is the baseline; every other run is diffed against it (rig.analysis.diff), and with
more than
two runs a pairwise matrix of share identical and median first divergence covers all pairs. Telemetry timelines
appear for runs that recorded them (rig.telemetry.recorder.load_telemetry); the section is skipped when there are none.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from rig import __version__
from rig.analysis.compare import ProgressFactory, task_level
from rig.analysis.diff import PairDiff, diff_runs
from rig.analysis.load import RunData, load_run
from rig.analysis.summary import floor_table, manifest_sections, matrix, summarize
from rig.errors import UserError
from rig.files import atomic_write_bytes, now_iso
from rig.report.assets import CSS, JS
from rig.report.svg import bar_chart, line_chart
from rig.report.terminal import SHOWN_CLASSES, SUMMARY_ROWS, TASK_COLUMNS, fmt, task_row
from rig.report.tokens import Decoder, diff_views

HOST_COLUMNS = ("proc_cpu_pct", "sys_cpu_pct", "cpu_percent", "rss_mib", "rss_tree_mib")
GPU_COLUMNS = (
    ("power_mw", "power (W)", 1e-3),
    ("temp_c", "temperature (C)", 1.0),
    ("sm_clock_mhz", "SM clock (MHz)", 1.0),
    ("gpu_util_pct", "GPU utilization (%)", 1.0),
)


def _load(path: str | Path, progress: ProgressFactory | None) -> RunData:
    return load_run(path, progress(f"loading {Path(path).name}") if progress else None)


def _reuse(loaded: list[RunData], path: str | Path) -> RunData | None:
    """The already loaded run at path, if any."""
    return next((r for r in loaded if r.path.resolve() == Path(path).resolve()), None)


def _scored_for(runs: list[RunData], scored: list[RunData]) -> dict[int, RunData]:
    """Which pair (0, j) each scored run belongs to: the run whose spec hash it carries (run 1 when only two)."""
    out: dict[int, RunData] = {}
    for s in scored:
        match = [j for j in range(1, len(runs)) if runs[j].manifest.get("spec_hash") == s.manifest.get("spec_hash")]
        if not match and len(runs) == 2:
            match = [1]
        if not match:
            raise UserError(f"{s.path}: scored run matches no run's spec hash; --scored pairs by spec hash")
        out[match[0]] = s
    return out


def build_report(
    runs: Sequence[str | Path],
    output: str | Path,
    *,
    scored: Sequence[str | Path] = (),
    floor: Sequence[str | Path] | None = None,
    tau: float | None = None,
    force: bool = False,
    max_prompts: int = 40,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Diffs every run against the first and writes the HTML report atomically; returns its path.

    sections: extra (title, HTML fragment) pairs appended to the page, such as the kernels table of `rig kernels
    --json` (rendered by kernels_check.report_html). A report may hold only sections and no runs.
    """
    if not runs and not sections:
        raise UserError("nothing to report: give run directories, or --kernels FILE")
    loaded = [_load(p, progress) for p in runs]
    by_pair = _scored_for(loaded, [_load(p, progress) for p in scored])
    floor_pair = None
    if floor:  # first: each pair's tau, spikes and verdict take the floor into account
        fa, fb = (_reuse(loaded, f) or _load(f, progress) for f in floor)
        floor_pair = diff_runs(fa, fb, tau=tau, force=force, decode_context=False)
    pairs = [
        diff_runs(loaded[0], loaded[j], tau=tau, force=force, scored=by_pair.get(j), floor=floor_pair)
        for j in range(1, len(loaded))
    ]
    summaries = {(0, j + 1): summarize(p) for j, p in enumerate(pairs)}
    if len(loaded) > 2:
        for i in range(1, len(loaded)):
            for j in range(i + 1, len(loaded)):
                p = diff_runs(loaded[i], loaded[j], tau=tau, force=force, decode_context=False, prefix_metrics="none")
                summaries[(i, j)] = summarize(p)
    page = render(loaded, pairs, summaries, floor_pair, max_prompts=max_prompts, seed=seed, sections=sections)
    return atomic_write_bytes(Path(output), page.encode("utf-8"), mode=0o644)


# ---- sections ------------------------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else escape(fmt(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """Markup that _table must not escape."""


def manifest_table(runs: list[RunData]) -> str:
    """Identity rows for every run, then every flattened manifest key whose value is not the same for all runs."""
    ident = [
        ("name", [r.name for r in runs]),
        ("path", [str(r.path) for r in runs]),
        ("kind", [r.manifest.get("kind") for r in runs]),
        ("status", [r.manifest.get("status") for r in runs]),
        ("sequences", [len(r.offsets) - 1 for r in runs]),
        ("tokens", [len(r.token_id) for r in runs]),
    ]
    flat = []
    for r in runs:
        f = {f"{sec}.{k}": v for sec, d in manifest_sections(r.manifest).items() for k, v in d.items()}
        env = r.manifest.get("environment")
        if env:
            from rig.telemetry.envinfo import flatten

            f.update({f"environment.{k}": v for k, v in flatten(env).items() if k != "captured_at"})
        flat.append(f)
    keys = sorted({k for f in flat for k in f})
    differ = [(k, [f.get(k) for f in flat]) for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    rows = [[k, *vals] for k, vals in ident + differ]
    note = f"<p>{len(differ)} manifest keys differ; keys equal in every run are not shown.</p>"
    return note + _table(["", *[r.name for r in runs]], rows, "manifest")


def summary_table(pairs: list[PairDiff], summaries: dict, floor_pair: PairDiff | None) -> str:
    cols = [(f"{p.a.name} vs {p.b.name}", summaries[(0, j + 1)], p.teacher) for j, p in enumerate(pairs)]
    if floor_pair is not None:
        cols.append((f"floor: {floor_pair.a.name} vs {floor_pair.b.name}", summarize(floor_pair), floor_pair.teacher))
    rows = []
    for label, where, key in SUMMARY_ROWS:
        row = [label]
        for _, summ, teacher in cols:
            src = summ if where == "summary" else teacher
            row.append(" / ".join(fmt(src.get(k)) for k in key) if isinstance(key, tuple) else src.get(key))
        rows.append(row)
    rows.append(["teacher-forced source", *[t.get("source") for _, _, t in cols]])
    return _table(["metric", *[c[0] for c in cols]], rows, "summary")


def matrix_tables(runs: list[RunData], summaries: dict) -> str:
    mats = matrix(summaries, len(runs))
    names = [r.name for r in runs]
    out = []
    for key, title in (("share_identical", "share identical"), ("median_first_divergence", "median first divergence")):
        rows = [[names[i], *mats[key][i]] for i in range(len(runs))]
        out.append(f"<h3>{title}</h3>" + _table(["", *names], rows, "matrix"))
    return "".join(out)


def _breakdown_table(data: dict[str, dict[str, Any]], title: str) -> str:
    keys = ("sequences", *(c.key for c in SHOWN_CLASSES))
    return _table([title, *keys], [[k, *(v[x] for x in keys)] for k, v in data.items()], "small")


def pair_section(
    pair: PairDiff, summ: dict[str, Any], floor_pair: PairDiff | None, max_prompts: int, seed: int, dec: Decoder
) -> str:
    title = f"{pair.a.name} vs {pair.b.name}"
    hist = summ["position_histogram"]
    plots = [
        bar_chart(
            hist["edges"], hist["counts"], "First divergence position", "position in the continuation", "sequences"
        )
    ]
    series = []
    for t in (pair.scored, pair.prefix):
        if t and t.get("by_position", {}).get("pos"):
            series.append(
                (
                    f"{t['source']} (mean {fmt(t.get('mean_abs_delta'))})",
                    t["by_position"]["pos"],
                    t["by_position"]["mean_abs_delta"],
                )
            )
    plots.append(line_chart(series, "Mean |delta logprob| per position", "position", "nats"))
    parts = [f'<section class="pair"><h2>{escape(title)}</h2><div class="plots">{"".join(plots)}</div>']
    if floor_pair is not None:
        ft = floor_table(
            {"summary": summ, "teacher": pair.teacher},
            {"summary": summarize(floor_pair), "teacher": floor_pair.teacher},
        )
        rows = [[r["metric"], r["cross"], r["floor"], _Raw(_clears(r["clears"])), r["rule"]] for r in ft]
        parts.append("<h3>Against the noise floor</h3>" + _table(["metric", "cross", "floor", "clears", "rule"], rows))
    parts.append(
        '<div class="grid">'
        + "".join(
            _breakdown_table(summ[k], t)
            for k, t in (("by_category", "category"), ("by_channel", "channel at d"), ("by_token_kind", "token at d"))
            if summ[k]
        )
        + "</div>"
    )
    task = task_level(pair, seed)
    if task:
        parts.append("<h3>Task level</h3>" + _table(TASK_COLUMNS, [task_row(task)]))
    parts.append(f"<h3>Token-level diff</h3>{diff_views(pair, max_prompts, dec)}</section>")
    return "".join(parts)


def _clears(c: bool | None) -> str:
    return {True: '<span class="bad">clears</span>', False: '<span class="ok">within floor</span>'}.get(c, "-")


def telemetry_section(runs: list[RunData]) -> str:
    """Timelines per run from telemetry/*.parquet; empty when no run has telemetry."""
    from rig.telemetry.results import load_telemetry

    out = []
    for r in runs:
        try:
            tables = load_telemetry(r.path)
        except Exception:  # noqa: BLE001 - unreadable telemetry is skipped, the diff still renders
            continue
        if not tables:
            continue
        bands = _bands(tables.get("phases"))
        plots = []
        host = tables.get("host")
        if host is not None and "t_s" in host.column_names and host.num_rows:
            t = host.column("t_s").to_numpy(zero_copy_only=False)
            cpu = [
                (c, t, host.column(c).to_numpy(zero_copy_only=False))
                for c in HOST_COLUMNS
                if c in host.column_names and ("pct" in c or c == "cpu_percent")
            ]
            mem = [
                (c, t, host.column(c).to_numpy(zero_copy_only=False))
                for c in HOST_COLUMNS
                if c in host.column_names and c.endswith("mib")
            ]
            plots.append(line_chart(cpu, "Host CPU", "seconds", "%", bands=bands))
            plots.append(line_chart(mem, "Host memory", "seconds", "MiB", bands=bands))
        gpu = tables.get("gpu")
        if gpu is not None and "t_s" in gpu.column_names and gpu.num_rows:
            t = gpu.column("t_s").to_numpy(zero_copy_only=False)
            idx = gpu.column("gpu_index").to_numpy(zero_copy_only=False) if "gpu_index" in gpu.column_names else None
            for col, label, scale in GPU_COLUMNS:
                if col not in gpu.column_names:
                    continue
                y = gpu.column(col).to_numpy(zero_copy_only=False).astype(float) * scale
                groups = sorted(set(idx.tolist())) if idx is not None else [None]
                series = [
                    (f"gpu {g}", t[idx == g] if g is not None else t, y[idx == g] if g is not None else y)
                    for g in groups
                ]
                plots.append(line_chart(series, f"GPU {label}", "seconds", label, bands=bands))
        if plots:
            out.append(f'<h3>{escape(r.name)}</h3><div class="plots">{"".join(plots)}</div>')
    return f"<section><h2>Telemetry</h2>{''.join(out)}</section>" if out else ""


def _bands(phases: Any) -> list[tuple[float, float, str]]:
    if phases is None or not {"start_s", "end_s", "name"} <= set(phases.column_names):
        return []
    rows = phases.select(["start_s", "end_s", "name"]).to_pylist()
    return [
        (float(p["start_s"]), float(p["end_s"]), str(p["name"]))
        for p in rows
        if p["start_s"] is not None and p["end_s"] is not None
    ]


def verdict_section(pairs: list[PairDiff], floor_pair: PairDiff | None) -> str:
    """The verdict of each pair in one line (what `rig diff` decides, with its default thresholds), and its spikes."""
    from rig.analysis.summary import diff_document

    items = []
    for p in pairs:
        doc = diff_document(p, floor=floor_pair)
        v = doc["verdict"]
        cls = "ok" if v["exit_code"] == 0 else "bad"
        spikes = doc["spikes"]
        spike_rows = [
            [
                s["prompt_id"],
                s["sample"],
                s["pos"],
                s["token"],
                fmt(s["logprob_a"]),
                fmt(s["logprob_b"]),
                fmt(s["abs_delta"]),
                _Raw(f"<code>{escape(s['localize'])}</code>"),
            ]
            for s in spikes[:10]
        ]
        spike_html = (
            f"<p>{len(spikes)} spike(s) on identical prefixes (largest first), each with the command that opens it "
            "layer by layer:</p>"
            + _table(("prompt", "sample", "pos", "token", "logprob A", "logprob B", "|delta|", "localize"), spike_rows)
            if spikes
            else ""
        )
        splits = [r for r in doc["sequences"] if r.get("localize")]
        split_html = (
            f"<details><summary>localize the {len(splits)} split(s) below the token (layer, block, router)</summary>"
            + "".join(f"<div><code>{escape(r['localize'])}</code></div>" for r in splits[:40])
            + "</details>"
            if splits
            else ""
        )
        items.append(
            f'<p><b>{escape(p.a.name)} vs {escape(p.b.name)}</b>: <span class="{cls}">{escape(v["line"])}</span></p>'
            f'<p class="meta">tau {fmt(doc["tau"])} nats: {escape(str(doc.get("tau_reason")))}</p>{spike_html}'
            f"{split_html}"
        )
    return f"<section><h2>Verdict</h2>{''.join(items)}</section>"


def render(
    runs: list[RunData],
    pairs: list[PairDiff],
    summaries: dict,
    floor_pair: PairDiff | None,
    *,
    max_prompts: int = 40,
    seed: int = 0,
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The whole HTML page."""
    dec = Decoder()
    now = now_iso()
    body = [
        f'<h1>rig report</h1><p class="meta">{len(runs)} runs'
        + (f" &middot; baseline {escape(runs[0].name)}" if runs else "")
        + f" &middot; generated {now} by rig {__version__}</p>",
        '<nav><input id="filter" type="search" placeholder="filter token views by prompt id"></nav>',
    ]
    if pairs:
        body.append(verdict_section(pairs, floor_pair))
        body.append(
            f"<section><h2>Summary</h2>{summary_table(pairs, summaries, floor_pair)}"
            '<p class="meta">Margins and deltas in nats. Near tie: both margins below tau at the first '
            "divergence. Teacher-forced numbers come from a scored run where given, else from the common "
            "prefix (docs/metrics.md).</p></section>"
        )
    if runs:
        body.append(f"<section><h2>Runs and manifests</h2>{manifest_table(runs)}</section>")
    if len(runs) > 2:
        body.append(f"<section><h2>Pairwise matrix</h2>{matrix_tables(runs, summaries)}</section>")
    for j, p in enumerate(pairs):
        body.append(pair_section(p, summaries[(0, j + 1)], floor_pair, max_prompts, seed, dec))
    body.append(telemetry_section(runs))
    body += [f"<section><h2>{escape(title)}</h2>{fragment}</section>" for title, fragment in sections]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rig report</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}"
        f'<div id="tip" hidden></div><script>{JS}</script></body></html>'
    )
