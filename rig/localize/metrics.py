"""How far apart two activations are, in float64: the numbers every cell of `rig layers` is made of.

Each comparison of x (a stack's activation) with y (the other stack's, or the float64 reference's) reports:
- `rel_diff` = 1 - 2 sum(x y) / sum(x x + y y), SGLang's comparator (0 is identical, symmetric, cosine-like);
- `rel_l2` = ||x - y|| / ||s||, s the scale vector (the float64 reference where there is one, else y);
- `max_abs` = max |x - y| with its coordinate `argmax`;
- `steps` = max_abs / ulp(max |s|): the error in rounding steps of the activation dtype at the tensor's largest
  magnitude (a bfloat16 tensor whose largest element is 3.0 has a step of 2^-6 there).

Inputs are NumPy arrays (any float dtype); everything is computed in float64. docs/layers.md, "Metrics".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Explicit mantissa bits of each activation dtype: the rounding step at 1.0 is 2^-bits.
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}


def eps(dtype: str) -> float:
    """The spacing of dtype's numbers at 1.0 (bfloat16: 2^-7 = 0.0078125)."""
    return 2.0 ** -MANTISSA_BITS[dtype]


def ulp(value: float, dtype: str) -> float:
    """The spacing of dtype's numbers at |value| (the rounding step there); the step at 1.0 times 2^floor(log2|v|)."""
    v = abs(float(value))
    if v == 0.0 or not math.isfinite(v):
        return eps(dtype)
    return eps(dtype) * 2.0 ** math.floor(math.log2(v))


def coarser(a: str, b: str) -> str:
    """Of two dtypes, the one with the larger rounding step."""
    return a if MANTISSA_BITS[a] <= MANTISSA_BITS[b] else b


def compare(x: np.ndarray, y: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> dict[str, Any]:
    """{"rel_diff", "rel_l2", "max_abs", "argmax", "steps"} of x against y; see the module docstring.

    scale (default y) sets the denominators: ||scale|| for rel_l2 and ulp(max |scale|, dtype) for steps, so that the
    cross-stack error and each stack's error against the reference are measured in the same units.
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    s = y if scale is None else np.asarray(scale, np.float64).ravel()
    d = x - y
    finite = bool(np.isfinite(d).all())
    if not finite:
        return {"rel_diff": None, "rel_l2": math.inf, "max_abs": math.inf, "argmax": _first_bad(d), "steps": math.inf}
    denom = float(np.dot(x, x) + np.dot(y, y))
    rel_diff = 1.0 - 2.0 * float(np.dot(x, y)) / denom if denom > 0 else 0.0
    norm_s = float(np.linalg.norm(s))
    l2 = float(np.linalg.norm(d))
    rel_l2 = l2 / norm_s if norm_s > 0 else (0.0 if l2 == 0 else math.inf)
    i = int(np.argmax(np.abs(d))) if len(d) else 0
    max_abs = float(abs(d[i])) if len(d) else 0.0
    step = ulp(float(np.max(np.abs(s))) if len(s) else 0.0, dtype)
    return {"rel_diff": rel_diff, "rel_l2": rel_l2, "max_abs": max_abs, "argmax": i, "steps": max_abs / step}


def _first_bad(d: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(d))
    return int(bad[0]) if len(bad) else 0


def router_margin(logits: np.ndarray, k: int) -> float | None:
    """The gap between the k-th and (k+1)-th largest router logits (the top-k decision's margin); None when k >= E."""
    v = np.sort(np.asarray(logits, np.float64))[::-1]
    if k >= len(v):
        return None
    return float(v[k - 1] - v[k])


def logprobs(logits: np.ndarray) -> np.ndarray:
    """log-softmax in float64 (nats)."""
    z = np.asarray(logits, np.float64)
    m = float(np.max(z))
    return z - (m + math.log(float(np.sum(np.exp(z - m)))))
