"""Bradley-Terry reward-model loss and preference pairs from response trees."""

from __future__ import annotations

import math

import pytest
import torch

from executor.data.sources import Pair
from executor.losses.reward_model import (
    PreferenceTree,
    TreeNode,
    bradley_terry_loss,
    complete_responses,
    tree_pairs,
)

T = torch.tensor


def nls(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_bradley_terry_hand_computed():
    chosen = T([2.0, 0.0], requires_grad=True)
    s = bradley_terry_loss(chosen, T([1.0, 1.0]), denominator=2.0)
    assert s.loss.item() == pytest.approx((nls(1.0) + nls(-1.0)) / 2, rel=1e-6)
    assert s.correct.item() == 1 and s.margin.item() == 0.0
    s.loss.backward()
    # d/dc -log sigmoid(c - r) = -(1 - sigmoid(c - r)) = -sigmoid(r - c), then / 2
    expected = [-1 / (1 + math.exp(1.0)) / 2, -1 / (1 + math.exp(-1.0)) / 2]
    assert torch.allclose(chosen.grad, T(expected))


def test_bradley_terry_with_margin():
    s = bradley_terry_loss(T([2.0, 0.0]), T([1.0, 1.0]), 2.0, margin=T([0.5, 1.0]))
    assert s.loss.item() == pytest.approx((nls(0.5) + nls(-2.0)) / 2, rel=1e-6)
    assert s.correct.item() == 1  # accuracy ignores the margin


def test_bradley_terry_micro_batches_add_up():
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(9, generator=g), torch.randn(9, generator=g)
    whole = bradley_terry_loss(c, r, 9)
    parts = [bradley_terry_loss(c[p], r[p], 9) for p in (slice(0, 5), slice(5, 9))]
    assert torch.allclose(sum(s.loss for s in parts), whole.loss)
    assert sum(s.correct for s in parts) == whole.correct


def _tree() -> PreferenceTree:
    #        "ab"
    #       /    \
    #   "1"(.5)   "c"
    #            /    \
    #       "9"(.25)  "d"(.25)
    return PreferenceTree(
        "p:",
        TreeNode("ab", [TreeNode("1", score=0.5), TreeNode("c", [TreeNode("9", score=0.25), TreeNode("d", score=0.25)])]),
    )  # fmt: skip


def test_complete_responses_are_root_to_leaf_paths():
    assert complete_responses(_tree()) == [("ab1", 0.5), ("abc9", 0.25), ("abcd", 0.25)]


def test_tree_pairs_all_pairs_with_different_scores():
    # abc9 and abcd tie and give no pair
    assert tree_pairs([_tree()], seed=0) == [Pair("p:", "ab1", "abc9"), Pair("p:", "ab1", "abcd")]


def test_tree_pairs_orders_chosen_by_score():
    tree = PreferenceTree("q:", TreeNode("", [TreeNode("x", score=0.0), TreeNode("7", score=1.0)]))
    assert tree_pairs([tree], seed=0) == [Pair("q:", "7", "x")]


def _wide(prompt: str) -> PreferenceTree:
    return PreferenceTree(
        prompt, TreeNode("r", [TreeNode(str(i), score=float(i)) for i in range(5)])
    )


def test_tree_pairs_capped_per_prompt_and_seeded():
    trees = [_wide("a:"), _wide("b:")]
    full = tree_pairs(trees, seed=0)
    assert len(full) == 2 * 10  # C(5, 2) per prompt
    capped = tree_pairs(trees, seed=7, max_pairs_per_prompt=3)
    assert capped == tree_pairs(trees, seed=7, max_pairs_per_prompt=3)
    assert [p.prompt for p in capped] == ["a:"] * 3 + ["b:"] * 3
    assert set(capped) <= set(full)
    draws = {tuple(tree_pairs(trees, seed=s, max_pairs_per_prompt=3)) for s in range(10)}
    assert len(draws) > 1


def test_tree_validation():
    with pytest.raises(ValueError, match="has no score"):
        complete_responses(PreferenceTree("p", TreeNode("a", [TreeNode("b")])))
    with pytest.raises(ValueError, match="inner node"):
        complete_responses(PreferenceTree("p", TreeNode("a", [TreeNode("b", score=1)], score=2)))
