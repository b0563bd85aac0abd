"""Typed results of the diff: the divergence class and the per-sequence table, with units on every field.

Every consumer (the terminal, the HTML report, the demo, the JSON document) names the classes through `Divergence`,
so a class cannot be called "near-tie" in one place and "near_tie" or "no top-K" in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Divergence(IntEnum):
    """How one aligned sequence pair parted (docs/metrics.md, "Classes").

    IDENTICAL     the same tokens to the end.
    NEAR_TIE      they split where both runs' deciding margins were under tau: rounding can explain the flip.
    CONFIDENT     they split where at least one run's deciding margin was at or above tau: a real disagreement.
    PREFIX        one sequence is a strict prefix of the other (one stopped or was cut earlier).
    UNCLASSIFIED  they split but a margin could not be computed (top-K of fewer than 2, or the token outside it).
    SAMPLED       they split in runs sampled without shared noise: no claim of disagreement can be made.
    """

    IDENTICAL = 0
    NEAR_TIE = 1
    CONFIDENT = 2
    PREFIX = 3
    UNCLASSIFIED = 4
    SAMPLED = 5

    @property
    def key(self) -> str:
        """The name in JSON documents and summaries: "near_tie"."""
        return self.name.lower()

    @property
    def label(self) -> str:
        """The name shown to people: "near-tie"."""
        return self.name.lower().replace("_", "-")


CLASSES = tuple(c.key for c in Divergence)


@dataclass
class SequenceDiffs:
    """One row per aligned (prompt, sample) pair of runs A and B, as NumPy columns of equal length S.

    Positions count generated tokens from 0. Margins and logprobs are in nats. A column that only makes sense at a
    split holds -1 (integers) or NaN (floats) for identical sequences.
    """

    ia: np.ndarray  # int64 [S]    the sequence's index in A
    ib: np.ndarray  # int64 [S]    the sequence's index in B
    prompt: np.ndarray  # int64 [S]    index into A's prompt ids
    sample: np.ndarray  # int64 [S]    sample index
    len_a: np.ndarray  # int64 [S]    tokens in A's sequence
    len_b: np.ndarray  # int64 [S]    tokens in B's sequence
    d: np.ndarray  # int64 [S]    first divergence (position), -1 when identical
    token_a: np.ndarray  # int64 [S]    A's token at d (-1: none)
    token_b: np.ndarray  # int64 [S]    B's token at d (-1: none)
    margin_a: np.ndarray  # float64 [S]  A's deciding margin at d (nats): raw top-1 minus top-2 when greedy,
    #                                   the perturbed margin between the two chosen tokens when coupled-sampled
    margin_b: np.ndarray  # float64 [S]  the same for B
    cls: np.ndarray  # int8 [S]     a Divergence
    vllm_rule: np.ndarray  # bool [S]     vLLM's check_logprobs_close at d (each token in the other's top-K); greedy
    channel: np.ndarray  # int8 [S]     harmony channel at d: 0 other, 1 analysis, 2 final; -1 when identical
    special: np.ndarray  # bool [S]     a special (harmony) token at d
    category: np.ndarray  # str [S]      the prompt's category
    mean_abs_delta: np.ndarray | None = None  # float64 [S] mean |lp_B - lp_A| over the common prefix, nats (NaN: none)

    def __len__(self) -> int:
        return len(self.d)

    @property
    def divergent(self) -> np.ndarray:
        """bool [S]: the sequences that split (d >= 0)."""
        return self.d >= 0
