"""Coupled sampling: hf and vLLM draw the same Gumbel noise, so their samples split only where their logits differ.

One vLLM engine (started with the coupled logits processor) serves every vLLM run here; native seeded sampling runs
on the same engine (the processor ignores requests without rig_coupled_* settings). The match-rate threshold below
comes from the measurement in docs/stacks.md; re-measure with

    .venv/bin/python tests/test_coupled.py --model /tmp/tiny1          # default suite, T=1.0, 32 tokens
    .venv/bin/python tests/test_coupled.py --model /tmp/tiny1 --prompts 16 --tokens 24   # this test's setting
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from rig.analysis.numerics import logit_grid
from rig.run.runner import generation_requests, plan_batches
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.suite import load_suite
from rig.stacks.base import Request

N_PROMPTS, N_TOKENS, TEMPERATURE, SEED = 16, 24, 1.0, 0
# Measured for hf against vLLM, coupled, on this setting (16 prompts x 24 tokens): share of positions before the first
# divergence 0.91 (docs/stacks.md). The margin leaves room for a platform whose bf16 kernels tie-break differently.
MIN_PREFIX_SHARE = 0.75


def sampling(coupled: bool, tokens: int = N_TOKENS) -> SamplingSpec:
    return SamplingSpec(max_new_tokens=tokens, temperature=TEMPERATURE, seed=SEED, coupled=coupled)


def generate(stack, requests: list[Request], batch_size: int = 8) -> dict:
    out = {}
    for batch in plan_batches(requests, batch_size):
        for r in stack.generate(batch):
            out[(r.prompt_id, r.sample)] = r
    return out


def prefix_stats(a: dict, b: dict) -> dict[str, float]:
    """Agreement of two generations over the same keys: share of positions before the first divergence (over the
    longer sequence's length), share of identical sequences, mean first-divergence position, matched tokens."""
    firsts, total, same = [], 0, 0
    for key in a:
        x, y = a[key].token_ids, b[key].token_ids
        m = min(len(x), len(y))
        d = int(np.argmax(x[:m] != y[:m])) if (x[:m] != y[:m]).any() else m
        firsts.append(d)
        total += max(len(x), len(y))
        same += int(d == m and len(x) == len(y))
    return {
        "prefix_share": sum(firsts) / total,
        "identical_share": same / len(a),
        "mean_first_divergence": float(np.mean(firsts)),
        "matched_tokens": int(sum(firsts)),
    }


@pytest.fixture(scope="module")
def requests_():
    return generation_requests(load_suite("default").prompts[:N_PROMPTS], 1)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model):
    from rig.stacks.vllm import VLLMStack

    stack = VLLMStack(RunSpec(stack="vllm", model=str(tiny_model), max_model_len=4096, sampling=sampling(True)))
    stack.load()
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def vllm_coupled(vllm_engine, requests_):
    vllm_engine.set_sampling(sampling(True))
    return generate(vllm_engine, requests_)


@pytest.fixture(scope="module")
def hf_coupled(tiny_model, requests_):
    from rig.stacks.hf import HFStack

    with HFStack(RunSpec(stack="hf", model=str(tiny_model), sampling=sampling(True))) as stack:
        return generate(stack, requests_)


def test_hf_coupled_twice_is_identical(tiny_model, requests_, hf_coupled):
    from rig.stacks.hf import HFStack

    # a different batch (4 instead of 8 sequences) must not change the noise either: it is keyed per sequence
    with HFStack(RunSpec(stack="hf", model=str(tiny_model), sampling=sampling(True))) as stack:
        again = generate(stack, requests_[:4], batch_size=4)
    for key, r in again.items():
        np.testing.assert_array_equal(r.token_ids, hf_coupled[key].token_ids)


@pytest.mark.slow
def test_vllm_coupled_twice_is_identical(vllm_engine, requests_, vllm_coupled):
    vllm_engine.set_sampling(sampling(True))
    again = generate(vllm_engine, requests_)
    assert vllm_engine.describe()["resolved"]["sampler"]["value"] == "coupled"
    for key, r in again.items():
        np.testing.assert_array_equal(r.token_ids, vllm_coupled[key].token_ids)
        np.testing.assert_array_equal(r.logprobs, vllm_coupled[key].logprobs)


@pytest.mark.slow
def test_vllm_coupled_records_raw_logprobs(vllm_engine, requests_, vllm_coupled, hf_coupled):
    results = [vllm_coupled[(r.prompt.id, r.sample)] for r in requests_]
    tokens = np.concatenate([r.token_ids for r in results])
    lp = np.concatenate([r.logprobs for r in results])
    top = np.concatenate([r.topk_logprobs for r in results])
    top_ids = np.concatenate([r.topk_ids for r in results])
    # it sampled (many tokens are not the argmax), and each token's logprob is its raw log-softmax, below the top-1
    not_argmax = tokens != top_ids[:, 0]
    assert not_argmax.mean() > 0.2
    assert (lp[not_argmax] <= top[not_argmax, 0]).all()
    # the engine's own teacher-forced (prompt_logprobs, always raw) view of those tokens agrees
    scored = vllm_engine.score(
        [Request(q.prompt, q.sample, r.token_ids) for q, r in zip(requests_, results, strict=True)]
    )
    # Bounds follow from the precision, not from this CPU: the logits sit on a bf16 grid (read from the data), and two
    # computations of one logit (decode against prefill, or two stacks) differ by rounding steps of that grid.
    grid = logit_grid(top, "bfloat16")["grid"]
    delta = np.abs(lp - np.concatenate([s.logprobs for s in scored]))
    assert np.median(delta) <= grid and np.percentile(delta, 99) <= 2 * grid, (grid, np.percentile(delta, [50, 99]))
    # and so does hf's raw logprob in bulk, where the two stacks sampled the same tokens; single positions may jump
    # by a nat or more where a router near-tie sends the token to another expert in one stack (a spike: rig diff
    # lists those, tests/test_diff.py::test_real_hf_against_vllm checks that it does)
    diffs = []
    for key, v in vllm_coupled.items():
        h = hf_coupled[key]
        m = min(len(v.token_ids), len(h.token_ids))
        d = int(np.argmax(v.token_ids[:m] != h.token_ids[:m])) if (v.token_ids[:m] != h.token_ids[:m]).any() else m
        diffs.append(np.abs(v.logprobs[:d] - h.logprobs[:d]))
    diffs = np.concatenate(diffs)
    assert np.median(diffs) <= grid and np.percentile(diffs, 90) <= 2 * grid, (grid, np.percentile(diffs, [50, 90]))


@pytest.mark.slow
def test_coupled_hf_against_vllm_agrees_against_a_floor(tiny_model, vllm_engine, tmp_path):
    """Sampled runs raise no false alarm: coupled hf against coupled vLLM at T=1 splits only where the perturbed
    margin (logprob + T g) is within rounding, and the verdict against an hf replicate floor is 0."""
    from click.testing import CliRunner

    from rig.cli import main
    from rig.run import runner

    suite = load_suite("default")
    spec = RunSpec(stack="hf", model=str(tiny_model), sampling=sampling(True))
    hf = runner.execute(spec, tmp_path / "hf", suite=suite, telemetry_hz=0)
    hf2 = runner.execute(spec, tmp_path / "hf2", suite=suite, telemetry_hz=0)
    vllm_engine.set_sampling(sampling(True))
    vspec = RunSpec(stack="vllm", model=str(tiny_model), max_model_len=4096, sampling=sampling(True))
    vllm = runner.execute(vspec, tmp_path / "vllm", suite=suite, telemetry_hz=0, stack=vllm_engine)
    out = tmp_path / "d.json"
    res = CliRunner().invoke(main, ["diff", str(hf), str(vllm), "--floor", str(hf), str(hf2), "--json", str(out)])
    doc = json.loads(out.read_text())
    assert res.exit_code == 0, doc["verdict"]["line"]
    assert doc["sampling"]["mode"] == "coupled" and doc["summary"]["confident"] == 0
    splits = [r for r in doc["sequences"] if not r["identical"] and r["class"] != "prefix"]
    assert all(r["vllm_rule"] is None for r in splits), "vLLM's rule is for greedy runs only"
    for r in splits:  # the deciding (perturbed) margins are within rounding: both under tau
        assert 0 <= r["margin_a"] < doc["tau"] and 0 <= r["margin_b"] < doc["tau"], r
    # the same runs without shared noise are judged "sampled": no claim either way
    free = runner.execute(spec.replace(sampling=sampling(False)), tmp_path / "free", suite=suite, telemetry_hz=0)
    res = CliRunner().invoke(main, ["diff", str(hf), str(free), "--json", str(out)])
    doc = json.loads(out.read_text())
    assert res.exit_code == 0 and doc["sampling"]["mode"] == "sampled" and doc["summary"]["confident"] == 0
    assert doc["summary"]["sampled"] == doc["summary"]["divergent"] - doc["summary"]["prefix"]


@pytest.mark.slow
def test_coupled_beats_seeded_sampling_across_stacks(tiny_model, vllm_engine, requests_, vllm_coupled, hf_coupled):
    from rig.stacks.hf import HFStack

    coupled = prefix_stats(hf_coupled, vllm_coupled)
    assert coupled["prefix_share"] >= MIN_PREFIX_SHARE, coupled
    vllm_engine.set_sampling(sampling(False))
    vllm_native = generate(vllm_engine, requests_)
    assert vllm_engine.describe()["resolved"]["sampler"]["value"] == "native"
    with HFStack(RunSpec(stack="hf", model=str(tiny_model), sampling=sampling(False))) as stack:
        hf_native = generate(stack, requests_)
    native = prefix_stats(hf_native, vllm_native)
    assert coupled["matched_tokens"] > native["matched_tokens"], (coupled, native)


def main() -> None:
    """Measure coupled against ordinary seeded sampling, hf against vLLM; print a table and one JSON line."""
    from rig.stacks.hf import HFStack
    from rig.stacks.vllm import VLLMStack

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=0, help="first N prompts of the default suite (0: all)")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    prompts = load_suite("default").prompts
    reqs = generation_requests(prompts[: args.prompts] if args.prompts else prompts, 1)
    v = VLLMStack(RunSpec(stack="vllm", model=args.model, max_model_len=4096, sampling=sampling(True, args.tokens)))
    v.load()
    runs = {}
    try:
        for coupled in (True, False):
            v.set_sampling(sampling(coupled, args.tokens))
            runs[("vllm", coupled)] = generate(v, reqs)
    finally:
        v.close()
    for coupled in (True, False):
        with HFStack(RunSpec(stack="hf", model=args.model, sampling=sampling(coupled, args.tokens))) as h:
            runs[("hf", coupled)] = generate(h, reqs)
    rows = {
        name: prefix_stats(runs[("hf", c)], runs[("vllm", c)]) for name, c in (("coupled", True), ("seeded", False))
    }
    print(f"hf vs vllm, {len(reqs)} prompts x {args.tokens} tokens, T={TEMPERATURE}, seed {SEED}")
    print(f"{'sampler':<9}{'prefix share':>14}{'identical':>11}{'mean first div':>16}")
    for name, r in rows.items():
        print(f"{name:<9}{r['prefix_share']:>14.3f}{r['identical_share']:>11.3f}{r['mean_first_divergence']:>16.2f}")
    print(json.dumps({"prompts": len(reqs), "tokens": args.tokens, **rows}))


if __name__ == "__main__":
    main()
