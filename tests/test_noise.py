"""Coupled sampling's noise (rig.stacks.noise, counter-v1): the NumPy reference, the torch generator that runs on the
logits' device and the NumPy fast path the CPU runs are bit-identical; the noise is Gumbel(0, 1) and sampling with it
follows softmax(logits / T); runs name their generator and old (pcg64-v0) runs still regenerate theirs.

That both stacks sample the same tokens with it is tests/test_coupled.py (hf against vLLM on the tiny model).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from rig.stacks import noise, sampling

VOCAB = 201088  # gpt-oss's vocabulary
KEYS = [  # (seed, prompt id, sample, position): ordinary, edge and odd values
    (0, "fact-capital-au", 0, 0),
    (0, "fact-capital-au", 0, 1),
    (0, "fact-capital-au", 1, 0),
    (1, "reason-mc-physics", 3, 511),
    (2**63 + 5, "é-ü-∑ prompt " * 20, 2**40, 2**31 + 7),
    (12345, "", 0, 131071),
]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The NumPy reference over the whole vocabulary for every key, float32 [len(KEYS), VOCAB]."""
    return np.stack([sampling.gumbel_noise(seed, pid, s, p, VOCAB) for seed, pid, s, p in KEYS])


def _keys() -> tuple[np.ndarray, np.ndarray]:
    k = [noise.row_keys(seed, [(pid, s, p)]) for seed, pid, s, p in KEYS]
    return np.concatenate([a for a, _ in k]), np.concatenate([b for _, b in k])


def test_torch_generator_is_bit_identical_to_numpy(reference):
    torch = pytest.importorskip("torch")
    k0, k1 = _keys()
    got = noise.counter_noise_torch(k0, k1, VOCAB, device="cpu").numpy()
    assert got.dtype == np.float32 and got.shape == reference.shape
    np.testing.assert_array_equal(_bits(got), _bits(reference))
    # the CPU fast path (NumPy in place, in blocks) that the stacks run on a CPU, under inference mode as in hf
    with torch.inference_mode():
        fast = noise.add_counter_noise_(torch.zeros(len(KEYS), VOCAB), k0, k1).numpy()
    np.testing.assert_array_equal(_bits(fast), _bits(reference))


def test_torch_generator_on_cuda_when_present(reference):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    k0, k1 = _keys()
    got = noise.counter_noise_torch(k0, k1, VOCAB, device="cuda").cpu().numpy()
    np.testing.assert_array_equal(_bits(got), _bits(reference))


def test_fused_kernel_is_used_only_once_it_matches(monkeypatch, reference):
    """The one-kernel path (torch.compile; on by default on GPUs) checks itself against the staged operations on
    first use. Here on the CPU, where inductor compiles C++: it matches, and then gives the reference's bits."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(noise.FUSED_ENV, "1")
    monkeypatch.setattr(noise, "_FUSED", {})
    k0, k1 = _keys()
    got = noise.add_counter_noise_(torch.zeros(len(KEYS), VOCAB), k0, k1).numpy()
    assert callable(noise._FUSED.get("cpu")), "the fused kernel did not match the staged operations"
    np.testing.assert_array_equal(_bits(got), _bits(reference))
    again = noise.add_counter_noise_(torch.zeros(2, VOCAB), k0[:2], k1[:2]).numpy()  # another batch size
    np.testing.assert_array_equal(_bits(again), _bits(reference[:2]))
    monkeypatch.setenv(noise.FUSED_ENV, "0")
    assert not noise.fused_wanted("cuda") and not noise.fused_wanted("cpu")
    monkeypatch.setenv(noise.FUSED_ENV, "auto")
    assert noise.fused_wanted("cuda") and not noise.fused_wanted("cpu")


def test_integer_stage_matches_the_plain_formula():
    """The torch mix (products split below 2**63) equals lowbias32 written with Python's unbounded integers."""
    torch = pytest.importorskip("torch")

    def lowbias32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [rng.integers(0, 2**32, 4000, dtype=np.uint64), np.asarray([0, 1, 2**31, 2**32 - 1], np.uint64)]
    )
    want = np.asarray([lowbias32(int(x)) for x in xs], dtype=np.uint64)
    np.testing.assert_array_equal(noise.mix_np(xs), want)
    got = noise.mix_torch_(torch.as_tensor(xs.astype(np.int64))).numpy().astype(np.uint64)
    np.testing.assert_array_equal(got, want)


def test_gumbel_at_tokens_is_the_full_vector_at_those_tokens(reference):
    tokens = [0, 1, 200002, 200012, VOCAB - 1, 12345]
    for (seed, pid, s, p), row in zip(KEYS, reference, strict=True):
        got = sampling.gumbel_at_tokens(seed, pid, s, p, tokens)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, row[tokens].astype(np.float64))


def test_legacy_generator_is_unchanged():
    """pcg64-v0 is exactly what runs recorded before counter-v1 drew, so rig diff still judges them."""
    seed, pid, s, p = 3, "fact-element-79", 1, 17
    d = int.from_bytes(hashlib.sha256(pid.encode()).digest()[:8], "little")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, d & 0xFFFFFFFF, d >> 32, s, p])))
    old = rng.gumbel(size=1000).astype(np.float32)
    np.testing.assert_array_equal(sampling.gumbel_noise(seed, pid, s, p, 1000, generator="pcg64-v0"), old)
    at = sampling.gumbel_at_tokens(seed, pid, s, p, [3, 999], generator="pcg64-v0", vocab_size=1000)
    np.testing.assert_array_equal(at, old[[3, 999]].astype(np.float64))
    with pytest.raises(ValueError, match="unknown coupled-noise generator"):
        sampling.gumbel_noise(seed, pid, s, p, 10, generator="mt19937")


def test_noise_is_gumbel_and_rows_are_independent(reference):
    """Moments and the CDF of Gumbel(0, 1), per row; no correlation between rows whose keys differ in one field."""
    euler, var = 0.5772156649, np.pi**2 / 6
    for row in reference:
        assert abs(row.mean() - euler) < 0.015 and abs(row.var() - var) < 0.03
        assert row.min() > -3.2 and row.max() < 23.0
    grid = np.linspace(-2, 6, 17)
    cdf = np.exp(-np.exp(-grid))
    emp = (reference[:, :, None] <= grid).mean(axis=1)
    assert np.abs(emp - cdf).max() < 0.006  # Kolmogorov-Smirnov at 201k draws: 1.63 / sqrt(n) = 0.0036 at 1%
    corr = np.corrcoef(reference)
    off = corr[~np.eye(len(KEYS), dtype=bool)]
    assert np.abs(off).max() < 0.012  # 4 / sqrt(n)
    # bits: every output bit is set about half the time, for consecutive positions of one sequence
    k0, k1 = noise.row_keys(0, [("p", 0, pos) for pos in range(64)])
    bits = np.stack([noise._bits_np(int(a), int(b), np.arange(4096)) for a, b in zip(k0, k1, strict=True)])
    share = ((bits[..., None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).mean(axis=(0, 1))
    assert np.abs(share - 0.5).max() < 0.01


def test_gumbel_max_samples_follow_softmax():
    """argmax(logits / T + g) over many positions draws tokens with the softmax's frequencies (chi-square)."""
    torch = pytest.importorskip("torch")
    logits = torch.full((1, 64), -1e4)
    logits[0, :6] = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    temperature, n = 0.8, 20000
    keys = [("prompt", 0, pos) for pos in range(n)]
    perturbed = sampling.couple_logits(logits.expand(n, -1), keys, seed=11, temperature=temperature)
    counts = np.bincount(perturbed.argmax(-1).numpy(), minlength=64)[:6]
    p = torch.softmax(logits[0, :6] / temperature, -1).numpy()
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert counts.sum() == n and chi2 < 20.5  # 5 degrees of freedom: p = 0.001


def test_couple_logits_masks_then_adds_the_keyed_noise():
    torch = pytest.importorskip("torch")
    v = 1000
    logits = torch.linspace(-5, 5, v).repeat(2, 1)
    keys = [("a", 0, 4), ("b", 1, 9)]
    out = sampling.couple_logits(logits, keys, seed=5, temperature=2.0, top_k=10)
    assert torch.isinf(out[:, :-10]).all() and torch.isfinite(out[:, -10:]).all()
    g = np.stack([sampling.gumbel_noise(5, pid, s, p, v) for pid, s, p in keys])
    want = (logits / 2.0)[:, -10:] + torch.from_numpy(g[:, -10:])
    assert torch.equal(out[:, -10:], want)
    out = sampling.couple_logits(logits, keys, seed=5, temperature=1.0, top_p=0.5)
    kept = torch.isfinite(out)
    assert 0 < int(kept.sum()) < 2 * v and kept[:, -1].all()


def test_runs_name_their_generator():
    class Fake:
        def __init__(self):
            self._resolved = {}

        def resolve(self, key, value, reason):
            self._resolved[key] = {"value": value, "reason": reason}

    stack = Fake()
    sampling.record_noise(stack, "coupled")
    assert stack._resolved["noise"]["value"] == "counter-v1" == sampling.NOISE_GENERATOR
    assert sampling.generator_of({"resolved": stack._resolved}) == "counter-v1"
    sampling.record_noise(stack, "native")
    assert "noise" not in stack._resolved
    # a coupled run recorded before the generator was recorded drew pcg64-v0
    assert sampling.generator_of({"resolved": {"sampler": {"value": "coupled"}}}) == "pcg64-v0"
    assert sampling.generator_of(None) == "pcg64-v0"


def test_hf_records_the_generator_of_a_coupled_run(tiny_model):
    pytest.importorskip("transformers")
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.stacks.hf import HFStack

    with HFStack(RunSpec(stack="hf", model=str(tiny_model), sampling=SamplingSpec(temperature=1.0))) as stack:
        resolved = stack.describe()["resolved"]
    assert resolved["sampler"]["value"] == "coupled" and resolved["noise"]["value"] == "counter-v1"
    assert sampling.generator_of(stack.describe()) == "counter-v1"
    with HFStack(RunSpec(stack="hf", model=str(tiny_model))) as stack:
        assert "noise" not in stack.describe()["resolved"]  # greedy: no noise
