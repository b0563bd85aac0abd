"""rig.stacks.capture: the exact top-K (ties to the lower token id) and the log-sum-exp every recorded logprob uses."""

from __future__ import annotations

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
