"""Parsing-based macro-action units (MA-RLHF, arXiv 2410.02743, "parsing-based termination"):
where each linguistic or syntactic unit of a response begins, and which model token holds that
first character.

Text units. The paper cuts at the constituents of a parse tree; a constituency parser needs a
trained model, which an offline run cannot fetch, so this uses a documented rule set instead:
- `sentence`: sentence boundaries from pysbd (rule-based Pragmatic Segmenter port: no model
  files, handles abbreviations, decimals and ellipses, and returns character spans);
- `clause`: those sentences, each further cut after a clause mark (`,` `;` `:`) that is
  followed by whitespace; the clause begins at the first character after that whitespace.

Code units, from Python's own tokenizer (`tokenize`, the grammar the interpreter uses):
- `statement`: a unit begins at the first token of every logical line (a statement, or a
  compound statement's header); blank and comment-only lines join the following statement;
- `line`: a unit begins at every physical line.
Generated code is often unfinished (an open bracket or string at the end). `tokenize` then
stops with an error; the text after the last complete statement is cut into physical lines,
the only units it still has.

Mapping onto tokens: `char_starts(tok, ids)` gives, for each token, the offset in the decoded
response text where its characters begin. A unit starting at character c is credited to the
token whose span [start_j, start_{j+1}) contains c, so a boundary inside a multi-character
token moves to that token's start and none is ever lost or duplicated.
"""

from __future__ import annotations

import io
import re
import tokenize
from functools import lru_cache

UNITS = ("sentence", "clause", "statement", "line")
_CLAUSE_MARK = re.compile(r"[,;:]\s+")


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def sentence_starts(text: str) -> list[int]:
    """Character offsets where pysbd's sentences begin (0 always, for non-empty text)."""
    if not text:
        return []
    return sorted({0, *(s.start for s in _segmenter().segment(text) if 0 <= s.start < len(text))})


def clause_starts(text: str) -> list[int]:
    """Sentence starts plus the first character after each clause mark and its whitespace."""
    starts = set(sentence_starts(text))
    starts.update(m.end() for m in _CLAUSE_MARK.finditer(text) if m.end() < len(text))
    return sorted(starts)


def line_starts(text: str, offset: int = 0) -> list[int]:
    """Offsets where each physical line of `text[offset:]` begins."""
    if offset >= len(text):
        return []
    return [offset] + [
        i + 1 for i, ch in enumerate(text) if ch == "\n" and offset <= i < len(text) - 1
    ]


def statement_starts(text: str) -> list[int]:
    """First character of each logical line by Python's tokenizer (see module doc)."""
    if not text:
        return []
    line_at = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]  # row -> offset
    starts: list[int] = [0]
    new_stmt, done = True, 0  # done: offset after the last complete statement
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = t.type
            if kind in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            if kind == tokenize.ENDMARKER:
                break
            at = line_at[t.start[0] - 1] + t.start[1]
            if kind == tokenize.NEWLINE:
                new_stmt, done = True, min(at + len(t.string), len(text))
                continue
            if new_stmt:
                starts.append(at)
                new_stmt = False
    except (tokenize.TokenError, SyntaxError):  # unfinished code: the rest by lines
        starts.extend(line_starts(text, done))
    return sorted({s for s in starts if 0 <= s < len(text)})


def unit_starts(text: str, unit: str) -> list[int]:
    if unit == "sentence":
        return sentence_starts(text)
    if unit == "clause":
        return clause_starts(text)
    if unit == "statement":
        return statement_starts(text)
    if unit == "line":
        return line_starts(text)
    raise ValueError(f"unknown parse unit {unit!r}; expected one of {UNITS}")


def char_starts(tok, ids: list[int]) -> tuple[str, list[int]]:
    """(the decoded text, the offset where each token's characters begin in it).

    The byte tokenizer is exact by construction: bytes are decoded with `surrogateescape`, so
    every byte is either part of one character or a character of its own, and a token (one
    byte) starts at its character when it is that character's first byte, else at the next.
    Other tokenizers: token j starts where the decoded prefix ids[:j] stops agreeing with the
    whole text (the common-prefix length), made non-decreasing."""
    if hasattr(tok, "tok"):  # a transformers tokenizer: prefix decodes
        text = tok.decode(ids)
        out, prev = [], 0
        for j in range(len(ids)):
            prefix = tok.decode(ids[:j])
            n = 0
            while n < min(len(prefix), len(text)) and prefix[n] == text[n]:
                n += 1
            prev = max(prev, n)
            out.append(prev)
        return text, out
    raw = bytes(i for i in ids if 0 <= i < 256)
    text = raw.decode("utf-8", errors="surrogateescape")
    byte_of_char = []
    pos = 0
    for ch in text:
        byte_of_char.append(pos)
        pos += 1 if 0xDC80 <= ord(ch) <= 0xDCFF else len(ch.encode("utf-8"))
    char_of_byte = [0] * (len(raw) + 1)
    c = 0
    for b in range(len(raw) + 1):
        while c < len(text) and byte_of_char[c] < b:
            c += 1
        char_of_byte[b] = c
    out, b = [], 0
    for i in ids:  # special ids carry no bytes: they start where the next byte does
        out.append(char_of_byte[b])
        b += 1 if 0 <= i < 256 else 0
    return text, out


def token_unit_starts(tok, ids: list[int], unit: str) -> list[int]:
    """Indices of the tokens holding the first character of each unit (token 0 always)."""
    if not ids:
        return []
    text, starts = char_starts(tok, ids)
    ends = [*starts[1:], len(text) + 1]
    firsts = {0}
    j = 0
    for c in unit_starts(text, unit):
        while j < len(ids) and not (starts[j] <= c < ends[j] and ends[j] > starts[j]):
            j += 1
        if j == len(ids):
            break
        firsts.add(j)
    return sorted(firsts)
