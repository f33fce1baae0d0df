"""Candidate-list and tree preference files, and the synthetic preference generators."""

from __future__ import annotations

import json
import string

import pytest

from executor.data.preferences import (
    CandidateList,
    load_candidate_lists,
    load_trees,
    synthetic_candidate_lists,
    synthetic_pairs,
    synthetic_trees,
)
from executor.data.sources import digit_reward, synthetic_prompts
from executor.losses.reward_model import (
    PreferenceTree,
    TreeNode,
    complete_responses,
    tree_pairs,
)
from plans import PlanError

ALPHABET = set(string.ascii_lowercase + string.digits)


def test_load_candidate_lists(tmp_path):
    p = tmp_path / "lists.jsonl"
    p.write_text(
        '{"prompt": "a:", "responses": ["x1", "22"], "rewards": [0.5, 1]}\n\n'
        '{"prompt": "b:", "responses": ["q", "r", "s"], "rewards": [0, -1.5, 2]}\n'
    )
    assert load_candidate_lists(p) == [
        CandidateList("a:", ("x1", "22"), (0.5, 1.0)),
        CandidateList("b:", ("q", "r", "s"), (0.0, -1.5, 2.0)),
    ]


GOOD = '{"prompt": "a:", "responses": ["x", "y"], "rewards": [0, 1]}'


@pytest.mark.parametrize(
    "bad,message",
    [
        ('{"prompt": "a:", "responses": ["x"], "rewards": [0]}', "at least two"),
        ('{"prompt": "a:", "responses": ["x", 3], "rewards": [0, 1]}', "must be a string"),
        ('{"prompt": "a:", "responses": ["x", "y"], "rewards": [0, "1"]}', "list of numbers"),
        ('{"prompt": "a:", "responses": ["x", "y"], "rewards": [0, true]}', "list of numbers"),
        ('{"prompt": "a:", "responses": ["x", "y"], "rewards": [0]}', "2 responses but 1"),
        ('{"responses": ["x", "y"], "rewards": [0, 1]}', "field 'prompt'"),
        ("{nope", "not valid JSON"),
    ],
)
def test_candidate_list_errors_name_file_and_line(tmp_path, bad, message):
    p = tmp_path / "bad_lists.jsonl"
    p.write_text(f"{GOOD}\n\n{bad}\n")  # the bad row is on line 3 (blank lines count)
    with pytest.raises(PlanError, match=f"line 3: .*{message}") as info:
        load_candidate_lists(p)
    assert "bad_lists.jsonl" in str(info.value)


def _dump(node: TreeNode) -> dict:
    if node.children:
        return {"text": node.text, "children": [_dump(c) for c in node.children]}
    return {"text": node.text, "score": node.score}


def test_load_trees_matches_documented_format(tmp_path):
    p = tmp_path / "trees.jsonl"
    row = {
        "prompt": "abc:",
        "tree": {
            "text": "ab",
            "children": [
                {"text": "1", "score": 0.33},
                {
                    "text": "c",
                    "children": [{"text": "9", "score": 0.25}, {"text": "d", "score": 0}],
                },
            ],
        },
    }
    p.write_text(json.dumps(row) + "\n")
    (tree,) = load_trees(p)
    assert complete_responses(tree) == [("ab1", 0.33), ("abc9", 0.25), ("abcd", 0.0)]


@pytest.mark.parametrize(
    "tree,message",
    [
        ({"text": "a"}, "exactly one of"),
        ({"text": "a", "score": 1, "children": [{"text": "b", "score": 1}]}, "exactly one of"),
        ({"text": "a", "children": []}, "non-empty list"),
        (
            {"text": "a", "children": [{"text": "b", "score": "high"}]},
            r"tree.children\[0\]: 'score'",
        ),
        ({"text": 5, "score": 1}, "string 'text'"),
        (None, "string 'text'"),
    ],
)
def test_tree_errors_name_file_and_line(tmp_path, tree, message):
    p = tmp_path / "bad_trees.jsonl"
    good = {"prompt": "a:", "tree": {"text": "x", "score": 1}}
    p.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "b:", "tree": tree}) + "\n")
    with pytest.raises(PlanError, match=f"line 2: .*{message}") as info:
        load_trees(p)
    assert "bad_trees.jsonl" in str(info.value)


def test_synthetic_pairs():
    pairs = synthetic_pairs(50, seed=1)
    assert pairs == synthetic_pairs(50, seed=1) and pairs != synthetic_pairs(50, seed=2)
    assert [p.prompt for p in pairs] == synthetic_prompts(50, 1)
    for p in pairs:
        assert digit_reward(p.prompt, p.chosen) > digit_reward(p.prompt, p.rejected)
        for r in (p.chosen, p.rejected):
            assert 4 <= len(r) <= 12 and set(r) <= ALPHABET
    swapped = synthetic_pairs(50, seed=1, noise=1.0)
    assert [(p.chosen, p.rejected) for p in swapped] == [(p.rejected, p.chosen) for p in pairs]
    noisy = synthetic_pairs(400, seed=3, noise=0.25)
    flipped = sum(
        digit_reward(p.prompt, p.chosen) < digit_reward(p.prompt, p.rejected) for p in noisy
    )
    assert 60 <= flipped <= 140  # about 100 of 400


def test_synthetic_candidate_lists():
    lists = synthetic_candidate_lists(20, seed=4, k=5)
    assert lists == synthetic_candidate_lists(20, seed=4, k=5)
    assert [c.prompt for c in lists] == synthetic_prompts(20, 4)
    for c in lists:
        assert len(c.responses) == len(c.rewards) == 5
        assert list(c.rewards) == [digit_reward(c.prompt, r) for r in c.responses]
    assert len({r for c in lists for r in c.rewards}) > 10  # rewards spread out


def test_synthetic_trees_round_trip_through_the_file_format(tmp_path):
    trees = synthetic_trees(6, seed=5)
    assert trees == synthetic_trees(6, seed=5)
    for tree in trees:
        leaves = complete_responses(tree)
        assert len(leaves) == 4
        texts = [t for t, _ in leaves]
        assert texts[0][:2] == texts[1][:2]  # siblings share the root segment at least
        for text, score in leaves:
            assert 6 <= len(text) <= 12 and set(text) <= ALPHABET
            assert score == digit_reward(tree.prompt, text)
    p = tmp_path / "t.jsonl"
    p.write_text(
        "".join(json.dumps({"prompt": t.prompt, "tree": _dump(t.root)}) + "\n" for t in trees)
    )
    loaded = load_trees(p)
    assert loaded == trees
    assert tree_pairs(loaded, seed=0) == tree_pairs(trees, seed=0)
    assert all(isinstance(t, PreferenceTree) for t in loaded)
