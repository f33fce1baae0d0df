"""GSM8K-style answer extraction, exact match, few-shot prompts and the QA loader."""

from __future__ import annotations

import pytest

from executor.losses.evaluation import (
    QA,
    accuracy,
    exact_match,
    extract_answer,
    few_shot_prompt,
    load_qa,
    normalise_number,
)
from plans import PlanError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("It costs $1,000 in total #### $1,000", "1000"),
        ("#### 72 (not 80)", "72"),
        ("first 5 then 6 #### 3.0", "3"),
        ("no marker: 12 then 4.50.", "4.5"),
        ("so 9, then 12 #### (blank)", "12"),  # no number after '####': the last number
        ("a #### 1 b #### 2", "2"),  # the last '####' wins
        ("loss of -3 dollars", "-3"),
        ("-0 is zero", "0"),
        ("about .5 of it", "0.5"),
        ("1,234,567 people", "1234567"),
        ("no numbers at all", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalise_number():
    assert normalise_number("3.0") == normalise_number("3") == "3"
    assert normalise_number("$2,500.50") == "2500.5"
    assert normalise_number("abc") is None and normalise_number("nan") is None


def test_exact_match_and_accuracy():
    ref = "Half of 6 is 3.\n#### 3"
    assert exact_match("6 / 2 = 3.0 #### 3.0", ref)
    assert exact_match("So the answer is 3.", ref)
    assert not exact_match("So the answer is 4.", ref)
    # a completion running into an invented next exemplar is cut before it
    assert exact_match("It is 3.\nQuestion: what is 2+2?\nAnswer: 4", ref)
    assert not exact_match("anything 3", "no number here")
    assert accuracy(["#### 3", "#### 5", "3"], [ref, ref, ref]) == (2, 3)
    with pytest.raises(ValueError):
        accuracy(["1"], [])


def test_few_shot_prompt_layout():
    shots = [
        QA("Tom has 2 apples and buys 3. How many?", "He has 2 + 3 = <<2+3=5>>5 apples.\n#### 5"),
        QA("What is  10 x 10?", "10 x 10 = 100\n#### 100"),
        QA("unused", "#### 1"),
    ]
    prompt = few_shot_prompt(shots, "How many legs do 2 cats have?", k=2)
    assert prompt == (
        "Question: Tom has 2 apples and buys 3. How many?\n"
        "Answer: He has 2 + 3 = 5 apples. #### 5\n"
        "\n"
        "Question: What is 10 x 10?\n"
        "Answer: 10 x 10 = 100 #### 100\n"
        "\n"
        "Question: How many legs do 2 cats have?\n"
        "Answer:"
    )
    assert few_shot_prompt(shots, "q?", k=0) == "Question: q?\nAnswer:"
    with pytest.raises(ValueError):
        few_shot_prompt(shots, "q?", k=4)


def test_load_qa(tmp_path):
    p = tmp_path / "gsm.jsonl"
    p.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "q", "answer": "a 3"}\n')
    assert load_qa(p) == [QA("1+1?", "#### 2"), QA("q", "a 3")]


@pytest.mark.parametrize(
    "content,where",
    [
        ('{"question": "a", "answer": "1"}\n{oops\n', "line 2: not valid JSON"),
        ('{"question": "a"}\n', "line 1: field 'answer'"),
    ],
)
def test_load_qa_errors_name_file_and_line(tmp_path, content, where):
    p = tmp_path / "bad_gsm.jsonl"
    p.write_text(content)
    with pytest.raises(PlanError, match=where) as info:
        load_qa(p)
    assert "bad_gsm.jsonl" in str(info.value)
