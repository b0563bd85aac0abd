"""Coupled sampling inside vLLM: a logits processor that adds the rig's shared Gumbel noise to the whole batch.

vLLM's own sampler draws from its own random stream, so vLLM and Transformers diverge at the first sampled token even
when their logits agree. This processor makes vLLM sample the way `rig.stacks.hf` does: it replaces the logits of
each coupled request by `rig.stacks.sampling.couple_rows` (logits / T, top-k and top-p masks, plus the counter-based
Gumbel noise keyed by (seed, prompt id, sample, position), rig.stacks.noise), and the request runs at temperature 0,
so vLLM's greedy argmax picks the coupled sample.

It is a batch-level `LogitsProcessor`, not a per-request adapter: the noise of all coupled rows is generated in one
pass on the logits' device (rows grouped by temperature, top-k and top-p), so its cost does not grow with the number
of Python calls per step. Per request it keeps the key chain over (seed, prompt id, sample) and a reference to the
request's output token list, whose length is the position.

vLLM computes the logprobs it returns (logprobs_mode "raw_logprobs") before any logits processor runs, so the recorded
log-probabilities stay raw. The processor is declared not argmax-invariant, which makes vLLM apply it before the greedy
argmax. Requests without the `rig_coupled_*` extra_args pass through untouched, so one engine serves coupled, greedy and
natively sampled requests alike.

This module imports vLLM and torch: only the engine's process (the rig's vLLM worker, or a vLLM server started with
`--logits-processors rig.stacks.vllm_coupled:RigCoupledLogitsProcessor`) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from rig.stacks.noise import row_keys_from_bases, sequence_base
from rig.stacks.sampling import COUPLED_FIELDS, COUPLED_PREFIX, COUPLED_PROCESSOR, couple_rows, coupled_extra_args

PREFIX, FIELDS = COUPLED_PREFIX, COUPLED_FIELDS
PROCESSOR_FQCN = COUPLED_PROCESSOR
__all__ = ["RigCoupledLogitsProcessor", "coupled_extra_args"]


def _settings(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    if not extra_args or PREFIX + "seed" not in extra_args:
        return None
    missing = [f for f in FIELDS if PREFIX + f not in extra_args]
    if missing:
        raise ValueError(f"coupled sampling: extra_args lack {', '.join(PREFIX + f for f in missing)}")
    return {f: extra_args[PREFIX + f] for f in FIELDS}


@dataclass
class _Row:
    """One coupled request in the persistent batch."""

    base: tuple[int, int]  # the key chains over (seed, prompt id, sample): rig.stacks.noise.sequence_base
    sampling: tuple[float, int, float]  # (temperature, top_k, top_p)
    output_ids: list[int]  # vLLM's running list of this request's generated tokens: its length is the position

    @classmethod
    def from_settings(cls, cfg: dict[str, Any], output_ids: list[int]) -> _Row:
        base = sequence_base(int(cfg["seed"]), str(cfg["prompt_id"]), int(cfg["sample"]))
        return cls(base, (float(cfg["temperature"]), int(cfg["top_k"]), float(cfg["top_p"])), output_ids)


class RigCoupledLogitsProcessor(LogitsProcessor):
    """Applies `rig.stacks.sampling.couple_rows` to the rows whose requests carry the rig_coupled_* settings."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, _Row] = {}  # batch index -> coupled request

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        cfg = _settings(sampling_params.extra_args)
        if cfg is None:
            return
        if float(cfg["temperature"]) <= 0:
            raise ValueError("coupled sampling: rig_coupled_temperature must be > 0")
        if sampling_params.temperature != 0:
            raise ValueError("coupled sampling needs the request at temperature 0 (vLLM then takes the argmax)")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follows the persistent batch: removed, then added, then moved (BatchUpdate's documented order)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            cfg = _settings(params.extra_args)
            if cfg is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row.from_settings(cfg, output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        groups: dict[tuple[float, int, float], list[int]] = {}
        for index, row in self.rows.items():
            groups.setdefault(row.sampling, []).append(index)
        for (temperature, top_k, top_p), indices in groups.items():
            indices.sort()
            rows = [self.rows[i] for i in indices]
            bases = np.asarray([r.base for r in rows], dtype=np.uint64)
            k0, k1 = row_keys_from_bases(bases, np.asarray([len(r.output_ids) for r in rows], dtype=np.uint64))
            if len(indices) == logits.shape[0]:  # every row, one setting: the new tensor is the answer
                return couple_rows(logits, k0, k1, temperature=temperature, top_k=top_k, top_p=top_p).to(logits.dtype)
            idx = torch.as_tensor(indices, dtype=torch.long, device=logits.device)
            out = couple_rows(logits[idx], k0, k1, temperature=temperature, top_k=top_k, top_p=top_p)
            logits[idx] = out.to(logits.dtype)
        return logits
