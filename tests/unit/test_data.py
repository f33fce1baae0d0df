"""Datasets: JSONL errors name file and line; the synthetic task and rule rewards."""

from __future__ import annotations

import pytest

from executor.data.sources import (
    digit_reward,
    load_pairs,
    load_prompts,
    reward_function,
    synthetic_prompts,
)
from plans import PlanError


def test_prompts_and_pairs(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "x": 1}\n\n{"prompt": "b"}\n')
    assert load_prompts(p) == ["a", "b"]
    q = tmp_path / "pairs.jsonl"
    q.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    assert load_pairs(q)[0].chosen == "c"


@pytest.mark.parametrize(
    "content,where",
    [
        ('{"prompt": "a"}\n{oops}\n', "line 2: not valid JSON"),
        ('{"prompt": "a"}\n[1]\n', "line 2: expected an object"),
        ('{"prompt": 3}\n', "line 1: field 'prompt'"),
        ("", "no rows"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, where):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(PlanError, match=where) as info:
        load_prompts(p)
    assert "bad.jsonl" in str(info.value)


def test_synthetic_task():
    assert synthetic_prompts(4, seed=3) == synthetic_prompts(4, seed=3)
    assert synthetic_prompts(4, seed=3) != synthetic_prompts(4, seed=4)
    assert digit_reward("abc:", "12ab") == 0.5 and digit_reward("x:", "") == 0.0
    assert digit_reward("x:", "0123456789") == 1.0


def test_reward_function_resolution():
    assert reward_function("builtin:digits") is digit_reward
    assert reward_function("executor.data.sources:digit_reward") is digit_reward
    for bad in ("nocolon", "no.such.module:f", "executor.data.sources:missing"):
        with pytest.raises(PlanError):
            reward_function(bad)
