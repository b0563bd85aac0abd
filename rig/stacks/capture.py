"""Log-probabilities and top-K of a batch of logit rows, exactly, without a vocabulary-sized sort.

Every recorded number passes through here: the Transformers stack calls `RowCapture` once per generated step (and
per chunk when scoring), and `kernels_check` checks it as "rig-capture" against a float64 reference.

What is recorded, and how it is computed:

- **The log-sum-exp** of each row, from which every logprob is `(logit - shift) - rel` (raw log-probabilities of the
  unprocessed distribution; `LogNorm`): shift is the row's largest logit and rel = log(sum(2^((x - shift) log2 e))).
  `x - shift` is exact for the logits that matter (same binade as the top, Sterbenz), the sum is torch's cascaded
  float32 sum, and keeping shift apart means large logits (hundreds, thousands) lose no bits to a rounded
  float32 lse. torch.exp2 runs 2.5x faster than torch.exp on the CPU, and the row maximum comes free from the
  top-K's block maxima. A single log-softmax instead (the form used before) sums in long float32 runs and errs by up
  to ~1e-5 nats; `torch.logsumexp` is accurate but materialises two vocabulary-sized temporaries.
- **The top-K** in the order (logit descending, token id ascending): ties go to the lower token id, always, on every
  device. `torch.topk` leaves the order among equal values unspecified and costs most of the step on a CPU. Here the
  row is cut into blocks of 64, the block maxima select K candidate blocks (ties to the lower block), and the exact
  top-K is taken among those K x 64 candidates. This is exact: an element outside the chosen blocks has K chosen
  blocks above it, each holding an element that ranks above it (ties included, by the block order).
  Ordering by (value, lower id) is done with one int64 key per candidate: the float's order-preserving integer in
  the high half, the inverted token id in the low half.

Cost on 8 x 201,088 float32 rows, per generated step, on the 2-core development CPU: see docs/performance.md
(benchmarks/bench_hf.py measures it inside `generate`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

SMALL_BLOCK = 64  # top-K candidate blocks
LOG2E = 1.4426950408889634  # exp(x) = 2^(x log2 e)


def _order_key(values: Any) -> Any:
    """int64 keys whose order is the float32 order of `values` (-0.0 counts as +0.0; NaN above +inf, as topk)."""
    import torch

    i = (values + 0.0).view(torch.int32)  # -0.0 + 0.0 == +0.0: equal floats get equal keys
    return (i ^ ((i >> 31) & 0x7FFFFFFF)).to(torch.int64)  # negative floats: flip the magnitude bits


def _topk_by_key(values: Any, ids: Any, k: int) -> tuple[Any, Any]:
    """Top-k of `values` [B, N] ordered by (value desc, id asc); `ids` [B, N] or [N] are non-negative int64 ids."""
    import torch

    ids = ids.expand_as(values)
    key = (_order_key(values) << 32) | (0x7FFFFFFF - ids)
    pos = torch.topk(key, k, dim=-1).indices
    return values.gather(-1, pos), ids.gather(-1, pos)


@functools.lru_cache(maxsize=16)
def _arange(n: int, device: Any) -> Any:
    import torch

    return torch.arange(n, device=device)


def _blocked(raw: Any, k: int) -> bool:
    """Whether the top-K of these rows goes through blocks of 64 (the vocabulary divides into them, K is small)."""
    v = raw.shape[-1]
    return v % SMALL_BLOCK == 0 and k * SMALL_BLOCK < v


def topk_rows(raw: Any, k: int, block_max: Any = None) -> tuple[Any, Any]:
    """(values [B, k], int64 ids [B, k]) of float32 rows `raw` [B, V], by (value desc, id asc). `block_max`: the
    maxima of the rows' blocks of 64, when the caller has them already."""
    b, v = raw.shape
    s = SMALL_BLOCK
    if not _blocked(raw, k):
        return _topk_by_key(raw, _arange(v, raw.device), k)
    n = v // s
    blocks = raw.view(b, n, s)
    if block_max is None:
        block_max = blocks.amax(-1)
    _, chosen_blocks = _topk_by_key(block_max, _arange(n, raw.device), k)
    chosen_blocks = chosen_blocks.sort(-1).values  # vocabulary order, so the candidates' ids ascend
    cand = blocks.gather(1, chosen_blocks[:, :, None].expand(b, k, s)).reshape(b, k * s)
    cand_ids = (chosen_blocks[:, :, None] * s + _arange(s, raw.device)).reshape(b, k * s)
    return _topk_by_key(cand, cand_ids, k)


class LogNorm(NamedTuple):
    """A row's log-sum-exp kept in two parts, lse = shift + rel: shift is the row's largest logit and rel a small
    number (at most log V). Logprobs are then (logit - shift) - rel: the first subtraction is exact for logits near
    the top (same binade), so large logits (hundreds, thousands) do not lose the bits a single float32 lse would."""

    shift: Any  # [B]
    rel: Any  # [B]

    def logprobs(self, values: Any) -> Any:
        """float32 logprobs of raw logits `values` [B, ...] of the same rows."""
        extra = (None,) * (values.dim() - 1)
        return (values - self.shift[(slice(None), *extra)]) - self.rel[(slice(None), *extra)]

    @property
    def lse(self) -> Any:
        return self.shift + self.rel


def logsumexp_rows(raw: Any, scratch: Any = None, shift: Any = None) -> LogNorm:
    """The log-sum-exp of float32 rows `raw` [B, V] as a LogNorm. `scratch` (same shape) avoids an allocation;
    `shift` (the rows' maxima) avoids a pass when the caller has it."""
    import torch

    if shift is None:
        shift = raw.amax(dim=-1)
    # A row whose maximum is infinite has no finite log-probabilities (torch's log_softmax gives NaN there too); its
    # shift is taken as 0 so that the pass below stays free of inf - inf.
    safe = torch.where(torch.isinf(shift), 0.0, shift)
    out = scratch if scratch is not None else torch.empty_like(raw)
    torch.sub(raw, safe[:, None], out=out)
    out.mul_(LOG2E)
    torch.exp2(out, out=out)
    # Summed in fixed blocks, then across them: torch splits one long reduction among threads differently for one row
    # than for a batch, so a plain sum would make a row's logprobs depend on what else is in its batch.
    b, v = raw.shape
    n = _sum_blocks(v)
    return LogNorm(shift, torch.log(out.view(b, n, v // n).sum(dim=-1).sum(dim=-1)))


def _sum_blocks(v: int) -> int:
    """Equal blocks (at most 64, each at least 1,024 long) to sum a row of v in; 1 when v does not divide."""
    for n in range(64, 1, -1):
        if v % n == 0 and v // n >= 1024:
            return n
    return 1


class RowCapture:
    """Per-row log-sum-exp and top-K with a reusable scratch buffer (one per batch shape and device)."""

    def __init__(self, k: int):
        self.k = k
        self._scratch: Any = None

    def __call__(self, raw: Any) -> tuple[LogNorm, Any, Any]:
        """(LogNorm of each row, top-K logprobs [B, k] float32, top-K ids [B, k] int64) of float32 rows `raw`
        [B, V]. The logprob of any other token t of row i is `norm.logprobs(raw[i, t])`."""
        import torch

        if raw.dtype != torch.float32:
            raw = raw.float()
        raw = raw.contiguous()
        if self._scratch is None or self._scratch.shape != raw.shape or self._scratch.device != raw.device:
            self._scratch = torch.empty_like(raw)
        block_max = None
        if self.k and _blocked(raw, self.k):
            block_max = raw.view(raw.shape[0], -1, SMALL_BLOCK).amax(-1)  # the top-K's candidates and the row max
        norm = logsumexp_rows(raw, self._scratch, None if block_max is None else block_max.amax(-1))
        if not self.k:
            return norm, raw.new_zeros((raw.shape[0], 0)), torch.zeros((raw.shape[0], 0), dtype=torch.int64)
        values, ids = topk_rows(raw, self.k, block_max)
        return norm, norm.logprobs(values), ids


def capture_rows(raw: Any, k: int) -> tuple[LogNorm, Any, Any]:
    """One-shot form of RowCapture: (LogNorm, top-K logprobs [B, k], ids [B, k]) of rows `raw` [B, V]."""
    return RowCapture(k)(raw)
