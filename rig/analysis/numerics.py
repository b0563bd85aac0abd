"""What rounding explains: the logit grid of a run, the near-tie threshold tau that follows from it, and the noise
of coupled sampling at a split.

A near-tie is a split that rounding can explain. How much rounding can explain depends on the precision the logits
were computed in: a bf16 logit near 10 sits on a grid of 0.0625 nats, an fp32 one on a grid of 1e-6. So tau is not a
constant. It is TAU_STEPS rounding steps of the run's logits (each of the two logits in a top-1/top-2 margin can move
by one step between two implementations), and, with a floor, at least twice the largest logprob movement the floor's
replicates show on identical tokens. Definitions: docs/metrics.md, "Near-tie threshold".
"""

from __future__ import annotations

from typing import Any

import numpy as np

TAU_STEPS = 2.0  # near-tie threshold in rounding steps of a logit
LATTICE_SHARE = 0.9  # the grid is the largest power of two dividing at least this share of top-1/top-2 gaps
LATTICE_TOL = 2e-4  # nats: float32 rounding of a logprob difference stays far below this
EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10, "float32": 2.0**-23}
LOGIT_SCALE = 64.0  # |logit| bound used where the grid cannot be read from the data (fp32): gpt-oss stays within it
MAX_ROWS = 100_000


def logit_grid(topk_logprobs: np.ndarray, dtype: str) -> dict[str, Any]:
    """The rounding step of the run's logits, in nats: {"grid", "how"}.

    For bf16 and fp16 logits, the gaps between a row's top logprobs are exact differences of logits on the dtype's
    grid, so the step is read from the data: the largest power of two (from 4 down to 2^-10) that divides at least
    90% of the top-1/top-2 and top-2/top-3 gaps (within 2e-4 nats of float32 rounding). Where no such lattice exists
    (fp32, or too few gaps), the step is the dtype's epsilon times the power of two above LOGIT_SCALE.
    """
    fallback = EPS.get(dtype, EPS["bfloat16"]) * LOGIT_SCALE
    if topk_logprobs.ndim != 2 or topk_logprobs.shape[1] < 2 or dtype == "float32":
        why = "fp32 logits carry no visible lattice" if dtype == "float32" else "fewer than 2 top-K logprobs"
        return {"grid": fallback, "how": f"{why}: eps({dtype}) x {LOGIT_SCALE:g}"}
    rows = topk_logprobs[:MAX_ROWS, : min(3, topk_logprobs.shape[1])].astype(np.float64)
    gaps = -np.diff(rows, axis=1).ravel()
    gaps = gaps[np.isfinite(gaps) & (gaps > LATTICE_TOL)]
    if len(gaps) < 20:
        return {"grid": fallback, "how": f"only {len(gaps)} positive gaps: eps({dtype}) x {LOGIT_SCALE:g}"}
    for e in range(2, -11, -1):
        q = 2.0**e
        share = float((np.abs(gaps - q * np.round(gaps / q)) < LATTICE_TOL).mean())
        if share >= LATTICE_SHARE:
            return {"grid": q, "how": f"{share:.0%} of {len(gaps)} top-logprob gaps are multiples of {q:g} nats"}
    return {"grid": fallback, "how": f"no lattice in {len(gaps)} gaps: eps({dtype}) x {LOGIT_SCALE:g}"}


def run_dtype(manifest: dict[str, Any]) -> str:
    return str((manifest.get("spec") or {}).get("dtype") or "bfloat16")


def choose_tau(grids: list[dict[str, Any]], floor_abs_delta: np.ndarray | None = None) -> dict[str, Any]:
    """{"tau", "why", "grid", "floor_p99_abs_delta"} (nats): TAU_STEPS x the coarser run's grid, raised to twice
    the floor's p99 |delta| when that is larger."""
    grid = max(g["grid"] for g in grids)
    tau = TAU_STEPS * grid
    why = f"{TAU_STEPS:g} rounding steps of {grid:g} nats ({grids[int(np.argmax([g['grid'] for g in grids]))]['how']})"
    p99 = None
    if floor_abs_delta is not None and len(floor_abs_delta):
        p99 = float(np.percentile(floor_abs_delta, 99))
        if 2 * p99 > tau:
            tau, why = 2 * p99, f"twice the floor's p99 |delta| ({p99:.3g} nats), above {why}"
    return {"tau": tau, "why": why, "grid": grid, "floor_p99_abs_delta": p99}


# ---- coupled sampling ---------------------------------------------------------------------------------------------


def sampling_mode(manifest: dict[str, Any]) -> dict[str, Any]:
    """{"mode": "greedy" | "coupled" | "sampled", plus the coupled key fields}: how the run chose its tokens."""
    s = (manifest.get("spec") or {}).get("sampling") or {}
    t = float(s.get("temperature") or 0.0)
    if t == 0.0:
        return {"mode": "greedy"}
    coupled = s.get("coupled")
    if coupled is False:
        return {"mode": "sampled", "temperature": t}
    from rig.stacks.sampling import generator_of

    return {
        "mode": "coupled",
        "temperature": t,
        "seed": int(s.get("seed") or 0),
        "top_k": s.get("top_k") or 0,
        "top_p": s.get("top_p") or 1.0,
        "noise": generator_of(manifest.get("stack")),  # runs recorded before the generator was named: pcg64-v0
    }


def pair_mode(ma: dict[str, Any], mb: dict[str, Any]) -> dict[str, Any]:
    """How a pair's splits can be judged: greedy (raw margins), coupled (the same noise in both: perturbed margins),
    or sampled (independent draws, or different noise keys: no claim of disagreement)."""
    a, b = sampling_mode(ma), sampling_mode(mb)
    if a["mode"] == b["mode"] == "greedy":
        return {"mode": "greedy", "why": "both runs greedy"}
    if a["mode"] == b["mode"] == "coupled" and a == b:
        return {
            **a,
            "why": "both runs coupled-sampled with the same noise generator, seed, temperature, top-k and top-p",
        }
    return {"mode": "sampled", "why": f"A is {a['mode']}, B is {b['mode']}; their noise is not shared", "a": a, "b": b}


def gumbel_at(
    seed: int, prompt_id: str, sample: int, pos: int, tokens: list[int], noise: str, vocab: int = 201088
) -> np.ndarray:
    """The coupled Gumbel noise of (seed, prompt, sample, position) at the given token IDs (float64), from the
    generator the runs recorded (`noise`, rig.stacks.sampling: counter-v1 computes just those tokens)."""
    from rig.stacks.sampling import gumbel_at_tokens

    return gumbel_at_tokens(seed, prompt_id, sample, pos, tokens, generator=noise, vocab_size=vocab)
