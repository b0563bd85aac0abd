"""Coupled sampling: shared Gumbel noise keyed by (seed, prompt id, sample index, position).

Two stacks that sample with their own random streams diverge at the first sampled token even when their logits are
identical, which hides the numerical differences the rig is looking for. The Gumbel-max trick makes sampling a
deterministic function of the logits and a noise vector: argmax(logits / T + g) with g ~ Gumbel(0, 1) is a sample
from softmax(logits / T). If both stacks draw g from the same key, equal logits give equal tokens at any temperature,
and a sampled comparison diverges only where numerics change the winner.

The noise is drawn with NumPy's PCG64 from a SeedSequence over the key, so it is the same on every machine and in
every process (vLLM runs its logits processors in the engine's process). top-k and top-p are applied to the scaled
logits before the noise is added, the way samplers in both stacks apply them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def _key(seed: int, prompt_id: str, sample: int, pos: int) -> list[int]:
    pid = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little")
    return [int(seed) & 0xFFFFFFFF, pid & 0xFFFFFFFF, pid >> 32, int(sample), int(pos)]


def gumbel_noise(seed: int, prompt_id: str, sample: int, pos: int, vocab_size: int) -> np.ndarray:
    """float32[vocab_size] of Gumbel(0, 1) noise for one sampling step, a pure function of its key."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(_key(seed, prompt_id, sample, pos))))
    return rng.gumbel(size=vocab_size).astype(np.float32)


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

    keys[i] = (prompt id, sample index, position) of row i. Filtered tokens get -inf.
    """
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
    noise = np.stack([gumbel_noise(seed, pid, s, p, vocab) for pid, s, p in keys])
    return x + torch.from_numpy(noise).to(x.device)


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
