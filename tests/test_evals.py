"""rig.evals: suites imported from files in the benchmarks' real shapes (GPQA CSV, AIME JSONL, IFEval JSONL and
Parquet, an lm-eval task), scored by math-verify and lm-eval, and the repeat statistics of rig.analysis.

Every data file here is written by the test in its benchmark's format; nothing is downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rig.analysis.scoring import TaskScores, compare_task, run_accuracy, score_answer, score_run
from rig.analysis.stats import bootstrap_two_level, sign_test_two_sided
from rig.cli import main
from rig.errors import UserError
from rig.evals.importers import import_file, permutation
from rig.evals.scorers import extract_mc_letter, ifeval_check
from rig.run.suite import load_suite

pytest.importorskip("math_verify")
pytest.importorskip("lm_eval")

GPQA_COLUMNS = ["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2"]
GPQA_COLUMNS += ["Incorrect Answer 3", "Explanation", "Record ID", "High-level domain", "Subdomain"]
GPQA_ROWS = [
    ("A spin-1/2 particle, measured along z, then x.\nWhat is P(+x)?", "1/2", "1", "0", "1/4", "Physics"),
    ("Which gas, at STP, has the highest density: H2, He, N2 or CO2?", "CO2", "H2", "He", "N2", "Chemistry"),
    (
        'The codon "AUG", in most organisms, codes for which amino acid?',
        "methionine",
        "valine",
        "leucine",
        "stop",
        "Biology",
    ),
]


def write_gpqa(path: Path) -> Path:
    """GPQA's CSV: a question, the correct answer, three incorrect ones, quoted multi-line fields, extra columns."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=GPQA_COLUMNS)
        w.writeheader()
        for i, (q, right, w1, w2, w3, domain) in enumerate(GPQA_ROWS):
            w.writerow(
                {
                    "Pre-Revision Question": q,
                    "Question": q,
                    "Correct Answer": right,
                    "Incorrect Answer 1": w1,
                    "Incorrect Answer 2": w2,
                    "Incorrect Answer 3": w3,
                    "Explanation": "because, as usual, reasons",
                    "Record ID": f"rec{i:03d}X",
                    "High-level domain": domain,
                    "Subdomain": "x",
                }
            )
    return path


def write_aime(path: Path) -> Path:
    """AIME 2025 as the hub's JSON lines: an id, the problem, an integer answer."""
    rows = [
        {"id": 0, "problem": "Find the sum of all integer bases $b>9$ for which $17_b$ divides $97_b$.", "answer": 70},
        {"id": 1, "problem": "How many ordered pairs $(x,y)$ satisfy $12x^2-xy-6y^2=0$?", "answer": 117},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


IFEVAL_ROWS = [
    {
        "key": 1000,
        "prompt": "Write a short note to a friend. Do not use any commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{"num_highlights": None, "relation": None, "num_words": None}],
    },
    {
        "key": 1001,
        "prompt": "Describe the sea in fewer than 12 words, in lowercase letters only.",
        "instruction_id_list": ["length_constraints:number_words", "change_case:english_lowercase"],
        "kwargs": [{"relation": "less than", "num_words": 12, "num_highlights": None}, {"num_highlights": None}],
    },
]


def _completion(pid: str, sample: int, final: str) -> dict:
    return {
        "prompt_id": pid,
        "sample": sample,
        "finish_reason": "stop",
        "n_tokens": 1,
        "text": final,
        "analysis": None,
        "final": final,
        "timings": {},
    }


def _run_of(tmp_path: Path, name: str, suite, answers: dict[tuple[str, int], str]) -> Path:
    """A complete run directory of the suite's prompts whose final channels are the given answers."""
    from helpers import seq, write_run

    keys = sorted(answers)
    results = [seq(pid, [5], sample=s) for pid, s in keys]
    comps = [_completion(pid, s, answers[(pid, s)]) for pid, s in keys]
    return write_run(tmp_path / name, list(suite.prompts), results, completions=comps)


# ---- importers --------------------------------------------------------------------------------------------------


def test_gpqa_csv_import_shuffles_deterministically_and_records_provenance(tmp_path):
    data = write_gpqa(tmp_path / "gpqa_diamond.csv")
    out = import_file(data, tmp_path / "gpqa.jsonl", preset="gpqa")
    suite = load_suite(str(out))
    assert [p.id for p in suite.prompts] == ["rec000X", "rec001X", "rec002X"]
    for p, (q, right, *_wrong, domain) in zip(suite.prompts, GPQA_ROWS, strict=True):
        assert p.reference_type == "mc" and len(p.choices) == 4
        assert p.choices[ord(p.reference) - ord("A")] == right  # the recorded letter is the correct answer's
        assert p.category == domain
        assert p.source["origin"]["permutation"] == permutation(p.id, 4, 0)
        text = p.source["messages"][-1]["content"]
        assert q in text and f"{p.reference}) {right}" in text and "'Answer: $LETTER'" in text
    assert permutation("rec000X", 4, 0) == permutation("rec000X", 4, 0) != permutation("rec000X", 4, 1)
    # provenance: the file's sha256, the mapping, and the records' hash, all in the manifest entry
    src = suite.manifest_entry()["source"]
    assert src["file"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and src["file"]["format"] == "csv"
    assert src["preset"] == "gpqa" and src["mapping"]["answer"] == "Correct Answer" and src["records_sha256"]
    # a second import is the same suite (same hash: prompts, render options and answer key)
    again = load_suite(str(import_file(data, tmp_path / "again.jsonl", preset="gpqa")))
    assert again.hash == suite.hash
    # an edited record cannot keep the provenance of the original
    lines = out.read_text().splitlines()
    lines[1] = lines[1].replace('"reference": "' + suite.prompts[0].reference, '"reference": "Z"')
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="records changed since the suite was imported"):
        load_suite(str(out))


def test_aime_jsonl_and_ifeval_parquet_import(tmp_path):
    aime = load_suite(
        str(
            import_file(
                write_aime(tmp_path / "aime25.jsonl"),
                tmp_path / "a.jsonl",
                preset="aime",
                options={"reasoning_effort": "high"},
            )
        )
    )
    assert [p.reference for p in aime.prompts] == [70, 117] and {p.reference_type for p in aime.prompts} == {"math"}
    assert aime.prompts[0].source["reasoning_effort"] == "high"
    assert "\\boxed{}" in aime.prompts[0].source["messages"][0]["content"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(IFEVAL_ROWS), tmp_path / "ifeval.parquet")
    ife = load_suite(str(import_file(tmp_path / "ifeval.parquet", tmp_path / "i.jsonl", preset="ifeval")))
    p = ife.prompts[1]
    assert p.id == "1001" and p.reference_type == "ifeval"
    assert p.reference["instruction_id_list"] == IFEVAL_ROWS[1]["instruction_id_list"]
    assert p.reference["kwargs"][0] == {"relation": "less than", "num_words": 12}  # IFEval's None padding dropped
    assert ife.source["file"]["format"] == "parquet"


def test_field_mapping_with_system_text_and_effort_columns(tmp_path):
    rows = [
        {"q": "2+2?", "a": "4", "sys": "Be terse.", "effort": "low"},
        {"q": "3+3?", "a": "6", "sys": "", "effort": "medium"},
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = {"question": "q", "answer": "a", "system": "sys", "reasoning_effort": "effort"}
    suite = load_suite(
        str(import_file(data, tmp_path / "s.jsonl", fields_given=fields, options={"answer_type": "numeric"}))
    )
    first, second = suite.prompts
    assert first.source["messages"][0] == {"role": "system", "content": "Be terse."}
    assert first.source["reasoning_effort"] == "low" and len(second.source["messages"]) == 1
    assert first.id == "qa-00000" and first.reference == "4" and first.reference_type == "numeric"
    with pytest.raises(UserError, match="column 'nope' is not in the data"):
        import_file(data, tmp_path / "x.jsonl", fields_given={"question": "nope"})
    with pytest.raises(UserError, match="exists"):
        import_file(data, tmp_path / "s.jsonl", fields_given=fields)


def test_suite_import_cli(tmp_path):
    data = write_gpqa(tmp_path / "gpqa.csv")
    out = tmp_path / "suite.jsonl"
    res = CliRunner().invoke(main, ["suite", "import", str(data), "--preset", "gpqa", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 prompts (mc)" in res.output and "suite hash" in res.output
    res = CliRunner().invoke(main, ["suite", "import", str(data), "--field", "question", "--out", str(out)])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("rig: error: --field")


# ---- scorers: the field's libraries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter", "how"),
    [
        ("Reasoning...\nAnswer: C", "C", "lighteval"),  # gpt-oss / simple-evals format
        ("**Answer:** B", "B", "lighteval"),
        ("The final answer is D. I hope it is correct.", "D", "lighteval"),
        ("I believe the answer is (A).", "A", "lm-eval"),  # lm-eval's GPQA form
        ("It must be methionine, the start codon.", "A", "lm-eval"),  # the text of a choice
        ("no idea", None, "none"),
    ],
)
def test_mc_letter_extraction(text, letter, how):
    assert extract_mc_letter(text, ["methionine", "valine", "leucine", "stop"]) == (letter, how)


def test_math_answers_by_math_verify():
    assert score_answer("So the answer is $\\boxed{70}$.", 70, "math")
    assert score_answer("\\boxed{\\frac{1}{2}}", "0.5", "math")
    assert score_answer("The probability is $\\frac{2}{4}$", "\\frac{1}{2}", "math")
    assert not score_answer("\\boxed{71}", 70, "math")
    assert not score_answer("I could not solve it.", 70, "math")


def test_ifeval_by_lm_eval():
    ref = {**{k: IFEVAL_ROWS[1][k] for k in ("instruction_id_list",)}, "prompt": IFEVAL_ROWS[1]["prompt"]}
    ref["kwargs"] = [{"relation": "less than", "num_words": 12}, {}]
    assert ifeval_check("the sea is wide and blue", ref) == [True, True]
    assert ifeval_check("The sea is wide and blue", ref) == [True, False]  # not all lowercase
    assert score_answer("the sea is calm", ref, "ifeval")
    assert not score_answer("the sea is " + "very " * 20 + "big", ref, "ifeval")


def test_imported_suites_scored_in_a_run_with_repeats(tmp_path):
    gpqa = load_suite(str(import_file(write_gpqa(tmp_path / "g.csv"), tmp_path / "g.jsonl", preset="gpqa")))
    p0, p1, p2 = gpqa.prompts
    answers = {
        (p0.id, 0): f"Answer: {p0.reference}",
        (p0.id, 1): f"Answer: {p0.reference}",
        (p1.id, 0): f"Answer: {p1.reference}",
        (p1.id, 1): "Answer: Z",
        (p2.id, 0): "no idea",
        (p2.id, 1): "I think it is (" + p2.reference + ")",
    }
    from rig.run.store import RunReader

    a = score_run(RunReader(_run_of(tmp_path, "a", gpqa, answers)))
    assert a.passed.tolist() == [True, True, True, False, False, True]
    acc = run_accuracy(a, n_resamples=2000)
    assert acc["accuracy"] == pytest.approx(4 / 6) and acc["samples_max"] == 2
    assert acc["pass_rates"] == {p0.id: 1.0, p1.id: 0.5, p2.id: 0.5}
    assert acc["ci95"][0] <= acc["accuracy"] <= acc["ci95"][1]
    b_answers = {**answers, (p1.id, 1): f"Answer: {p1.reference}", (p0.id, 1): "Answer: Z"}
    b = score_run(RunReader(_run_of(tmp_path, "b", gpqa, b_answers)))
    cmp = compare_task(a, b, n_resamples=2000)
    assert cmp["per_prompt"][0]["samples"] == 2 and cmp["samples_max"] == 2
    assert cmp["prompt_level"] == {"b_better": 1, "a_better": 1, "ties": 1, "sign_test_p": 1.0}
    assert cmp["diff"] == pytest.approx(0.0) and cmp["a_only"] == 1 and cmp["b_only"] == 1
    lo, hi = cmp["diff_ci95_two_level"]
    assert lo <= 0.0 <= hi and cmp["accuracy_a_ci95"][0] <= cmp["accuracy_a"] <= cmp["accuracy_a_ci95"][1]


# ---- repeat statistics -------------------------------------------------------------------------------------------


def test_two_level_bootstrap():
    ones = bootstrap_two_level(np.ones((5, 4)), np.full(5, 4), n_resamples=500)
    assert ones == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
    rng = np.random.default_rng(1)
    values = (rng.random((40, 16)) < np.linspace(0.1, 0.9, 40)[:, None]).astype(float)
    counts = np.full(40, 16)
    r = bootstrap_two_level(values, counts, n_resamples=4000, seed=3)
    assert r == bootstrap_two_level(values, counts, n_resamples=4000, seed=3)  # seeded
    assert r["mean"] == pytest.approx(values.mean()) and r["lo"] < r["mean"] < r["hi"]
    # prompts and samples together vary more than prompts alone (the pass rates held fixed)
    from rig.analysis.stats import bootstrap_paired

    prompts_only = bootstrap_paired(np.zeros(40), values.mean(axis=1), n_resamples=4000, seed=3)
    assert (r["hi"] - r["lo"]) > (prompts_only["hi"] - prompts_only["lo"])
    # ragged repeats: a prompt's missing samples are never drawn
    ragged = np.array([[1.0, 1.0, 0.0], [0.0, 9.0, 9.0]])
    rr = bootstrap_two_level(ragged, np.array([3, 1]), n_resamples=2000)
    assert rr["mean"] == pytest.approx((2 / 3 + 0) / 2) and rr["hi"] <= 1.0
    assert sign_test_two_sided(0, 0) == 1.0 and sign_test_two_sided(5, 0) == pytest.approx(2 / 32)


def test_compare_task_keeps_its_keys():
    keys = [(p, s) for p in ("p0", "p1") for s in (0, 1)]
    r = compare_task(TaskScores(keys, np.array([1, 0, 1, 1], bool)), TaskScores(keys, np.array([1, 1, 0, 1], bool)))
    for key in ("n_prompts", "accuracy_a", "accuracy_b", "diff", "ci95", "a_only", "b_only", "mcnemar_p"):
        assert key in r
    assert "fallback_a" in r and "per_prompt" in r


# ---- lm-eval tasks -----------------------------------------------------------------------------------------------


def _lm_eval_tasks(tmp_path: Path) -> Path:
    """Two task definitions in lm-eval's YAML, their documents in local JSON lines (GPQA- and IFEval-shaped)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        "".join(
            json.dumps({"Question": q, "choices": [right, w1, w2, w3], "label": 0}) + "\n"
            for q, right, w1, w2, w3, _ in GPQA_ROWS
        )
    )
    ife = tmp_path / "ife.jsonl"
    ife.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    cache = tmp_path / "hf-cache"
    (tasks / "rig_mc.yaml").write_text(
        f"task: rig_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {mc}\n  cache_dir: {cache}\n"
        "output_type: multiple_choice\ntest_split: test\ndescription: 'Answer the science question.'\n"
        "doc_to_text: 'Question: {{Question}}\nAnswer:'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 2.0\n"
    )
    (tasks / "rig_ife.yaml").write_text(
        f"task: rig_ife\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {ife}\n  cache_dir: {cache}\n"
        "output_type: generate_until\ntest_split: train\ndoc_to_text: prompt\ndoc_to_target: 0\n"
        "generation_kwargs:\n  until: []\n  max_gen_toks: 1280\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 4.0\n"
    )
    return tasks


def test_lm_eval_task_import(tmp_path):
    tasks = _lm_eval_tasks(tmp_path)
    out = tmp_path / "mc-suite.jsonl"
    res = CliRunner().invoke(
        main, ["suite", "import", "--lm-eval-task", "rig_mc", "--lm-eval-include", str(tasks), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    suite = load_suite(str(out))
    p = suite.prompts[0]
    assert p.reference_type == "mc" and p.reference == "A" and p.choices[0] == GPQA_ROWS[0][1]
    assert p.source["messages"][0] == {"role": "developer", "content": "Answer the science question."}
    assert "A) 1/2" in p.source["messages"][1]["content"]  # the rig lists the options of a log-likelihood task
    src = suite.source
    assert src["kind"] == "lm-eval" and src["tasks"][0]["version"] == 2.0 and src["tasks"][0]["n_docs"] == 3
    assert src["tasks"][0]["choices_appended"] == 3 and len(src["tasks"][0]["docs_sha256"]) == 64

    from rig.evals.lmeval import import_task

    ife = load_suite(str(import_task("rig_ife", tmp_path / "ife-suite.jsonl", include_path=tasks)))
    q = ife.prompts[1]
    assert q.reference_type == "ifeval" and q.reference["instruction_id_list"] == IFEVAL_ROWS[1]["instruction_id_list"]
    assert ife.source["tasks"][0]["generation_kwargs"]["max_gen_toks"] == 1280
    assert score_answer("calm and blue waters", q.reference, "ifeval")


def test_missing_scorer_library_is_one_line_before_any_run(monkeypatch):
    import importlib.util

    from rig.evals.scorers import check_available

    check_available({"exact", "numeric", None, "math", "mc", "ifeval"})  # all installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "math_verify" else real(name))
    with pytest.raises(UserError, match="needs the math_verify package: pip install 'inference-rig\\[evals\\]'"):
        check_available({"math"})
