"""Inline SVG plots for the HTML report: bars, lines with phase bands, drawn here so the page needs no network.

matplotlib would do, but a report must open on an air-gapped box and render in milliseconds; a few dozen lines of
SVG per chart cover what the report draws (a histogram, per-position curves, telemetry timelines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
W, H = 600, 220
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 58, 12, 24, 36
MAX_POINTS = 1200


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.1e}"
    return f"{x:.4g}"


def _frame(
    title: str, xlabel: str, ylabel: str, x0: float, x1: float, y0: float, y1: float
) -> tuple[list[str], callable]:
    pw, ph = W - M_LEFT - M_RIGHT, H - M_TOP - M_BOTTOM
    sx = pw / (x1 - x0) if x1 > x0 else 1.0
    sy = ph / (y1 - y0) if y1 > y0 else 1.0

    def xy(x: np.ndarray | float, y: np.ndarray | float):
        return M_LEFT + (np.asarray(x, float) - x0) * sx, M_TOP + ph - (np.asarray(y, float) - y0) * sy

    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img"><title>{escape(title)}</title>',
        f'<text x="{M_LEFT}" y="15" class="pt">{escape(title)}</text>',
        f'<rect x="{M_LEFT}" y="{M_TOP}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>',
    ]
    for t in _ticks(y0, y1):
        _, py = xy(x0, t)
        parts.append(
            f'<line x1="{M_LEFT}" x2="{M_LEFT + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
            f'<text x="{M_LEFT - 4}" y="{py + 3:.1f}" text-anchor="end" class="tk">{_num(t)}</text>'
        )
    for t in _ticks(x0, x1, 8):
        px, _ = xy(t, y0)
        parts.append(f'<text x="{px:.1f}" y="{M_TOP + ph + 13}" text-anchor="middle" class="tk">{_num(t)}</text>')
    parts.append(f'<text x="{M_LEFT + pw / 2}" y="{H - 4}" text-anchor="middle" class="al">{escape(xlabel)}</text>')
    parts.append(
        f'<text transform="translate(12,{M_TOP + ph / 2}) rotate(-90)" text-anchor="middle" class="al">'
        f"{escape(ylabel)}</text>"
    )
    return parts, xy


def bar_chart(edges: Sequence[float], counts: Sequence[float], title: str, xlabel: str, ylabel: str = "count") -> str:
    """Bars over [edges[i], edges[i+1]); returns an <svg> element."""
    if not len(counts):
        return empty(title)
    top = max(max(counts), 1)
    parts, xy = _frame(title, xlabel, ylabel, float(edges[0]), float(edges[-1]), 0.0, top * 1.05)
    for i, c in enumerate(counts):
        (xa, xb), (ya, yb) = xy([edges[i], edges[i + 1]], [0, c])
        parts.append(
            f'<rect x="{xa + 0.5:.1f}" y="{yb:.1f}" width="{max(xb - xa - 1, 0.5):.1f}" '
            f'height="{ya - yb:.1f}" fill="{PALETTE[0]}"><title>[{_num(edges[i])}, {_num(edges[i + 1])}): '
            f"{_num(c)}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_POINTS:
        return x, y
    idx = np.linspace(0, len(x) - 1, MAX_POINTS).astype(np.int64)
    return x[idx], y[idx]


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    bands: Sequence[tuple[float, float, str]] = (),
    log_y: bool = False,
) -> str:
    """Lines (label, x, y) with a legend, optional shaded (start, end, label) bands; returns an <svg> element."""
    clean = []
    for label, x, y in series:
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        if ok.any():
            clean.append((label, *_thin(x[ok], np.log10(y[ok]) if log_y else y[ok])))
    if not clean:
        return empty(title)
    xs = np.concatenate([c[1] for c in clean])
    ys = np.concatenate([c[2] for c in clean])
    y0, y1 = float(ys.min()), float(ys.max())
    if not log_y:
        y0 = min(y0, 0.0)
    pad = (y1 - y0) * 0.05 or 1.0
    x0, x1 = float(xs.min()), float(xs.max())
    if x1 == x0:
        x1 = x0 + 1
    parts, xy = _frame(title, xlabel, f"log10 {ylabel}" if log_y else ylabel, x0, x1, y0, y1 + pad)
    for i, (start, end, label) in enumerate(bands):
        (xa, xb), _ = xy([max(start, x0), min(end, x1)], [0, 0])
        if xb > xa:
            fill = "#f4f4f4" if i % 2 else "#e8eef7"
            parts.append(
                f'<rect x="{xa:.1f}" y="{M_TOP}" width="{xb - xa:.1f}" height="{H - M_TOP - M_BOTTOM}" '
                f'fill="{fill}" opacity="0.7"><title>{escape(label)}</title></rect>'
                + (
                    f'<text x="{xa + 2:.1f}" y="{H - M_BOTTOM - 3}" class="tk">{escape(label[:12])}</text>'
                    if xb - xa > 48
                    else ""
                )
            )
    legend_x = W - M_RIGHT
    for i, (label, x, y) in enumerate(clean):
        px, py = xy(x, y)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.4" points="{pts}">'
            f"<title>{escape(label)}</title></polyline>"
        )
        if len(x) == 1:
            parts.append(f'<circle cx="{px[0]:.1f}" cy="{py[0]:.1f}" r="2.5" fill="{color}"/>')
        parts.append(f'<text x="{legend_x}" y="15" text-anchor="end" class="lg" fill="{color}">{escape(label)}</text>')
        legend_x -= 6 * len(label) + 14  # legend entries run right to left along the title line
    parts.append("</svg>")
    return "".join(parts)


def empty(title: str) -> str:
    """A placeholder plot saying there is nothing to draw."""
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" width="{W}" height="60">'
        f'<text x="{M_LEFT}" y="15" class="pt">{escape(title)}</text>'
        f'<text x="{M_LEFT}" y="40" class="tk">no data</text></svg>'
    )
