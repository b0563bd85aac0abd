"""Deliberately wrong kernels: the faults known to have split real gpt-oss stacks, for proving the checks catch them.

Why this exists: a check that never fails proves nothing. Each function here is a correct implementation with one
known fault planted, taking the kernel's inputs (see the kernel's module) like any implementation, so that
`check_kernel(kernel, fn)` must report a failure that names the kernel and the input that caught it:

  swiglu_no_clamp            the SwiGLU clamp dropped (a MoE runner did this on one GPU generation)
  router_softmax_before_topk softmax over all experts, then top-k, without renormalizing the winners
  attention_window_plus_one  the sliding window one key too wide (129 keys instead of 128)
  attention_sink_ignored     the sink logit left out of the softmax (a backend that dropped s_aux)
  yarn_truncation_flipped    the YaRN ramp bounds rounded to integers when gpt-oss keeps them fractional (and back)
  rope_truncation_flipped    the same fault seen through the rotary embedding
"""

from __future__ import annotations

import torch

from kernels_check.attention import attention_baseline
from kernels_check.moe import swiglu_baseline
from kernels_check.norm_rope import rope_baseline, yarn_baseline


def swiglu_no_clamp(gate_up, limit, alpha):
    """SwiGLU without the clamp: correct wherever no activation exceeds the limit."""
    return swiglu_baseline(gate_up, float("inf"), alpha)


def router_softmax_before_topk(logits, top_k):
    """Softmax over every expert's logit, then the top-k of those probabilities, never renormalized."""
    probs = torch.softmax(logits, dim=-1)
    values, idx = torch.topk(probs, top_k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, idx, values)


def attention_window_plus_one(q, k, v, sinks, scale, window):
    """Attention whose sliding window shows one key too many."""
    return attention_baseline(q, k, v, sinks, scale, window + 1 if window else window)


def attention_sink_ignored(q, k, v, sinks, scale, window):
    """Attention that leaves the sink out of the softmax (a sink of -inf)."""
    return attention_baseline(q, k, v, torch.full_like(sinks, -float("inf")), scale, window)


def yarn_truncation_flipped(head_dim, truncate):
    """The YaRN table built with the opposite ramp-bound rounding."""
    return yarn_baseline(head_dim, not truncate)


def rope_truncation_flipped(q, k, positions, truncate):
    """The rotary embedding built from the opposite ramp-bound rounding."""
    return rope_baseline(q, k, positions, not truncate)


PLANTED = {
    "swiglu": swiglu_no_clamp,
    "router": router_softmax_before_topk,
    "attention-window": attention_window_plus_one,
    "attention-sink": attention_sink_ignored,
    "yarn-freqs": yarn_truncation_flipped,
    "rope": rope_truncation_flipped,
}
