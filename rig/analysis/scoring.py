"""Task-level scoring: did each completion get the reference answer, and do two runs differ in accuracy?

A token-level diff says where two stacks part ways; this module says whether it matters for answers. Prompts carry a
`reference` and a `reference_type` (exact, numeric, regex, choice) in prompts.jsonl; the answer is read from the
harmony final channel (completions.jsonl "final"), or from the whole decoded text when the completion has no final
channel (counted and reported as a fallback). Accuracy per run, the paired difference over prompts with a bootstrap
95% interval, and McNemar's exact p-value come from rig.analysis.stats. Definitions: docs/metrics.md, "Task level".

    res = score_run(RunReader("runs/a"))       # TaskScores: per (prompt, sample) pass/fail
    cmp = compare_task(res_a, res_b)           # accuracy per run, paired difference, interval, McNemar p
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.analysis.stats import bootstrap_paired, mcnemar_exact
from rig.errors import UserError

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_LETTERS = "ABCDEFGHIJ"
_CHOICE_PATTERNS = (
    re.compile(r"^\s*\(?([A-J])\)?\s*[.:)]?\s*$", re.IGNORECASE),  # the whole answer: "B", "(B)", "B)", "b."
    re.compile(r"(?i:\banswer)(?:\s+(?i:is))?\s*:?\s*\(?([A-J])\b"),  # "Answer: B", "the answer is (B)"
    re.compile(r"(?i:\banswer(?:\s+is)?\s*:?\s*\(?([a-j])\)?\s*[.)]?\s*$)"),  # "answer: c" at the very end
    re.compile(r"\(([A-J])\)"),  # "(B)" anywhere
    re.compile(r"(?:^|\s)([A-J])\)"),  # "B)" anywhere
    re.compile(r"^\s*([A-J])[.:]\s"),  # a leading letter with a stop: "B. Because ..."
)


def normalize_text(s: str) -> str:
    """Casefolded, whitespace runs collapsed to one space, stripped, one trailing '.' dropped."""
    s = " ".join(str(s).casefold().split())
    return s[:-1].rstrip() if s.endswith(".") else s


def parse_numbers(text: str) -> list[float]:
    """Numbers in text after removing '$', '%' and thousands separators (commas between digits); units are ignored."""
    cleaned = re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(text).replace("$", "").replace("%", ""))
    out = []
    for m in _NUMBER.finditer(cleaned):
        try:
            out.append(float(m.group()))
        except ValueError:  # pragma: no cover - the pattern only matches floats
            continue
    return out


def numeric_tolerance(reference: Any) -> float:
    """Absolute tolerance for a numeric reference: max(1e-6 * |ref|, half a unit of its last written decimal)."""
    ref_text = str(reference).strip().replace("$", "").replace("%", "").replace(",", "")
    value = parse_numbers(ref_text)
    if not value:
        return 0.0
    tol = 1e-6 * abs(value[0])
    m = re.search(r"\.(\d+)(?:[eE]|$)", ref_text)
    if m:
        tol = max(tol, 0.5 * 10 ** -len(m.group(1)))
    return tol


def score_exact(answer: str, reference: Any) -> bool:
    return normalize_text(answer) == normalize_text(reference)


def score_numeric(answer: str, reference: Any) -> bool:
    """The answer's last number equals the reference within numeric_tolerance(reference)."""
    ref = parse_numbers(str(reference))
    got = parse_numbers(answer)
    if not ref or not got:
        return False
    return math.isclose(got[-1], ref[0], rel_tol=0.0, abs_tol=numeric_tolerance(reference))


def score_regex(answer: str, pattern: Any) -> bool:
    try:
        return re.search(str(pattern), answer) is not None
    except re.error as exc:
        raise UserError(f"reference regex {pattern!r} does not compile ({exc})") from None


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter (A-J) in forms like "B", "(B)", "Answer: B", "B)"; None when there is none."""
    for pattern in _CHOICE_PATTERNS:
        m = pattern.search(str(text))
        if m:
            return m.group(1).upper()
    return None


def score_choice(answer: str, reference: Any) -> bool:
    want = extract_choice(str(reference))
    return want is not None and extract_choice(answer) == want


SCORERS = {"exact": score_exact, "numeric": score_numeric, "regex": score_regex, "choice": score_choice}


def score_answer(answer: str, reference: Any, reference_type: str | None) -> bool:
    """Whether answer matches reference under reference_type (exact when unset)."""
    scorer = SCORERS.get(reference_type or "exact")
    if scorer is None:
        raise UserError(f"unknown reference_type {reference_type!r}; known: {', '.join(SCORERS)}")
    return bool(scorer(answer or "", reference))


def answer_text(completion: dict[str, Any]) -> tuple[str, bool]:
    """(answer, from_final): the harmony final channel, or the decoded text when there is no final channel."""
    final = completion.get("final")
    if final is not None:
        return str(final), True
    return str(completion.get("text") or ""), False


@dataclass
class TaskScores:
    """Pass/fail per scored (prompt, sample) of one run."""

    keys: list[tuple[str, int]] = field(default_factory=list)
    passed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    n_fallback: int = 0  # completions without a final channel (scored on the whole text)

    @property
    def accuracy(self) -> float | None:
        return float(self.passed.mean()) if len(self.passed) else None


def score_run(reader: Any, prompt_ids: set[str] | None = None) -> TaskScores:
    """Scores every completion whose prompt has a reference (optionally only the prompts in prompt_ids)."""
    prompts = reader.prompts
    out = TaskScores()
    passed = []
    for c in reader.completions:
        p = prompts.get(c["prompt_id"])
        if p is None or p.get("reference") is None or (prompt_ids is not None and c["prompt_id"] not in prompt_ids):
            continue
        answer, from_final = answer_text(c)
        out.n_fallback += not from_final
        out.keys.append((c["prompt_id"], int(c["sample"])))
        passed.append(score_answer(answer, p["reference"], p.get("reference_type")))
    out.passed = np.asarray(passed, dtype=bool)
    return out


def compare_task(a: TaskScores, b: TaskScores, *, seed: int = 0, n_resamples: int = 10_000) -> dict[str, Any] | None:
    """Paired task-level comparison over the (prompt, sample) pairs both runs scored; None when there are none.

    Returns accuracy per run, per-prompt pass rates (mean over samples) when there are repeats, the paired difference
    (B - A) of per-prompt pass rates with a bootstrap interval over prompts, and McNemar's exact p-value over the
    paired (prompt, sample) outcomes.
    """
    index_b = {key: i for i, key in enumerate(b.keys)}
    pairs = [(i, index_b[key]) for i, key in enumerate(a.keys) if key in index_b]
    if not pairs:
        return None
    ia, ib = (np.asarray(x) for x in zip(*pairs, strict=True))
    pa, pb = a.passed[ia], b.passed[ib]
    prompt_names = [a.keys[i][0] for i in ia]
    uniq, inverse = np.unique(np.asarray(prompt_names, dtype=object), return_inverse=True)
    counts = np.bincount(inverse)
    rate_a = np.bincount(inverse, weights=pa) / counts
    rate_b = np.bincount(inverse, weights=pb) / counts
    n01 = int((pa & ~pb).sum())  # A passes, B fails
    n10 = int((~pa & pb).sum())
    boot = bootstrap_paired(rate_a, rate_b, n_resamples=n_resamples, seed=seed)
    out = {
        "n_prompts": len(uniq),
        "n_pairs": len(pa),
        "repeats": bool(counts.max() > 1),
        "accuracy_a": float(pa.mean()),
        "accuracy_b": float(pb.mean()),
        "diff": boot["diff"],
        "ci95": [boot["lo"], boot["hi"]],
        "n_resamples": n_resamples,
        "seed": seed,
        "a_only": n01,
        "b_only": n10,
        "mcnemar_p": mcnemar_exact(n01, n10),
        "fallback_a": a.n_fallback,
        "fallback_b": b.n_fallback,
    }
    if out["repeats"]:
        out["per_prompt"] = [
            {"prompt_id": str(p), "pass_rate_a": float(x), "pass_rate_b": float(y)}
            for p, x, y in zip(uniq, rate_a, rate_b, strict=True)
        ]
    return out
