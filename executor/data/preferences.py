"""Preference data beyond plain pairs: candidate lists, tree sets, and synthetic generators.

Files are JSONL, one object per line; a bad line is a PlanError naming the file and line
(blank lines are skipped, as in executor.data.sources):

- candidate lists (listwise ADPO):
    {"prompt": "abc:", "responses": ["x1", "22"], "rewards": [0.5, 1.0]}
  at least two responses, one numeric reward per response.
- tree preference sets (RM training on prefix trees, arXiv 2402.10184):
    {"prompt": "abc:", "tree": {"text": "ab", "children": [
        {"text": "1", "score": 0.33},
        {"text": "c", "children": [{"text": "9", "score": 0.25}, {"text": "d", "score": 0.0}]}]}}
  a node is {"text": str} plus EITHER "children" (a non-empty list of nodes) OR "score" (a
  number; the node is a leaf that ends a complete response). A complete response is the texts
  on the path from the root to a leaf, concatenated ("ab1", "abc9", "abcd" above).

Synthetic data for executor.data.sources's built-in task (reward = share of digits in the response):
responses are 4-12 characters mixing lowercase letters and digits, each drawn with its own
digit share so rewards spread over [0, 1] and a byte-level tiny model can learn the preference.
All generators are deterministic for a given seed.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from executor.data.sources import Pair, digit_reward, read_jsonl, synthetic_prompts
from executor.losses.reward_model import PreferenceTree, TreeNode
from plans import PlanError


@dataclass(frozen=True)
class CandidateList:
    prompt: str
    responses: tuple[str, ...]
    rewards: tuple[float, ...]


def _rows(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """executor.data.sources's reader (JSON and string-field checks), each row with its line number."""
    rows = read_jsonl(path, required)
    text = Path(path).read_text(encoding="utf-8").splitlines()
    numbers = [no for no, line in enumerate(text, start=1) if line.strip()]
    return list(zip(numbers, rows, strict=True))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_candidate_lists(path: str | Path) -> list[CandidateList]:
    """JSONL of {"prompt", "responses", "rewards"} (module doc)."""
    out = []
    for no, row in _rows(path, ("prompt",)):
        responses, rewards = row.get("responses"), row.get("rewards")
        if not isinstance(responses, list) or len(responses) < 2:
            raise PlanError(
                f"line {no}: 'responses' must be a list of at least two strings", source=str(path)
            )
        if not all(isinstance(r, str) for r in responses):
            raise PlanError(
                f"line {no}: every item of 'responses' must be a string", source=str(path)
            )
        if not isinstance(rewards, list) or not all(_is_number(r) for r in rewards):
            raise PlanError(f"line {no}: 'rewards' must be a list of numbers", source=str(path))
        if len(rewards) != len(responses):
            raise PlanError(
                f"line {no}: {len(responses)} responses but {len(rewards)} rewards",
                source=str(path),
            )
        out.append(CandidateList(row["prompt"], tuple(responses), tuple(map(float, rewards))))
    return out


def _node(obj: object, where: str) -> TreeNode:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise ValueError(f"{where}: a node must be an object with a string 'text'")
    has_children, has_score = "children" in obj, "score" in obj
    if has_children == has_score:
        raise ValueError(f"{where}: a node needs exactly one of 'children' and 'score'")
    if has_score:
        if not _is_number(obj["score"]):
            raise ValueError(f"{where}: 'score' must be a number")
        return TreeNode(obj["text"], score=float(obj["score"]))
    kids = obj["children"]
    if not isinstance(kids, list) or not kids:
        raise ValueError(f"{where}: 'children' must be a non-empty list")
    return TreeNode(obj["text"], [_node(c, f"{where}.children[{i}]") for i, c in enumerate(kids)])


def load_trees(path: str | Path) -> list[PreferenceTree]:
    """JSONL of {"prompt", "tree"} prefix trees (module doc)."""
    out = []
    for no, row in _rows(path, ("prompt",)):
        try:
            out.append(PreferenceTree(row["prompt"], _node(row.get("tree"), "tree")))
        except ValueError as e:
            raise PlanError(f"line {no}: {e}", source=str(path)) from None
    return out


# ---- synthetic data for the built-in digit task --------------------------------------------------
def _text(rng: random.Random, low: int, high: int) -> str:
    share = rng.random()  # this text's own digit probability
    return "".join(
        rng.choice(string.digits) if rng.random() < share else rng.choice(string.ascii_lowercase)
        for _ in range(rng.randint(low, high))
    )


def synthetic_response(rng: random.Random, low: int = 4, high: int = 12) -> str:
    """A response of `low`..`high` letters and digits with a random digit share."""
    return _text(rng, low, high)


def synthetic_pairs(n: int, seed: int, noise: float = 0.0) -> list[Pair]:
    """n pairs on synthetic_prompts(n, seed): chosen has the strictly higher digit share; with
    probability `noise` a pair's labels are swapped (label noise for robustness studies)."""
    rng = random.Random(f"prefdata-pairs-{seed}")
    out = []
    for prompt in synthetic_prompts(n, seed):
        a = synthetic_response(rng)
        b = synthetic_response(rng)
        while digit_reward(prompt, a) == digit_reward(prompt, b):
            b = synthetic_response(rng)
        if digit_reward(prompt, a) < digit_reward(prompt, b):
            a, b = b, a
        if rng.random() < noise:
            a, b = b, a
        out.append(Pair(prompt, a, b))
    return out


def synthetic_candidate_lists(n: int, seed: int, k: int = 4) -> list[CandidateList]:
    """n lists of k responses each, rewarded by digit_reward."""
    rng = random.Random(f"prefdata-lists-{seed}")
    out = []
    for prompt in synthetic_prompts(n, seed):
        responses = tuple(synthetic_response(rng) for _ in range(k))
        out.append(
            CandidateList(prompt, responses, tuple(digit_reward(prompt, r) for r in responses))
        )
    return out


def synthetic_trees(
    n: int, seed: int, depth: int = 2, branching: int = 2, segment: tuple[int, int] = (2, 4)
) -> list[PreferenceTree]:
    """n prefix trees: a root segment, then `depth` levels of `branching` continuations, each
    segment `segment[0]`..`segment[1]` characters; every leaf scored by digit_reward of its
    complete response (defaults: 4 responses of 6-12 characters per prompt)."""
    rng = random.Random(f"prefdata-trees-{seed}")

    def grow(prompt: str, prefix: str, level: int) -> TreeNode:
        text = _text(rng, *segment)
        if level == depth:
            return TreeNode(text, score=digit_reward(prompt, prefix + text))
        return TreeNode(text, [grow(prompt, prefix + text, level + 1) for _ in range(branching)])

    return [PreferenceTree(p, grow(p, "", 0)) for p in synthetic_prompts(n, seed)]
