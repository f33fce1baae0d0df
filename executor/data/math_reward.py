"""`builtin:math`: 1 when a response's final answer equals the row's `answer`, else 0.

The final answer is what follows the last GSM8K-style `####`, or the content of the last
`\\boxed{...}`; a response with neither scores 0. The row's answer may be a bare value or a
whole GSM8K solution (its `####` part is taken). Values are compared with math-verify (a
project dependency: `1,234` = `1234`, `\\frac{3}{4}` = `0.75`, `x = 5` = `5`); where it is not
installed, with the plain normaliser below (numbers as exact fractions, else the text without
spaces, `$` and trailing periods).
"""

from __future__ import annotations

import threading
from fractions import Fraction

MAX_ANSWER_CHARS = 200
"""Longer candidates are not parsed (generated text can be anything; sympy can be slow)."""


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def extract_answer(text: str) -> str | None:
    """The final answer of a response or solution, None when it states none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        return tail[0].strip() if tail and tail[0].strip() else None
    return None


def _plain(s: str) -> str:
    s = s.strip().strip("$").strip().rstrip(".").replace(",", "").replace(" ", "")
    return s.removeprefix("\\text{").removesuffix("}") if s.startswith("\\text{") else s


def _plain_equal(pred: str, gold: str) -> bool:
    a, b = _plain(pred), _plain(gold)
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b


def answers_equal(pred: str, gold: str) -> bool:
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        return _plain_equal(pred, gold)
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g, p = parse(gold, parsing_timeout=timeout), parse(pred, parsing_timeout=timeout)
        if g and p:
            return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # a parse or sympy failure is a non-match, never a crashed run
        pass
    return _plain_equal(pred, gold)


def math_reward(prompt: str, response: str, answer: str) -> float:
    """1.0 when the response's final answer equals `answer`, else 0.0."""
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    gold = extract_answer(answer) or answer
    return 1.0 if answers_equal(pred, gold.strip()) else 0.0
