"""Tree sampling: the token-count rule, the KV-cache split in generation (leaves share their
prefixes exactly and their log-probs equal a full forward of each leaf, with left-padded
prompts), and the leaf-pair Bradley-Terry loss against a hand loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from executor.compute.generate import GenerationConfig, generate
from executor.data.tokenizer import ByteTokenizer, left_pad
from executor.model import Transformer
from executor.model.masks import attention_bool_mask, positions_from_mask
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.programs.rm_tree import bt_tree_loss, leaf_pairs
from plans import PlanError
from plans.model import preset
from plans.tree import TreeSpec

CTX = ParallelContext.single()
TOK = ByteTokenizer()


def test_tree_token_rule_by_hand():
    t = TreeSpec(branch=2, depths=[4, 10])
    assert t.leaves == 4 and t.pairs() == 6
    assert t.tokens(16) == 4 * 1 + 6 * 2 + 6 * 4  # prefix once, then 2 and 4 branches
    assert TreeSpec(branch=2, depths=[0]).tokens(16) == 2 * 16  # independent samples
    assert [t.rows_at(x) for x in (0, 3, 4, 9, 10, 15)] == [1, 1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="depths"):
        TreeSpec(branch=2, depths=[5, 5])
    with pytest.raises(PlanError, match="tree.depths"):
        TreeSpec(branch=2, depths=[4, 16]).check(16)


@pytest.mark.parametrize("depths", [(0,), (3,), (2, 5)])
def test_tree_leaves_share_prefixes_and_match_a_full_forward(depths):
    model = random_init_(Transformer(preset("tiny")), seed=3)
    ids, mask = left_pad([TOK.encode(t) for t in ["hello", "a b", "xyz!?"]], TOK.pad_token_id)
    branch, g = 2, 8
    cfg = GenerationConfig(
        g, greedy=False, pad_token_id=TOK.pad_token_id, seed=11, branch=branch, split_at=depths
    )
    out = generate(model, CTX, ids, mask, cfg)
    leaves = branch ** len(depths)
    assert out.tokens.shape == (3 * leaves, g)
    tok = out.tokens.view(3, leaves, g)
    for level, d in enumerate(depths):  # leaves in one subtree share the tokens before d
        group = leaves // branch**level
        for p, s in itertools.product(range(3), range(0, leaves, group)):
            sub = tok[p, s : s + group, :d]
            assert (sub == sub[0]).all()
    assert not (tok[:, 0] == tok[:, -1]).all()  # the leaves do differ after the splits
    # each leaf's sampling log-probs are those of a plain forward over prompt + leaf
    seq = torch.cat([ids.repeat_interleave(leaves, 0), out.tokens], 1)
    am = torch.cat([mask.repeat_interleave(leaves, 0), torch.ones_like(out.tokens)], 1)
    with torch.no_grad():
        lp = torch.log_softmax(
            model(seq, positions_from_mask(am), attention_bool_mask(am.bool(), seq.shape[1])), -1
        )
    p = ids.shape[1]
    ref = lp[:, p - 1 : -1].gather(-1, out.tokens[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs, ref, atol=1e-5)


def test_no_split_is_plain_generation():
    model = random_init_(Transformer(preset("tiny")), seed=3)
    ids, mask = left_pad([TOK.encode(t) for t in ["hi", "abc"]], TOK.pad_token_id)
    a = generate(model, CTX, ids, mask, GenerationConfig(6, greedy=False, seed=2, pad_token_id=0))
    b = generate(
        model, CTX, ids, mask, GenerationConfig(6, greedy=False, seed=2, pad_token_id=0, branch=3)
    )
    assert torch.equal(a.tokens, b.tokens)


def test_leaf_pair_loss_against_a_loop():
    score = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.0, 0.0, -0.5, 0.2])
    label = torch.tensor([0.1, 0.1, 0.5, 0.0, 0.2, 0.3, 0.3, 0.0])
    ref = 0.0
    pairs = 0
    for g in range(2):
        for i, j in itertools.permutations(range(4), 2):
            a, b = 4 * g + i, 4 * g + j
            if label[a] > label[b]:
                ref -= math.log(torch.sigmoid(score[a] - score[b]).item())
                pairs += 1
    assert int(leaf_pairs(label, 4).sum()) == pairs == 10  # the ties (0.1, 0.1 / 0.3, 0.3) drop
    assert bt_tree_loss(score, label, 4).item() == pytest.approx(ref, rel=1e-6)


def _rm_tree(depths, batch, branch=2):
    import tomllib

    from plans import example_path
    from plans.io import experiment_from_dict

    doc = tomllib.loads(example_path("rm-tree-tiny", "experiment").read_text())
    doc.update(batch_size=batch, tree={"branch": branch, "depths": depths})
    return experiment_from_dict(doc)


def test_estimator_prices_a_tree_by_its_rows_per_step():
    """Independent leaves (depths [0]) cost what plain generation of as many sequences costs
    (the prefill of the prompts aside); sharing prefixes only removes decode work."""
    from estimator import CostModel
    from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy

    cluster = ClusterSpec(nodes=1, gpus_per_node=2, device="cpu")
    one = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())
    flat, shared = _rm_tree([0], 8, branch=4), _rm_tree([4, 10], 8)
    assert flat.sequences(flat.mfcs()[0]) == shared.sequences(shared.mfcs()[0]) == 32
    c_flat = CostModel(cluster, flat).call_cost("actor_tree", one).breakdown
    c_shared = CostModel(cluster, shared).call_cost("actor_tree", one).breakdown
    assert c_shared["compute"] < c_flat["compute"]
    assert c_shared["prefill"] == c_flat["prefill"]  # the 8 prompts, once
    # memory: the cache at the last split holds the parents and their copies for the leaves
    kv_flat = CostModel(cluster, flat).call_cost("actor_tree", one).memory.kv_cache
    kv_shared = CostModel(cluster, shared).call_cost("actor_tree", one).memory.kv_cache
    assert kv_shared / kv_flat == pytest.approx((4 + 2) / (4 + 1))
