"""Decoupled PPO (docs/ASYNC.md) against a hand computation, and its reduction to the
synchronous losses when the proximal and the behaviour policy are the same."""

from __future__ import annotations

import math

import pytest
import torch

from executor.losses.grpo import grpo_loss
from executor.losses.ppo import behaviour_weights, decoupled_policy_loss, policy_loss

# Five response positions of one sequence, the last one padding. eps = 0.2, cap = 5.
#   token  lp    prox  behav  A     r = e^(lp-prox)       clipped term         w = e^(prox-behav)
#   0      -1.0  -1.1  -1.3   1.0   e^0.1 = 1.10517       -A r = -1.10517      e^0.2 = 1.22140
#   1      -0.5  -0.5  -0.4  -2.0   1                      -A r = 2             e^-0.1 = 0.90484
#   2      -2.0  -1.0  -3.0   0.5   e^-1 = 0.36788        -A r = -0.18394      e^2 = 7.389 > 5: dropped
#   3      -0.2  -0.5  -0.5   1.0   e^0.3 = 1.34986       clip: -A 1.2 = -1.2  1
#   4      padding
# loss = (e^0.3 * -1 + 2 e^-0.1 + 0 - 1.2) / 4
#      = (-1.3498588076 + 1.8096748361 - 1.2) / 4 = -0.1850459929
LP = [-1.0, -0.5, -2.0, -0.2, 0.0]
PROX = [-1.1, -0.5, -1.0, -0.5, 0.0]
BEHAV = [-1.3, -0.4, -3.0, -0.5, 0.0]
ADV = [1.0, -2.0, 0.5, 1.0, 0.0]
MASK = [1.0, 1.0, 1.0, 1.0, 0.0]
HAND_LOSS = -0.1850459929
# d loss / d lp: w * (-A) * r / 4 where the unclipped branch is taken, 0 where clipped,
# dropped or padding: token 0: -e^0.3 / 4; token 1: 2 e^-0.1 / 4.
HAND_GRAD = [-math.exp(0.3) / 4, 2 * math.exp(-0.1) / 4, 0.0, 0.0, 0.0]


def t(xs):
    return torch.tensor([xs], dtype=torch.float64)


def test_decoupled_loss_matches_hand_computation():
    lp = t(LP).requires_grad_(True)
    out = decoupled_policy_loss(lp, t(PROX), t(BEHAV), t(ADV), t(MASK), 0.2, 5.0, 4.0)
    assert float(out.loss.detach()) == pytest.approx(HAND_LOSS, abs=1e-9)
    assert float(out.clip_frac) == pytest.approx(1 / 4)  # token 3
    out.loss.backward()
    assert lp.grad[0].tolist() == pytest.approx(HAND_GRAD, abs=1e-12)


def test_behaviour_weights_by_hand():
    b = behaviour_weights(t(PROX), t(BEHAV), t(MASK), 5.0)
    assert b.weight[0].tolist() == pytest.approx([math.exp(0.2), math.exp(-0.1), 0.0, 1.0, 0.0])
    assert b.kept[0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert float(b.dropped) == 1.0


def test_a_weight_that_overflows_is_dropped_not_nan():
    b = behaviour_weights(t([500.0, 0.0]), t([-500.0, 0.0]), t([1.0, 1.0]), 5.0)
    assert b.weight[0].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reduces_to_policy_loss_when_prox_is_behav(dtype):
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 6, generator=g, dtype=dtype)
    old = lp + 0.3 * torch.randn(3, 6, generator=g, dtype=dtype)
    adv = torch.randn(3, 6, generator=g, dtype=dtype)
    mask = (torch.rand(3, 6, generator=g) > 0.3).to(dtype)
    a = policy_loss(lp, old, adv, mask, 0.2, 7.0)
    b = decoupled_policy_loss(lp, old, old, adv, mask, 0.2, 5.0, 7.0)
    assert torch.equal(a.loss, b.loss)  # bitwise: w = exp(0) = 1 exactly
    assert torch.equal(a.clip_frac, b.clip_frac)


@pytest.mark.parametrize("level", ["sample", "token"])
def test_grpo_with_unit_weights_is_grpo(level):
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 5, generator=g).requires_grad_(True)
    old = lp.detach() + 0.2 * torch.randn(4, 5, generator=g)
    ref = lp.detach() + 0.2 * torch.randn(4, 5, generator=g)
    adv = torch.randn(4, 5, generator=g)
    mask = (torch.rand(4, 5, generator=g) > 0.2).float()
    w = behaviour_weights(old, old, mask, 5.0).weight
    a = grpo_loss(lp, old, ref, adv, mask, 0.2, 0.05, 4.0, level)
    b = grpo_loss(lp, old, ref, adv, mask, 0.2, 0.05, 4.0, level, weight=w)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.kl, b.kl)


def test_grpo_weight_scales_the_surrogate_not_the_kl():
    lp, ref = t(LP), t([-1.0, -0.4, -2.5, -0.3, 0.0])
    w = behaviour_weights(t(PROX), t(BEHAV), t(MASK), 5.0).weight
    out = grpo_loss(lp, t(PROX), ref, t(ADV), t(MASK), 0.2, 0.5, 4.0, "token", weight=w)
    plain = grpo_loss(lp, t(PROX), ref, t(ADV), t(MASK), 0.2, 0.5, 4.0, "token")
    assert float(out.pg_loss) == pytest.approx(HAND_LOSS, abs=1e-9)  # same tokens as above
    assert torch.equal(out.kl, plain.kl)
    assert float(out.loss) == pytest.approx(HAND_LOSS + 0.5 * float(plain.kl), abs=1e-9)
