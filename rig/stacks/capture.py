"""Log-probabilities and top-K of a batch of logit rows, exactly, without a vocabulary-sized sort or copy.

Every recorded number passes through here: the Transformers stack calls `capture_rows` once per generated step (and
per chunk when scoring), and `kernels_check` checks it as "rig-capture" against a float64 reference.

What is recorded, and how it is computed:

- **The log-sum-exp** of each row, from which every logprob is `logit - lse` (raw log-probabilities of the
  unprocessed distribution). A single log-softmax over 201,088 logits sums in long float32 runs and errs by up to
  ~1e-5 nats; `torch.logsumexp` is accurate but materialises two vocabulary-sized temporaries. Here the row is cut
  into a few dozen blocks, one fused log-softmax runs per block (short sums), each block's own log-sum-exp is read
  back at its maximum, and the blocks are combined in a final small logsumexp: as accurate as `torch.logsumexp`,
  at the cost of one log-softmax.
- **The top-K** in the order (logit descending, token id ascending): ties go to the lower token id, always, on every
  device. `torch.topk` leaves the order among equal values unspecified and costs most of the step on a CPU. Here the
  row is cut into blocks of 64, the block maxima select K candidate blocks (ties to the lower block), and the exact
  top-K is taken among those K x 64 candidates. This is exact: an element outside the chosen blocks has K chosen
  blocks above it, each holding an element that ranks above it (ties included, by the block order).
  Ordering by (value, lower id) is done with one int64 key per candidate: the float's order-preserving integer in
  the high half, the inverted token id in the low half.

Measured on 8 x 201,088 float32 rows on the 2-core development CPU (benchmarks/bench_capture.py): log-softmax
plus `torch.topk` 2.0 ms, this 0.8 ms.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

SMALL_BLOCK = 64  # top-K candidate blocks
LSE_BLOCKS = 32  # log-sum-exp blocks per row (each ~6,000 logits for gpt-oss)


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


def topk_rows(raw: Any, k: int) -> tuple[Any, Any]:
    """(values [B, k], int64 ids [B, k]) of float32 rows `raw` [B, V], by (value desc, id asc)."""
    b, v = raw.shape
    s = SMALL_BLOCK
    if v % s or k * s >= v:
        return _topk_by_key(raw, _arange(v, raw.device), k)
    n = v // s
    blocks = raw.view(b, n, s)
    _, chosen_blocks = _topk_by_key(blocks.amax(-1), _arange(n, raw.device), k)
    chosen_blocks = chosen_blocks.sort(-1).values  # vocabulary order, so the candidates' ids ascend
    cand = blocks.gather(1, chosen_blocks[:, :, None].expand(b, k, s)).reshape(b, k * s)
    cand_ids = (chosen_blocks[:, :, None] * s + _arange(s, raw.device)).reshape(b, k * s)
    return _topk_by_key(cand, cand_ids, k)


def _lse_blocks(v: int) -> int:
    """How many equal blocks to cut a row of v logits into for the log-sum-exp (1: no cut)."""
    for n in range(LSE_BLOCKS, 1, -1):
        if v % n == 0 and v // n >= 1024:
            return n
    return 1


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


def logsumexp_rows(raw: Any, scratch: Any = None) -> LogNorm:
    """The log-sum-exp of float32 rows `raw` [B, V] as a LogNorm; `scratch` (same shape, optional) avoids an
    allocation."""
    import torch

    b, v = raw.shape
    n = _lse_blocks(v)
    if n == 1:
        shift = raw.amax(dim=-1)
        safe = torch.where(torch.isneginf(shift), 0.0, shift)
        return LogNorm(shift, torch.logsumexp(raw - safe[:, None], dim=-1) + (safe - shift).nan_to_num(0.0))
    out = scratch if scratch is not None else torch.empty_like(raw)
    xb = raw.view(b, n, v // n)
    ob = out.view(b, n, v // n)
    torch.log_softmax(xb, dim=-1, out=ob)
    # Each block's log-sum-exp is read back at its maximum: log-softmax is monotonic, so its maximum sits at the
    # logits' maximum, and lse_b = peak_b + rel_b with rel_b = -max(log_softmax(x_b)), a number below log(block
    # size). Two max reductions cost a tenth of one max-with-indices on the CPU.
    peak = xb.amax(dim=-1)
    shift = peak.amax(dim=-1)
    rel_b = -ob.amax(dim=-1)
    # Blocks relative to the row's top: peak_b - shift is exact near the top (Sterbenz), and blocks far below it
    # contribute nothing a float32 could hold. An all -inf block gives -inf (its NaN rel is masked).
    d = torch.where(torch.isneginf(peak), peak, (peak - shift[:, None]) + rel_b)
    return LogNorm(shift, torch.logsumexp(d, dim=-1))


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
        norm = logsumexp_rows(raw, self._scratch)
        if not self.k:
            return norm, raw.new_zeros((raw.shape[0], 0)), torch.zeros((raw.shape[0], 0), dtype=torch.int64)
        values, ids = topk_rows(raw, self.k)
        return norm, norm.logprobs(values), ids


def capture_rows(raw: Any, k: int) -> tuple[LogNorm, Any, Any]:
    """One-shot form of RowCapture: (LogNorm, top-K logprobs [B, k], ids [B, k]) of rows `raw` [B, V]."""
    return RowCapture(k)(raw)
