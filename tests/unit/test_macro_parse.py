"""Parsing-based macro actions: units of text and code, mapped onto token indices, checked
against hand-computed segmentations and a reference walk over the decoded text."""

from __future__ import annotations

import ast
import tomllib

import pytest
import torch

from executor.data.text_units import (
    char_starts,
    clause_starts,
    line_starts,
    sentence_starts,
    statement_starts,
    token_unit_starts,
)
from executor.data.tokenizer import ByteTokenizer
from executor.losses.macro import parse_starts
from executor.programs.ppo import macro_starts
from plans import PlanError, example_path
from plans.experiment import MacroSpec
from plans.io import experiment_from_dict

TOK = ByteTokenizer()


def test_sentences_keep_abbreviations_and_decimals():
    text = "Dr. Smith ate 3.5 apples. Then he left! Ok"
    assert sentence_starts(text) == [0, text.index("Then"), text.index("Ok")]


def test_clauses_cut_after_marks_followed_by_space():
    text = "He said: yes, no;maybe. Then 1,5 left"
    # ';' without a space and the '1,5' numeral are not clause marks
    assert clause_starts(text) == [0, text.index("yes"), text.index("no"), text.index("Then")]


def test_statements_follow_pythons_grammar():
    code = "x = (1,\n     2)\n# note\nif x:\n    y = 1\nz = 3\n"
    starts = statement_starts(code)
    # the statement starts are exactly the ast's statement line starts (comment joins 'if')
    lines = code.splitlines(keepends=True)
    offset = [sum(map(len, lines[:i])) for i in range(len(lines))]
    nodes = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.stmt)]
    assert starts == sorted(offset[n.lineno - 1] + n.col_offset for n in nodes)


def test_unfinished_code_falls_to_lines_after_last_statement():
    code = "a = 1\nb = [1,\n2,\n"
    assert statement_starts(code) == [0, 6, 14]  # 'a', then the open bracket's lines by line
    assert line_starts(code) == [0, 6, 14]


def test_byte_tokens_map_to_characters_exactly():
    ids = list("aé. B".encode())  # 'é' is 2 bytes: its second byte starts at the next char
    text, starts = char_starts(TOK, ids)
    assert text == "aé. B"
    assert starts == [0, 1, 2, 2, 3, 4]
    bad = [0xC3, ord("x")]  # a lone lead byte: one escaped character of its own
    assert char_starts(TOK, bad)[1] == [0, 1]


def test_token_unit_starts_against_reference():
    text = "One, two. Three; four"
    ids = TOK.encode(text, add_bos=False)
    expected = [0, text.index("two"), text.index("Three"), text.index("four")]
    assert token_unit_starts(TOK, ids, "clause") == expected  # bytes: token = byte = char
    assert token_unit_starts(TOK, ids, "sentence") == [0, text.index("Three")]


def test_multibyte_unit_start_credited_to_its_first_byte():
    text = "ab. éc"
    ids = TOK.encode(text, add_bos=False)
    assert token_unit_starts(TOK, ids, "sentence") == [0, 4]  # byte 4 is é's first byte


def test_parse_starts_tensor_and_ppo_rows():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0.0]])
    out = parse_starts([[0, 2], [0]], mask)
    assert out.tolist() == [[1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]]  # last real token alone


class _Exp:
    prompt_len = 2

    class ppo:
        macro = MacroSpec(termination="parse", unit="sentence")


def test_macro_starts_reads_the_response_columns():
    resp = TOK.encode("Hi. Yo", add_bos=False)
    ids = torch.tensor([[TOK.pad_token_id, TOK.bos_token_id, *resp, TOK.pad_token_id]])
    mask = torch.tensor([[1.0] * len(resp) + [0.0]])
    starts = macro_starts(_Exp, {"input_ids": ids, "response_mask": mask}, TOK)
    assert starts[0].nonzero().flatten().tolist() == [0, 4, 5]


def test_unit_without_parse_is_refused():
    doc = tomllib.loads(example_path("ppo-tiny", "experiment").read_text())
    doc["ppo"]["macro"] = {"termination": "fixed", "unit": "line"}
    with pytest.raises(PlanError, match="ppo.macro.unit"):
        experiment_from_dict(doc)


class _Pieces:
    """A tokenizer like transformers' whose ids are multi-character pieces; decoding drops
    a leading space, as SentencePiece-style decoders do."""

    tok = object()  # marks the prefix-decode path
    PIECES = [" One", ",", " two", ".", " Th", "ree", " fo", "ur"]

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids).lstrip(" ")


def test_multi_character_tokens_credit_the_token_holding_the_unit_start():
    tok = _Pieces()
    ids = list(range(8))  # "One, two. Three four"
    text, starts = char_starts(tok, ids)
    assert text == "One, two. Three four"
    assert starts == [0, 3, 4, 8, 9, 12, 15, 18]
    # clause starts: "two" (char 5, inside token 2 " two"), "Three" (char 10, token 4)
    assert token_unit_starts(tok, ids, "clause") == [0, 2, 4]
