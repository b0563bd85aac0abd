"""Answer checks for imported evaluations, done by the libraries the field already trusts.

A provider gap is a benchmark score, so the rig scores a completion the way the benchmark's own harness would: a
hand-written normaliser that disagrees with math-verify on "\\frac{1}{2}" against "0.5" would create a gap that no stack
made. Each scorer here delegates to a maintained library and is imported lazily (none of them loads with `import rig`):

    math    math-verify (Hugging Face): the gold answer and the completion are parsed (LaTeX and plain expressions) and
            compared symbolically and numerically (`math_verify.parse`, `math_verify.verify`).
    mc      the letter is extracted the way lighteval does it (math-verify's `StringExtractionConfig`, the extractive
            match lighteval's multiple-choice metrics are built on: "final answer is X", "Answer: X", a letter at the
            start of a line, a bare letter; rightmost match of the highest-priority rule), and where that finds none,
            the way lm-eval's generative GPQA does (`MultiChoiceRegexFilter`: "(X)", a choice's text, then ": X").
    ifeval  lm-eval's IFEval implementation (`lm_eval.tasks.ifeval.utils.test_instruction_following_strict`): all of
            a prompt's instructions must be followed (prompt-level strict accuracy, IFEval's headline number).

The older reference types (exact, numeric, regex, choice) stay hand-written in rig.analysis.scoring: they are the
rig's own suite's checks, simple by design, and no library defines them more authoritatively.
"""

from __future__ import annotations

import contextlib
import io
import threading
from functools import lru_cache
from typing import Any

from rig.errors import UserError

INSTALL_HINT = "pip install 'inference-rig[evals]'"
# the gpqa generative task's "flexible-extract" filter settings in lm-eval (tasks/gpqa/generative)
LM_EVAL_MC_REGEX = r"(\([A-Z]\))"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


NEEDS = {
    "math": ("math_verify",),
    "mc": ("math_verify", "lm_eval"),
    "ifeval": ("lm_eval", "nltk", "langdetect", "immutabledict"),
}


def check_available(reference_types: set[str | None]) -> None:
    """Raises UserError (with the install hint) when a scorer these reference types need is not installed; cheap
    (no import), so commands check before spending hours on runs they could not score."""
    import importlib.util

    for rtype in sorted(t for t in reference_types if t in NEEDS):
        missing = [m for m in NEEDS[rtype] if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"reference_type {rtype!r} needs the {missing[0]} package: {INSTALL_HINT}")


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the {module.split('.')[0]} package: {INSTALL_HINT}") from None


def _timeout_s() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set: none in worker threads."""
    return 5 if threading.current_thread() is threading.main_thread() else None


# ---- math ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _parse_gold(reference: str) -> list[Any]:
    mv = _need("math_verify", "reference_type 'math'")
    t = _timeout_s()
    text = reference.strip()
    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    gold = mv.parse(wrapped, parsing_timeout=t)
    return gold or mv.parse(text, parsing_timeout=t)


def score_math(answer: str, reference: Any) -> bool:
    """Whether the completion's answer equals the reference under math-verify (LaTeX or plain expressions)."""
    mv = _need("math_verify", "reference_type 'math'")
    gold = _parse_gold(str(reference))
    if not gold:
        raise UserError(f"math reference {reference!r} cannot be parsed by math-verify")
    t = _timeout_s()
    pred = mv.parse(str(answer), parsing_timeout=t)
    return bool(pred) and bool(mv.verify(gold, pred, timeout_seconds=t))


# ---- multiple choice -----------------------------------------------------------------------------------------------


_MC_CACHE: dict[tuple[str, tuple[str, ...]], tuple[str | None, str]] = {}


def extract_mc_letters(items: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str | None, str]]:
    """For each (answer, choices): (letter, how), the chosen option's letter (A, B, ...) and which library's rule
    found it ("lighteval", "lm-eval"), or (None, "none").

    Batched because lm-eval's filter builds a table of every Unicode punctuation mark on each call (about 2 s here);
    results are cached per (answer, choices), since a run's completions are scored once per diff."""
    todo = [k for k in dict.fromkeys((str(a), tuple(c)) for a, c in items) if k not in _MC_CACHE]
    if todo:
        mv = _need("math_verify", "reference_type 'mc'")
        rest = []
        for answer, choices in todo:
            letters = LETTERS[: len(choices)]
            config = mv.StringExtractionConfig(strings=tuple(letters), lowercase=False)
            found = mv.parse(answer, [config], extraction_mode="first_match", parsing_timeout=_timeout_s())
            if found and str(found[0]) in letters:
                _MC_CACHE[(answer, choices)] = (str(found[0]), "lighteval")
            else:
                rest.append((answer, choices))
        if rest:
            extraction = _need("lm_eval.filters.extraction", "reference_type 'mc'")
            filt = extraction.MultiChoiceRegexFilter(
                regex_pattern=LM_EVAL_MC_REGEX, group_select=-1, ignore_case=True, ignore_punctuation=True
            )
            outs = filt.apply([[a] for a, _ in rest], [{"choices": list(c)} for _, c in rest])
            for (answer, choices), out in zip(rest, outs, strict=True):
                letter = out[0].strip().strip("()").upper()
                ok = letter in LETTERS[: len(choices)]
                _MC_CACHE[(answer, choices)] = (letter, "lm-eval") if ok else (None, "none")
    return [_MC_CACHE[(str(a), tuple(c))] for a, c in items]


def extract_mc_letter(answer: str, choices: list[str] | tuple[str, ...]) -> tuple[str | None, str]:
    """extract_mc_letters for one answer."""
    return extract_mc_letters([(answer, tuple(choices))])[0]


def score_mc(answer: str, reference: Any, choices: list[str] | tuple[str, ...] | None) -> bool:
    """Whether the letter extracted from the answer (extract_mc_letter) is the reference letter."""
    return score_mc_batch([(answer, reference, choices)])[0]


def score_mc_batch(items: list[tuple[str, Any, list[str] | tuple[str, ...] | None]]) -> list[bool]:
    """score_mc over many (answer, reference letter, choices) at once (one lm-eval filter call)."""
    if any(not c for _, _, c in items):
        raise UserError("reference_type 'mc' needs the prompt's 'choices'")
    letters = extract_mc_letters([(str(a), tuple(c)) for a, _, c in items])
    return [got == str(ref).strip().upper() for (got, _), (_, ref, _) in zip(letters, items, strict=True)]


# ---- IFEval --------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _ifeval() -> Any:
    """lm-eval's IFEval utils. Its import asks NLTK to download 'punkt_tab' when missing: the rig never downloads at
    scoring time, so that call is skipped (and its output kept off the terminal); instructions that need the data
    then fail with a one-line hint (score_ifeval)."""
    nltk = _need("nltk", "reference_type 'ifeval'")
    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return _need("lm_eval.tasks.ifeval.utils", "reference_type 'ifeval'")
    finally:
        nltk.download = download


def ifeval_check(answer: str, reference: dict[str, Any]) -> list[bool]:
    """Per instruction of the reference, whether the answer follows it (lm-eval's strict IFEval check)."""
    utils = _ifeval()
    ids = list(reference["instruction_id_list"])
    unknown = [i for i in ids if i not in utils.instructions_registry.INSTRUCTION_DICT]
    if unknown:
        raise UserError(f"IFEval instruction {unknown[0]!r} is not in lm-eval's registry")
    example = utils.InputExample(
        key=0, instruction_id_list=ids, prompt=str(reference.get("prompt") or ""), kwargs=list(reference["kwargs"])
    )
    try:
        return list(utils.test_instruction_following_strict(example, str(answer)).follow_instruction_list)
    except LookupError:  # NLTK's sentence tokenizer data, for the sentence-counting instructions
        raise UserError(
            f"IFEval instructions {', '.join(ids)}: one needs NLTK's sentence tokenizer data, which is not installed "
            "(python -m nltk.downloader punkt_tab)"
        ) from None


def score_ifeval(answer: str, reference: dict[str, Any]) -> bool:
    """Prompt-level strict IFEval: every instruction followed."""
    return all(ifeval_check(answer, reference))
