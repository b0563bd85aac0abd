"""The Transformers stack on the tiny gpt-oss: determinism, dtype differences, teacher-forced scoring."""

from __future__ import annotations

import numpy as np
import pytest

from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunReader
from rig.run.suite import load_suite
from rig.stacks.base import Request
from rig.stacks.hf import HFStack


@pytest.fixture(scope="module")
def prompts():
    return load_suite("default").prompts[:6]


@pytest.fixture(scope="module")
def fp32_stack(tiny_model):
    stack = HFStack(
        RunSpec(model=str(tiny_model), dtype="float32", batch_size=3, sampling=SamplingSpec(max_new_tokens=20))
    )
    stack.load()
    yield stack
    stack.close()


def test_greedy_twice_is_identical(fp32_stack, prompts):
    reqs = [Request(p) for p in prompts]
    one, two = fp32_stack.generate(reqs), fp32_stack.generate(reqs)
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a.token_ids, b.token_ids)
        assert np.array_equal(a.logprobs, b.logprobs)
        assert np.array_equal(a.topk_ids, b.topk_ids)


def test_greedy_token_is_top1_and_topk_sorted(fp32_stack, prompts):
    res = fp32_stack.generate([Request(p) for p in prompts[:3]])
    for r in res:
        assert r.topk_ids.shape == (len(r.token_ids), 20)
        assert np.array_equal(r.token_ids, r.topk_ids[:, 0])
        np.testing.assert_array_equal(r.logprobs, r.topk_logprobs[:, 0])
        assert (np.diff(r.topk_logprobs, axis=1) <= 0).all()
        assert (r.logprobs < 0).all()
        # raw log-probabilities: the top-20 mass is a probability mass
        assert (np.exp(r.topk_logprobs).sum(axis=1) <= 1 + 1e-5).all()


def test_teacher_forced_scores_equal_generation_logprobs_fp32(fp32_stack, prompts):
    gen = fp32_stack.generate([Request(p) for p in prompts])
    scored = fp32_stack.score([Request(p, 0, g.token_ids) for p, g in zip(prompts, gen, strict=True)])
    for g, s in zip(gen, scored, strict=True):
        assert np.array_equal(g.token_ids, s.token_ids)
        np.testing.assert_allclose(s.logprobs, g.logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(s.topk_logprobs, g.topk_logprobs, atol=1e-4, rtol=0)


def test_score_chunks_long_sequences(fp32_stack, prompts, monkeypatch):
    import rig.stacks.hf as hf

    gen = fp32_stack.generate([Request(prompts[0])])[0]
    whole = fp32_stack.score([Request(prompts[0], 0, gen.token_ids)])[0]
    monkeypatch.setattr(hf, "SCORE_CHUNK_TOKENS", 16)
    chunked = fp32_stack.score([Request(prompts[0], 0, gen.token_ids)])[0]
    np.testing.assert_allclose(chunked.logprobs, whole.logprobs, atol=1e-4)


def test_coupled_sampling_is_reproducible_and_differs_from_greedy(tiny_model, prompts):
    spec = RunSpec(model=str(tiny_model), dtype="float32", sampling=SamplingSpec(temperature=1.0, max_new_tokens=12))
    stack = HFStack(spec)
    stack.load()
    reqs = [Request(p, s) for p in prompts[:2] for s in range(2)]
    one, two = stack.generate(reqs), stack.generate(list(reversed(reqs)))
    by_key = {(r.prompt_id, r.sample): r for r in two}
    for r in one:
        assert np.array_equal(r.token_ids, by_key[(r.prompt_id, r.sample)].token_ids), "batch order must not matter"
    assert not np.array_equal(one[0].token_ids, one[1].token_ids), "two samples of a prompt differ"
    assert stack.describe()["resolved"]["sampler"]["value"] == "coupled"
    # the recorded logprob is the raw one: a sampled token is often not the top-1
    assert any((r.token_ids != r.topk_ids[:, 0]).any() for r in one)
    scored = stack.score(
        [Request(p, r.sample, r.token_ids) for p, r in zip([prompts[0], prompts[0]], one[:2], strict=True)]
    )
    np.testing.assert_allclose(scored[0].logprobs, one[0].logprobs, atol=1e-4)


def test_bf16_and_fp32_differ_and_the_difference_is_recorded(hf_run_bf16, hf_run_fp32):
    a, b = RunReader(hf_run_bf16), RunReader(hf_run_fp32)
    assert a.manifest["stack"]["resolved"]["dtype"]["value"] == "bfloat16"
    assert b.manifest["stack"]["resolved"]["dtype"]["value"] == "float32"
    assert a.manifest["spec_hash"] != b.manifest["spec_hash"]
    ta, tb = a.tokens(), b.tokens()
    lp_a = ta.column("logprob").to_numpy()[:20]
    lp_b = tb.column("logprob").to_numpy()[:20]
    assert not np.array_equal(lp_a, lp_b), "bf16 and fp32 logprobs must differ"
    assert a.manifest["suite"]["hash"] == b.manifest["suite"]["hash"]
    for key in ("attention", "experts", "quantization", "device", "threads", "sampler", "capture_kernel"):
        assert a.manifest["stack"]["resolved"][key]["reason"]
    from rig.stacks.capture import capture_kernel

    # on the CPU the run records which form captured it, and it is the one this process would use
    assert a.manifest["stack"]["resolved"]["capture_kernel"]["value"] == capture_kernel()[0]


def test_unknown_model_is_a_user_error(tmp_path):
    from rig.errors import UserError

    with pytest.raises(UserError, match="unknown model"):
        HFStack(RunSpec(model=str(tmp_path / "nope"))).load()
