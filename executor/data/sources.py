"""Prompt and preference data: JSONL files, a built-in synthetic task, and rule rewards.

A bad line of a data file is an error naming the file and line number; nothing is skipped
silently. The synthetic task needs no files: prompts are drawn from a seeded generator and the
reward is a rule, so a tiny model can visibly learn in a few minutes on a CPU.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plans import PlanError

RewardFn = Callable[[str, str], float]  # (prompt, response) -> score


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def jsonl_records(path: str | Path) -> list[tuple[str, Any]]:
    """(`line N`, parsed value) of every non-blank line; a file that cannot be read or a line
    that is not JSON is one PlanError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read the dataset: {e}", source=str(path)) from None
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {no}", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise PlanError(f"line {no}: not valid JSON ({msg})", source=str(path)) from None
    return out


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    for where, row in jsonl_records(path):
        if not isinstance(row, dict):
            raise PlanError(
                f"{where}: expected an object with {', '.join(required)}", source=str(path)
            )
        for key in required:
            if not isinstance(row.get(key), str):
                raise PlanError(f"{where}: field {key!r} missing or not a string", source=str(path))
        rows.append(row)
    if not rows:
        raise PlanError("the dataset has no rows", source=str(path))
    return rows


def load_prompts(path: str | Path) -> list[str]:
    """JSONL with one {"prompt": ...} per line (other fields are ignored)."""
    return [r["prompt"] for r in read_jsonl(path, ("prompt",))]


def load_pairs(path: str | Path) -> list[Pair]:
    """JSONL with one {"prompt", "chosen", "rejected"} per line."""
    return [
        Pair(r["prompt"], r["chosen"], r["rejected"])
        for r in read_jsonl(path, ("prompt", "chosen", "rejected"))
    ]


def epoch_order(n_rows: int, seed: int, first: int, count: int) -> list[int]:
    """Which rows of a file of `n_rows` are the draws `first .. first + count - 1` of a run:
    each pass over the file (an epoch) takes every row once, in a permutation drawn from
    (seed, epoch). A batch that ends an epoch continues into the next one's permutation.

    A pure function of its arguments, so the same on every rank and in every process: the
    rows of iteration `it` are the draws from `it * batch_size` on, and the iteration count in
    a run checkpoint is therefore the whole data position of a resumed run."""
    out: list[int] = []
    for epoch in range(first // n_rows, (first + count - 1) // n_rows + 1):
        perm = _permutation(n_rows, seed, epoch)
        lo, hi = max(first - epoch * n_rows, 0), min(first + count - epoch * n_rows, n_rows)
        out += perm[lo:hi].tolist()
    return out


@functools.lru_cache(maxsize=4)  # consecutive iterations draw from the same epoch
def _permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    perm.flags.writeable = False
    return perm


# ---- the built-in synthetic task ----------------------------------------------------------------
DIGITS = set(string.digits)


def synthetic_prompts(n: int, seed: int, length: int = 8) -> list[str]:
    """`n` prompts of random lowercase letters, the same for the same seed."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(length)) + ":" for _ in range(n)
    ]


def digit_reward(prompt: str, response: str) -> float:
    """The synthetic task's rule: the share of response characters that are digits (0 for an
    empty response). A random byte-level model scores about 10/259; the maximum is 1."""
    if not response:
        return 0.0
    return sum(c in DIGITS for c in response) / len(response)


def reward_function(ref: str) -> RewardFn:
    """`module:function` -> the function (a rule reward for tasks with checkable answers):
    (prompt, response) -> float, or (prompt, response, answer) -> float to be handed each
    row's `answer` (see wants_answer); `builtin:math` is one of the latter."""
    if ref == "builtin:digits":
        return digit_reward
    if ref == "builtin:math":
        from executor.data.math_reward import math_reward

        return math_reward
    module, _, name = ref.partition(":")
    if not module or not name:
        raise PlanError(f"{ref!r} is not of the form module:function", field="reward_function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise PlanError(
            f"cannot load reward function {ref!r}: {e}", field="reward_function"
        ) from None
    if not callable(fn):
        raise PlanError(f"{ref!r} is not callable", field="reward_function")
    return fn


def wants_answer(fn: RewardFn) -> bool:
    """Whether a rule reward takes the dataset row's answer: a third parameter (or one named
    `answer`)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: (prompt, response)
        return False
    positional = [
        p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return "answer" in params or len(positional) >= 3
