"""Reward-model training: the pairwise Bradley-Terry loss and tree-structured preference sets.

Why trees (arXiv 2402.10184, "Reward Generalization in RLHF: A Topological Perspective"): the
responses of one prompt are grown as a prefix tree (a segment, then B continuations, repeated),
so complete responses share prefixes; preference pairs drawn among the leaves reduce reward
uncertainty compared with independently sampled ("chain") pairs at the same pair budget. The RM
loss does not change; only which pairs are collected. So a tree set is flattened here into
ordinary (prompt, chosen, rejected) pairs of COMPLETE (root-to-leaf) responses.

The loss is a sum over pairs divided by a `denominator` counting PAIRS in the whole mini-batch.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from executor.data.sources import Pair


@dataclass
class RMStats:
    loss: torch.Tensor  # sum over pairs / denominator
    correct: torch.Tensor  # count of pairs with r_chosen > r_rejected
    margin: torch.Tensor  # sum of (r_chosen - r_rejected) / denominator


def bradley_terry_loss(
    chosen: torch.Tensor,  # [N] reward-model scores of the chosen responses, with grad
    rejected: torch.Tensor,  # [N]
    denominator: float,
    margin: torch.Tensor | float = 0.0,  # [N] or scalar: required score gap (Llama-2 style)
) -> RMStats:
    """-log sigmoid(r_c - r_r - m) per pair, summed / denominator. m = 0 is plain BT; a positive
    margin asks for a larger gap on pairs labelled as clearly better."""
    diff = chosen - rejected
    per_pair = -F.logsigmoid(diff - margin)
    with torch.no_grad():
        correct, gap = (diff > 0).sum(), diff.sum() / denominator
    return RMStats(per_pair.sum() / denominator, correct, gap)


@dataclass
class TreeNode:
    """A response segment. A leaf (no children) ends a complete response and carries its score;
    an inner node's score is None. The root's text is the first segment (it may be empty)."""

    text: str
    children: list[TreeNode] = field(default_factory=list)
    score: float | None = None


@dataclass
class PreferenceTree:
    prompt: str
    root: TreeNode


def complete_responses(tree: PreferenceTree) -> list[tuple[str, float]]:
    """All root-to-leaf responses (segments concatenated) with their leaf scores, depth first,
    children in order. Raises ValueError on a leaf without a score or an inner node with one."""
    out: list[tuple[str, float]] = []
    stack = [(tree.root, "")]
    while stack:
        node, prefix = stack.pop()
        text = prefix + node.text
        if not node.children:
            if node.score is None:
                raise ValueError(f"leaf {text!r} of prompt {tree.prompt!r} has no score")
            out.append((text, float(node.score)))
        else:
            if node.score is not None:
                raise ValueError(f"inner node {text!r} of prompt {tree.prompt!r} has a score")
            stack.extend((c, text) for c in reversed(node.children))
    return out


def tree_pairs(
    trees: list[PreferenceTree], seed: int, max_pairs_per_prompt: int | None = None
) -> list[Pair]:
    """Preference pairs among the complete responses of each tree: every pair of leaves with
    different scores (the higher score is chosen), or a seeded random subset of at most
    `max_pairs_per_prompt` of them per prompt. Deterministic for a given seed and input; pairs
    keep the leaves' enumeration order. Equal-score pairs carry no preference and are dropped."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for tree in trees:
        leaves = complete_responses(tree)
        candidates = [
            (a, b) if a[1] > b[1] else (b, a)
            for a, b in itertools.combinations(leaves, 2)
            if a[1] != b[1]
        ]
        if max_pairs_per_prompt is not None and len(candidates) > max_pairs_per_prompt:
            keep = sorted(rng.sample(range(len(candidates)), max_pairs_per_prompt))
            candidates = [candidates[i] for i in keep]
        pairs.extend(Pair(tree.prompt, w[0], l_[0]) for w, l_ in candidates)
    return pairs
