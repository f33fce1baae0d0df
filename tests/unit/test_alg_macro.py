"""MA-RLHF macro-action segmentation and macro-level GAE against hand computations."""

from __future__ import annotations

import pytest
import torch

from executor.losses.macro import (
    WEIGHTINGS,
    fixed_ngram_starts,
    macro_gae,
    macro_index,
    macro_reduce,
    ppl_starts,
)
from executor.losses.ppo import gae

T = torch.tensor


def test_fixed_ngram_starts_hand_computed():
    mask = T([[1.0] * 5 + [0.0] * 2, [1.0] * 3 + [0.0] * 4])
    # n=2: starts at 0, 2, 4 (4 is also the last real token); row 1: 0, 2 (last)
    assert torch.equal(
        fixed_ngram_starts(mask, 2), T([[1.0, 0, 1, 0, 1, 0, 0], [1.0, 0, 1, 0, 0, 0, 0]])
    )
    # n=3: 0, 3, and the last token 4 on its own
    assert torch.equal(
        fixed_ngram_starts(mask, 3), T([[1.0, 0, 0, 1, 1, 0, 0], [1.0, 0, 1, 0, 0, 0, 0]])
    )
    assert torch.equal(fixed_ngram_starts(mask, 1), mask)
    with pytest.raises(ValueError):
        fixed_ngram_starts(mask, 0)


def test_ppl_starts_hand_computed():
    # row 0 nll = [3, 2, 1, 4, 2, 1]: the only rise is 1 -> 4 (i = 2), so token 2 starts a
    # macro; token 0 and the last token 5 always start one.
    # row 1 nll = [1, 2, 3, (pad 9)]: rises at i = 0 and i = 1; the pad must not count.
    ref = -T([[3.0, 2.0, 1.0, 4.0, 2.0, 1.0], [1.0, 2.0, 3.0, 9.0, 0.0, 0.0]])
    mask = T([[1.0] * 6, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(ppl_starts(ref, mask), T([[1.0, 0, 1, 0, 0, 1], [1.0, 1, 1, 0, 0, 0]]))


def test_macro_index():
    idx, mm = macro_index(
        T([[1.0, 0, 1, 0, 1], [1.0, 1, 0, 0, 0]]), T([[1.0] * 5, [1.0, 1, 1, 0, 0]])
    )
    assert idx.tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 0, 0]]
    assert mm.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize(
    "weighting,expected",
    [
        ("equal", [1.5, 3.5, 5.0]),
        ("sum", [3.0, 7.0, 5.0]),
        ("unit", [2.0, 4.0, 5.0]),
        ("first", [1.0, 3.0, 5.0]),
        # weights 1 and 1/2 normalised to 2/3 and 1/3
        ("position", [1 * 2 / 3 + 2 / 3, 3 * 2 / 3 + 4 / 3, 5.0]),
    ],
)
def test_macro_reduce_hand_computed(weighting, expected):
    x = T([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]])
    starts = T([[1.0, 0, 1, 0, 1, 0]])
    out, mm = macro_reduce(x, starts, T([[1.0] * 5 + [0.0]]), weighting)
    assert torch.allclose(out, T([expected])) and mm.tolist() == [[1, 1, 1]]


def test_macro_reduce_position_weights_for_three_tokens():
    out, _ = macro_reduce(T([[6.0, 3.0, 12.0]]), T([[1.0, 0, 0]]), T([[1.0, 1, 1]]), "position")
    h = 1 + 1 / 2 + 1 / 3
    assert torch.allclose(out, T([[(6.0 + 3.0 / 2 + 12.0 / 3) / h]]))


def test_macro_gae_hand_computed():
    rewards = T([[0.0, 0.0, 0.1, 0.0, 1.0, 0.0]])
    values = T([[0.5, 0.7, 1.0, 0.8, 0.9, 0.0]])
    mask = T([[1.0] * 5 + [0.0]])
    starts = fixed_ngram_starts(mask, 2)  # macros {0,1}, {2,3}, {4}
    g, lam = 0.9, 0.8
    R = [0.0, 0.05, 1.0]  # equal weighting = mean of the token rewards
    V = [0.6, 0.9, 0.9]
    a2 = R[2] - V[2]
    a1 = R[1] + g * V[2] - V[1] + g * lam * a2
    a0 = R[0] + g * V[1] - V[0] + g * lam * a1
    adv, ret = macro_gae(rewards, values, starts, mask, g, lam)
    assert torch.allclose(adv, T([[a0, a0, a1, a1, a2, 0.0]]))
    assert torch.allclose(ret, T([[a0 + V[0], a0 + V[0], a1 + V[1], a1 + V[1], a2 + V[2], 0.0]]))
    # "sum" rewards and "first" values: R = [0, 0.1, 1], V = [0.5, 1.0, 0.9]
    adv, _ = macro_gae(rewards, values, starts, mask, 1.0, 1.0, "sum", "first")
    b2 = 1.0 - 0.9
    b1 = 0.1 + 0.9 - 1.0 + b2
    b0 = 0.0 + 1.0 - 0.5 + b1
    assert torch.allclose(adv, T([[b0, b0, b1, b1, b2, 0.0]]))


def _ragged(seed: int, B: int = 5, L: int = 9):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, L, generator=g, dtype=torch.float64)
    values = torch.randn(B, L, generator=g, dtype=torch.float64)
    lengths = T([9, 1, 4, 7, 0])
    mask = (torch.arange(L)[None, :] < lengths[:, None]).double()
    return rewards, values, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_one_token_macros_reduce_to_token_level_gae_exactly(seed, weighting):
    rewards, values, mask = _ragged(seed)
    adv, ret = macro_gae(
        rewards, values, fixed_ngram_starts(mask, 1), mask, 0.95, 0.9, weighting, weighting
    )
    ref_adv, ref_ret = gae(rewards, values, mask, 0.95, 0.9)
    assert torch.equal(adv, ref_adv) and torch.equal(ret, ref_ret)


def _one_row_reference(r, v, starts, gamma, lam):
    """Plain-Python macro GAE for one unpadded row with equal weighting."""
    bounds = [i for i, s in enumerate(starts) if s] + [len(r)]
    R = [sum(r[a:b]) / (b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    V = [sum(v[a:b]) / (b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    A, nxt_a, nxt_v = [0.0] * len(R), 0.0, 0.0
    for k in reversed(range(len(R))):
        nxt_a = R[k] + gamma * nxt_v - V[k] + gamma * lam * nxt_a
        A[k], nxt_v = nxt_a, V[k]
    adv, ret = [], []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        adv += [A[k]] * (b - a)
        ret += [A[k] + V[k]] * (b - a)
    return adv, ret


@pytest.mark.parametrize("rule", ["fixed3", "ppl"])
def test_ragged_batch_matches_per_row_python_loop(rule):
    rewards, values, mask = _ragged(3)
    ref_lp = torch.randn(
        mask.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    starts = fixed_ngram_starts(mask, 3) if rule == "fixed3" else ppl_starts(ref_lp, mask)
    adv, ret = macro_gae(rewards, values, starts, mask, 0.9, 0.8)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        if n == 0:
            assert adv[b].abs().sum() == 0 and ret[b].abs().sum() == 0
            continue
        e_adv, e_ret = _one_row_reference(
            rewards[b, :n].tolist(), values[b, :n].tolist(), starts[b, :n].tolist(), 0.9, 0.8
        )
        assert starts[b, n - 1] == 1  # the last real token is its own macro
        assert torch.allclose(adv[b, :n], T(e_adv, dtype=torch.float64))
        assert torch.allclose(ret[b, :n], T(e_ret, dtype=torch.float64))
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0
