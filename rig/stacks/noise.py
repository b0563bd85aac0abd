"""The keyed Gumbel noise of coupled sampling, as a counter-based generator: the same bits in NumPy and in torch.

Coupled sampling (rig.stacks.sampling) adds Gumbel noise keyed by (seed, prompt id, sample, position) to every
logit. The first generator drew it with NumPy's PCG64 on the CPU, about 17 ms per token and sequence for gpt-oss's
201,088-token vocabulary, plus a copy to the device: more than a GPU decode step. This one is a pure function of
(key, token index), written once over NumPy uint64 (the reference, and what `rig diff` regenerates for the two tokens
at a split) and once in torch int64 operations that run on whatever device holds the logits, batched over rows.

counter-v1, exactly (all integers are 32-bit words, arithmetic mod 2**32):

    mix(x)   = lowbias32: x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
    chain(s, words) = s, then s = mix(s ^ w) for each word w
    row key  k0 = chain(0x243F6A88, W), k1 = chain(0x85A308D3, W), with W the words of
             (seed mod 2**64: low, high; sha256(prompt id)[:8]: low, high; sample mod 2**64: low, high; position)
    T[v]     = mix(v ^ 0x9E3779B9)                      a fixed scramble of the token index (cached per device)
    h        = mix(((T[v] ^ k0) + k1) mod 2**32)        32 uniform bits per (key, token)
    u        = (h + 0.5) * 2**-32                       in (0, 1), exact in float64
    g        = float32(-log(-log(u)))                   the logs in float64, then one rounding to float32

The integer stage is exact on every device (torch has no uint64 arithmetic, so products are kept below 2**63: the
multiplier 0x846CA68B is split as 2**31 + 0x046CA68B, and x * 2**31 mod 2**32 is (x & 1) << 31). The float stage
uses only exact operations up to the two float64 logs; libm, SLEEF and CUDA compute log to within an ulp of float64,
and the single rounding to float32 hides that except when a value sits within a few float64 ulps of a float32
rounding boundary (about 2**-28 of the values; tests/test_noise.py checks NumPy against torch over the whole
vocabulary for several keys). g lies in [-3.13, 22.9]; draws beyond that have probability below 1e-9.

pcg64-v0 is the first generator, kept so that runs recorded with it can still be judged (`rig diff` regenerates the
noise of a split with the generator the run's manifest names: `generator_of`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from typing import Any

import numpy as np

COUNTER_V1 = "counter-v1"
PCG64_V0 = "pcg64-v0"
GENERATORS = (COUNTER_V1, PCG64_V0)
CURRENT = COUNTER_V1

M32 = 0xFFFFFFFF
MUL1 = 0x7FEB352D  # < 2**31: x * MUL1 < 2**63 for x < 2**32
MUL2 = 0x846CA68B  # >= 2**31: applied as 2**31 + MUL2_LOW in torch
MUL2_LOW = MUL2 - (1 << 31)
SALT_T, SALT_K0, SALT_K1 = 0x9E3779B9, 0x243F6A88, 0x85A308D3
U_SCALE, U_HALF = 2.0**-32, 2.0**-33  # u = h * 2**-32 + 2**-33 = (h + 0.5) * 2**-32, exact in float64
CPU_BLOCK_ELEMENTS = 1 << 16  # on the CPU the stages run block by block so that they stay in cache


# ---- the integer stage in NumPy (uint64 arrays holding 32-bit words): the reference -------------------------------


def mix_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 of each 32-bit word (uint64 array in, uint64 array out)."""
    x = np.asarray(x, dtype=np.uint64) & np.uint64(M32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(MUL1)) & np.uint64(M32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(MUL2)) & np.uint64(M32)  # uint64 products wrap mod 2**64: the low 32 bits are exact
    return x ^ (x >> np.uint64(16))


def _mix_int(x: int) -> int:
    return int(mix_np(np.asarray([x], dtype=np.uint64))[0])


@functools.lru_cache(maxsize=65536)
def _prompt_words(prompt_id: str) -> tuple[int, int]:
    d = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little")
    return d & M32, d >> 32


@functools.lru_cache(maxsize=65536)
def sequence_base(seed: int, prompt_id: str, sample: int) -> tuple[int, int]:
    """The two key chains over (seed, prompt id, sample): what stays fixed along one sequence."""
    seed64, sample64 = int(seed) & ((1 << 64) - 1), int(sample) & ((1 << 64) - 1)
    words = (seed64 & M32, seed64 >> 32, *_prompt_words(str(prompt_id)), sample64 & M32, sample64 >> 32)
    out = []
    for salt in (SALT_K0, SALT_K1):
        s = salt
        for w in words:
            s = _mix_int(s ^ w)
        out.append(s)
    return out[0], out[1]


def row_keys_from_bases(bases: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k0, k1) uint64 arrays [B] from per-row bases (uint64 [B, 2]) and positions (the last word of the chain)."""
    pos = np.asarray(positions, dtype=np.uint64)
    if pos.size and int(pos.max()) > M32:
        raise ValueError("coupled noise: positions must be below 2**32")
    bases = np.asarray(bases, dtype=np.uint64).reshape(-1, 2)
    return mix_np(bases[:, 0] ^ pos), mix_np(bases[:, 1] ^ pos)


def row_keys(seed: int, keys: list[tuple[str, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(k0, k1) uint64 arrays [B] for rows keyed (prompt id, sample, position) under one seed."""
    bases = np.asarray([sequence_base(seed, pid, s) for pid, s, _ in keys], dtype=np.uint64).reshape(-1, 2)
    return row_keys_from_bases(bases, np.asarray([p for _, _, p in keys], dtype=np.uint64))


def _bits_np(k0: int, k1: int, token_ids: np.ndarray) -> np.ndarray:
    t = mix_np(np.asarray(token_ids, dtype=np.uint64) ^ np.uint64(SALT_T))
    return mix_np(((t ^ np.uint64(k0)) + np.uint64(k1)) & np.uint64(M32))


def _gumbel_np(bits: np.ndarray) -> np.ndarray:
    u = bits.astype(np.float64) * U_SCALE + U_HALF
    return (-np.log(-np.log(u))).astype(np.float32)


def counter_noise_np(seed: int, prompt_id: str, sample: int, pos: int, token_ids: Any) -> np.ndarray:
    """counter-v1 noise (float32) of one (seed, prompt, sample, position) at the given token IDs."""
    k0, k1 = row_keys(seed, [(prompt_id, sample, pos)])
    return _gumbel_np(_bits_np(int(k0[0]), int(k1[0]), np.asarray(token_ids, dtype=np.int64)))


def pcg64_noise_np(seed: int, prompt_id: str, sample: int, pos: int, vocab_size: int) -> np.ndarray:
    """pcg64-v0: float32[vocab_size] from NumPy's PCG64 seeded by a SeedSequence over the key (before counter-v1)."""
    pid = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little")
    key = [int(seed) & M32, pid & M32, pid >> 32, int(sample), int(pos)]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
    return rng.gumbel(size=vocab_size).astype(np.float32)


# ---- the same in torch: int64 tensors holding 32-bit words, on the logits' device ----------------------------------


def mix_torch_(x: Any) -> Any:
    """lowbias32 in place on an int64 tensor of 32-bit words; every product stays below 2**63."""
    x.bitwise_xor_(x >> 16)
    x.mul_(MUL1).bitwise_and_(M32)
    x.bitwise_xor_(x >> 15)
    top = (x & 1).bitwise_left_shift_(31)  # x * 2**31 mod 2**32
    x.mul_(MUL2_LOW).add_(top).bitwise_and_(M32)
    x.bitwise_xor_(x >> 16)
    return x


_TABLES: dict[tuple[str, int], Any] = {}


def token_table(vocab: int, device: Any) -> Any:
    """T[v] = mix(v ^ SALT_T) for v < vocab, int64 on `device` (computed once per device and size)."""
    import torch

    key = (str(device), int(vocab))
    table = _TABLES.get(key)
    if table is None:
        table = mix_torch_(torch.arange(vocab, dtype=torch.int64, device=device) ^ SALT_T)
        _TABLES[key] = table
    return table


def _block_noise_into(out: Any, table: Any, k0: Any, k1: Any) -> None:
    """out (float32 [B, n]) -= log(-log(u)) for the tokens of `table` (int64 [n]) and row keys k0, k1 (int64 [B, 1]):
    that is, out += g."""
    torch = _torch()
    x = (table[None, :] ^ k0).add_(k1).bitwise_and_(M32)
    mix_torch_(x)
    y = x.to(torch.float64).mul_(U_SCALE).add_(U_HALF).log_().neg_().log_()  # log(-log(u)) = -g, float64
    out.sub_(y.to(out.dtype))  # x - float32(-g) == x + float32(g): one rounding of g, as in NumPy


def add_counter_noise_(logits: Any, k0: np.ndarray, k1: np.ndarray) -> Any:
    """Adds counter-v1 noise to float32 logits [B, V] (row i keyed by k0[i], k1[i]) and returns the result: the same
    tensor, changed in place, except on the fused path, which returns a new one (use the return value).

    On a GPU the torch integer stages run batched over [B, V] on the logits' device, fused into one compiled kernel
    once that has matched the stage-by-stage operations bit for bit (RIG_NOISE_FUSED=0 keeps them staged). On the
    CPU the same arithmetic runs in NumPy, in place, over blocks of about 64k elements that stay in cache:
    single-threaded, it avoids torch's per-operation dispatch and thread barriers, which cost more than the
    arithmetic there (RIG_NOISE_FUSED=1 compiles the fused kernel on the CPU too).
    """
    if (
        logits.device.type == "cpu"
        and not fused_wanted("cpu")
        and logits.is_contiguous()
        and logits.dtype == _torch().float32
    ):
        _add_counter_noise_np_(logits.numpy(), k0, k1)
        return logits
    return add_counter_noise_torch_(logits, k0, k1)


def add_counter_noise_torch_(logits: Any, k0: np.ndarray, k1: np.ndarray) -> Any:
    """add_counter_noise_ in torch operations on the logits' device (what a GPU runs; tests run it on the CPU).

    Where the fused kernel is wanted (`fused_wanted`), the stages run as one compiled kernel once it has proven
    bit-identical to the stage-by-stage operations on this device; otherwise stage by stage.
    """
    torch = _torch()
    b, vocab = logits.shape
    dev = logits.device
    table = token_table(vocab, dev)
    k0_t = torch.as_tensor(np.asarray(k0, dtype=np.int64), device=dev).view(b, 1)
    k1_t = torch.as_tensor(np.asarray(k1, dtype=np.int64), device=dev).view(b, 1)
    if fused_wanted(dev.type):
        fused = _fused_for(dev.type, logits, table, k0_t, k1_t)
        if fused is not None:
            return fused(table, k0_t, k1_t, logits)  # a new tensor: one pass over the logits, no copy back
    _staged_(logits, table, k0_t, k1_t)
    return logits


def _staged_(logits: Any, table: Any, k0_t: Any, k1_t: Any) -> None:
    b, vocab = logits.shape
    if logits.device.type != "cpu" or b * vocab <= CPU_BLOCK_ELEMENTS:
        _block_noise_into(logits, table, k0_t, k1_t)
        return
    step = max(1024, CPU_BLOCK_ELEMENTS // b)
    for start in range(0, vocab, step):
        _block_noise_into(logits[:, start : start + step], table[start : start + step], k0_t, k1_t)


# ---- one fused kernel (torch.compile), used only once it has matched the staged operations bit for bit -------------

FUSED_ENV = "RIG_NOISE_FUSED"  # "auto" (default: fused on GPUs), "1" (on every device, the CPU too), "0" (never)
_FUSED: dict[str, Any] = {}  # device type -> the compiled function, or False when it failed or did not match


def fused_wanted(device_type: str) -> bool:
    mode = os.environ.get(FUSED_ENV, "auto").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        return True
    return device_type == "cuda"


def _fused_noise(table: Any, k0: Any, k1: Any, logits: Any) -> Any:
    """logits + counter-v1 noise as one expression (what torch.compile fuses): the staged operations, in order."""
    torch = _torch()
    x = ((table[None, :] ^ k0) + k1) & M32
    x = x ^ (x >> 16)
    x = (x * MUL1) & M32
    x = x ^ (x >> 15)
    x = (x * MUL2_LOW + ((x & 1) << 31)) & M32
    x = x ^ (x >> 16)
    y = (x.to(torch.float64) * U_SCALE + U_HALF).log().neg().log()
    return logits - y.to(logits.dtype)


def _fused_for(device_type: str, logits: Any, table: Any, k0_t: Any, k1_t: Any) -> Any:
    """The compiled kernel for this device type, compiled and checked against the staged path on first use."""
    state = _FUSED.get(device_type)
    if state is None:
        torch = _torch()
        try:
            fn = torch.compile(_fused_noise, dynamic=True, fullgraph=True)
            got = fn(table, k0_t, k1_t, logits)
            want = logits.clone()
            _staged_(want, table, k0_t, k1_t)
            same = torch.equal(got.view(torch.int32), want.view(torch.int32))
            why = "" if same else "its values differ from the staged operations"
        except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported device: the staged path is exact too
            same, why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not same:
            print(
                f"rig: coupled noise on {device_type} runs stage by stage (fused kernel unused: {why})", file=sys.stderr
            )
        state = _FUSED[device_type] = fn if same else False
    return state or None


_NP_TABLES: dict[int, np.ndarray] = {}


def _add_counter_noise_np_(out: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> None:
    """out (float32 [B, V]) += counter-v1 noise, in NumPy, block by block, every operation in place."""
    b, vocab = out.shape
    table = _NP_TABLES.get(vocab)
    if table is None:
        table = _NP_TABLES.setdefault(vocab, mix_np(np.arange(vocab, dtype=np.uint64) ^ np.uint64(SALT_T)))
    m32 = np.uint64(M32)
    k0c = np.asarray(k0, dtype=np.uint64).reshape(b, 1)
    k1c = np.asarray(k1, dtype=np.uint64).reshape(b, 1)
    step = max(1024, CPU_BLOCK_ELEMENTS // b)
    for start in range(0, vocab, step):
        x = table[None, start : start + step] ^ k0c
        x += k1c
        x &= m32
        tmp = np.empty_like(x)
        for shift, mul in ((16, MUL1), (15, MUL2), (16, None)):
            np.right_shift(x, np.uint64(shift), out=tmp)
            x ^= tmp
            if mul is not None:
                x *= np.uint64(mul)  # uint64 products wrap mod 2**64: the low 32 bits are exact
                x &= m32
        u = x.astype(np.float64)
        u *= U_SCALE
        u += U_HALF
        np.log(u, out=u)
        np.negative(u, out=u)
        np.log(u, out=u)  # log(-log(u)) = -g
        out[:, start : start + step] -= u.astype(np.float32)


def _torch() -> Any:
    import torch

    return torch


def counter_noise_torch(k0: np.ndarray, k1: np.ndarray, vocab: int, device: Any = "cpu") -> Any:
    """counter-v1 noise as a float32 tensor [B, vocab] on `device` through the torch operations (tests, benchmarks)."""
    torch = _torch()
    out = torch.zeros((len(k0), vocab), dtype=torch.float32, device=device)
    return add_counter_noise_torch_(out, k0, k1)


# ---- what a run recorded -------------------------------------------------------------------------------------------


def generator_of(stack_description: dict[str, Any] | None) -> str:
    """The noise generator a coupled run used, from its manifest's `stack` entry: the recorded `resolved.noise`,
    else pcg64-v0 (runs recorded before the generator was recorded used it)."""
    resolved = (stack_description or {}).get("resolved") or {}
    value = (resolved.get("noise") or {}).get("value")
    return str(value) if value else PCG64_V0


def noise_reason() -> str:
    """The reason recorded beside `resolved.noise` by every stack that samples with coupled noise."""
    return (
        f"{CURRENT}: counter-based Gumbel noise keyed by (seed, prompt, sample, position) (rig.stacks.noise), "
        "generated on the logits' device in torch integer operations, bit-identical to the NumPy reference that "
        "rig diff regenerates"
    )
