"""rig diff: divergence metrics on hand-built runs with known answers, real tiny-model runs, and the CLI's exit codes.

Runs are written through the real RunWriter. Each test names the docs/metrics.md definition it pins.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import prompt, scored_pair, seq, topk_rows, write_run

from rig.analysis.diff import channel_labels, check_prompts, diff_runs, sequence_teacher
from rig.analysis.load import load_run
from rig.analysis.summary import Thresholds, diff_document, dumps, summarize
from rig.cli.diff import diff_command
from rig.errors import UserError
from rig.run.spec import RunSpec, SamplingSpec


def pair_of(tmp_path, a_results, b_results, prompts=None, **kw):
    prompts = prompts or [prompt(r) for r in sorted({r.prompt_id for r in a_results})]
    a = write_run(tmp_path / "a", prompts, a_results)
    b = write_run(tmp_path / "b", prompts, b_results)
    kw.setdefault("tau", 0.1)  # these cases pin the classification mechanics at a given tau
    return diff_runs(load_run(a), load_run(b), decode_context=False, **kw)


# ---- first divergence, prefix rule, margins, classes (docs/metrics.md "First divergence", "Margin") ----------------


def test_first_divergence_and_prefix_rule(tmp_path):
    a = [seq("p0", [5, 6, 7, 8]), seq("p1", [5, 6, 7, 8]), seq("p2", [5, 6, 7]), seq("p3", [5])]
    b = [seq("p0", [5, 6, 7, 8]), seq("p1", [5, 6, 9, 8]), seq("p2", [5, 6, 7, 8, 9]), seq("p3", [6])]
    pair = pair_of(tmp_path, a, b)
    s = pair.seq
    assert s.d.tolist() == [-1, 2, 3, 0]
    assert s.cls.tolist() == [0, 2, 3, 2]  # identical, confident, prefix, confident
    # prefix: the shorter run has no row at d, so only the longer side's margin is defined
    assert math.isnan(s.margin_a[2]) and s.margin_b[2] == pytest.approx(1.0)
    assert s.token_a[2] == -1 and s.token_b[2] == 8
    assert s.vllm_rule[2]  # vLLM's zip stops at the shorter output: the rule holds
    summ = summarize(pair)
    assert summ["identical"] == 1 and summ["divergent"] == 3 and summ["share_identical"] == 0.25
    assert summ["median_first_divergence"] == 2.0
    assert (summ["confident"], summ["prefix"], summ["near_tie"]) == (2, 1, 0)


def test_margins_near_tie_confident_and_tau(tmp_path):
    # p0: margins at d=1 are 0.05 (A) and 0.08 (B); p1: 0.05 and 0.5
    a = [seq("p0", [5, 6], margins=[1, 0.05]), seq("p1", [5, 6], margins=[1, 0.05])]
    b = [seq("p0", [5, 7], margins=[1, 0.08]), seq("p1", [5, 7], margins=[1, 0.5])]
    pair = pair_of(tmp_path, a, b, tau=0.1)
    assert pair.seq.margin_a.tolist() == pytest.approx([0.05, 0.05], abs=1e-6)
    assert pair.seq.margin_b.tolist() == pytest.approx([0.08, 0.5], abs=1e-6)
    assert pair.seq.cls.tolist() == [1, 2]  # near-tie (both < tau), confident (B's margin >= tau)
    tighter = diff_runs(pair.a, pair.b, tau=0.06, decode_context=False)
    assert tighter.seq.cls.tolist() == [2, 2]  # 0.08 >= 0.06: no longer a near tie


def test_vllm_rule(tmp_path):
    ids_a, lps_a = topk_rows([5, 6])
    ids_b, lps_b = topk_rows([5, 7])
    ids_b[1, 1] = 6  # B's list holds A's token; A's list lacks B's token 7
    a = [seq("p0", [5, 6]), seq("p1", [5, 6], ids=ids_a.copy(), lps=lps_a)]
    ids_a2 = ids_a.copy()
    ids_a2[1, 2] = 7
    b = [seq("p0", [5, 7], ids=ids_b, lps=lps_b), seq("p1", [5, 7], ids=ids_b, lps=lps_b)]
    a[0] = seq("p0", [5, 6], ids=ids_a2, lps=lps_a)
    pair = pair_of(tmp_path, a, b)
    assert pair.seq.vllm_rule.tolist() == [True, False]
    summ = summarize(pair)
    assert (summ["vllm_rule_holds"], summ["vllm_rule_fails"]) == (1, 1)


def test_channel_labels():
    # <|channel|>analysis<|message|> x y <|end|> <|start|>assistant<|channel|>final<|message|> z <|return|> w
    toks = np.array(
        [200005, 35644, 200008, 40617, 2375, 200007, 200006, 173781, 200005, 17196, 200008, 40617, 200002, 2375],
        np.int32,
    )
    labels = channel_labels(toks, np.array([0, len(toks)]))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 2, 2, 0]
    # two sequences: the second starts inside nothing, whatever the first left open
    two = np.concatenate([toks[:4], toks[3:5]])
    assert channel_labels(two, np.array([0, 4, 6])).tolist() == [0, 0, 0, 1, 0, 0]


def test_breakdowns_by_category_channel_and_token_kind(tmp_path):
    head = [200005, 35644, 200008]
    a = [seq("p0", [*head, 10, 11]), seq("p1", [*head, 10, 11]), seq("p2", [*head, 10, 200007])]
    b = [seq("p0", [*head, 10, 11]), seq("p1", [*head, 12, 11]), seq("p2", [*head, 10, 13])]
    prompts = [prompt("p0", category="math"), prompt("p1", category="math"), prompt("p2", category="chat")]
    pair = pair_of(tmp_path, a, b, prompts=prompts)
    summ = summarize(pair)
    assert summ["by_category"]["math"]["sequences"] == 2 and summ["by_category"]["math"]["identical"] == 1
    assert summ["by_category"]["chat"]["divergent"] == 1
    assert summ["by_channel"]["analysis"]["sequences"] == 2  # both divergences are inside the analysis message
    assert summ["by_token_kind"] == {
        "special": {**summ["by_token_kind"]["special"], "sequences": 1},
        "text": {**summ["by_token_kind"]["text"], "sequences": 1},
    }
    hist = summ["position_histogram"]
    assert sum(hist["counts"]) == 2 and hist["counts"][3] == 1 and hist["counts"][4] == 1  # width-1 bins: d = 3, 4


# ---- teacher-forced (docs/metrics.md "Teacher-forced") ---------------------------------------------------------


def test_teacher_forced_metrics_from_scored_run(tmp_path):
    a, b, s = scored_pair(tmp_path, [0.0, 0.1, -0.2, 0.3], top1_flip_at=[2])
    pair = diff_runs(load_run(a), load_run(b), scored=load_run(s), decode_context=False)
    t = pair.teacher
    assert t["source"] == "scored" and t["n_positions"] == 4
    assert t["mean_abs_delta"] == pytest.approx(0.15, abs=1e-6)
    assert t["mean_delta"] == pytest.approx(0.05, abs=1e-6)
    assert t["p99_abs_delta"] == pytest.approx(0.297, abs=1e-6)  # linear: 0.2 + 0.97 * (0.3 - 0.2)
    assert t["max_abs_delta"] == pytest.approx(0.3, abs=1e-6)
    assert t["exp_mean_abs_delta"] == pytest.approx(math.exp(0.15), abs=1e-6)
    assert t["top1_agreement"] == 0.75 and t["top1_disagreements"] == 1
    # KL: only row 2 differs (top-1 and top-2 ids swapped). The listed probabilities sum to more than 1, so the tail is
    # floored at 1e-6 and both vectors are divided by Z = sum + 1e-6: KL = (p1 - p2) / Z * (log p1 - log p2), / 4 rows
    p = np.exp(np.array([-0.1, -1.1, -2.1, -3.1], np.float32).astype(np.float64))
    assert t["mean_kl"] == pytest.approx((p[0] - p[1]) / (p.sum() + 1e-6) * 1.0 / 4, rel=1e-5)
    assert t["by_position"]["mean_abs_delta"] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)
    # the fallback: common prefix (positions 0, 1 before d = 2), where both runs generated the same tokens
    assert pair.prefix["source"] == "prefix" and pair.prefix["n_positions"] == 2


def test_scored_run_must_hold_a_tokens(tmp_path):
    a, b, s = scored_pair(tmp_path, [0, 0, 0, 0])
    with pytest.raises(UserError, match="did not score"):
        diff_runs(load_run(b), load_run(a), scored=load_run(s))
    with pytest.raises(UserError, match="not a scored run"):
        diff_runs(load_run(a), load_run(b), scored=load_run(b))


def test_sequence_teacher_means_per_sequence(tmp_path):
    # A: p0 sample 0 (4 tokens), p0 sample 1 (2), p1 (3), p2 (1); S scores A's tokens of p0 and p1 only, with
    # lp_S - lp_A = (0.1, -0.1, 0.2, 0.0), (0.3, 0.1), (-0.9, 0.0, 0.3): mean |delta| 0.1, 0.2 and 0.4 nats
    toks = {("p0", 0): [5, 6, 7, 8], ("p0", 1): [5, 9], ("p1", 0): [5, 6, 7], ("p2", 0): [4]}
    toks |= {("p1", 1): [5], ("p2", 1): [4]}  # A covers prompts x 2 samples
    deltas = {("p0", 0): [0.1, -0.1, 0.2, 0.0], ("p0", 1): [0.3, 0.1], ("p1", 0): [-0.9, 0.0, 0.3], ("p1", 1): [0.0]}
    lp_a = {key: -0.5 - 0.25 * np.arange(len(t), dtype=np.float32) for key, t in toks.items()}
    prompts = [prompt(p) for p in ("p0", "p1", "p2")]
    a_results = [seq(p, t, sample=smp, logprobs=lp_a[p, smp]) for (p, smp), t in toks.items()]
    a = write_run(tmp_path / "a", prompts, a_results)
    src = {"path": str(a), "name": "a", "spec_hash": "x", "tokens_hash": "y"}
    s_results = [  # written in another order than A's: matched by (prompt, sample), not by row
        seq(p, toks[p, smp], sample=smp, logprobs=lp_a[p, smp] + np.asarray(deltas[p, smp], np.float32))
        for p, smp in (("p1", 0), ("p0", 1), ("p1", 1), ("p0", 0))
    ]
    s = write_run(tmp_path / "s", prompts[:2], s_results, kind="score", source_run=src)
    run_a, run_s = load_run(a), load_run(s)
    per_seq = sequence_teacher(run_a, run_s)
    assert list(per_seq) == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]  # A's order; p2 was not scored
    assert [per_seq[k] for k in per_seq] == pytest.approx([0.1, 0.2, 0.4, 0.0], abs=1e-6)
    # the token-weighted mean of the per-sequence means is the scored run's mean |delta|
    t = diff_runs(run_a, run_a, scored=run_s, decode_context=False).teacher
    assert t["mean_abs_delta"] == pytest.approx((4 * 0.1 + 2 * 0.2 + 3 * 0.4 + 1 * 0.0) / 10, abs=1e-6)
    # the same refusals as teacher_from_scored: a run that is not a scored run, one that scored other tokens
    with pytest.raises(UserError, match="not a scored run"):
        sequence_teacher(run_a, run_a)
    other = [seq("p0", [5, 6, 7, 3]), seq("p0", [5, 9], sample=1), seq("p1", [5, 6, 7]), seq("p1", [5], sample=1)]
    bad = write_run(tmp_path / "bad", prompts[:2], other, kind="score", source_run=src)
    with pytest.raises(UserError, match=r"did not score .*prompt 'p0', sample 0"):
        sequence_teacher(run_a, load_run(bad))


# ---- comparability, floor, verdict --------------------------------------------------------------------------------


def test_refuses_differing_prompts_unless_forced(tmp_path):
    pa_ = [prompt("p0"), prompt("p1", (1, 2, 3)), prompt("p2")]
    pb_ = [prompt("p0"), prompt("p1", (1, 2, 4)), prompt("p2")]
    results = [seq(p, [5, 6]) for p in ("p0", "p1", "p2")]
    a = load_run(write_run(tmp_path / "a", pa_, results))
    b = load_run(write_run(tmp_path / "b", pb_, results))
    with pytest.raises(UserError, match=r"prompt 'p1' has different token IDs"):
        diff_runs(a, b)
    pair = diff_runs(a, b, force=True, decode_context=False)
    assert pair.dropped == ["p1"] and len(pair.seq.d) == 2
    c = load_run(write_run(tmp_path / "c", pa_[:2], results[:2]))
    with pytest.raises(UserError, match=r"prompt 'p2' is missing from"):
        check_prompts(a.reader, c.reader)
    d = load_run(write_run(tmp_path / "d", [prompt("p0", (7,))], results[:1]))
    with pytest.raises(UserError, match="share no prompt"):
        check_prompts(a.reader, d.reader, force=True)


def floor_runs(tmp_path, n=40, cross_div=30, floor_div=2):
    prompts = [prompt(f"p{i:02d}") for i in range(n)]
    base = [seq(p.id, [5, 6, 7]) for p in prompts]

    def flipped(k):
        return [seq(p.id, [5, 9, 7]) if i < k else seq(p.id, [5, 6, 7]) for i, p in enumerate(prompts)]

    paths = {}
    for name, res in (("a", base), ("b", flipped(cross_div)), ("a2", flipped(floor_div))):
        paths[name] = write_run(tmp_path / name, prompts, res)
    return paths


def test_floor_marking(tmp_path):
    p = floor_runs(tmp_path)
    a, b, a2 = load_run(p["a"]), load_run(p["b"]), load_run(p["a2"])
    cross = diff_runs(a, b, decode_context=False)
    floor = diff_runs(a, a2, decode_context=False)
    doc = diff_document(cross, floor=floor, thresholds=Thresholds(max_confident=None))
    rows = {r["metric"]: r for r in doc["floor_check"]}
    assert rows["share_divergent"]["cross"] == 0.75 and rows["share_divergent"]["floor"] == 0.05
    assert rows["share_divergent"]["clears"] is True and rows["share_divergent"]["p"] < 0.05
    # the same pair against itself as the floor: nothing clears, and the drift test says so (exit 0)
    same = diff_document(cross, floor=cross, thresholds=Thresholds(max_confident=None))
    assert {r["metric"]: r["clears"] for r in same["floor_check"]}["share_divergent"] is False
    assert same["drift_vs_floor"]["clears"] is False and same["drift_vs_floor"]["p"] == 1.0
    assert same["verdict"]["exit_code"] == 0 and same["verdict"]["within_floor"][0]["metric"] == "drift_vs_floor"
    # a threshold the user sets is absolute: a floor does not excuse it
    strict = diff_document(cross, floor=floor, thresholds=Thresholds(max_divergent_share=0.1, max_confident=None))
    assert strict["verdict"]["exit_code"] == 1


def test_json_document_loads_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    p = floor_runs(tmp_path, n=6, cross_div=3)
    cross = diff_runs(load_run(p["a"]), load_run(p["b"]))
    doc = json.loads(dumps(diff_document(cross)))
    df = pd.json_normalize(doc["sequences"])
    assert len(df) == 6 and int((~df["identical"]).sum()) == 3
    assert set(df.loc[~df["identical"], "first_divergence"]) == {1}
    assert df.loc[0, "continuation_b"] is not None


# ---- CLI exit codes ---------------------------------------------------------------------------------------------


def test_cli_exit_codes(tmp_path):
    p = floor_runs(tmp_path, n=6, cross_div=3)
    runner = CliRunner()
    out = tmp_path / "same.json"
    res = runner.invoke(diff_command, [str(p["a"]), str(p["a"]), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["summary"]["share_identical"] == 1.0
    tau = ["--tau", "0.1"]  # synthetic logprobs have no bf16 lattice: pin the threshold these cases are built for
    res = runner.invoke(diff_command, [str(p["a"]), str(p["b"]), *tau])
    assert res.exit_code == 1 and "DIVERGED (confident" in res.output
    res = runner.invoke(diff_command, [str(p["a"]), str(p["b"]), "--max-confident", "3", *tau])
    assert res.exit_code == 0 and "AGREE" in res.output
    res = runner.invoke(
        diff_command, [str(p["a"]), str(p["b"]), "--max-confident", "-1", "--max-divergent-share", "0.4", *tau]
    )
    assert res.exit_code == 1
    # incomparable: one line naming the first differing prompt, exit 2, nothing written
    other = write_run(tmp_path / "other", [prompt("p00", (9, 9))], [seq("p00", [5, 6])])
    bad_json = tmp_path / "bad.json"
    res = runner.invoke(diff_command, [str(p["a"]), str(other), "--json", str(bad_json)])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "'p00'" in lines[0]
    assert not bad_json.exists()
    res = runner.invoke(diff_command, [str(p["a"]), str(tmp_path / "nope")])
    assert res.exit_code == 2


def test_cli_force_reports_dropped(tmp_path):
    prompts = [prompt("p0"), prompt("p1")]
    a = write_run(tmp_path / "a", prompts, [seq("p0", [5]), seq("p1", [5])])
    b = write_run(tmp_path / "b", [prompts[0], prompt("p1", (7,))], [seq("p0", [5]), seq("p1", [5])])
    res = CliRunner().invoke(diff_command, [str(a), str(b), "--force"])
    assert res.exit_code == 0 and "1 dropped" in res.output


# ---- real tiny-model runs -------------------------------------------------------------------------------------------


def test_real_hf_bf16_against_fp32(hf_run_bf16, hf_run_fp32):
    bf16, fp32 = hf_run_bf16, hf_run_fp32
    doc = json.loads(dumps(diff_document(diff_runs(load_run(bf16), load_run(fp32)))))
    summ = doc["summary"]
    assert summ["sequences"] > 0 and summ["identical"] + summ["divergent"] == summ["sequences"]
    t = doc["teacher_forced"]
    assert t["source"] == "prefix" and t["n_positions"] > 0
    assert 0 < t["mean_abs_delta"] < 1.0  # bf16 against fp32: small, but not zero
    for r in doc["sequences"]:
        if not r["identical"]:
            assert 0 <= r["first_divergence"] < 24 and r["class"] in ("near_tie", "confident", "prefix")


def test_real_scored_run_teacher_forced(hf_run_bf16, hf_run_fp32, tiny_model, tmp_path):
    """fp32 Transformers teacher-forcing the bf16 run's tokens (`rig score`): the scored metrics cover every token."""
    from rig.run import runner
    from rig.run.store import RunReader

    spec = RunSpec(stack="hf", model=str(tiny_model), dtype="float32", sampling=SamplingSpec(max_new_tokens=24))
    scored = runner.execute(spec, tmp_path / "fp32-on-bf16", source=RunReader(hf_run_bf16), telemetry_hz=None)
    a, b, s = load_run(hf_run_bf16), load_run(hf_run_fp32), load_run(scored)
    pair = diff_runs(a, b, scored=s)
    t = pair.teacher
    assert t["source"] == "scored" and t["n_positions"] == len(a.token_id)
    assert 0 < t["mean_abs_delta"] < 1.0 and t["max_abs_delta"] >= t["p99_abs_delta"] >= 0
    assert t["top1_agreement"] > 0.9 and t["mean_kl"] >= 0
    # on the common prefix, fp32 generating and fp32 scoring see the same contexts: the two estimates agree closely
    assert pair.prefix["mean_abs_delta"] == pytest.approx(t["mean_abs_delta"], rel=0.5)


@pytest.mark.slow
def test_real_hf_against_vllm(hf_run_bf16, vllm_run):
    pair = diff_runs(load_run(hf_run_bf16), load_run(vllm_run))
    doc = diff_document(pair)
    assert doc["summary"]["sequences"] == 29
    assert pair.a.manifest["spec"]["stack"] == "hf" and pair.b.manifest["spec"]["stack"] == "vllm"
    # the same weights in bf16 on two stacks: close on the common prefix, but not bit-identical
    t = doc["teacher_forced"]
    # mean drift below the near-tie threshold (two bf16 rounding steps of the logits): rounding, not a fault
    assert t["n_positions"] > 0 and 0 < t["mean_abs_delta"] < doc["tau"]
    div = pair.seq.d >= 0
    assert ((pair.seq.cls[div] == 1) | (pair.seq.cls[div] == 2)).all(), "every split is classified"
    # greedy bf16: tau follows from the logits' bf16 grid read from the runs (2 steps), not a constant
    assert pair.mode["mode"] == "greedy" and doc["tau"] == 2 * pair.tau_info["grid"]
    assert "rounding steps" in doc["tau_reason"]
    # every prefix position far above its sequence's level is listed as a spike, with both stacks' numbers
    from rig.analysis.diff import MAX_SPIKES, SPIKE_TAU_FACTOR

    big = pair.prefix_abs_delta > SPIKE_TAU_FACTOR * doc["tau"]
    assert len(doc["spikes"]) <= MAX_SPIKES and len(doc["spikes"]) <= int(big.sum())
    for s in doc["spikes"]:
        assert s["abs_delta"] == pytest.approx(abs(s["logprob_b"] - s["logprob_a"]), abs=1e-6)
        assert s["abs_delta"] > SPIKE_TAU_FACTOR * doc["tau"] and len(s["topk_a"]["ids"]) == 5


def test_channel_name_tokens_match_harmony():
    from rig.harmony import ANALYSIS_TOKEN, FINAL_TOKEN
    from rig.harmony import encoding as harmony_encoding

    enc = harmony_encoding()
    assert enc.encode("analysis", allowed_special="all") == [ANALYSIS_TOKEN]
    assert enc.encode("final", allowed_special="all") == [FINAL_TOKEN]


def test_samples_are_matched_by_prompt_and_sample(tmp_path):
    a = [seq("p0", [5, 6], sample=0), seq("p0", [5, 7], sample=1), seq("p1", [5, 6], sample=0)]
    a.append(seq("p1", [5, 6], sample=1))
    b = [seq("p0", [5, 6], sample=0), seq("p1", [5, 9], sample=0), seq("p0", [5, 8], sample=1)]  # other order
    b.append(seq("p1", [5, 6], sample=1))
    pair = pair_of(tmp_path, a, b)
    assert pair.seq.sample.tolist() == [0, 1, 0, 1] and pair.seq.d.tolist() == [-1, 1, 1, -1]
    c = write_run(tmp_path / "c", [prompt("p0"), prompt("p1")], [seq("p0", [5, 6]), seq("p1", [5, 6])])
    partial = diff_runs(pair.a, load_run(c), decode_context=False)
    assert partial.unmatched == {"a": 2, "b": 0} and len(partial.seq.d) == 2


def test_cli_options_are_pinned():
    from rig.cli.diff import report_command

    def names(cmd):
        return sorted(o for p in cmd.params for o in p.opts)

    assert names(diff_command) == sorted(
        [
            "run_a",
            "run_b",
            "--scored",
            "--floor",
            "--floor-scored",
            "--tau",
            "--force",
            "--json",
            "--max-divergent-share",
            "--max-confident",
            "--max-mean-abs-delta",
            "--max-spikes",
            "--alpha",
            "--min-effect",
            "--rows",
            "--seed",
        ]
    )
    assert names(report_command) == sorted(
        [
            "runs",
            "-o",
            "--output",
            "--scored",
            "--floor",
            "--tau",
            "--force",
            "--max-prompts",
            "--kernels",
            "--layers",
            "--sweep",
        ]
    )


def test_different_top_k_compares_the_common_top_k(tmp_path):
    tokens = [5, 6, 7]
    ids4, lps4 = topk_rows(tokens, k=4)
    a = write_run(tmp_path / "a", [prompt("p0")], [seq("p0", tokens, ids=ids4, lps=lps4)], k=4)
    b = write_run(tmp_path / "b", [prompt("p0")], [seq("p0", tokens, ids=ids4[:, :2], lps=lps4[:, :2])], k=2)
    pair = diff_runs(load_run(a), load_run(b), decode_context=False)
    assert pair.prefix["n_positions"] == 3 and pair.prefix["top1_agreement"] == 1.0
    assert pair.prefix["mean_kl"] == pytest.approx(0.0, abs=1e-12)  # same first two entries on both sides
