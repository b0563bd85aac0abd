"""Which positions `rig layers` opens, and the token prefix each one is teacher-forced on.

Three ways to choose (docs/layers.md, "Positions"):
- by default, every first divergence and every spike that `rig diff` finds (rig.analysis.compare.diff_paths), first
  divergences first, then spikes largest first, up to --limit;
- `--prompt ID --pos N [--sample S]`: one position;
- `--top N`: the N positions with the largest |logprob_a - logprob_b| on identical prefixes (the teacher-forced
  |delta| of the two runs' own tokens where they agree).

Position p counts from 0 at the first generated token, as in `rig diff`; its prefix is the prompt plus run A's
continuation before p. At a first divergence and at a spike the two runs' prefixes are identical by definition; a
requested position past the first divergence is teacher-forced on A's tokens, and the target says so.
Every mistake a user can make (unknown prompt, position out of range, runs on different prompts, a stack whose layers
cannot be opened) is a UserError with one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import UserError
from rig.localize.capture import Task

DEFAULT_LIMIT = 16
OPENABLE = ("hf", "vllm")
WHY_NOT = {
    "openai": "the openai stack is an HTTP endpoint: its layers cannot be opened (run the same model under hf or "
    "vllm to localize)",
    "stub": "the stub stack has no layers (it is a torch-free stand-in for tests)",
}


@dataclass(frozen=True)
class Target:
    """One position to open, with its prefix and what the runs recorded there."""

    prompt_id: str
    sample: int
    pos: int
    kinds: tuple[str, ...]  # "first_divergence", "spike", "requested", "top"
    prompt: tuple[int, ...]
    continuation: tuple[int, ...]  # run A's tokens before pos (the teacher-forced prefix after the prompt)
    token_a: int | None  # each run's token at pos (None: the run has none there, or B's prefix differs)
    token_b: int | None
    recorded: dict[str, Any] = field(default_factory=dict)  # logprob_a, logprob_b (nats), first_divergence, note

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.prompt_id, self.sample, self.pos)

    @property
    def row(self) -> int:
        """Index of the prefix row whose logits predict the token at pos."""
        return len(self.prompt) + self.pos - 1


class Runs:
    """The two runs' prompts and sequences (token IDs and logprobs), read once."""

    def __init__(self, a: str | Path, b: str | Path):
        from rig.run.store import RunReader

        self.a, self.b = RunReader(a), RunReader(b)
        self.seq_a, self.seq_b = _sequences(self.a), _sequences(self.b)

    def check_prompt(self, prompt_id: str) -> tuple[int, ...]:
        pa, pb = self.a.prompts.get(prompt_id), self.b.prompts.get(prompt_id)
        if pa is None or pb is None:
            where = self.a.path if pa is None else self.b.path
            raise UserError(f"unknown prompt id {prompt_id!r}: not in {where}")
        if pa["sha256"] != pb["sha256"]:
            raise UserError(
                f"prompt {prompt_id!r} differs between the runs (token sha256 {pa['sha256'][:12]} vs "
                f"{pb['sha256'][:12]}): the prefixes are not identical"
            )
        return tuple(int(t) for t in pa["token_ids"])

    def target(self, prompt_id: str, sample: int, pos: int, kinds: tuple[str, ...]) -> Target:
        prompt = self.check_prompt(prompt_id)
        key = (prompt_id, sample)
        if key not in self.seq_a:
            raise UserError(f"run {self.a.name} has no sequence for prompt {prompt_id!r} sample {sample}")
        ta, la = self.seq_a[key]
        tb, lb = self.seq_b.get(key, (np.zeros(0, np.int32), np.zeros(0, np.float32)))
        if not 0 <= pos < len(ta):
            raise UserError(
                f"position {pos} is out of range for prompt {prompt_id!r} sample {sample}: run {self.a.name} has "
                f"{len(ta)} tokens (positions 0..{len(ta) - 1})"
            )
        if pos == 0 and len(prompt) == 0:
            raise UserError(f"prompt {prompt_id!r} is empty: position 0 has no prefix")
        d = _first_difference(ta, tb)
        same_prefix = d is None or d >= pos
        recorded: dict[str, Any] = {
            "logprob_a": float(la[pos]),
            "logprob_b": float(lb[pos]) if same_prefix and pos < len(tb) else None,
            "first_divergence": d,
        }
        if not same_prefix:
            recorded["note"] = f"B's tokens differ from position {d}: both stacks are teacher-forced on A's tokens"
        return Target(
            prompt_id=prompt_id,
            sample=sample,
            pos=pos,
            kinds=kinds,
            prompt=prompt,
            continuation=tuple(int(t) for t in ta[:pos]),
            token_a=int(ta[pos]),
            token_b=int(tb[pos]) if same_prefix and pos < len(tb) else None,
            recorded=recorded,
        )


def _sequences(reader: Any) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(prompt id, sample) -> (token ids int32, logprobs float32), from the run's token table."""
    t = reader.tokens()
    pid = t.column("prompt_id").to_pylist()
    sample = t.column("sample").to_numpy()
    tok = t.column("token_id").to_numpy()
    lp = t.column("logprob").to_numpy()
    out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for i in range(1, len(pid) + 1):
        if i == len(pid) or pid[i] != pid[start] or sample[i] != sample[start]:
            out[(pid[start], int(sample[start]))] = (tok[start:i], lp[start:i])
            start = i
    return out


def _first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    if len(diff):
        return int(diff[0])
    return None if len(a) == len(b) else n


def requested(runs: Runs, prompt_id: str, pos: int, sample: int = 0) -> list[Target]:
    """`--prompt ID --pos N`: the one position."""
    return [runs.target(prompt_id, sample, pos, ("requested",))]


def from_diff(runs: Runs, limit: int = DEFAULT_LIMIT) -> tuple[list[Target], int, dict[str, Any]]:
    """Every first divergence and spike `rig diff` finds (first divergences first); (targets, skipped, summary)."""
    from rig.analysis.compare import diff_paths

    doc = diff_paths(runs.a.path, runs.b.path)
    picks: dict[tuple[str, int, int], list[str]] = {}
    for seq in doc["sequences"]:
        d = seq.get("first_divergence")
        if d is not None and d < seq["len_a"]:  # a run that stopped earlier than A has nothing to open at d in A
            picks.setdefault((seq["prompt_id"], int(seq["sample"]), int(d)), []).append("first_divergence")
    for spike in doc.get("spikes") or []:
        picks.setdefault((spike["prompt_id"], int(spike["sample"]), int(spike["pos"])), []).append("spike")
    keys = list(picks)
    chosen = keys[:limit] if limit > 0 else keys
    targets = [runs.target(p, s, pos, tuple(picks[(p, s, pos)])) for p, s, pos in chosen]
    summary = {
        "first_divergences": sum("first_divergence" in v for v in picks.values()),
        "spikes": sum("spike" in v for v in picks.values()),
        "tau": doc.get("tau"),
    }
    return targets, len(keys) - len(chosen), summary


def top(runs: Runs, n: int) -> list[Target]:
    """`--top N`: the N largest |logprob_a - logprob_b| (nats) where both runs hold one token on one prefix."""
    if n < 1:
        raise UserError(f"--top must be at least 1, not {n}")
    found: list[tuple[float, str, int, int]] = []
    for (pid, sample), (ta, la) in runs.seq_a.items():
        if (pid, sample) not in runs.seq_b:
            continue
        if runs.a.prompts[pid]["sha256"] != (runs.b.prompts.get(pid) or {}).get("sha256"):
            continue
        tb, lb = runs.seq_b[(pid, sample)]
        d = _first_difference(ta, tb)
        m = min(len(ta), len(tb)) if d is None else d
        delta = np.abs(la[:m].astype(np.float64) - lb[:m])
        for pos in np.argsort(-delta, kind="stable")[:n].tolist():
            if math.isfinite(delta[pos]):
                found.append((float(delta[pos]), pid, sample, int(pos)))
    found.sort(key=lambda x: -x[0])
    if not found:
        raise UserError("the runs share no token on an identical prefix: nothing to rank for --top")
    return [runs.target(pid, s, pos, ("top",)) for _, pid, s, pos in found[:n]]


def tasks(targets: list[Target]) -> list[Task]:
    """One forward pass per sequence: the longest prefix its targets need, one kept row per target."""
    by_seq: dict[tuple[str, int], list[Target]] = {}
    for t in targets:
        by_seq.setdefault((t.prompt_id, t.sample), []).append(t)
    out = []
    for (pid, sample), group in by_seq.items():
        longest = max(group, key=lambda t: t.pos)
        ids = longest.prompt + longest.continuation
        for t in group:
            if ids[: len(t.prompt) + t.pos] != t.prompt + t.continuation:
                raise RuntimeError(f"targets of {pid} sample {sample} do not share one prefix")
        out.append(Task(pid, sample, ids, {t.pos: t.row for t in sorted(group, key=lambda t: t.pos)}))
    return out


def openable(stack: str, label: str) -> None:
    """Raises UserError unless stack's layers can be opened."""
    if stack not in OPENABLE:
        raise UserError(f"run {label}: {WHY_NOT.get(stack, f'stack {stack!r} cannot be opened')}")


def command_line(run_a: str | Path, run_b: str | Path, prompt_id: str, pos: int, sample: int = 0) -> str:
    """The `rig layers` command that opens one position (for `rig diff` and the report to print)."""
    import shlex

    sample_opt = f" --sample {sample}" if sample else ""
    return (
        f"rig layers {shlex.quote(str(run_a))} {shlex.quote(str(run_b))} --prompt {shlex.quote(prompt_id)}"
        f"{sample_opt} --pos {pos}"
    )
