"""Prompt datasets (JSONL and Parquet, text and chat rows, answers), the builtin:math reward,
and tokenizers shared by the roles."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from executor.data.math_reward import answers_equal, extract_answer, math_reward
from executor.data.prompt_rows import read_prompt_rows
from executor.data.sources import reward_function, wants_answer
from executor.data.tokenizer import ByteTokenizer, HFTokenizer
from executor.programs import calls
from executor.programs.registry import program_for
from plans import PlanError, example_path, load_experiment
from tests.chat_tokenizer import save_chat_tokenizer

SAMPLE = example_path("grpo-math-tiny", "experiment").parent / "data" / "gsm8k-sample.jsonl"
CHAT_SAMPLE = SAMPLE.with_name("gsm8k-sample-chat.jsonl")


def _jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


# ---- reading rows --------------------------------------------------------------------------
def test_text_and_chat_rows_with_answers():
    text, chat = read_prompt_rows(SAMPLE), read_prompt_rows(CHAT_SAMPLE)
    assert len(text) == len(chat) == 12
    assert text[0].prompt.startswith("Question: Mia") and text[0].answer.endswith("#### 29")
    assert chat[0].messages[0][0] == "system" and chat[0].messages[1][0] == "user"
    assert [r.answer for r in text] == [r.answer for r in chat]


def test_parquet_reads_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for src in (SAMPLE, CHAT_SAMPLE):
        records = [json.loads(line) for line in src.read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
        assert read_prompt_rows(tmp_path / "d.parquet") == [
            r.__class__(r.prompt, r.messages, r.answer, r.where.replace("line", "row"))
            for r in read_prompt_rows(src)
        ]


@pytest.mark.parametrize(
    "bad,needle",
    [
        ("{oops\n", "line 2: not valid JSON"),
        ('["a"]\n', "line 2: expected an object"),
        ('{"prompt": "a", "messages": []}\n', "line 2: needs exactly one of"),
        ('{"answer": "3"}\n', "line 2: needs exactly one of"),
        ('{"prompt": 3}\n', "line 2: 'prompt' must be a string"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', "line 2: messages[0] needs a role"),
        ('{"messages": [{"role": "user", "content": 5}]}\n', "messages[0].content"),
        ('{"prompt": "a", "answer": true}\n', "line 2: 'answer'"),
    ],
)
def test_a_bad_row_is_one_line_with_file_and_line(tmp_path, bad, needle):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "fine"}, bad])
    with pytest.raises(PlanError) as e:
        read_prompt_rows(path)
    assert str(path) in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)


def test_a_bad_parquet_row_names_its_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": None}]), tmp_path / "d.pq")
    with pytest.raises(PlanError, match="row 2: needs exactly one of"):
        read_prompt_rows(tmp_path / "d.pq")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PlanError, match="cannot read the Parquet file"):
        read_prompt_rows(tmp_path / "broken.parquet")


# ---- the math reward -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response,answer,score",
    [
        ("3 * 12 = 36, 36 - 7 = 29\n#### 29", "29", 1.0),
        ("so the answer is \\boxed{29}.", "Mia ... 29 pencils.\n#### 29", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("#### 1,234", "1234", 1.0),
        ("#### 28", "29", 0.0),
        ("29", "29", 0.0),  # no final-answer marker: nothing to check
        ("\\boxed{12} then #### 13", "12", 1.0),  # a box wins over ####
        ("#### ", "29", 0.0),
    ],
)
def test_math_reward(response, answer, score):
    assert math_reward("q", response, answer) == score


def test_answer_extraction_and_the_plain_fallback(monkeypatch):
    assert extract_answer("a \\boxed{x^{2}} b") == "x^{2}"
    assert extract_answer("#### 7\nmore text") == "7"
    assert extract_answer("unbalanced \\boxed{3") is None
    import builtins

    real_import = builtins.__import__

    def no_math_verify(name, *args, **kw):
        if name.startswith("math_verify"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    assert answers_equal("1,234.0", "1234") and answers_equal("$3/4$", "0.75")
    assert not answers_equal("5", "6")


def test_rewards_that_take_an_answer():
    assert wants_answer(reward_function("builtin:math"))
    assert not wants_answer(reward_function("builtin:digits"))
    assert wants_answer(lambda prompt, response, answer: 0.0)


# ---- prompts into a run ------------------------------------------------------------------------
def test_math_rows_score_by_their_own_answer():
    """The reward call finds each row's answer by the prompt ids it sees (rows are shuffled
    per epoch, so the expected answer is found from the prompt's text)."""
    exp = load_experiment(example_path("grpo-math-tiny", "experiment"))
    tok = ByteTokenizer()
    program = program_for(exp, tok, None)
    data = program.dataset(0)
    gold = {r.prompt: extract_answer(r.answer) for r in read_prompt_rows(SAMPLE)}
    g, p = exp.gen_len, exp.prompt_len
    resp = torch.full((len(data["prompt_ids"]), g), tok.pad_token_id)
    rmask = torch.zeros(len(data["prompt_ids"]), g)
    want = []
    for i in range(resp.shape[0]):
        text = tok.decode(data["prompt_ids"][i][data["prompt_mask"][i] > 0].tolist())
        (answer,) = [a for q, a in gold.items() if q.endswith(text)]
        group = i // exp.group_size
        reply = [f"#### {answer}", f"#### {int(answer) + 1}", f"\\boxed{{{answer}}}", "no idea"]
        ids = tok.encode(reply[group % 4], add_bos=False)
        resp[i, : len(ids)], rmask[i, : len(ids)] = torch.tensor(ids), 1
        want.append([1.0, 0.0, 1.0, 0.0][group % 4])
    batch = {
        "input_ids": torch.cat([data["prompt_ids"], resp], 1),
        "attention_mask": torch.cat([data["prompt_mask"], rmask.long()], 1),
        "response_mask": rmask,
    }
    assert p == data["prompt_ids"].shape[1]
    rule = reward_function("builtin:math")
    got = calls.rule_score_all(exp, batch, rule, tok, answers=program.answer_of)
    assert got.tolist() == want


def test_math_reward_needs_answers(tmp_path):
    exp = load_experiment(example_path("grpo-math-tiny", "experiment"))
    with pytest.raises(PlanError, match="line 2: no 'answer' for builtin:math"):
        program_for(exp, ByteTokenizer(), str(_jsonl(tmp_path / "d.jsonl", [
            {"prompt": "a", "answer": "1"}, {"prompt": "b"}])))  # fmt: skip
    no_data = exp.model_copy(update={"dataset": None})
    with pytest.raises(PlanError, match="builtin:math checks each prompt's answer"):
        program_for(no_data, ByteTokenizer(), None)


def test_chat_rows_use_the_template_and_need_one(tmp_path):
    exp = load_experiment(example_path("grpo-math-tiny", "experiment"))
    with pytest.raises(PlanError, match="line 1: 'messages' rows need a tokenizer with a chat"):
        program_for(exp, ByteTokenizer(), str(CHAT_SAMPLE))
    save_chat_tokenizer(tmp_path / "tok")
    tok = HFTokenizer(tmp_path / "tok")
    exp = exp.model_copy(update={"prompt_len": 256})
    data = program_for(exp, tok, str(CHAT_SAMPLE)).dataset(0)
    first = data["prompt_ids"][0][data["prompt_mask"][0] > 0].tolist()
    rendered = tok.tok.decode(first)
    assert rendered.startswith("<|im_start|>system\nSolve the math problem.")
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")


# ---- one tokenizer for all roles --------------------------------------------------------------
def _folder_with_tokenizer(tmp_path, name, tok_src=None):
    from executor.model import Transformer
    from executor.model.hf_checkpoint import save_checkpoint
    from executor.model.weights import random_init_
    from executor.parallel.context import ParallelContext
    from plans.model import ModelSpec

    spec = ModelSpec(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
        max_position_embeddings=512,
        architecture="qwen2",
        tie_word_embeddings=True,
    )
    save_checkpoint(random_init_(Transformer(spec)), ParallelContext.single(), tmp_path / name)
    if tok_src is not None:
        for f in tok_src.iterdir():
            shutil.copy(f, tmp_path / name / f.name)
    return tmp_path / name


def _exp_file(tmp_path, actor, ref, tokenizer=None):
    line = f'tokenizer = "{tokenizer}"\n' if tokenizer else ""
    path = tmp_path / "exp.toml"
    path.write_text(
        f'algorithm = "grpo"\nbatch_size = 2\ngroup_size = 2\nprompt_len = 8\ngen_len = 8\n'
        f'{line}reward_function = "builtin:digits"\n[roles.actor]\nmodel = "{actor}"\n'
        f'[roles.ref]\nmodel = "{ref}"\n[roles.reward]\nmodel = "{actor}"\n'
    )
    return path


def test_roles_with_different_tokenizers_are_refused(tmp_path):
    save_chat_tokenizer(tmp_path / "tok")
    other = tmp_path / "tok2"
    shutil.copytree(tmp_path / "tok", other)
    doc = json.loads((other / "tokenizer.json").read_text())
    doc["model"]["vocab"]["~"], doc["model"]["vocab"]["}"] = (
        doc["model"]["vocab"]["}"],
        doc["model"]["vocab"]["~"],
    )
    (other / "tokenizer.json").write_text(json.dumps(doc))
    a = _folder_with_tokenizer(tmp_path, "a", tmp_path / "tok")
    b = _folder_with_tokenizer(tmp_path, "b", other)
    load_experiment(_exp_file(tmp_path, "a", "a"))  # one tokenizer: fine
    with pytest.raises(PlanError, match="roles.ref.model: .*tokenizer differs .*not supported"):
        load_experiment(_exp_file(tmp_path, "a", "b"))
    assert a.exists() and b.exists()


def test_an_experiment_tokenizer_serves_every_role(tmp_path):
    save_chat_tokenizer(tmp_path / "tok")
    _folder_with_tokenizer(tmp_path, "bare")
    exp = load_experiment(_exp_file(tmp_path, "bare", "bare", tokenizer="tok"))
    assert exp.tokenizer == str(tmp_path / "tok")  # relative to the experiment file
    from executor.data.tokenizer import tokenizer_for

    tok = tokenizer_for([exp.model(r) for r in exp.roles], exp.tokenizer)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 101
    with pytest.raises(PlanError, match="tokenizer: .*not a folder with tokenizer files"):
        load_experiment(_exp_file(tmp_path, "bare", "bare", tokenizer="nowhere"))
