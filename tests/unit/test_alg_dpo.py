"""DPO, IPO and anchored DPO against hand computations, and ADPO's reduction to DPO."""

from __future__ import annotations

import math

import pytest
import torch

from executor.losses.adpo import (
    adpo_listwise_loss,
    adpo_pairwise_loss,
    anchored_logits,
    reward_targets,
)
from executor.losses.dpo import dpo_loss, ipo_loss, log_ratio_margin, sequence_logprobs

T = torch.tensor


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_sequence_logprobs_sum_real_tokens():
    lp = T([[-1.0, -2.0, -4.0], [-0.5, -0.25, -8.0]])
    assert torch.equal(
        sequence_logprobs(lp, T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])), T([-7.0, -0.75])
    )


# two pairs: h0 = (-1 + 1.5) - (-2 + 1.5) = 1, h1 = (-3 + 2) - (-1 + 2) = -2
C, R, RC, RR = T([-1.0, -3.0]), T([-2.0, -1.0]), T([-1.5, -2.0]), T([-1.5, -2.0])


def test_dpo_hand_computed():
    assert torch.equal(log_ratio_margin(C, R, RC, RR), T([1.0, -2.0]))
    s = dpo_loss(C, R, RC, RR, beta=0.5, denominator=2.0)
    # -log sigmoid(0.5) = log(1 + e^-0.5); -log sigmoid(-1) = log(1 + e^1)
    assert s.loss.item() == pytest.approx((softplus(-0.5) + softplus(1.0)) / 2, rel=1e-6)
    # implicit rewards: chosen 0.5*[0.5, -1] = [0.25, -0.5], rejected 0.5*[-0.5, 1] = [-0.25, 0.5]
    assert s.correct.item() == 1
    assert s.chosen_reward.item() == pytest.approx(-0.125)
    assert s.rejected_reward.item() == pytest.approx(0.125)
    assert s.margin.item() == pytest.approx(-0.25)


def test_dpo_label_smoothing_hand_computed():
    s = dpo_loss(C, R, RC, RR, beta=0.5, denominator=2.0, label_smoothing=0.1)
    pair0 = 0.9 * softplus(-0.5) + 0.1 * softplus(0.5)
    pair1 = 0.9 * softplus(1.0) + 0.1 * softplus(-1.0)
    assert s.loss.item() == pytest.approx((pair0 + pair1) / 2, rel=1e-6)


def test_ipo_hand_computed():
    s = ipo_loss(C, R, RC, RR, beta=0.5, denominator=2.0)
    # target margin 1/(2*0.5) = 1: (1 - 1)^2 = 0, (-2 - 1)^2 = 9
    assert s.loss.item() == pytest.approx(4.5)
    assert s.correct.item() == 1


def _random_pairs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    c, r = (torch.randn(n, generator=g, dtype=torch.float64) * 3 - 10 for _ in range(2))
    rc, rr = (torch.randn(n, generator=g, dtype=torch.float64) * 3 - 10 for _ in range(2))
    return c.requires_grad_(), r.requires_grad_(), rc, rr


@pytest.mark.parametrize("loss", [dpo_loss, ipo_loss])
def test_dpo_ipo_micro_batches_add_up(loss):
    c, r, rc, rr = _random_pairs(7, 0)
    whole = loss(c, r, rc, rr, 0.1, 7)
    parts = [loss(c[p], r[p], rc[p], rr[p], 0.1, 7) for p in (slice(0, 4), slice(4, 7))]
    assert torch.allclose(sum(s.loss for s in parts), whole.loss)
    assert sum(s.correct for s in parts) == whole.correct
    assert torch.allclose(sum(s.margin for s in parts), whole.margin)


@pytest.mark.parametrize("tau", [0.8, 0.5, 2.0])
def test_adpo_hard_labels_equal_dpo_with_beta_one_over_tau(tau):
    c, r, rc, rr = _random_pairs(16, 1)
    dpo = dpo_loss(c, r, rc, rr, beta=1.0 / tau, denominator=16)
    adpo = adpo_pairwise_loss(c, r, rc, rr, tau=tau, denominator=16, q=1.0)
    torch.testing.assert_close(adpo.loss, dpo.loss)
    assert adpo.correct == dpo.correct
    g_dpo = torch.autograd.grad(dpo.loss, (c, r))
    g_adpo = torch.autograd.grad(adpo.loss, (c, r))
    for a, b in zip(g_adpo, g_dpo, strict=True):
        torch.testing.assert_close(a, b)


def test_adpo_pairwise_soft_label_hand_computed():
    # z0 = 1 / 0.5 = 2, z1 = -2 / 0.5 = -4; q = [0.8, 0.3]
    s = adpo_pairwise_loss(C, R, RC, RR, tau=0.5, denominator=2.0, q=T([0.8, 0.3]))

    def kl(q: float, z: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))

    assert s.loss.item() == pytest.approx((kl(0.8, 2.0) + kl(0.3, -4.0)) / 2, rel=1e-6)
    assert s.correct.item() == 1 and s.margin.item() == pytest.approx(-1.0)


def test_adpo_listwise_hand_computed():
    f64 = torch.float64  # the KL is a small difference of larger terms
    logps = T([[-1.0, -2.0, -3.0]], dtype=f64)
    anchor = T([[-1.5, -1.5, -1.5]], dtype=f64)
    q = T([[0.7, 0.2, 0.1]], dtype=f64)
    s = adpo_listwise_loss(logps, anchor, q, tau=0.5, denominator=1.0)
    logits = [(-1.0 + 1.5) / 0.5, (-2.0 + 1.5) / 0.5, (-3.0 + 1.5) / 0.5]  # [1, -1, -3]
    assert torch.allclose(anchored_logits(logps, anchor, 0.5), T([logits], dtype=f64))
    norm = sum(math.exp(x) for x in logits)
    p = [math.exp(x) / norm for x in logits]
    expected = sum(qi * math.log(qi / pi) for qi, pi in zip([0.7, 0.2, 0.1], p, strict=True))
    assert s.loss.item() == pytest.approx(expected, rel=1e-12)
    assert s.correct.item() == 1


def test_adpo_listwise_of_two_equals_pairwise():
    c, r, rc, rr = _random_pairs(5, 2)
    q = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pair = adpo_pairwise_loss(c, r, rc, rr, 0.7, 5, q=q)
    lists = adpo_listwise_loss(
        torch.stack([c, r], 1), torch.stack([rc, rr], 1), torch.stack([q, 1 - q], 1), 0.7, 5
    )
    torch.testing.assert_close(lists.loss, pair.loss)


def test_reward_targets_hand_computed():
    q = reward_targets(T([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]), beta_r=0.5)
    # row 0: z = [-1, 0, 1] (unbiased std 1) -> softmax([-2, 0, 2]); row 1: equal -> uniform
    e = [math.exp(-2), 1.0, math.exp(2)]
    assert torch.allclose(q[0], T([x / sum(e) for x in e]))
    assert torch.allclose(q[1], torch.full((3,), 1 / 3))
    raw = reward_targets(T([[0.0, math.log(3.0)]]), beta_r=1.0, standardise=False)
    assert torch.allclose(raw, T([[0.25, 0.75]]))


def test_ragged_lists_match_unpadded_and_keep_gradients_finite():
    logps = T([[-1.0, -2.0, -3.0], [-0.5, -4.0, 99.0]], requires_grad=True)
    anchor = T([[-1.5, -1.5, -1.5], [-1.0, -1.0, -77.0]])
    rewards = T([[1.0, 0.0, 2.0], [0.3, 0.9, 123.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    q = reward_targets(rewards, 0.5, mask)
    assert q[1, 2].item() == 0.0
    s = adpo_listwise_loss(logps, anchor, q, 0.8, 2.0, mask)
    s.loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1, 2].item() == 0.0
    q1 = reward_targets(rewards[1:, :2], 0.5)
    alone = adpo_listwise_loss(logps[1:, :2].detach(), anchor[1:, :2], q1, 0.8, 1.0)
    first = adpo_listwise_loss(logps[:1].detach(), anchor[:1], q[:1], 0.8, 1.0)
    torch.testing.assert_close(s.loss, (alone.loss + first.loss) / 2)


def test_adpo_listwise_micro_batches_add_up():
    g = torch.Generator().manual_seed(4)
    logps, anchor, r = (torch.randn(6, 4, generator=g) for _ in range(3))
    q = reward_targets(r, 0.3)
    whole = adpo_listwise_loss(logps, anchor, q, 0.8, 6)
    parts = [
        adpo_listwise_loss(logps[p], anchor[p], q[p], 0.8, 6) for p in (slice(0, 1), slice(1, 6))
    ]
    torch.testing.assert_close(sum(s.loss for s in parts), whole.loss)
    assert sum(s.correct for s in parts) == whole.correct
