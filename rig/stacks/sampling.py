"""Coupled sampling: shared Gumbel noise keyed by (seed, prompt id, sample index, position).

Two stacks that sample with their own random streams diverge at the first sampled token even when their logits are
identical, which hides the numerical differences the rig is looking for. The Gumbel-max trick makes sampling a
deterministic function of the logits and a noise vector: argmax(logits / T + g) with g ~ Gumbel(0, 1) is a sample
from softmax(logits / T). If both stacks draw g from the same key, equal logits give equal tokens at any temperature,
and a sampled comparison diverges only where numerics change the winner.

The noise comes from a counter-based generator (rig.stacks.noise, "counter-v1"): a pure function of (key, token
index) computed on the logits' device in torch integer operations, bit-identical to its NumPy reference, so the same
on every machine, in every process (vLLM runs its logits processors in the engine's process) and in `rig diff`, which
regenerates it for the two tokens at a split (`gumbel_at_tokens`). Runs recorded before it used NumPy's PCG64
("pcg64-v0"); the stacks record the generator as `resolved.noise`, and `gumbel_at_tokens(..., generator=...)` still
regenerates the old one. top-k and top-p are applied to the scaled logits before the noise is added, the way samplers
in both stacks apply them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from rig.stacks.noise import (
    COUNTER_V1,
    CURRENT,
    GENERATORS,
    PCG64_V0,
    add_counter_noise_,
    counter_noise_np,
    generator_of,
    noise_reason,
    pcg64_noise_np,
    row_keys,
)

NOISE_GENERATOR = CURRENT
__all__ = [
    "GENERATORS",
    "NOISE_GENERATOR",
    "couple_logits",
    "generator_of",
    "gumbel_at_tokens",
    "gumbel_noise",
    "record_noise",
]


def gumbel_noise(
    seed: int, prompt_id: str, sample: int, pos: int, vocab_size: int, generator: str = NOISE_GENERATOR
) -> np.ndarray:
    """float32[vocab_size] of Gumbel(0, 1) noise for one sampling step, a pure function of its key (NumPy)."""
    if generator == COUNTER_V1:
        return counter_noise_np(seed, prompt_id, sample, pos, np.arange(vocab_size, dtype=np.int64))
    if generator == PCG64_V0:
        return pcg64_noise_np(seed, prompt_id, sample, pos, vocab_size)
    raise ValueError(f"unknown coupled-noise generator {generator!r} (known: {', '.join(GENERATORS)})")


def gumbel_at_tokens(
    seed: int,
    prompt_id: str,
    sample: int,
    pos: int,
    token_ids: Any,
    generator: str = NOISE_GENERATOR,
    vocab_size: int = 201088,
) -> np.ndarray:
    """The noise the stacks added at the given token IDs (float32 values as float64), without drawing the whole
    vocabulary for counter-v1 (microseconds); pcg64-v0 must draw all `vocab_size` values to reach them."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if generator == COUNTER_V1:
        return counter_noise_np(seed, prompt_id, sample, pos, ids).astype(np.float64)
    return gumbel_noise(seed, prompt_id, sample, pos, vocab_size, generator)[ids].astype(np.float64)


def mask_and_scale(logits: Any, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Any:
    """float32 logits / T with top-k and top-p filtered tokens at -inf (a new tensor)."""
    import torch

    x = logits.float() / float(temperature)
    vocab = x.shape[-1]
    if top_k and top_k < vocab:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = probs.cumsum(dim=-1)
        drop_sorted = (cum - probs) > top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def couple_rows(
    logits: Any, k0: np.ndarray, k1: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> Any:
    """Perturbed logits (torch, float32, [B, V]) for rows whose keys (rig.stacks.noise.row_keys) are given."""
    x = mask_and_scale(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return add_counter_noise_(x, k0, k1)


def couple_logits(
    logits: Any,
    keys: list[tuple[str, int, int]],
    *,
    seed: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Any:
    """Perturbed logits (torch, float32, [B, V]) whose argmax is the coupled sample for each row.

    keys[i] = (prompt id, sample index, position) of row i. Filtered tokens get -inf. The noise is generated on the
    logits' device, all rows at once.
    """
    k0, k1 = row_keys(seed, keys)
    return couple_rows(logits, k0, k1, temperature=temperature, top_k=top_k, top_p=top_p)


def record_noise(stack: Any, mode: str, where: str = "") -> None:
    """Records `resolved.noise` (the generator's name, which `rig diff` needs to regenerate a split's noise) on a
    stack whose sampler resolved to `mode`; drops it when the stack no longer samples with coupled noise."""
    if mode == "coupled":
        stack.resolve("noise", NOISE_GENERATOR, noise_reason() + (f"; {where}" if where else ""))
    else:
        stack._resolved.pop("noise", None)


# ---- the wire protocol to vLLM's logits processor (rig.stacks.vllm_coupled), offline or behind a server -------------

COUPLED_PROCESSOR = "rig.stacks.vllm_coupled:RigCoupledLogitsProcessor"
# Coupled-sampling settings travel as flat extra_args (the OpenAI server's vllm_xargs accept only flat values).
COUPLED_PREFIX = "rig_coupled_"
COUPLED_FIELDS = ("seed", "prompt_id", "sample", "temperature", "top_k", "top_p")


def coupled_extra_args(seed: int, prompt_id: str, sample: int, temperature: float, top_k: int, top_p: float) -> dict:
    """The SamplingParams.extra_args (or vllm_xargs) that turn on rig.stacks.vllm_coupled for one request."""
    values = (int(seed), str(prompt_id), int(sample), float(temperature), int(top_k), float(top_p))
    return {COUPLED_PREFIX + f: v for f, v in zip(COUPLED_FIELDS, values, strict=True)}


def request_seed(seed: int, prompt_id: str, sample: int) -> int:
    """A per-request seed (31 bits, accepted by every server) derived from (run seed, prompt id, sample index)."""
    digest = hashlib.sha256(f"{int(seed)}|{prompt_id}|{int(sample)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
