"""The two searches, free of I/O: bisection over an ordered list with skips, and delta debugging over a set.

Both take a `test` callback returning "good", "bad" or "skip" and never call it twice for the same candidate (the
callers cache verdicts in the bisect directory as well, so a resumed bisect replays cached answers for free).

- `bisect_ordered`: candidates in order (versions by release, dates, commits), the first known good and the last known
  bad. A skipped candidate (it could not be built or run) is never blamed: the search moves to the nearest untested
  neighbour, and when only skipped candidates separate the last good from the first bad, the answer says so.
- `ddmin`: Zeller and Hildebrandt's minimizing delta debugging over the changes from a good configuration to a bad
  one. The result is 1-minimal: removing any one change from it no longer reproduces the bad verdict, so a result of
  more than one change is a set of interacting changes. Skips count as "does not reproduce" (the classic rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

GOOD, BAD, SKIP = "good", "bad", "skip"


@dataclass
class OrderedResult:
    """Where an ordered bisection ended: the last good and first bad indices, and the skipped ones between."""

    last_good: int
    first_bad: int
    skipped_between: list[int]
    tested: dict[int, str] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """True when nothing untestable lies between the last good and the first bad candidate."""
        return not self.skipped_between


def steps_left(n_untested: int) -> int:
    """Tests a bisection over n untested candidates still needs at most (without skips)."""
    return math.ceil(math.log2(n_untested + 1)) if n_untested > 0 else 0


def next_index(lo: int, hi: int, done: dict[int, str]) -> int | None:
    """The untested index nearest the midpoint of (lo, hi), lower first on ties; None when none is left."""
    untested = [i for i in range(lo + 1, hi) if i not in done]
    if not untested:
        return None
    mid = (lo + hi) // 2
    return min(untested, key=lambda i: (abs(i - mid), i))


def bisect_ordered(
    n: int,
    test: Callable[[int], str],
    *,
    done: dict[int, str] | None = None,
    on_step: Callable[[int, str, int, int], None] | None = None,
) -> OrderedResult:
    """Bisect candidates 0..n-1 where 0 is good and n-1 is bad (both already established).

    done: verdicts known in advance (index -> good/bad/skip), applied before any test. on_step(index, outcome, lo, hi)
    is called after each new test with the narrowed window.
    """
    if n < 2:
        raise ValueError("bisect_ordered needs at least the good and the bad endpoint")
    tested: dict[int, str] = {}
    lo, hi = 0, n - 1
    known = dict(done or {})

    def narrow(i: int, outcome: str) -> None:
        nonlocal lo, hi
        tested[i] = outcome
        if outcome == GOOD and i > lo and i < hi:
            lo = i
        elif outcome == BAD and lo < i < hi:
            hi = i

    # Replay known verdicts in the order a search would have met them, so a resumed search takes the same path.
    while True:
        i = next_index(lo, hi, tested)
        if i is None:
            break
        if i in known:
            narrow(i, known[i])
            continue
        outcome = test(i)
        if outcome not in (GOOD, BAD, SKIP):
            raise ValueError(f"test returned {outcome!r}")
        narrow(i, outcome)
        if on_step is not None:
            on_step(i, outcome, lo, hi)
    between = [i for i in range(lo + 1, hi) if tested.get(i) == SKIP]
    return OrderedResult(lo, hi, between, tested)


# ---- delta debugging -------------------------------------------------------------------------------------------


def _split(items: Sequence[Any], n: int) -> list[list[Any]]:
    """items cut into n contiguous chunks of near-equal size (none empty while n <= len(items))."""
    out, start = [], 0
    for k in range(n):
        size = (len(items) - start) // (n - k)
        out.append(list(items[start : start + size]))
        start += size
    return [c for c in out if c]


@dataclass
class DDResult:
    """The 1-minimal failing subset and every configuration tested, in order."""

    minimal: list[Any]
    tests: list[tuple[tuple[Any, ...], str]]


def ddmin(changes: Sequence[Hashable], test: Callable[[tuple[Any, ...]], str]) -> DDResult:
    """Minimize `changes` (all of which together are known bad) to a 1-minimal subset that still tests bad.

    test(subset) gets a tuple of changes in their original order and returns good, bad or skip; each distinct subset
    is tested once. The empty set is assumed good and the full set bad (the caller established both).
    """
    order = {c: i for i, c in enumerate(changes)}
    cache: dict[frozenset, str] = {frozenset(): GOOD, frozenset(changes): BAD}
    tests: list[tuple[tuple[Any, ...], str]] = []

    def outcome(subset: list[Any]) -> str:
        key = frozenset(subset)
        if key not in cache:
            ordered = tuple(sorted(subset, key=order.__getitem__))
            cache[key] = test(ordered)
            tests.append((ordered, cache[key]))
        return cache[key]

    current, n = list(changes), 2
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = False
        for chunk in chunks:  # a chunk alone reproduces it: keep only that chunk
            if outcome(chunk) == BAD:
                current, n, reduced = chunk, 2, True
                break
        if not reduced and len(chunks) > 2:  # with two chunks the complements are the chunks themselves
            for chunk in chunks:
                complement = [c for c in current if c not in chunk]
                if outcome(complement) == BAD:
                    current, n, reduced = complement, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    return DDResult(current, tests)
