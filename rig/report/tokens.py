"""The report's token-level diff view: the shared prefix, then both runs' continuations, the divergence highlighted.

Each token is a span whose tooltip lists the run's own top alternatives at that position (both runs' on the shared
prefix), so a reader sees at a glance whether the flip was a near tie. Tokens are decoded one by one through the
harmony encoding, with a cache, and only for the sequences shown.
"""

from __future__ import annotations

from html import escape

import numpy as np

from rig.analysis.diff import PairDiff
from rig.analysis.load import RunData
from rig.analysis.results import CLASSES, Divergence
from rig.harmony import CHANNELS, SPECIAL_MIN

N_BEFORE, N_AFTER, N_ALTS = 40, 40, 5
ORDER = {
    c.key: i
    for i, c in enumerate(
        (Divergence.CONFIDENT, Divergence.NEAR_TIE, Divergence.UNCLASSIFIED, Divergence.PREFIX, Divergence.SAMPLED)
    )
}


class Decoder:
    """Token id -> display text, cached."""

    def __init__(self) -> None:
        from rig.harmony import decode

        self._decode = decode
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        token = int(token)
        text = self._cache.get(token)
        if text is None:
            try:
                text = self._decode([token])
            except Exception:  # noqa: BLE001 - an id outside the vocabulary is shown, not fatal
                text = f"<{token}>"
            self._cache[token] = text
        return text


def _alts(run: RunData, row: int, dec: Decoder) -> str:
    ids, lps = run.topk_ids[row, :N_ALTS], run.topk_logprobs[row, :N_ALTS]
    return ", ".join(f"{dec(t)!r} {float(lp):.3f}" for t, lp in zip(ids, lps, strict=True))


def _tip(label: str, run: RunData, row: int, dec: Decoder) -> str:
    tok = int(run.token_id[row])
    return f"{label}: id {tok} lp {float(run.logprob[row]):.4f} | top: {_alts(run, row, dec)}"


def _span(token: int, dec: Decoder, tip: str, cls: str = "") -> str:
    text = dec(token)
    shown = text.replace("\n", "\u21b5\n") if text.strip() or not text else text.replace(" ", "\u00b7")
    classes = "tok" + (" sp" if token >= SPECIAL_MIN else "") + (f" {cls}" if cls else "")
    return f'<span class="{classes}" title="{escape(tip)}">{escape(shown)}</span>'


def sequence_view(pair: PairDiff, i: int, dec: Decoder) -> str:
    """HTML for sequence i of the pair: header, shared prefix, A's and B's continuations from the divergence."""
    s, a, b = pair.seq, pair.a, pair.b
    d = int(s.d[i])
    sa, sb = int(a.offsets[s.ia[i]]), int(b.offsets[s.ib[i]])
    la, lb = int(s.len_a[i]), int(s.len_b[i])
    pid = a.prompt_ids[int(s.prompt[i])]
    cls = CLASSES[int(s.cls[i])]

    def m(x: float) -> str:
        return "-" if np.isnan(x) else f"{x:.3f}"

    head = (
        f'<div class="sh"><b>{escape(pid)}</b> sample {int(s.sample[i])} &middot; '
        f'<span class="c-{cls}">{cls.replace("_", "-")}</span> at position {d} &middot; margins A {m(s.margin_a[i])}'
        f" / B {m(s.margin_b[i])} nats &middot; vLLM rule {'holds' if s.vllm_rule[i] else 'fails'} &middot; "
        f"channel {CHANNELS[int(s.channel[i])]} &middot; category {escape(str(s.category[i]))}</div>"
    )
    start = max(0, d - N_BEFORE)
    prefix = ['<span class="more">\u2026</span>'] if start else []
    for p in range(start, d):
        tip = _tip("A", a, sa + p, dec) + "\n" + _tip("B", b, sb + p, dec)
        prefix.append(_span(int(a.token_id[sa + p]), dec, f"pos {p}\n{tip}"))
    lines = [f'<div class="row"><span class="lab">prefix</span><span class="toks">{"".join(prefix)}</span></div>']
    for label, run, s0, n in (("A", a, sa, la), ("B", b, sb, lb)):
        toks = []
        for p in range(d, min(n, d + N_AFTER)):
            toks.append(
                _span(
                    int(run.token_id[s0 + p]),
                    dec,
                    f"pos {p}\n" + _tip(label, run, s0 + p, dec),
                    "div" if p == d else label.lower(),
                )
            )
        if n > d + N_AFTER:
            toks.append('<span class="more">\u2026</span>')
        if n <= d:
            toks.append('<span class="more">(ended)</span>')
        lines.append(
            f'<div class="row"><span class="lab lab-{label.lower()}">{label}</span>'
            f'<span class="toks">{"".join(toks)}</span></div>'
        )
    return f'<div class="tokdiff" data-prompt="{escape(pid)}">{head}{"".join(lines)}</div>'


def diff_views(pair: PairDiff, limit: int, dec: Decoder | None = None) -> str:
    """Token-level views of up to `limit` divergent sequences (confident first, then near ties, then prefixes)."""
    dec = dec or Decoder()
    s = pair.seq
    div = np.flatnonzero(s.d >= 0)
    if len(div) == 0:
        return '<p class="ok">All compared sequences are identical.</p>'
    rank = np.array([ORDER.get(CLASSES[int(c)], 9) for c in s.cls[div]])
    chosen = div[np.lexsort((div, rank))][:limit]
    body = "".join(sequence_view(pair, int(i), dec) for i in chosen)
    more = (
        f"<p>{len(div) - len(chosen)} more divergent sequences not shown (--max-prompts).</p>"
        if len(div) > limit
        else ""
    )
    n_same = int((s.d < 0).sum())
    return f"<p>{len(div)} divergent, {n_same} identical sequences.</p>{body}{more}"
