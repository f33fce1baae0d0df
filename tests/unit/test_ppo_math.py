"""PPO math against hand computations on small tensors."""

from __future__ import annotations

import math

import torch

from executor.losses.ppo import gae, policy_loss, shaped_rewards, value_loss, whiten

T = torch.tensor


def test_shaped_rewards_put_clipped_score_on_last_real_token():
    logp = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = T([[-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r, kl = shaped_rewards(logp, ref, T([10.0, -0.5]), mask, kl_coef=0.1, reward_clip=5.0)
    # row 0: kl = [0.5, 0, (padding) 0]; score clipped to 5 on position 1
    assert torch.allclose(kl, T([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(r, T([[-0.05, 5.0, 0.0], [0.0, -0.1, -0.5]]))


def test_gae_hand_computed():
    r = T([[1.0, 0.0, 2.0]])
    v = T([[0.5, 1.0, 1.5]])
    mask = T([[1.0, 1.0, 1.0]])
    g, lam = 0.9, 0.8
    d2 = 2.0 - 1.5
    d1 = 0.0 + g * 1.5 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = gae(r, v, mask, g, lam)
    assert torch.allclose(adv, T([[a0, a1, a2]]))
    assert torch.allclose(ret, T([[a0 + 0.5, a1 + 1.0, a2 + 1.5]]))


def test_gae_ignores_padding():
    r = T([[1.0, 3.0, 7.0]])
    v = T([[0.5, 2.0, 9.0]])
    adv, ret = gae(r, v, T([[1.0, 1.0, 0.0]]), 1.0, 1.0)
    # V after the last real token is 0: A1 = 3 - 2 = 1, A0 = 1 + 2 - 0.5 + 1 = 3.5
    assert torch.allclose(adv, T([[3.5, 1.0, 0.0]])) and ret[0, 2] == 0


def test_whiten_over_masked_tokens():
    x = T([[1.0, 3.0, 100.0]])
    w = whiten(x, T([[1.0, 1.0, 0.0]]))
    assert torch.allclose(w, T([[-1.0, 1.0, 0.0]]))


def test_policy_loss_clipping():
    old = T([[0.0, 0.0]])
    new = T([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    adv = T([[1.0, -1.0]])
    s = policy_loss(new, old, adv, T([[1.0, 1.0]]), eps_clip=0.2, denominator=2.0)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(0.5, 0.8) = 0.8 -> mean -0.2; both clipped
    assert torch.allclose(s.loss, T(-0.2))
    assert torch.allclose(s.clip_frac, T(1.0))


def test_policy_loss_gradient_zero_when_clipped():
    new = T([[math.log(1.5)]]).requires_grad_()
    policy_loss(new, T([[0.0]]), T([[1.0]]), T([[1.0]]), 0.2, 1.0).loss.backward()
    assert new.grad.abs().item() == 0.0


def test_value_loss_hand_computed():
    v = T([[1.0, 0.0]])
    old = T([[0.0, 0.0]])
    ret = T([[0.5, 1.0]])
    loss = value_loss(v, old, ret, T([[1.0, 1.0]]), value_clip=0.2, denominator=2.0)
    # token 0: max((1-0.5)^2, (0.2-0.5)^2) = 0.25; token 1: max(1, 1) = 1 -> 0.5 * 1.25 / 2
    assert torch.allclose(loss, T(0.3125))
