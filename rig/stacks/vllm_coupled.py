"""Coupled sampling inside vLLM: a logits processor that adds the rig's shared Gumbel noise.

vLLM's own sampler draws from its own random stream, so vLLM and Transformers diverge at the first sampled token even
when their logits agree. This processor makes vLLM sample the way `rig.stacks.hf` does: it replaces each row of logits
by `rig.stacks.sampling.couple_logits` (logits / T, top-k and top-p masks, plus Gumbel noise keyed by (seed, prompt
id, sample,
position)), and the request runs at temperature 0, so vLLM's greedy argmax picks the coupled sample.

vLLM computes the logprobs it returns (logprobs_mode "raw_logprobs") before any logits processor runs, so the recorded
log-probabilities stay raw. The processor is declared not argmax-invariant, which makes vLLM apply it before the greedy
argmax. Requests without the `rig_coupled_*` extra_args pass through untouched, so one engine serves coupled, greedy and
natively sampled requests alike.

This module imports vLLM and torch: only the engine's process (the rig's vLLM worker, or a vLLM server started with
`--logits-processors rig.stacks.vllm_coupled:RigCoupledLogitsProcessor`) imports it.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from rig.stacks.sampling import COUPLED_FIELDS, COUPLED_PREFIX, COUPLED_PROCESSOR, couple_logits, coupled_extra_args

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


class _RequestCoupler:
    """Per-request callable: (tokens generated so far, logits row) -> perturbed logits row."""

    def __init__(self, cfg: dict[str, Any]):
        self.seed = int(cfg["seed"])
        self.prompt_id = str(cfg["prompt_id"])
        self.sample = int(cfg["sample"])
        self.temperature = float(cfg["temperature"])
        self.top_k = int(cfg["top_k"])
        self.top_p = float(cfg["top_p"])

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        # The position is the number of tokens this request has generated so far (not the engine's step counter).
        pos = len(output_ids)
        out = couple_logits(
            logits[None, :],
            [(self.prompt_id, self.sample, pos)],
            seed=self.seed,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )[0]
        return out.to(logits.dtype)


class RigCoupledLogitsProcessor(AdapterLogitsProcessor):
    """Applies `rig.stacks.sampling.couple_logits` to requests whose extra_args carry the rig_coupled_* settings."""

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

    def new_req_logits_processor(self, params: SamplingParams) -> _RequestCoupler | None:
        cfg = _settings(params.extra_args)
        return _RequestCoupler(cfg) if cfg else None
