"""Prompt datasets: JSONL or Parquet rows with `prompt` (text) or `messages` (a chat, rendered
with the tokenizer's chat template and its generation prompt), and an optional `answer` (what
a rule reward such as builtin:math checks a response against).

A bad row is one line naming the file and the row (JSONL: its line number; Parquet: its row
number, from 1), raised when the dataset is read -- by rlhf-run before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.data.sources import jsonl_records
from plans import PlanError

PARQUET_SUFFIXES = (".parquet", ".pq")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRow:
    prompt: str | None
    """Plain text, encoded with the tokenizer's bos."""
    messages: tuple[tuple[str, str], ...] | None
    """(role, content) turns, rendered with the chat template (which writes its own bos)."""
    answer: str | None
    where: str
    """`line 3` or `row 3`: for errors about this row."""


def _parquet_records(path: Path) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PlanError(
            "reading Parquet needs pyarrow (pip install pyarrow)", source=str(path)
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        msg = " ".join(str(e).split())[:200]
        raise PlanError(f"cannot read the Parquet file: {msg}", source=str(path)) from None
    return [(f"row {i}", r) for i, r in enumerate(rows, start=1)]


def _messages(value: Any, fail) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise fail("'messages' must be a non-empty list of {role, content} objects")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise fail(f"messages[{i}] needs a role of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise fail(f"messages[{i}].content must be a string")
        turns.append((m["role"], m["content"]))
    return tuple(turns)


def _row(rec: Any, where: str, path: Path) -> PromptRow:
    def fail(msg: str) -> PlanError:
        return PlanError(f"{where}: {msg}", source=str(path))

    if not isinstance(rec, dict):
        raise fail("expected an object with 'prompt' or 'messages'")
    prompt, messages = rec.get("prompt"), rec.get("messages")
    if (prompt is None) == (messages is None):
        raise fail("needs exactly one of 'prompt' (text) or 'messages' (a chat)")
    if prompt is not None and not isinstance(prompt, str):
        raise fail("'prompt' must be a string")
    answer = rec.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float | None):
        raise fail("'answer' must be a string or a number")
    return PromptRow(
        prompt,
        _messages(messages, fail) if messages is not None else None,
        None if answer is None else str(answer),
        where,
    )


def read_prompt_rows(path: str | Path) -> list[PromptRow]:
    """Every row of a JSONL or Parquet prompt file; PlanError naming the file and the row."""
    path = Path(path)
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    records = _parquet_records(path) if parquet else jsonl_records(path)
    rows = [_row(rec, where, path) for where, rec in records]
    if not rows:
        raise PlanError("the dataset has no rows", source=str(path))
    return rows


def chat_of(row: PromptRow) -> list[dict[str, str]]:
    """A chat row's turns as chat templates take them."""
    return [{"role": r, "content": c} for r, c in row.messages or ()]


def encode_row(row: PromptRow, tok) -> list[int]:
    """The prompt's token ids: text with the tokenizer's bos, a chat through its template."""
    if row.messages is None:
        assert row.prompt is not None
        return tok.encode(row.prompt)
    return tok.encode(tok.chat(chat_of(row)), add_bos=False)


def check_rows(rows: list[PromptRow], path: str, tok, needs_answer: str | None) -> None:
    """What the run's tokenizer and reward need of the rows, before any worker starts:
    a chat template for `messages` rows; an answer in every row for a reward that checks one
    (`needs_answer` names it)."""
    for row in rows:
        if row.messages is not None and not getattr(tok, "has_chat_template", False):
            raise PlanError(
                f"{row.where}: 'messages' rows need a tokenizer with a chat template, and the "
                "run's tokenizer has none",
                source=path,
            )
        if needs_answer and row.answer is None:
            raise PlanError(f"{row.where}: no 'answer' for {needs_answer} to check", source=path)
