"""GSM8K-style evaluation: answer extraction, exact match, few-shot chain-of-thought prompts.

Why: Chain-of-Thought Hub (arXiv 2305.17306) scores reasoning by final-answer accuracy under
few-shot CoT prompting. A GSM8K reference answer is reasoning followed by `#### <number>`; a
model's completion is scored by extracting its final number and comparing it, normalised, with
the reference's. A completion that runs on into a made-up next exemplar is cut at the first
"\\nQuestion:" before extraction, so the invented example's answer never counts.

Extraction rule: the first number after the last '####'; without '####' (or with no number
after it), the last number in the text. Commas and '$' are stripped and numbers normalised
('3.0' == '3', '1,000' == '1000', '-0' == '0', '.5' == '0.5').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from executor.data.sources import read_jsonl

_NUMBER = re.compile(r"-?\$?(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)")
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's "<<48/2=24>>" calculator annotations
STOP = "\nQuestion:"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # reference: reasoning then "#### <number>"


def normalise_number(text: str) -> str | None:
    """'$1,000.50' -> '1000.5', '3.0' -> '3', '-0' -> '0'; None if `text` is not a number."""
    cleaned = text.replace(",", "").replace("$", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [m for m in (normalise_number(x) for x in _NUMBER.findall(text)) if m is not None]


def extract_answer(text: str) -> str | None:
    """The normalised final answer of a reference or completion (module doc), or None."""
    head, sep, tail = text.rpartition("####")
    if sep:
        after = _numbers(tail)
        if after:
            return after[0]
    found = _numbers(text)
    return found[-1] if found else None


def exact_match(completion: str, reference: str) -> bool:
    """True when the completion's final answer (cut at the next 'Question:') equals the
    reference's; a reference without a number never matches."""
    gold = extract_answer(reference)
    pred = extract_answer(completion.split(STOP, 1)[0])
    return gold is not None and pred == gold


def accuracy(completions: list[str], references: list[str]) -> tuple[int, int]:
    """(correct count, total): counts add across shards; accuracy = correct / total."""
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    correct = sum(exact_match(c, r) for c, r in zip(completions, references, strict=True))
    return correct, len(references)


def exemplar(example: QA) -> str:
    """'Question: <q>\\nAnswer: <reasoning> #### <number>': the reasoning on one line, calculator
    annotations removed, so every block has the same two-line shape."""
    reasoning = _CALCULATOR.sub("", example.answer.rpartition("####")[0] or example.answer)
    reasoning = " ".join(reasoning.split())
    number = extract_answer(example.answer)
    if number is None:
        raise ValueError(f"exemplar answer has no number: {example.answer!r}")
    lead = f"{reasoning} " if reasoning else ""
    return f"Question: {' '.join(example.question.split())}\nAnswer: {lead}#### {number}"


def few_shot_prompt(examples: list[QA], question: str, k: int) -> str:
    """The first k exemplars as blocks separated by blank lines, then the test question with an
    open 'Answer:' for the model to complete. Choose/shuffle the exemplars before calling."""
    if k > len(examples):
        raise ValueError(f"asked for {k} exemplars but only {len(examples)} are given")
    blocks = [exemplar(e) for e in examples[:k]]
    blocks.append(f"Question: {' '.join(question.split())}\nAnswer:")
    return "\n\n".join(blocks)


def load_qa(path: str | Path) -> list[QA]:
    """JSONL with one {"question", "answer"} per line; a bad line is a PlanError naming the file
    and line number (executor.data.sources's reader)."""
    return [QA(r["question"], r["answer"]) for r in read_jsonl(path, ("question", "answer"))]
