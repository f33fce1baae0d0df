"""GRPO math against hand computations and plain-Python reference loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from executor.losses.grpo import (
    aggregate,
    group_advantages,
    grpo_loss,
    k3_kl,
    token_advantages,
)

T = torch.tensor


def test_group_advantages_hand_computed():
    r = T([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 4.0, 2.0])
    adv = group_advantages(r, group_size=3)
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 2: all equal -> 0;
    # group 3: mean 2, unbiased std sqrt((4 + 4 + 0) / 2) = 2
    assert torch.allclose(adv, T([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0]))
    assert torch.allclose(
        group_advantages(r, 3, scale=False), T([-1.0, 0.0, 1.0, 0, 0, 0, -2.0, 2.0, 0.0])
    )


def test_group_advantages_match_python_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4 * 5, generator=g, dtype=torch.float64)
    eps = 1e-6
    expected = []
    for p in range(4):
        group = r[p * 5 : p * 5 + 5].tolist()
        mean, std = statistics.fmean(group), statistics.stdev(group)  # stdev is Bessel-corrected
        expected += [(x - mean) / (std + eps) for x in group]
    assert torch.allclose(group_advantages(r, 5, eps=eps), T(expected, dtype=torch.float64))


def test_group_advantages_reject_bad_shapes():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), 1)
    assert torch.equal(group_advantages(T([1.0, 2.0]), 1, scale=False), T([0.0, 0.0]))


def test_token_advantages_broadcast_over_real_tokens():
    out = token_advantages(T([2.0, -1.0]), T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(out, T([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_k3_hand_computed():
    logp = T([[math.log(0.5), math.log(0.2), -3.0]])
    ref = T([[math.log(0.25), math.log(0.2), 0.0]])
    kl = k3_kl(logp, ref, T([[1.0, 1.0, 0.0]]))
    # token 0: ref/p = 0.5 -> 0.5 - log 0.5 - 1; token 1: identical -> 0; token 2: padding
    assert torch.allclose(kl, T([[0.5 - math.log(0.5) - 1.0, 0.0, 0.0]]))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    assert (k3_kl(a, b, torch.ones(3, 7)) >= 0).all()


def _case():
    # seq 0: ratios 1.5 (A=1) and 1.0 (A=1); seq 1: one token, ratio 0.5 (A=-2), then padding
    logp = T([[math.log(1.5), 0.0], [math.log(0.5), 0.0]])
    old = torch.zeros(2, 2)
    adv = T([[1.0, 1.0], [-2.0, 0.0]])
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    return logp, old, adv, mask


def test_grpo_loss_sample_level_hand_computed():
    logp, old, adv, mask = _case()
    s = grpo_loss(logp, old, logp.clone(), adv, mask, eps_clip=0.2, beta=0.1, denominator=2.0)
    # per token: max(-1.5, -1.2) = -1.2; max(-1, -1) = -1; max(1.0, 1.6) = 1.6; k3 = 0
    # sample level: seq means -1.1 and 1.6, summed 0.5, over 2 sequences
    assert torch.allclose(s.loss, T(0.25)) and torch.allclose(s.pg_loss, T(0.25))
    assert s.kl.item() == 0.0
    assert s.clip_count.item() == 2 and s.token_count.item() == 3


def test_grpo_loss_token_level_hand_computed():
    logp, old, adv, mask = _case()
    s = grpo_loss(logp, old, logp.clone(), adv, mask, 0.2, 0.1, denominator=3.0, level="token")
    assert torch.allclose(s.loss, T((-1.2 - 1.0 + 1.6) / 3))


def test_grpo_loss_kl_term_hand_computed():
    logp, old, adv, mask = _case()
    ref = logp + T([[math.log(0.5), 0.0], [math.log(2.0), 5.0]])  # ref/p = 0.5, 1, 2, (padding)
    s = grpo_loss(logp, old, ref, adv, mask, eps_clip=0.2, beta=0.1, denominator=2.0)
    k = [0.5 - math.log(0.5) - 1.0, 0.0, 2.0 - math.log(2.0) - 1.0]
    kl = ((k[0] + k[1]) / 2 + k[2]) / 2
    assert torch.allclose(s.kl, T(kl))
    assert torch.allclose(s.loss, T(0.25 + 0.1 * kl))


def test_clip_higher():
    s = grpo_loss(
        T([[math.log(1.25)]]), T([[0.0]]), T([[0.0]]), T([[1.0]]), T([[1.0]]),
        eps_clip=0.2, beta=0.0, denominator=1.0, eps_clip_high=0.3,
    )  # fmt: skip
    assert torch.allclose(s.loss, T(-1.25)) and s.clip_count.item() == 0


def _reference_loss(logp, old, ref, adv, mask, eps, beta, level):
    """Plain-Python GRPO objective, negated."""
    seq_terms, total, n_tok = [], 0.0, 0
    for i in range(len(mask)):
        toks = []
        for t in range(len(mask[i])):
            if mask[i][t] == 0:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            a = adv[i][t]
            pg = max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps))
            d = ref[i][t] - logp[i][t]
            toks.append(pg + beta * (math.exp(d) - d - 1))
        seq_terms.append(sum(toks) / len(toks) if toks else 0.0)
        total += sum(toks)
        n_tok += len(toks)
    return sum(seq_terms) / len(mask) if level == "sample" else total / n_tok


@pytest.mark.parametrize("level", ["sample", "token"])
def test_grpo_loss_matches_python_loop_and_splits_into_micro_batches(level):
    g = torch.Generator().manual_seed(2)
    B, L = 6, 5
    logp = (torch.randn(B, L, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    old = logp.detach() + torch.randn(B, L, generator=g, dtype=torch.float64) * 0.3
    ref = logp.detach() + torch.randn(B, L, generator=g, dtype=torch.float64) * 0.3
    rewards = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.arange(L)[None, :] < T([5, 3, 1, 4, 2, 5])[:, None]).double()
    adv = token_advantages(group_advantages(rewards, 3), mask)
    denom = B if level == "sample" else mask.sum().item()
    whole = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.04, denom, level)
    expected = _reference_loss(
        logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04, level
    )
    assert whole.loss.item() == pytest.approx(expected, rel=1e-12)
    (grad_whole,) = torch.autograd.grad(whole.loss, logp)
    parts = [slice(0, 2), slice(2, 6)]
    split = [
        grpo_loss(logp[p], old[p], ref[p], adv[p], mask[p], 0.2, 0.04, denom, level) for p in parts
    ]
    total = sum(s.loss for s in split)
    assert torch.allclose(total, whole.loss)
    assert sum(s.clip_count for s in split) == whole.clip_count
    assert torch.allclose(sum(s.kl for s in split), whole.kl)
    (grad_split,) = torch.autograd.grad(total, logp)
    assert torch.allclose(grad_split, grad_whole)


def test_aggregate_rejects_unknown_level():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), 1.0, "batch")
