"""The data side of rlhf-run's algorithm programs: what an iteration's dataset rows look like."""

from __future__ import annotations

import json

import pytest
import torch

from executor.data.tokenizer import ByteTokenizer
from executor.losses.evaluation import exact_match
from executor.programs.evaluate import arithmetic_questions
from executor.programs.program import PromptSource, prompt_response_rows
from executor.programs.registry import program_for
from plans import PlanError, experiment_from_dict, load_experiment

TOK = ByteTokenizer()


def _exp(name, **changes):
    doc = load_experiment(name).model_dump(mode="json")
    doc.update(changes)
    return experiment_from_dict(doc)


def test_rows_put_the_response_after_exactly_prompt_len_columns():
    exp = _exp("dpo-tiny")
    rows = prompt_response_rows(TOK, exp, ["ab:", "a much longer prompt than sixteen"], ["12", ""])
    p = exp.prompt_len
    assert rows["input_ids"].shape == (2, exp.seq_len)
    assert rows["input_ids"][0, p : p + 3].tolist() == [ord("1"), ord("2"), TOK.eos_token_id]
    assert rows["response_mask"][0].sum() == 3 and rows["response_mask"][1].sum() == 1  # EOS
    assert rows["attention_mask"][0, :p].sum() == len("ab:") + 1  # BOS, left-padded
    assert rows["attention_mask"][1, :p].sum() == p  # the long prompt keeps its end


def test_grpo_repeats_each_prompt_group_size_times():
    exp = _exp("grpo-tiny", evaluation=None)
    data = program_for(exp, TOK, None).dataset(0)
    ids = data["prompt_ids"]
    assert ids.shape == (exp.batch_size * exp.group_size, exp.prompt_len)
    g = exp.group_size
    assert all(torch.equal(ids[i], ids[i - i % g]) for i in range(ids.shape[0]))
    assert not torch.equal(ids[0], ids[g])


def test_pairs_file_gives_chosen_then_rejected_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [{"prompt": f"q{i}:", "chosen": f"{i}{i}", "rejected": "xy"} for i in range(3)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    exp = _exp("dpo-tiny", batch_size=4, mini_batches=1)
    prog = program_for(exp, TOK, str(path))
    assert prog.unit == 2 and prog.rows() == 8
    rows = prog.dataset(0)
    assert rows["reward"].tolist() == [1.0, 0.0] * 4
    assert torch.equal(rows["true_reward"], rows["reward"])  # a file's labels are its truth
    p = exp.prompt_len
    chosen = [TOK.decode(rows["input_ids"][r, p : p + 2].tolist()) for r in range(0, 8, 2)]
    prompts = [TOK.decode(rows["input_ids"][r, :p].tolist()) for r in range(0, 8, 2)]
    assert sorted(chosen[:3]) == ["00", "11", "22"]  # every pair once, then the next epoch
    assert chosen[3] in ("00", "11", "22")
    for c, q in zip(chosen, prompts, strict=True):
        assert q.endswith(f"q{c[0]}:")  # a pair stays whole


def _prompt_file(tmp_path, n):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}:"}) + "\n" for i in range(n)))
    return [f"p{i}:" for i in range(n)], str(path)


def _texts(source: PromptSource, it: int) -> list[str]:
    """The prompt texts an iteration draws from the file, in order."""
    return [row.prompt for row in source._rows(it)]


@pytest.mark.parametrize("n_rows,batch", [(10, 4), (6, 6), (4, 10)])
def test_file_prompts_are_shuffled_anew_every_epoch(tmp_path, n_rows, batch):
    file, path = _prompt_file(tmp_path, n_rows)
    exp = _exp("ppo-tiny", batch_size=batch, mini_batches=1)
    source = PromptSource(exp, TOK, path)
    k = 6  # iterations 0..k-1: several epochs, some ending inside a batch
    drawn = [t for it in range(k) for t in _texts(source, it)]
    epochs = [drawn[e : e + n_rows] for e in range(0, k * batch - n_rows + 1, n_rows)]
    assert len(epochs) >= 2
    assert all(sorted(e) == sorted(file) for e in epochs)  # each epoch covers the file once
    assert drawn != [file[i % n_rows] for i in range(k * batch)]  # not the file's order
    assert len({tuple(e) for e in epochs}) > 1  # a new order per epoch (of 4 rows, one of
    # the 24 orders may well be the file's own)
    # A pure function of (seed, iteration): another source, and the iterations in any order,
    # give the same rows; this is what makes the iteration count the data position on resume.
    again = PromptSource(exp, TOK, path)
    assert [t for it in reversed(range(k)) for t in reversed(_texts(again, it))] == drawn[::-1]
    other = PromptSource(exp.model_copy(update={"seed": exp.seed + 1}), TOK, path)
    assert [t for it in range(k) for t in _texts(other, it)] != drawn


def test_file_preference_pairs_are_shuffled_anew_every_epoch(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [{"prompt": f"q{i}:", "chosen": f"{i}{i}", "rejected": "xy"} for i in range(5)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    exp = _exp("dpo-tiny", batch_size=2, mini_batches=1)
    p = exp.prompt_len

    def chosen(prog, it):
        ids = prog.dataset(it)["input_ids"]
        return [TOK.decode(ids[r, p : p + 2].tolist()) for r in range(0, ids.shape[0], 2)]

    prog = program_for(exp, TOK, str(path))
    drawn = [c for it in range(5) for c in chosen(prog, it)]  # two epochs of five pairs
    file = [f"{i}{i}" for i in range(5)]
    assert sorted(drawn[:5]) == sorted(drawn[5:]) == file
    assert drawn[:5] != file and drawn[:5] != drawn[5:]
    again = program_for(exp, TOK, str(path))
    assert [c for it in (4, 2, 0, 3, 1) for c in chosen(again, it)] == [
        c for it in (4, 2, 0, 3, 1) for c in drawn[2 * it : 2 * it + 2]
    ]


def test_builtin_pairs_carry_the_truth_behind_noisy_labels():
    exp = _exp("dpo-tiny", label_noise=0.5, batch_size=64, mini_batches=1)
    rows = program_for(exp, TOK, None).dataset(3)
    truth = rows["true_reward"].view(-1, 2)
    swapped = (truth[:, 0] < truth[:, 1]).float().mean()
    assert 0.2 < swapped < 0.8  # about half the labels disagree with the rule


def test_tree_sets_and_candidate_lists(tmp_path):
    rm = program_for(_exp("rm-tiny"), TOK, None)
    assert rm.dataset(0)["input_ids"].shape[0] == 2 * 32  # pairs drawn among tree leaves
    lists = tmp_path / "lists.jsonl"
    lists.write_text(
        json.dumps({"prompt": "a:", "responses": ["1", "b", "22"], "rewards": [0.5, 0, 1]}) + "\n"
    )
    exp = _exp("adpo-tiny", group_size=3, batch_size=2, mini_batches=1, adpo={"mode": "listwise"})
    rows = program_for(exp, TOK, str(lists)).dataset(0)
    assert rows["reward"].tolist() == [0.5, 0.0, 1.0] * 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a:", "responses": ["1"], "rewards": "x"}) + "\n")
    with pytest.raises(PlanError, match="line 1"):
        program_for(exp, TOK, str(bad)).dataset(0)


def test_experiment_checks_for_new_algorithms():
    with pytest.raises(PlanError, match="group_size"):
        _exp("adpo-tiny", group_size=3)  # pairwise needs 2
    with pytest.raises(PlanError, match="evaluation"):
        _exp("rm-tiny", evaluation={"dataset": "builtin:arithmetic"})


def test_builtin_arithmetic_answers_score_as_exact_matches():
    qa = arithmetic_questions(5)
    assert all(exact_match(q.answer, q.answer) for q in qa)
    assert not exact_match("#### 0", qa[0].answer)
