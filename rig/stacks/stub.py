"""A torch-free stack for testing the rig's own plumbing: runner, resume, diff, report and the command line.

The real stacks cost seconds to load and tens of seconds per run on a CPU; most of the rig (batching, resume, the run
directory, the diff, the verdict, the report) does not care how the logits were made. This stack makes them from a
hash of the token prefix, so it is deterministic on every machine, needs nothing beyond NumPy, and returns real
records: the chosen token's raw log-probability and the top-K alternatives from one log-softmax, the same contract
as `hf` and `vllm`. Its candidates are a fixed set of ordinary harmony tokens plus the stop tokens, so every
completion decodes.

Engine arguments (`--engine-arg NAME=VALUE`) let a test plant differences the way a second stack would:

    perturb=0.05      add a prefix-keyed perturbation of this many nats to every logit (another "stack's" rounding)
    perturb_seed=1    key of that perturbation (two stub runs with different seeds differ like two stacks)
    fail_at_batch=2   raise in the third generate() call (a crash half-way through a run)
    stop_bias=-4      logit offset of the stop tokens (lower: longer completions)
    batch_delay_s=0.2 sleep this long per batch (a slow stack, to kill a run half-way in a test)

Use it as `RunSpec(stack="stub", model="stub")` or `rig run --stack stub --model stub`.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from rig.errors import UserError
from rig.harmony import STOP_TOKEN_IDS
from rig.stacks.base import Request, SequenceResult, Stack, finish_reason, truncate_at_stop

N_CANDIDATES = 256  # ordinary tokens the stub can emit
CANDIDATES = np.concatenate(
    [np.arange(1000, 1000 + 97 * N_CANDIDATES, 97, dtype=np.int64), np.asarray(STOP_TOKEN_IDS, dtype=np.int64)]
)
OUTSIDE_LOGPROB = -100.0  # nats: what score() gives a token outside the stub's candidates
LOGIT_SCALE = 4.0  # spread of the pseudo-logits (nats): peaked enough for clear winners, with occasional near-ties


def _prefix_digest(prefix: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(prefix, dtype="<i4").tobytes(), digest_size=16).digest()


def _rng(key: bytes) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(hashlib.sha256(key).digest()[:8], "little")))


def _normal(key: bytes, n: int) -> np.ndarray:
    """n standard normal draws keyed by bytes (the same on every machine)."""
    return _rng(key).standard_normal(n)


def _uniform(key: bytes, n: int) -> np.ndarray:
    """n uniform draws in (0, 1) keyed by bytes."""
    return np.clip(_rng(key).random(n), 1e-300, 1.0 - 1e-16)


class StubStack(Stack):
    """Deterministic pseudo-logits from the token prefix; no torch, no model files."""

    name = "stub"
    local_model = False
    gpu_telemetry = False
    in_process_torch = False

    def __init__(self, spec):
        super().__init__(spec)
        args = dict(spec.engine_args)
        unknown = sorted(set(args) - {"perturb", "perturb_seed", "fail_at_batch", "stop_bias", "batch_delay_s"})
        if unknown:
            raise UserError(f"stub stack: unknown engine argument {unknown[0]!r}")
        self.perturb = float(args.get("perturb", 0.0))
        self.perturb_seed = int(args.get("perturb_seed", 0))
        self.fail_at_batch = args.get("fail_at_batch")
        self.stop_bias = float(args.get("stop_bias", -2.0))
        self.batch_delay_s = float(args.get("batch_delay_s", 0.0))
        self._calls = 0

    def load(self) -> None:
        self.resolve("device", "cpu", "the stub computes pseudo-logits with NumPy")
        self.resolve("dtype", self.spec.dtype, "recorded only: logits are float64, rounded to this dtype's grid")
        self.resolve("sampler", "greedy" if self.spec.sampling.greedy else "gumbel", "temperature")
        self._extra.update({"candidates": int(len(CANDIDATES)), "perturb": self.perturb})

    # ---- the pseudo-model ---------------------------------------------------------------------------------------
    def _logprobs(self, prefix: np.ndarray) -> np.ndarray:
        """Raw log-probabilities (float64) over CANDIDATES after this prefix."""
        digest = _prefix_digest(prefix)
        logits = LOGIT_SCALE * _normal(digest, len(CANDIDATES))
        logits[-len(STOP_TOKEN_IDS) :] += self.stop_bias
        if self.perturb:
            logits += self.perturb * _normal(digest + self.perturb_seed.to_bytes(8, "little"), len(CANDIDATES))
        logits = _round_to_dtype(logits, self.spec.dtype)
        m = logits.max()
        return logits - (m + np.log(np.exp(logits - m).sum()))

    def _record(self, lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.spec.logprobs
        order = np.lexsort((CANDIDATES, -lp))[:k]  # best first, ties by token ID
        return CANDIDATES[order], lp[order]

    def _choose(self, lp: np.ndarray, req: Request, pos: int) -> int:
        s = self.spec.sampling
        if s.greedy:
            return int(np.lexsort((CANDIDATES, -lp))[0])
        u = _uniform(f"{s.seed}|{req.prompt.id}|{req.sample}|{pos}".encode(), len(lp))
        return int(np.argmax(lp / s.temperature - np.log(-np.log(u))))  # Gumbel-max: a sample from softmax(lp / T)

    # ---- the Stack interface ------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[SequenceResult]:
        self._maybe_fail()
        out = []
        for req in requests:
            t0 = time.perf_counter()
            seq = np.asarray(req.prompt.token_ids, dtype=np.int64)
            ids, lps, top_ids, top_lps = [], [], [], []
            for pos in range(self.spec.sampling.max_new_tokens):
                lp = self._logprobs(seq)
                j = self._choose(lp, req, pos)
                ti, tl = self._record(lp)
                ids.append(int(CANDIDATES[j]))
                lps.append(lp[j])
                top_ids.append(ti)
                top_lps.append(tl)
                seq = np.append(seq, CANDIDATES[j])
                if ids[-1] in self.spec.sampling.stop_token_ids:
                    break
            token_ids = np.asarray(ids, np.int32)
            out.append(
                SequenceResult(
                    req.prompt.id,
                    req.sample,
                    token_ids,
                    np.asarray(lps, np.float32),
                    np.asarray(top_ids, np.int32).reshape(len(ids), -1),
                    np.asarray(top_lps, np.float32).reshape(len(ids), -1),
                    finish_reason(token_ids, self.spec.sampling.stop_token_ids),
                    {"latency_s": round(time.perf_counter() - t0, 6)},
                )
            )
        return out

    def score(self, requests: list[Request]) -> list[SequenceResult]:
        self._maybe_fail()
        out = []
        for req in requests:
            cont = np.asarray(req.continuation if req.continuation is not None else [], dtype=np.int64)
            cont = cont[: truncate_at_stop(cont, self.spec.sampling.stop_token_ids)]
            prefix = np.asarray(req.prompt.token_ids, dtype=np.int64)
            lps, top_ids, top_lps = [], [], []
            for pos, tok in enumerate(cont):
                lp = self._logprobs(np.concatenate([prefix, cont[:pos]]))
                hit = np.flatnonzero(tok == CANDIDATES)
                lps.append(lp[hit[0]] if len(hit) else OUTSIDE_LOGPROB)
                ti, tl = self._record(lp)
                top_ids.append(ti)
                top_lps.append(tl)
            n = len(cont)
            out.append(
                SequenceResult(
                    req.prompt.id,
                    req.sample,
                    cont.astype(np.int32),
                    np.asarray(lps, np.float32),
                    np.asarray(top_ids, np.int32).reshape(n, -1),
                    np.asarray(top_lps, np.float32).reshape(n, -1),
                    "scored",
                )
            )
        return out

    def _maybe_fail(self) -> None:
        if self.batch_delay_s:
            time.sleep(self.batch_delay_s)
        call, self._calls = self._calls, self._calls + 1
        if self.fail_at_batch is not None and call == int(self.fail_at_batch):
            raise RuntimeError(f"stub stack: planted failure at batch call {call}")


def _round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to the grid of a float dtype (bfloat16 by truncating float32 mantissas with round-to-nearest-even)."""
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    bits = x.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32).astype(np.float64)
