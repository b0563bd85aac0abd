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

Two forms compute this. On the CPU, float32 rows go through one C pass (rig/stacks/capture.c, built for the machine
by rig.stacks.native): a running top-K threshold, a running maximum, and the exp sum against it, accumulated in
double. Everywhere else (GPUs, no C compiler, RIG_NATIVE=0, K above NATIVE_MAX_K, a row with NaN or an infinite
maximum) the torch form below runs. Both give the same top-K ids and values, exactly, and the same log-sum-exp to
within a few float32 steps; a run uses one form throughout, and the Transformers stack records which
(`resolved.capture_kernel`, with `capture_kernel()`'s reason). The first use checks the C form against the torch form
on rows full of ties and masked tokens, and falls back to the torch form if they disagree.

Cost on 8 x 201,088 float32 rows, per generated step, on the 2-core development CPU: see docs/performance.md
(benchmarks/bench_hf.py measures it inside `generate`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

SMALL_BLOCK = 64  # top-K candidate blocks
LOG2E = 1.4426950408889634  # exp(x) = 2^(x log2 e)
NATIVE_MAX_K = 64  # the C form keeps its top-K by insertion: K x (K log V) work per row, cheap up to here


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
    """Per-row log-sum-exp and top-K of float32 logit rows: the C form for CPU rows when it is available (see the
    module docstring), the torch form otherwise, with a reusable scratch buffer (one per batch shape and device)."""

    def __init__(self, k: int, native: bool | None = None):
        self.k = k
        self._scratch: Any = None
        self._native = native  # None: the C form where capture_kernel() says it is usable; False: never

    def __call__(self, raw: Any) -> tuple[LogNorm, Any, Any]:
        """(LogNorm of each row, top-K logprobs [B, k] float32, top-K ids [B, k] int64) of float32 rows `raw`
        [B, V]. The logprob of any other token t of row i is `norm.logprobs(raw[i, t])`."""
        raw = _float_rows(raw)
        lib = self._lib(raw)
        if lib is not None:
            got = _capture_native(lib, raw, self.k)
            if got is not None:
                return got
        return self._torch_form(raw)

    def _lib(self, raw: Any) -> Any:
        """The C form's library when it takes these rows (CPU, K within its limit, not turned off), else None."""
        if raw.device.type != "cpu" or not raw.shape[0] or self.k > NATIVE_MAX_K or self._native is False:
            return None
        return _native_lib()

    def _torch_form(self, raw: Any) -> tuple[LogNorm, Any, Any]:
        import torch

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


def _float_rows(raw: Any) -> Any:
    """Contiguous float32 rows (the same tensor when they are already)."""
    import torch

    return (raw if raw.dtype == torch.float32 else raw.float()).contiguous()


def _capture_native(lib: Any, raw: Any, k: int) -> tuple[LogNorm, Any, Any] | None:
    """The C form on contiguous float32 CPU rows; None when a row has a NaN or an infinite maximum."""
    import torch

    b = raw.shape[0]
    norm = torch.empty((2, b), dtype=torch.float32)  # shift, rel
    lps = torch.empty((b, k), dtype=torch.float32)
    ids = torch.empty((b, k), dtype=torch.int32)
    if not _native_into(lib, raw, k, norm.data_ptr(), norm[1].data_ptr(), lps.data_ptr(), ids.data_ptr()):
        return None
    return LogNorm(norm[0], norm[1]), lps, ids.long()  # int64, as the torch form gives


def _native_into(lib: Any, raw: Any, k: int, shift: int, rel: int, lps: int, ids: int) -> bool:
    """The C form into the given addresses (shift, rel [B] float32; lps [B, k] float32; ids [B, k] int32); False
    when a row has a NaN or an infinite maximum (the outputs are then meaningless)."""
    import torch

    if raw.dtype != torch.float32 or raw.device.type != "cpu" or not raw.is_contiguous():
        raise ValueError(f"the C form reads contiguous float32 CPU rows, not {raw.dtype} on {raw.device}")
    b, v = raw.shape
    if v >= 2**31:
        raise ValueError(f"the C form records int32 token ids; a vocabulary of {v} does not fit")
    return not lib.rig_capture_rows(raw.data_ptr(), b, v, k, torch.get_num_threads(), shift, rel, lps, ids)


class StepRecorder:
    """The capture of one `generate` call, step by step: each step's top-K and log-sum-exp, and, one step late, the
    logprob of the token each row went on with. Everything goes into buffers on the logits' device that grow CHUNK
    steps at a time, so that on the CPU a step costs two C calls and no allocation (the per-step Python work is a
    visible share of a small model's step)."""

    CHUNK = 64

    def __init__(self, k: int, native: bool | None = None):
        self.k = k
        self.steps = 0
        self._rows = RowCapture(k, native)
        self._chunks: list[dict[str, Any]] = []
        self._prev: Any = None  # (raw [B, V], chunk, index) of the last step, until its tokens are known

    @staticmethod
    def _norm_ptrs(c: dict[str, Any], i: int, b: int) -> tuple[int, int]:
        """Addresses of step i's shift and rel rows in chunk c."""
        shift = c["norm"].data_ptr() + i * 2 * b * 4
        return shift, shift + b * 4

    def step(self, raw: Any) -> None:
        """Record one step's rows: float32 logits [B, V] (held until `chosen` gives their tokens)."""
        import torch

        raw = _float_rows(raw)
        b, k = raw.shape[0], self.k
        i = self.steps % self.CHUNK
        if i == 0:
            self._chunks.append(
                {
                    "norm": torch.empty((self.CHUNK, 2, b), dtype=torch.float32, device=raw.device),  # shift, rel
                    "lps": torch.empty((self.CHUNK, b, k), dtype=torch.float32, device=raw.device),
                    "ids": torch.empty((self.CHUNK, b, k), dtype=torch.int32, device=raw.device),
                    "chosen": torch.full((self.CHUNK, b), float("nan"), device=raw.device),
                }
            )
        c = self._chunks[-1]
        lib = self._rows._lib(raw)
        done = False
        if lib is not None:
            lps, ids = c["lps"].data_ptr() + i * b * k * 4, c["ids"].data_ptr() + i * b * k * 4
            done = _native_into(lib, raw, k, *self._norm_ptrs(c, i, b), lps, ids)
        if not done:
            norm, lps, ids = self._rows._torch_form(raw)
            c["norm"][i, 0].copy_(norm.shift)
            c["norm"][i, 1].copy_(norm.rel)
            c["lps"][i].copy_(lps)
            c["ids"][i].copy_(ids)
        self._prev = (raw, c, i)
        self.steps += 1

    def chosen(self, tokens: Any) -> None:
        """The tokens [B] (int64, any stride) that followed the last recorded step; a no-op before the first."""
        if self._prev is None:
            return
        import torch

        raw, c, i = self._prev
        self._prev = None
        b, v = raw.shape
        lib = self._rows._lib(raw)
        if lib is not None and tokens.device.type == "cpu" and tokens.dtype == torch.int64:
            out = c["chosen"].data_ptr() + i * b * 4
            tok, stride = tokens.data_ptr(), tokens.stride(0)
            if lib.rig_token_logprobs(raw.data_ptr(), b, v, tok, stride, *self._norm_ptrs(c, i, b), out):
                raise IndexError(f"a chosen token id is outside the vocabulary of {v}: {tokens.tolist()}")
            return
        norm = LogNorm(c["norm"][i, 0], c["norm"][i, 1])
        c["chosen"][i].copy_(norm.logprobs(raw.gather(-1, tokens.to(raw.device)[:, None]).squeeze(-1)))

    def results(self) -> tuple[Any, Any, Any]:
        """NumPy (chosen logprobs [B, S] float32, top-K ids [B, S, K] int32, top-K logprobs [B, S, K] float32) over
        the S steps recorded."""
        import torch

        s = self.steps
        if not s:
            empty = np.zeros((0, 0, self.k), np.float32)
            return np.zeros((0, 0), np.float32), empty.astype(np.int32), empty

        def whole(key: str) -> Any:
            return torch.cat([c[key] for c in self._chunks])[:s]

        chosen = whole("chosen").T.cpu().numpy()
        ids = whole("ids").transpose(0, 1).cpu().numpy()
        lps = whole("lps").transpose(0, 1).cpu().numpy()
        return chosen, ids, lps

    def nbytes(self) -> int:
        """Bytes held by the buffers (they grow with the steps and K, never with the vocabulary)."""
        return sum(t.nelement() * t.element_size() for c in self._chunks for t in c.values())


_NATIVE: dict[str, Any] = {}  # "lib": the checked library or None, "reason": why


def _native_lib() -> Any:
    if "lib" not in _NATIVE:
        capture_kernel()
    return _NATIVE["lib"]


def capture_kernel() -> tuple[str, str]:
    """("native" or "torch", reason): which form captures CPU rows in this process, decided once. The C form is
    used only after it has matched the torch form (same top-K ids and values, log-sum-exp within four float32 steps)
    on rows full of ties, masked tokens and a ragged tail."""
    if "lib" not in _NATIVE:
        from rig.stacks import native

        built = native.load("capture")
        lib, reason = built.lib, built.reason
        if lib is not None:
            omp = native.torch_openmp()
            if omp.lib is not None:
                fns = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
                lib.rig_use_openmp(*(native.address(omp.lib, f) for f in fns))
                reason += f"; rows split over torch's intra-op threads ({omp.reason})"
            else:
                reason += f"; one thread per call ({omp.reason})"
            why = _self_check(lib)
            if why:
                lib, reason = None, f"the C form disagreed with the torch form ({why}): the torch form runs"
        # Unexpected (a compiler is there, yet no C form): say so once. RIG_NATIVE=0 and no compiler are choices.
        if lib is None and native.enabled() and native.compiler() is not None:
            import sys

            print(f"rig: capture on the CPU uses the torch form: {reason}", file=sys.stderr)
        _NATIVE.update(lib=lib, reason=reason)
    return ("native" if _NATIVE["lib"] is not None else "torch"), _NATIVE["reason"]


def capture_kernel_for(device_type: str, k: int) -> tuple[str, str]:
    """capture_kernel() for a run's device and K: which form its rows go through, and why."""
    if device_type != "cpu":
        return "torch", f"rows on {device_type}: the torch form (the C form is for CPU rows)"
    if k > NATIVE_MAX_K:
        return "torch", f"K = {k} is above the C form's {NATIVE_MAX_K}: the torch form"
    return capture_kernel()


def _self_check(lib: Any) -> str:
    import torch

    g = torch.Generator().manual_seed(20261202)
    x = torch.round(torch.randn(4, 64 * 70 + 37, generator=g) * 6) / 4  # exact ties everywhere, a tail of 37
    x[1, ::3] = float("-inf")
    x[2] = x[2].abs().neg() * 40  # a wide row: most terms far below the top
    x[3, :200] = float("-inf")
    for k in (0, 1, 5, NATIVE_MAX_K):
        want = RowCapture(k, native=False)(x)
        got = _capture_native(lib, x, k)
        if got is None:
            return f"rows reported unusable at k={k}"
        if not torch.equal(got[2], want[2]):
            return f"top-{k} ids differ"
        if not torch.equal(got[1], got[0].logprobs(x.gather(-1, got[2]))):
            return f"top-{k} logprobs are not (logit - shift) - rel"
        step = torch.finfo(torch.float32).eps * want[0].lse.abs().clamp(min=1.0)
        if not bool(((got[0].lse - want[0].lse).abs() <= 4 * step).all()):
            return f"log-sum-exp off by {float((got[0].lse - want[0].lse).abs().max()):.3g}"
        if not torch.equal(got[0].shift, want[0].shift):
            return "row maxima differ"
    return ""


def capture_rows(raw: Any, k: int) -> tuple[LogNorm, Any, Any]:
    """One-shot form of RowCapture: (LogNorm, top-K logprobs [B, k], ids [B, k]) of rows `raw` [B, V]."""
    return RowCapture(k)(raw)
