"""rig.stacks.capture: the exact top-K (ties to the lower token id) and the log-sum-exp every recorded logprob uses."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rig.stacks.capture import SMALL_BLOCK, capture_rows, logsumexp_rows, topk_rows  # noqa: E402


def reference_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by (value desc, id asc) through a stable sort of the whole row (float64, -0.0 as +0.0)."""
    order = torch.sort(x.double() + 0.0, dim=-1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@pytest.mark.parametrize("vocab", [201_088, 4096, 1000, 130])  # blocked, blocked, not a multiple of 64, k*64 >= V
@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_is_exact_with_ties_to_the_lower_id(vocab, k):
    g = torch.Generator().manual_seed(vocab + k)
    # Coarse values: hundreds of exact ties, including across the block boundaries that decide the candidates.
    x = torch.round(torch.randn(4, vocab, generator=g) * 4) / 2
    values, ids = topk_rows(x, k)
    ref_values, ref_ids = reference_topk(x, k)
    assert torch.equal(ids, ref_ids)
    assert torch.equal(values.double(), ref_values)


def test_topk_breaks_a_tie_between_blocks_toward_the_lower_block():
    x = torch.full((1, 64 * 50), -5.0)
    # 25 blocks share the same maximum; the top 20 must come from the 20 lowest of them.
    tied_blocks = list(range(49, 24, -1))
    for b in tied_blocks:
        x[0, b * SMALL_BLOCK + 7] = 3.0
    _, ids = topk_rows(x, 20)
    assert ids[0].tolist() == sorted(b * SMALL_BLOCK + 7 for b in tied_blocks)[:20]


def test_topk_orders_signed_zeros_as_equal_and_handles_infinities():
    x = torch.full((1, 4096), -1.0)
    x[0, :64] = float("-inf")  # a whole block of -inf
    x[0, 500] = -0.0
    x[0, 700] = 0.0
    x[0, 3000] = float("inf")
    values, ids = topk_rows(x, 3)
    assert ids[0].tolist() == [3000, 500, 700]  # +inf first; -0.0 and +0.0 tie and go to the lower id
    assert values[0, 0].item() == float("inf")


@pytest.mark.parametrize("scale", [0.3, 3.0, 300.0])
def test_logprobs_match_float64_within_a_few_float32_steps(scale):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 201_088, generator=g) * scale).to(torch.bfloat16).float()
    norm, top_lps, ids = capture_rows(x, 20)
    truth = torch.log_softmax(x.double(), dim=-1)
    step = torch.finfo(torch.float32).eps * truth.gather(-1, ids).abs().clamp(min=1.0)
    err = (top_lps.double() - truth.gather(-1, ids)).abs()
    assert bool((err <= 4 * step).all()), f"max error {(err / step).max().item():.1f} float32 steps"
    # Any other token: its raw logit through the same norm.
    other = torch.tensor([[5], [77], [201_087]])
    err_other = (norm.logprobs(x.gather(-1, other)).double() - truth.gather(-1, other)).abs()
    assert bool((err_other <= 4 * torch.finfo(torch.float32).eps * truth.gather(-1, other).abs()).all())


def test_log_sum_exp_survives_minus_infinity():
    x = torch.randn(2, 201_088)
    x[0, : 201_088 // 32] = float("-inf")  # one whole lse block masked
    x[1, ::3] = float("-inf")  # scattered masks
    norm = logsumexp_rows(x)
    torch.testing.assert_close(norm.lse.double(), torch.logsumexp(x.double(), dim=-1), rtol=0, atol=1e-5)


def test_a_row_records_the_same_bits_alone_and_in_any_batch():
    """The rig compares batch sizes: its own capture must not depend on what else is in the batch."""
    g = torch.Generator().manual_seed(11)
    rows = (torch.randn(8, 201_088, generator=g) * 3).to(torch.bfloat16).float()
    alone = [capture_rows(rows[i : i + 1].clone(), 20) for i in range(8)]
    for b in (2, 3, 8):
        norm, lps, ids = capture_rows(rows[:b].clone(), 20)
        for i in range(b):
            assert torch.equal(lps[i], alone[i][1][0]) and torch.equal(ids[i], alone[i][2][0])
            assert torch.equal(norm.rel[i], alone[i][0].rel[0])


# ---- the C form (rig/stacks/capture.c) ------------------------------------------------------------------------------

from rig.stacks import native  # noqa: E402
from rig.stacks.capture import (  # noqa: E402
    NATIVE_MAX_K,
    RowCapture,
    StepRecorder,
    _capture_native,
    capture_kernel,
)

ARCHES = {"native": None, "avx2": ("-mavx2", "-mfma"), "generic": ()}  # None: what a run uses (-march=native)


def c_lib(arch: str = "native"):
    """The C form built with the given target flags; skips when this machine has no C compiler."""
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine: the torch form is the only one")
    built = native.load("capture", ARCHES[arch])
    if built.lib is None and arch == "avx2" and "avx2" not in native._cpu_identity():
        pytest.skip("this CPU has no AVX2")
    assert built.lib is not None, built.reason
    return built.lib


def tied_rows(b: int, v: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(b, v, generator=g) * 4) / 2  # hundreds of exact ties
    x[0, ::5] = float("-inf")  # masked tokens
    if b > 2:
        x[2] = -x[2].abs() * 40  # a wide row: most terms far below the top, some underflowing to nothing
    return x


def test_a_run_captures_cpu_rows_with_the_c_form_when_a_compiler_is_there():
    kernel, reason = capture_kernel()
    if native.compiler() is None:
        assert kernel == "torch" and "no C compiler" in reason
    else:
        assert kernel == "native", reason
        assert "torch's intra-op threads" in reason or "one thread per call" in reason


@pytest.mark.parametrize("arch", list(ARCHES))
@pytest.mark.parametrize("vocab", [201_088, 4096, 1000])  # the gpt-oss vocabulary, a small one, a ragged tail
@pytest.mark.parametrize("k", [0, 1, 20, NATIVE_MAX_K])
def test_c_form_gives_the_torch_forms_top_k_exactly_and_its_log_sum_exp(arch, vocab, k):
    lib = c_lib(arch)
    x = tied_rows(4, vocab, vocab + k)
    norm, lps, ids = _capture_native(lib, x, k)
    want_norm, want_lps, want_ids = RowCapture(k, native=False)(x)
    assert torch.equal(ids, want_ids)  # same ids, same order: (logit desc, id asc)
    assert torch.equal(norm.shift, want_norm.shift)
    truth = torch.logsumexp(x.double(), dim=-1)
    step = torch.finfo(torch.float32).eps * truth.abs().clamp(min=1.0)
    assert bool(((norm.lse.double() - truth).abs() <= 2 * step).all())
    assert torch.equal(lps, norm.logprobs(x.gather(-1, ids)))  # recorded as (logit - shift) - rel


def test_c_form_gives_the_same_bits_for_every_target_and_thread_split():
    """-march=native (AVX-512 here), AVX2 and plain C take different code for the compares and vectors; the lane
    structure and the explicit fmaf make them the same arithmetic. Threads only split rows."""
    x = tied_rows(8, 201_088, 3) * 3
    got = {arch: _capture_native(c_lib(arch), x, 20) for arch in ARCHES}
    first = got["native"]
    for arch, (norm, lps, ids) in got.items():
        assert torch.equal(ids, first[2]) and torch.equal(lps, first[1]), arch
        assert torch.equal(norm.rel, first[0].rel), arch
    capture_kernel()  # hands torch's OpenMP threads to the library a run uses, where torch has them
    lib = c_lib()
    for threads in (1, 2, 3):
        norm = torch.empty((2, 8))
        lps, ids = torch.empty((8, 20)), torch.empty((8, 20), dtype=torch.int32)
        assert lib.rig_capture_rows(x.data_ptr(), 8, 201_088, 20, threads, norm.data_ptr(), norm[1].data_ptr(),
                                    lps.data_ptr(), ids.data_ptr()) == 0  # fmt: skip
        assert torch.equal(lps, first[1]) and torch.equal(norm[1], first[0].rel)


def test_c_form_is_batch_invariant():
    lib = c_lib()
    rows = (torch.randn(8, 201_088, generator=torch.Generator().manual_seed(5)) * 3).to(torch.bfloat16).float()
    whole = _capture_native(lib, rows, 20)
    for i in range(8):
        one = _capture_native(lib, rows[i : i + 1].clone(), 20)
        assert torch.equal(one[1][0], whole[1][i]) and torch.equal(one[0].rel[0], whole[0].rel[i])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rows_with_nan_or_inf_go_to_the_torch_form(bad):
    c_lib()
    x = tied_rows(3, 4096, 9)
    x[1, 1234] = bad
    assert _capture_native(c_lib(), x, 5) is None  # the C form declines the batch
    norm, lps, ids = RowCapture(5)(x)  # and the capture takes the torch form, NaN where torch gives NaN
    want = RowCapture(5, native=False)(x)
    assert torch.equal(ids, want[2])
    torch.testing.assert_close(lps, want[1], equal_nan=True, rtol=0, atol=0)


def test_step_recorder_records_what_row_capture_gives_with_either_form():
    c_lib()
    g = torch.Generator().manual_seed(21)
    steps = [(torch.randn(3, 4096, generator=g) * 2).to(torch.bfloat16).float() for _ in range(70)]  # 2 chunks
    tokens = [torch.randint(0, 4096, (3,), generator=g) for _ in steps]
    got = {}
    for form in (None, False):
        rec = StepRecorder(5, native=form)
        for s, x in enumerate(steps):
            # the tokens that followed step s - 1 (a no-op at s = 0), as a strided view like input_ids[:, -1]
            rec.chosen(torch.stack([tokens[s - 1], tokens[s - 1]]).T[:, 0])
            rec.step(x)
        rec.chosen(tokens[-1])
        got[form] = rec.results()
        assert rec.nbytes() == 2 * 64 * 3 * (5 * 8 + 12)  # 2 chunks of 64 steps: K and the rows, not the vocabulary
    (lp_c, ids_c, top_c), (lp_t, ids_t, top_t) = got[None], got[False]
    assert ids_c.shape == (3, 70, 5) and ids_c.dtype == np.int32 and lp_c.shape == (3, 70)
    np.testing.assert_array_equal(ids_c, ids_t)
    np.testing.assert_allclose(top_c, top_t, rtol=0, atol=4e-6)
    np.testing.assert_allclose(lp_c, lp_t, rtol=0, atol=4e-6)
    # the chosen token's logprob is the step's log-softmax at the token that followed it
    for s in (0, 63, 64, 69):
        truth = torch.log_softmax(steps[s].double(), -1).gather(
            -1, tokens[s - 1 if s else 0][:, None] * 0 + tokens[s][:, None]
        )
        np.testing.assert_allclose(lp_c[:, s], truth[:, 0].numpy(), rtol=0, atol=4e-6)


def test_native_kernels_can_be_turned_off_and_explain_a_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("RIG_NATIVE", "0")
    assert "RIG_NATIVE=0" in native.load.__wrapped__("capture").reason
    monkeypatch.setenv("RIG_NATIVE", "auto")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    got = native.load.__wrapped__("capture")
    assert got.lib is None and "no-such-cc" in got.reason and "torch form" in got.reason


def test_native_build_is_cached_per_machine_and_reused(monkeypatch, tmp_path):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = native.load.__wrapped__("capture")
    assert first.lib is not None and first.reason.startswith("built with"), first.reason
    again = native.load.__wrapped__("capture")
    assert again.reason.startswith("cached build"), again.reason
    assert len(list((tmp_path / "rig" / "native").glob("capture-*.so"))) == 1  # no temporaries left behind


def test_a_c_form_that_disagrees_with_the_torch_form_is_not_used(monkeypatch, capsys):
    import rig.stacks.capture as capture

    c_lib()
    monkeypatch.setattr(capture, "_NATIVE", {})  # decide afresh in this test; the process's decision comes back after
    monkeypatch.setattr(capture, "_self_check", lambda lib: "top-5 ids differ")
    kernel, reason = capture.capture_kernel()
    assert kernel == "torch" and "disagreed with the torch form (top-5 ids differ)" in reason
    assert "uses the torch form" in capsys.readouterr().err
    x = tied_rows(3, 4096, 1)
    rec = StepRecorder(5)
    rec.step(x)  # and the capture takes the torch form
    rec.chosen(torch.tensor([1, 2, 3]))
    _, ids, _ = rec.results()
    np.testing.assert_array_equal(ids[:, 0], RowCapture(5, native=False)(x)[2].int().numpy())


def test_c_form_has_no_undefined_behaviour_or_bad_memory_access(tmp_path):
    """The C file built with UBSan and ASan, run over rows with ties, masked tokens, a ragged tail, every K the stack
    uses and a NaN row, in a child process that preloads the sanitizer runtimes (ctypes cannot load them later)."""
    import subprocess
    import sys

    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not path or path == name or not os.path.exists(path):
            pytest.skip(f"{cc} has no {name}")
        libs.append(path)
    so = tmp_path / "capture-sanitized.so"
    src = os.path.join(os.path.dirname(native.__file__), "capture.c")
    for arch in (["-march=native"], []):
        build = [cc, "-O1", "-g", *arch, "-ffp-contract=off", "-fsanitize=address,undefined"]
        build += ["-fno-sanitize-recover=undefined", "-fPIC", "-shared", "-o", str(so), src, "-lm"]
        subprocess.run(build, check=True, capture_output=True)
        script = f"""
import ctypes, torch
from rig.stacks.native import SIGNATURES
from rig.stacks import capture
lib = ctypes.CDLL({str(so)!r})
for fn, (restype, argtypes) in SIGNATURES["capture"].items():
    f = getattr(lib, fn); f.restype, f.argtypes = restype, argtypes
x = torch.round(torch.randn(4, 64 * 70 + 37) * 8) / 2
x[1, ::3] = float("-inf")
x[2] = -x[2].abs() * 60
for k in (0, 1, 20, 64):
    assert capture._capture_native(lib, x, k) is not None
x[3, 5] = float("nan")
assert capture._capture_native(lib, x, 5) is None
tok = torch.tensor([0, 4516, 7, 9])
out = torch.empty(4)
o = out.data_ptr()
assert lib.rig_token_logprobs(x.data_ptr(), 4, x.shape[1], tok.data_ptr(), 1, o, o, o) == 0
print("clean")
"""
        env = {**os.environ, "LD_PRELOAD": " ".join(libs), "ASAN_OPTIONS": "detect_leaks=0"}
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and "clean" in proc.stdout, (arch, proc.stderr[-3000:])
