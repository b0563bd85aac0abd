"""`rig layers` (rig.localize) on real stacks: planted faults, a real router flip, and the clean baseline.

Costs are shared: one capture of eight sides (hf and vllm, each on the clean 6-layer tiny model and on three planted
faults) runs one vLLM child process that builds its four engines in turn, and the cross-stack test runs the real
`rig layers` command once on the session's greedy hf and vllm runs.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from rig.cli import main
from rig.errors import UserError
from rig.localize.verdict import FACTOR, FLOOR_STEPS

FAULT_LAYERS = 6  # the deeper tiny model the planted faults live in
POSITIONS = (0, 5, 11)


def _faults():
    """fault name -> (the planted fault, the layer and block `rig layers` must name)."""
    from rig.testing.faults import Fault

    return {
        # gpt-oss's sinks are learned per head; x10 turns the tiny model's +-0.5 into +-5 (a sink that takes most of
        # the attention, or none). Dropping them (sink_dropped) moves a 100-token attention by about 1/(N+1) = 1%:
        # within bf16 rounding of one block, so not a fault a single position can localize.
        "sink": (Fault("scale", layer=3, target="self_attn.sinks", factor=10.0), 3, "attn"),
        "router": (Fault("router_bias", layer=1, value=0.5), 1, "router"),
        "o_proj": (Fault("scale", layer=4, target="self_attn.o_proj", factor=1.25), 4, "attn"),
    }


@pytest.fixture(scope="module")
def fault_capture(tmp_path_factory):
    """(sides, targets, captured): hf and vllm on the clean 6-layer model and on each planted fault, one capture."""
    from rig.localize.layers import capture, side_from_spec
    from rig.localize.targets import Target
    from rig.run.spec import RunSpec
    from rig.run.suite import load_suite
    from rig.testing.faults import plant
    from rig.testing.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("layers")
    clean = root / "tiny6"
    build_tiny_model(clean, layers=FAULT_LAYERS, with_tokenizer=False)
    models = {"clean": clean}
    for name, (fault, _, _) in _faults().items():
        models[name] = plant(clean, root / f"tiny6-{name}", fault)
    sides = {}
    for name, path in models.items():
        for stack in ("hf", "vllm"):
            spec = RunSpec(stack=stack, model=str(path), dtype="bfloat16", max_model_len=1024)
            sides[f"{stack}-{name}"] = side_from_spec(spec, f"{stack}-{name}")
    suite = load_suite("default")
    prompt = next(p for p in suite.prompts if p.id == "reason-mc-physics")
    continuation = tuple(suite.prompts[0].token_ids[-12:])  # any tokens: the prefix is teacher-forced
    targets = [
        Target(prompt.id, 0, pos, ("requested",), tuple(prompt.token_ids), continuation[:pos], continuation[pos], None)
        for pos in POSITIONS
    ]
    return sides, targets, capture(sides, targets)


def _compare(fault_capture, a: str, b: str) -> dict:
    from rig.localize.layers import compare

    sides, targets, captured = fault_capture
    return compare(sides[a], sides[b], targets, captured, keys=(a, b))


@pytest.mark.parametrize("fault", ["sink", "router", "o_proj"])
@pytest.mark.parametrize("stack", ["hf", "vllm"])
def test_planted_fault_is_named_against_the_clean_model(fault_capture, fault, stack):
    """Same stack, clean vs faulted checkpoint: the first bad block is the planted one, at every position."""
    _, layer, block = _faults()[fault]
    doc = _compare(fault_capture, f"{stack}-clean", f"{stack}-{fault}")
    assert not doc["same_checkpoint"]
    for p in doc["positions"]:
        first = p["first_bad"]
        assert (first["layer"], first["block"]) == (layer, block), (p["pos"], p["cause"])
        assert f"layer {layer}" in p["cause"] and ("router" in p["cause"]) == (block == "router"), p["cause"]
        before = [r for r in p["blocks"] if r["layer"] is not None and r["layer"] < layer]
        assert all(r["cross"]["max_abs"] == 0.0 for r in before), "a clean and a faulted layer must agree bitwise"


@pytest.mark.parametrize("fault", ["sink", "router", "o_proj"])
@pytest.mark.parametrize("faulted", ["hf", "vllm"])
def test_planted_fault_across_stacks(fault_capture, fault, faulted):
    """The clean model on one stack vs the faulted model on the other: the planted block is bad at every position,
    far above the factor, and nothing before the fault layer is bad unless a router flip came first."""
    _, layer, block = _faults()[fault]
    clean = "vllm" if faulted == "hf" else "hf"
    doc = _compare(fault_capture, f"{clean}-clean", f"{faulted}-{fault}")
    for p in doc["positions"]:
        row = next(r for r in p["blocks"] if (r["layer"], r["block"]) == (layer, block))
        assert row["bad"] and row["ratio"] > 10 * FACTOR, (p["pos"], row["ratio"])
        flip = p["router_flip"]
        if flip is None or flip["layer"] >= layer:
            assert (p["first_bad"]["layer"], p["first_bad"]["block"]) == (layer, block), p["cause"]


def _within_baseline(p: dict) -> list[dict]:
    """Blocks of a position before its first router flip (after one, the stacks compute different things)."""
    flip = p["router_flip"]
    out = []
    for r in p["blocks"]:
        if flip is not None and (r["layer"], r["block"]) == (flip["layer"], "router"):
            break
        out.append(r)
    return out


def test_clean_cross_stack_blocks_stay_within_their_dtype_baseline(fault_capture):
    """hf vs vllm on one checkpoint and identical prefixes: every block's cross-stack error is within FACTOR x its
    bf16 baseline or under FLOOR_STEPS rounding steps (none is bad), until a router flip if there is one."""
    doc = _compare(fault_capture, "hf-clean", "vllm-clean")
    assert doc["same_checkpoint"]
    for p in doc["positions"]:
        for r in _within_baseline(p):
            assert not r["bad"], (p["pos"], r["layer"], r["block"], r["ratio"], r["cross"]["steps"])
            assert r["ratio"] <= FACTOR or r["cross"]["steps"] <= FLOOR_STEPS
        assert p["cause"].startswith(("router flip", "no block stands out"))


def test_capture_is_per_position_and_complete(fault_capture):
    """Every block of every layer is captured, rows are layers x hidden (plus one logits row), fresh input for hf."""
    sides, targets, captured = fault_capture
    hidden, vocab = 64, 201088
    for key in ("hf-clean", "vllm-clean"):
        rows = captured.captures[key].rows[targets[0].key]
        for layer in range(FAULT_LAYERS):
            for block in ("attn", "moe", "resid"):
                assert rows[f"{layer}.{block}"].shape == (hidden,)
            assert rows[f"{layer}.router"].shape == (4,) and rows[f"{layer}.experts"].shape == (2,)
        assert rows["logits"].shape == (vocab,)
        per_position = captured.captures[key].nbytes()
        assert per_position <= 4 * vocab + 4 * (FAULT_LAYERS * (4 * hidden + 12) + 2 * hidden) + 64
    fresh = captured.fresh["hf-clean"][targets[0].key]
    assert {f"{layer}.attn.fresh" for layer in range(FAULT_LAYERS)} <= set(fresh)
    assert "vllm-clean" not in captured.fresh


def test_real_cross_stack_router_flip(hf_run_bf16, vllm_run, tmp_path):
    """hf vs vllm, greedy bf16, on the tiny model: among the largest teacher-forced |delta| positions `rig layers`
    finds a router flip, names its layer, and HF's own router logits show the near-tie there."""
    out = tmp_path / "layers.json"
    result = CliRunner().invoke(
        main, ["layers", str(hf_run_bf16), str(vllm_run), "--top", "16", "-q", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    flips = [p for p in doc["positions"] if p["router_flip"]]
    assert flips, [p["cause"] for p in doc["positions"]]
    for p in flips:
        flip = p["router_flip"]
        assert p["cause"].startswith(f"router flip at layer {flip['layer']} ")
        assert flip["margin_a"] is not None and flip["margin_a"] < 0.01, flip  # HF's k-th vs (k+1)-th logit: a tie
        assert set(flip["experts_a"]) != set(flip["experts_b"])
        assert f"router flip at layer {flip['layer']}" in result.output
    for p in doc["positions"]:  # and the same clean-baseline rule on the 2-layer model
        assert not any(r["bad"] for r in _within_baseline(p)), p["cause"]
    html = _render(doc)
    assert "FLIP" in html and html.count("<table") == len(doc["positions"])


def _render(doc: dict) -> str:
    from rig.report.layers_html import layers_section

    return layers_section(doc)


def test_user_errors_are_one_line(hf_run_bf16):
    """Mistakes a user can make end in one line and exit 2, before any model loads."""
    cases = [
        (["--prompt", "no-such-prompt", "--pos", "1"], "unknown prompt id"),
        (["--prompt", "arith-mul", "--pos", "999"], "out of range"),
        (["--pos", "3"], "--pos needs --prompt"),
        (["--prompt", "arith-mul", "--pos", "1", "--top", "3"], "not both"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(main, ["layers", str(hf_run_bf16), str(hf_run_bf16), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
    from rig.localize.layers import side_from_spec
    from rig.run.spec import RunSpec

    for stack, message in (("openai", "cannot be opened"), ("stub", "has no layers")):
        with pytest.raises(UserError, match=message):
            side_from_spec(RunSpec(stack=stack, model="m"), stack)


def test_command_line_and_metrics():
    from rig.localize.metrics import compare, router_margin, ulp
    from rig.localize.targets import command_line

    assert command_line("runs/hf", "runs/v llm", "p-1", 16) == "rig layers runs/hf 'runs/v llm' --prompt p-1 --pos 16"
    assert command_line("a", "b", "p", 3, sample=2).endswith("--prompt p --sample 2 --pos 3")
    assert ulp(3.0, "bfloat16") == 2.0**-6 and ulp(0.1, "float32") == 2.0**-27
    c = compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 2**-6], "bfloat16")
    assert c["argmax"] == 2 and c["steps"] == pytest.approx(1.0) and c["rel_diff"] > 0
    assert math.isclose(c["rel_l2"], 2**-6 / math.sqrt(14 + 2 * 3 * 2**-6 + 2**-12))
    assert router_margin([0.1, 0.5, 0.3, 0.29], 2) == pytest.approx(0.01)
