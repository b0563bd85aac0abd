"""kernels_check: the float64 references against closed forms, planted kernel bugs caught by name, Transformers'
eager implementations passing on the CPU, and the command's exit codes and documents."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `rig kernels` does: no spinning workers on a shared machine
torch = pytest.importorskip("torch")

from kernels_check import reference as R  # noqa: E402
from kernels_check.checks import check_kernel, ulp_unit  # noqa: E402
from kernels_check.registry import KERNELS  # noqa: E402

# ---- references against closed forms -------------------------------------------------------------------------------


def test_attention_zero_query_gives_the_closed_form_sink_probability():
    s = 300
    sinks = torch.tensor([-2.0, 0.0, 3.0, 8.0], dtype=torch.float64)
    q = torch.zeros(1, s, 4, 64, dtype=torch.float64)
    k = torch.randn(1, s, 2, 64, dtype=torch.float64)
    v = torch.randn(1, s, 2, 64, dtype=torch.float64)
    out = R.attention(q, k, v, sinks, 0.125, window=R.SLIDING_WINDOW)
    for p in (0, 5, 126, 127, 128, 299):
        n = min(p + 1, R.SLIDING_WINDOW)
        for h in range(4):
            p_sink = R.sink_probability(float(sinks[h]), n)
            assert p_sink == pytest.approx(math.exp(sinks[h]) / (n + math.exp(sinks[h])))
            visible_v = v[0, p - n + 1 : p + 1, h // 2]  # GQA: query heads 0, 1 share KV head 0
            want = visible_v.sum(0) * (1 - p_sink) / n
            torch.testing.assert_close(out[0, p, h], want, rtol=1e-12, atol=1e-12)


def test_window_of_128_shows_exactly_128_keys_including_the_query():
    mask = R.attention_mask(torch.tensor([0, 127, 128, 200]), 300, 128)
    assert mask.sum(-1).tolist() == [1, 128, 128, 128]
    assert mask[3, 73] and not mask[3, 72] and mask[3, 200] and not mask[3, 201]


def test_rmsnorm_of_a_constant_vector():
    w = torch.linspace(0.5, 2.0, 2880, dtype=torch.float64)
    for c in (1.5, -0.25, 1e-3):
        out = R.rmsnorm(torch.full((1, 2880), c, dtype=torch.float64), w)
        torch.testing.assert_close(out[0], w * c / math.sqrt(c * c + 1e-5), rtol=1e-14, atol=0)


def test_mxfp4_table_nibble_order_and_scale_bias():
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, :8] = torch.tensor([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE], dtype=torch.uint8)
    out = R.mxfp4_dequant(blocks, torch.tensor([[127]], dtype=torch.uint8))
    assert out[0, :16].tolist() == list(R.FP4_E2M1)  # low nibble first: byte 0x10 is codes 0 then 1
    assert math.copysign(1, out[0, 8]) == -1  # code 8 is -0.0
    doubled = R.mxfp4_dequant(blocks, torch.tensor([[128]], dtype=torch.uint8))
    assert doubled[0, :16].tolist() == [2 * x for x in R.FP4_E2M1]


def test_router_with_a_known_winner():
    logits = torch.tensor([[10.0, 0.0, -1.0, 5.0]])
    w = R.router(logits, 2)
    e = math.exp(-5.0)
    assert w[0].tolist() == pytest.approx([1 / (1 + e), 0.0, 0.0, e / (1 + e)], rel=1e-15)


def test_swiglu_clamps_and_adds_one():
    x = torch.tensor([[10.0, 9.0, -1.0, -9.0, 2.0, 0.5]])  # (gate, linear) pairs
    out = R.swiglu(x)
    sig = lambda z: 1 / (1 + math.exp(-1.702 * z))  # noqa: E731
    assert out[0].tolist() == pytest.approx([7 * sig(7) * 8, -1 * sig(-1) * -6, 2 * sig(2) * 1.5], rel=1e-15)


def test_yarn_ramp_bounds_fractional_and_truncated():
    low, high = R.yarn_correction_bounds(64, truncate=False)
    assert low == pytest.approx(32 * math.log(4096 / (32 * 2 * math.pi)) / math.log(150000))
    assert high == pytest.approx(32 * math.log(4096 / (2 * math.pi)) / math.log(150000))
    assert R.yarn_correction_bounds(64, truncate=True) == (math.floor(low), math.ceil(high))
    inv, scale = R.yarn_inv_freq(64, truncate=False)
    assert scale == pytest.approx(0.1 * math.log(32) + 1)
    assert inv[0] == 1.0  # the fastest pair is extrapolated (kept as trained)
    assert inv[-1] == pytest.approx(1 / (32 * 150000 ** (62 / 64)))  # the slowest is interpolated by the factor


def test_ulp_unit_is_the_spacing_at_the_value():
    u = ulp_unit(torch.tensor([1.0, 1.5, 2.0, 0.0], dtype=torch.float64), torch.bfloat16, row_floor=False)
    assert u[:3].tolist() == [2**-7, 2**-7, 2**-6]
    assert u[3] == torch.finfo(torch.bfloat16).tiny * 2**-7


# ---- planted bugs fail, naming kernel and input --------------------------------------------------------------------


def _failures(kernel, fn, dtype="bfloat16", cases=None):
    rows = check_kernel(kernel, fn, dtype=dtype, cases=cases, quick=True, invariance=False)
    assert rows, "no case ran"
    return {r.input: r.reason for r in rows if r.verdict == "fail"}


def test_dropped_swiglu_clamp_is_caught_by_the_clamp_hit_input():
    from kernels_check import planted

    fails = _failures("swiglu", planted.swiglu_no_clamp)
    assert "clamp-hit" in fails
    assert fails["clamp-hit"].startswith("swiglu [clamp-hit, bfloat16]: max error ")
    assert "x the torch baseline" in fails["clamp-hit"]


def test_softmax_before_topk_router_is_caught():
    from kernels_check import planted

    fails = _failures("router", planted.router_softmax_before_topk, cases=["random", "near-tie"])
    assert set(fails) == {"random", "near-tie"}
    assert fails["random"].startswith("router [random, bfloat16]: max error ")


def test_window_off_by_one_is_caught_at_the_window_edge():
    from kernels_check import planted

    fails = _failures("attention", planted.attention_window_plus_one, cases=["window-edge", "decode-window-edge"])
    assert set(fails) == {"window-edge", "decode-window-edge"}
    assert fails["window-edge"].startswith("attention [window-edge, bfloat16]: max error ")


def test_ignored_sink_is_caught_by_the_zero_query():
    from kernels_check import planted

    fails = _failures("attention", planted.attention_sink_ignored, cases=["sink-zero-query", "prefill-300"])
    assert fails["sink-zero-query"].startswith("attention [sink-zero-query, bfloat16]: max error ")
    assert "prefill-300" in fails


def test_flipped_yarn_truncation_is_caught_in_the_table_and_the_rotation():
    from kernels_check import planted

    fails = _failures("yarn-freqs", planted.yarn_truncation_flipped, dtype="float32")
    assert set(fails) == {"fractional-ramp", "truncated-ramp"}
    assert fails["fractional-ramp"].startswith("yarn-freqs [fractional-ramp, float32]: max error ")
    fails = _failures("rope", planted.rope_truncation_flipped, cases=["positions>100k"])
    assert fails["positions>100k"].startswith("rope [positions>100k, bfloat16]: max error ")


def test_a_correct_callable_passes_and_a_crashing_one_fails_with_its_exception():
    rows = check_kernel("router", lambda logits, top_k: R.router(logits, top_k).to(logits.dtype), quick=True)
    assert {r.verdict for r in rows} == {"pass"}
    assert all(r.batch_invariant for r in rows if r.batch_invariant is not None)

    def broken(logits, top_k):
        raise RuntimeError("no kernel image")

    rows = check_kernel("router", broken, cases=["random"], name="broken")
    assert (
        rows[0].verdict == "fail"
        and rows[0].reason == "router [random, bfloat16]: raised RuntimeError: no kernel image"
    )


# ---- Transformers' own modules on the CPU ---------------------------------------------------------------------------


EAGER = {
    "hf-GptOssRMSNorm",
    "hf-rope_init_yarn",
    "hf-apply_rotary_pos_emb",
    "hf-eager",
    "hf-GptOssTopKRouter",
    "hf-GptOssExperts._apply_gate",
    "hf-experts-eager",
    "hf-convert_moe_packed_tensors",
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_transformers_eager_implementations_pass_on_cpu(dtype):
    pytest.importorskip("transformers")
    from kernels_check.registry import discover, kernel_spec

    impls = [i for i in discover("cpu") if i.name in EAGER]
    assert {i.name for i in impls} == EAGER and all(i.available for i in impls)
    rows = []
    for impl in impls:
        spec = kernel_spec(impl.kernel)
        d = spec.dtypes[0] if spec.fixed_dtype else dtype
        # batch invariance is reported, not judged: measured once (bfloat16) to keep the test short
        rows += check_kernel(
            impl.kernel, impl.make("cpu"), dtype=d, name=impl.name, quick=True, invariance=dtype == "bfloat16"
        )
    assert {r.kernel for r in rows} == set(KERNELS) - {"logprobs"}  # the log-softmax is the rig's own
    assert [r.reason for r in rows if r.verdict != "pass"] == []
    assert all(r.deterministic for r in rows)


# ---- the command and its documents ----------------------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, kernels_check, kernels_check.cli\n"
        "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cuda_without_a_gpu_is_a_one_line_usage_error():
    from click.testing import CliRunner

    from kernels_check.cli import kernels_command

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(kernels_command, ["--device", "cuda"])
    assert result.exit_code == 2
    assert (
        result.output.strip().startswith("rig: error: --device cuda") and len(result.output.strip().splitlines()) == 1
    )


def test_command_writes_the_document_and_exits_1_on_a_planted_bug(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kernels_check import moe, planted
    from kernels_check.base import Impl
    from kernels_check.cli import kernels_command
    from kernels_check.report import report_html

    out = tmp_path / "k.json"
    runner = CliRunner()
    result = runner.invoke(
        kernels_command, ["--device", "cpu", "--kernel", "mxfp4", "--dtype", "bfloat16", "-q", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["rig_kernels"] == 1 and doc["device"] == "cpu" and "packages" in doc["environment"]
    assert {"name", "kernel", "version", "available", "skip_reason"} <= set(doc["implementations"][0])
    row = next(r for r in doc["rows"] if r["impl"] == "hf-convert_moe_packed_tensors")
    assert row["verdict"] == "pass" and row["max_err_ulp"] == 0 and row["deterministic"] is True
    assert {
        "input",
        "mean_err_ulp",
        "max_abs_err",
        "baseline_max_abs_err",
        "ratio",
        "batch_invariant",
        "reason",
    } <= set(row)
    html = report_html(doc)
    assert (
        html.startswith('<table class="kernels"') and "hf-convert_moe_packed_tensors" in html and "<script" not in html
    )

    original = moe.implementations
    monkeypatch.setattr(
        moe,
        "implementations",
        lambda device: [
            *original(device),
            Impl("planted-no-clamp", "swiglu", "test", None, lambda d: planted.swiglu_no_clamp),
        ],
    )
    result = runner.invoke(kernels_command, ["--device", "cpu", "--kernel", "swiglu", "--dtype", "bfloat16", "-q"])
    assert result.exit_code == 1
    assert "swiglu [clamp-hit, bfloat16]: max error" in result.output


def test_rig_capture_matches_the_reference_top_k():
    from kernels_check import rig_logprobs_topk

    logits = (torch.randn(2, 201_088) * 3).to(torch.bfloat16)
    lp, values, ids = rig_logprobs_topk(logits, 20)
    ref = R.log_softmax(logits)
    torch.testing.assert_close(values.double(), torch.topk(ref, 20).values, rtol=0, atol=1e-4)
    torch.testing.assert_close(values.double(), ref.gather(-1, ids), rtol=0, atol=1e-4)
    torch.testing.assert_close(lp.exp().sum(-1).double(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-4)
