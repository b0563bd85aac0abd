"""Task-level scoring: did each completion get the reference answer, and do two runs differ in accuracy?

A token-level diff says where two stacks part ways; this module says whether it matters for answers. Prompts carry a
`reference` and a `reference_type` in prompts.jsonl: the rig's own checks (exact, numeric, regex, choice) are here;
imported evaluations' checks (math, mc, ifeval) delegate to the field's libraries in rig.evals.scorers. The answer is
read from the harmony final channel (completions.jsonl "final"), or from the whole decoded text when the completion
has no final channel (counted and reported as a fallback). With repeats (`--samples N`) each prompt gets a pass rate;
accuracy carries a 95% interval from a bootstrap over prompts and samples, and two runs are compared prompt by prompt
(paired bootstrap, sign test over prompts, McNemar over coupled samples; rig.analysis.stats). Definitions:
docs/metrics.md, "Task level", and docs/evals.md.

    res = score_run(RunReader("runs/a"))       # TaskScores: per (prompt, sample) pass/fail
    acc = run_accuracy(res)                    # accuracy, its interval, per-prompt pass rates
    cmp = compare_task(res_a, res_b)           # both accuracies, paired difference, intervals, tests
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.analysis.stats import bootstrap_paired, bootstrap_two_level, mcnemar_exact, sign_test_two_sided
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


def _score_math(answer: str, reference: Any) -> bool:
    from rig.evals.scorers import score_math

    return score_math(answer, reference)


def _score_ifeval(answer: str, reference: Any) -> bool:
    from rig.evals.scorers import score_ifeval

    return score_ifeval(answer, reference)


SCORERS = {
    "exact": score_exact,
    "numeric": score_numeric,
    "regex": score_regex,
    "choice": score_choice,
    "math": _score_math,
    "ifeval": _score_ifeval,
    "mc": None,  # needs the prompt's choices: score_answer passes them
}


def score_answer(answer: str, reference: Any, reference_type: str | None, *, choices: Any = None) -> bool:
    """Whether answer matches reference under reference_type (exact when unset); choices for "mc"."""
    rtype = reference_type or "exact"
    if rtype not in SCORERS:
        raise UserError(f"unknown reference_type {reference_type!r}; known: {', '.join(SCORERS)}")
    if rtype == "mc":
        from rig.evals.scorers import score_mc

        return bool(score_mc(answer or "", reference, choices))
    return bool(SCORERS[rtype](answer or "", reference))


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
    passed: list[bool] = []
    mc: list[tuple[int, tuple[str, Any, Any]]] = []  # scored together: lm-eval's filter is slow per call
    for c in reader.completions:
        p = prompts.get(c["prompt_id"])
        if p is None or p.get("reference") is None or (prompt_ids is not None and c["prompt_id"] not in prompt_ids):
            continue
        answer, from_final = answer_text(c)
        out.n_fallback += not from_final
        out.keys.append((c["prompt_id"], int(c["sample"])))
        if p.get("reference_type") == "mc":
            mc.append((len(passed), (answer, p["reference"], p.get("choices"))))
            passed.append(False)
        else:
            passed.append(score_answer(answer, p["reference"], p.get("reference_type"), choices=p.get("choices")))
    if mc:
        from rig.evals.scorers import score_mc_batch

        for (i, _), ok in zip(mc, score_mc_batch([item for _, item in mc]), strict=True):
            passed[i] = ok
    out.passed = np.asarray(passed, dtype=bool)
    return out


def _matrix(keys: list[tuple[str, int]], passed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids sorted, (prompts, max samples) outcomes with each prompt's samples first, samples per prompt)."""
    names = np.asarray([k[0] for k in keys], dtype=object)
    uniq, inverse = np.unique(names, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq))
    values = np.zeros((len(uniq), int(counts.max(initial=1))))
    slot = np.zeros(len(uniq), np.int64)
    for i, row in enumerate(inverse):
        values[row, slot[row]] = passed[i]
        slot[row] += 1
    return uniq, values, counts


def run_accuracy(scores: TaskScores, *, seed: int = 0, n_resamples: int = 10_000) -> dict[str, Any] | None:
    """One run's accuracy over its scored prompts: the mean of per-prompt pass rates with a 95% interval from a
    bootstrap over prompts and samples (rig.analysis.stats.bootstrap_two_level); None when nothing was scored.

    Returns {"n_prompts", "n_sequences", "samples_min", "samples_max", "accuracy", "ci95", "fallback", "pass_rates"}.
    """
    if not len(scores.passed):
        return None
    uniq, values, counts = _matrix(scores.keys, scores.passed)
    boot = bootstrap_two_level(values, counts, n_resamples=n_resamples, seed=seed)
    rates = values.sum(axis=1) / counts
    return {
        "n_prompts": len(uniq),
        "n_sequences": int(counts.sum()),
        "samples_min": int(counts.min()),
        "samples_max": int(counts.max()),
        "accuracy": boot["mean"],
        "ci95": [boot["lo"], boot["hi"]],
        "fallback": scores.n_fallback,
        "pass_rates": {str(p): float(r) for p, r in zip(uniq, rates, strict=True)},
    }


def compare_task(a: TaskScores, b: TaskScores, *, seed: int = 0, n_resamples: int = 10_000) -> dict[str, Any] | None:
    """Paired task-level comparison over the (prompt, sample) pairs both runs scored; None when there are none.

    Returns accuracy per run, per-prompt pass rates (mean over samples) when there are repeats, the paired difference
    (B - A) of per-prompt pass rates with a bootstrap interval over prompts, and McNemar's exact p-value over the
    paired (prompt, sample) outcomes. Added for repeats (docs/evals.md): each run's accuracy with a 95% interval from
    a bootstrap over prompts and samples (accuracy_a_ci95, accuracy_b_ci95), the difference's interval from the same
    two-level bootstrap of coupled pairs (diff_ci95_two_level), its clustered standard error over prompts (diff_se),
    and the prompt-level paired comparison (prompt_level: prompts where B's pass rate is higher, lower, tied, and
    the two-sided exact sign test).
    """
    index_b = {key: i for i, key in enumerate(b.keys)}
    pairs = [(i, index_b[key]) for i, key in enumerate(a.keys) if key in index_b]
    if not pairs:
        return None
    ia, ib = (np.asarray(x) for x in zip(*pairs, strict=True))
    pa, pb = a.passed[ia], b.passed[ib]
    keys = [a.keys[i] for i in ia]
    uniq, va, counts = _matrix(keys, pa)
    vb = _matrix(keys, pb)[1]
    rate_a, rate_b = va.sum(axis=1) / counts, vb.sum(axis=1) / counts
    n01 = int((pa & ~pb).sum())  # A passes, B fails
    n10 = int((~pa & pb).sum())
    boot = bootstrap_paired(rate_a, rate_b, n_resamples=n_resamples, seed=seed)
    boot_a = bootstrap_two_level(va, counts, n_resamples=n_resamples, seed=seed)
    boot_b = bootstrap_two_level(vb, counts, n_resamples=n_resamples, seed=seed)
    boot_d = bootstrap_two_level(vb - va, counts, n_resamples=n_resamples, seed=seed)
    d = rate_b - rate_a
    up, down = int((d > 0).sum()), int((d < 0).sum())
    out = {
        "n_prompts": len(uniq),
        "n_pairs": len(pa),
        "repeats": bool(counts.max() > 1),
        "samples_min": int(counts.min()),
        "samples_max": int(counts.max()),
        "accuracy_a": float(pa.mean()),
        "accuracy_b": float(pb.mean()),
        "accuracy_a_ci95": [boot_a["lo"], boot_a["hi"]],
        "accuracy_b_ci95": [boot_b["lo"], boot_b["hi"]],
        "diff": boot["diff"],
        "ci95": [boot["lo"], boot["hi"]],
        "diff_ci95_two_level": [boot_d["lo"], boot_d["hi"]],
        "diff_se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None,
        "n_resamples": n_resamples,
        "seed": seed,
        "bootstrap": "ci95: prompts resampled (paired pass rates); *_ci95 and diff_ci95_two_level: prompts, then "
        "samples within each prompt (coupled pairs keep their sample index)",
        "a_only": n01,
        "b_only": n10,
        "mcnemar_p": mcnemar_exact(n01, n10),
        "prompt_level": {
            "b_better": up,
            "a_better": down,
            "ties": len(d) - up - down,
            "sign_test_p": sign_test_two_sided(up, down),
        },
        "fallback_a": a.n_fallback,
        "fallback_b": b.n_fallback,
    }
    if out["repeats"]:
        out["per_prompt"] = [
            {
                "prompt_id": str(p),
                "samples": int(c),
                "pass_rate_a": float(x),
                "pass_rate_b": float(y),
            }
            for p, x, y, c in zip(uniq, rate_a, rate_b, counts, strict=True)
        ]
    return out
