"""rig.analysis.scoring: the four reference scorers, the final-channel rule with its fallback, and the paired
comparison."""

from __future__ import annotations

import numpy as np
import pytest

from rig.analysis.load import load_run
from rig.analysis.scoring import (
    TaskScores,
    answer_text,
    compare_task,
    extract_choice,
    normalize_text,
    numeric_tolerance,
    parse_numbers,
    score_answer,
    score_run,
)
from rig.analysis.stats import mcnemar_exact
from rig.errors import UserError


def test_exact_is_case_and_whitespace_normalized():
    assert normalize_text("  The  Canberra\n") == "the canberra"
    assert score_answer("canberra.", "Canberra", "exact")
    assert score_answer("  CANBERRA ", "Canberra", None)  # exact is the default
    assert not score_answer("Canberra, Australia", "Canberra", "exact")


def test_numeric_strips_symbols_units_and_uses_precision():
    assert parse_numbers("$1,234.50 and 7%") == [1234.5, 7.0]
    assert score_answer("about 300,000 km/s", 300000, "numeric")
    assert score_answer("The result is 10063.", 10063, "numeric")
    assert not score_answer("10064", 10063, "numeric")
    assert numeric_tolerance(10063) == pytest.approx(0.010063)  # relative 1e-6
    assert numeric_tolerance("3.14") == pytest.approx(0.005)  # half a unit of the last written decimal
    assert score_answer("pi is 3.1416", "3.14", "numeric")
    assert not score_answer("3.1", "3.14", "numeric")
    assert score_answer("12.5%", "12.5", "numeric")
    assert not score_answer("no number here", 5, "numeric")
    assert score_answer("first 3 then 42", 42, "numeric")  # the last number is the answer


def test_regex_is_search_with_reference_as_pattern():
    assert score_answer("the answer is 42 apples", r"\b42\b", "regex")
    assert not score_answer("420", r"\b42\b", "regex")
    with pytest.raises(UserError, match="does not compile"):
        score_answer("x", "(", "regex")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("Answer: B", "B"),
        ("B)", "B"),
        ("b.", "B"),
        ("The answer is (C).", "C"),
        ("I think (D) is right", "D"),
        ("J) last", "J"),
        ("none", None),
        ("K", None),
    ],
)
def test_choice_letter_extraction(text, letter):
    assert extract_choice(text) == letter


def test_choice_scorer():
    assert score_answer("Answer: c", "C", "choice")
    assert score_answer("(A)", "(A)", "choice")
    assert not score_answer("B", "A", "choice")


def test_answer_text_prefers_final_channel():
    assert answer_text({"final": "Gold", "text": "<|channel|>analysis...Gold"}) == ("Gold", True)
    assert answer_text({"final": None, "text": "raw text"}) == ("raw text", False)


def test_compare_task_paired_with_repeats():
    keys = [(p, s) for p in ("p0", "p1", "p2") for s in (0, 1)]
    a = TaskScores(keys=keys, passed=np.array([1, 1, 0, 0, 1, 0], bool), n_fallback=1)
    b = TaskScores(keys=keys, passed=np.array([1, 0, 1, 1, 1, 1], bool))
    r = compare_task(a, b, n_resamples=2000)
    assert r["accuracy_a"] == pytest.approx(0.5) and r["accuracy_b"] == pytest.approx(5 / 6)
    assert r["repeats"] and r["n_prompts"] == 3 and r["n_pairs"] == 6
    rates = {x["prompt_id"]: (x["pass_rate_a"], x["pass_rate_b"]) for x in r["per_prompt"]}
    assert rates == {"p0": (1.0, 0.5), "p1": (0.0, 1.0), "p2": (0.5, 1.0)}
    assert r["diff"] == pytest.approx((-0.5 + 1.0 + 0.5) / 3)
    assert r["a_only"] == 1 and r["b_only"] == 3 and r["mcnemar_p"] == mcnemar_exact(1, 3)
    assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]
    assert r["fallback_a"] == 1
    assert compare_task(a, TaskScores()) is None


def test_score_run_reads_final_channel_and_falls_back(tmp_path):
    from helpers import prompt, seq, write_run

    prompts = [
        prompt("p0", reference="Gold", reference_type="exact"),
        prompt("p1", reference=7, reference_type="numeric"),
        prompt("p2"),
    ]
    results = [seq("p0", [5]), seq("p1", [5]), seq("p2", [5])]
    comps = [
        {
            "prompt_id": "p0",
            "sample": 0,
            "finish_reason": "stop",
            "n_tokens": 1,
            "text": "x",
            "analysis": "hm",
            "final": "gold",
            "timings": {},
        },
        {
            "prompt_id": "p1",
            "sample": 0,
            "finish_reason": "length",
            "n_tokens": 1,
            "text": "it is 8",
            "analysis": None,
            "final": None,
            "timings": {},
        },
        {
            "prompt_id": "p2",
            "sample": 0,
            "finish_reason": "length",
            "n_tokens": 1,
            "text": "",
            "analysis": None,
            "final": None,
            "timings": {},
        },
    ]
    run = load_run(write_run(tmp_path / "r", prompts, results, completions=comps))
    res = score_run(run.reader)
    assert res.keys == [("p0", 0), ("p1", 0)] and res.passed.tolist() == [True, False]
    assert res.n_fallback == 1 and res.accuracy == 0.5
