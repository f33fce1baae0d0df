"""ReMax advantages and REINFORCE loss against hand computations."""

from __future__ import annotations

import torch

from executor.losses.remax import kl_penalised_advantages, remax_advantages, remax_loss

T = torch.tensor
MASK = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_advantage_is_sample_minus_greedy_reward_on_real_tokens():
    adv = remax_advantages(T([1.0, 0.2]), T([0.5, 0.7]), MASK)
    assert torch.allclose(adv, T([[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5]]))
    clipped = remax_advantages(T([1.0, 0.2]), T([0.5, 0.7]), MASK, reward_clip=0.3)
    assert torch.allclose(clipped, T([[0.3, 0.3, 0.0], [-0.3, -0.3, -0.3]]))


def test_kl_is_folded_per_token_without_accumulating():
    adv = T([[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5]])
    logp = T([[-1.0, -2.0, -7.0], [-1.0, -1.0, -1.0]])
    ref = T([[-1.5, -2.0, 0.0], [-1.0, -3.0, -0.5]])
    out = kl_penalised_advantages(adv, logp, ref, MASK, kl_coef=0.1)
    # k1 = logp - ref: [[0.5, 0, (pad)], [0, 2, -0.5]]
    assert torch.allclose(out, T([[0.45, 0.5, 0.0], [-0.5, -0.7, -0.45]]))


def test_remax_loss_hand_computed_with_gradient():
    logp = T([[-1.0, -2.0, -9.0], [-0.5, -1.0, -2.5]], requires_grad=True)
    adv = T([[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5]])
    s = remax_loss(logp, adv, MASK, denominator=5.0)
    # -(-1*0.5 - 2*0.5 + 0.5*0.5 + 1*0.5 + 2.5*0.5) / 5 = -(-1.5 + 2.0) / 5; padding ignored
    assert torch.allclose(s.loss, T(-0.1))
    assert torch.allclose(s.mean_advantage, T((0.5 + 0.5 - 1.5) / 5.0))
    s.loss.backward()
    assert torch.allclose(logp.grad, T([[-0.1, -0.1, 0.0], [0.1, 0.1, 0.1]]))


def test_remax_loss_nonzero_case():
    s = remax_loss(T([[-2.0, -1.0]]), T([[1.5, 1.5]]), T([[1.0, 0.0]]), denominator=1.0)
    assert torch.allclose(s.loss, T(3.0))  # -(-2 * 1.5); the padded token is ignored


def test_micro_batches_add_up():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(5, 4, generator=g)
    adv = remax_advantages(
        torch.randn(5, generator=g), torch.randn(5, generator=g), torch.ones(5, 4)
    )
    mask = (torch.arange(4)[None, :] < T([4, 1, 3, 2, 4])[:, None]).float()
    denom = mask.sum().item()
    whole = remax_loss(logp, adv, mask, denom)
    split = [remax_loss(logp[p], adv[p], mask[p], denom) for p in (slice(0, 3), slice(3, 5))]
    assert torch.allclose(sum(s.loss for s in split), whole.loss)
    assert torch.allclose(sum(s.mean_advantage for s in split), whole.mean_advantage)
