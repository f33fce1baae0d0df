"""Every algorithm runs from a plan with rlhf-run's runtime, and a multi-mesh plan (the
trained model reallocated between its calls' layouts, inference calls on disjoint meshes)
trains exactly like one process: same weights after an iteration."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from executor.runtime.launch import launch
from executor.runtime.worker import RunTask, run
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    experiment_from_dict,
    load_experiment,
    save_plan,
)

pytestmark = pytest.mark.distributed

HALF0 = DeviceMesh(n_gpus=2, gpu_start=0)
HALF1 = DeviceMesh(n_gpus=2, gpu_start=2)
ALL = DeviceMesh(n_gpus=4)


def _alloc(mesh, **kw) -> Allocation:
    return Allocation(mesh=mesh, strategy=ParallelStrategy(**kw))


def multi_mesh(exp) -> Plan:
    """Train calls on all 4 devices with pipeline + data parallelism, generation with tensor
    parallelism over all 4 (so the actor moves twice per iteration), inference calls split
    over the two halves (disjoint meshes)."""
    allocs = {}
    for i, m in enumerate(exp.mfcs()):
        if m.kind == "train":
            allocs[m.name] = _alloc(ALL, dp=2, pp=2, micro_batches=2)
        elif m.kind == "generate":
            allocs[m.name] = _alloc(ALL, tp=4)
        else:
            allocs[m.name] = _alloc(
                HALF0 if i % 2 else HALF1, dp=2 if i % 4 < 2 else 1, tp=1 if i % 4 < 2 else 2
            )
    return Plan(
        cluster=ClusterSpec(nodes=1, gpus_per_node=4, device="cpu"),
        experiment=exp,
        allocations=allocs,
    )


def one_process(exp) -> Plan:
    one = _alloc(DeviceMesh(n_gpus=1))
    return Plan(
        cluster=ClusterSpec(nodes=1, gpus_per_node=1, device="cpu"),
        experiment=exp,
        allocations={m.name: one for m in exp.mfcs()},
    )


def _experiment(name: str, **changes):
    doc = load_experiment(name).model_dump(mode="json")
    doc.update(
        batch_size=6, evaluation=None, **changes
    )  # 6 pairs: dp and micro-batch cuts fall inside pairs unless groups are kept whole
    for role in doc["roles"].values():
        if role.get("optimizer"):
            role["optimizer"]["eps"] = 1e-5  # see test_runtime: keeps Adam's conditioning out of it
    return experiment_from_dict(doc)


def _run(tmp, tag, plan):
    path = tmp / f"{tag}.json"
    save_plan(plan, path)
    out = tmp / tag
    task = RunTask(str(path), 1, str(out), save_final=True)
    assert launch(run, task, world=plan.cluster.world_size, timeout_s=60) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows[0]


# One case per program and data flow. Variants that change only a loss formula (IPO against
# DPO) or how macro-actions are cut (parsed against fixed) run the same calls, layouts and
# moves; their formulas are unit-tested (test_alg_dpo, test_macro_parse).
CASES = {
    "grpo": ("grpo-tiny", {"group_size": 2, "mini_batches": 2}),
    "remax": ("remax-tiny", {}),
    "dpo": ("dpo-tiny", {}),
    "adpo-listwise": (
        "adpo-tiny",
        {"group_size": 3, "adpo": {"mode": "listwise", "anchor": "ref"}},
    ),
    "adpo-pairwise": (
        "adpo-tiny",
        {"adpo": {"mode": "pairwise", "label": 0.8, "anchor": "policy"}},
    ),
    "rm-trees": ("rm-tiny", {}),
    "ppo-macro": (
        "ppo-tiny",
        {"mini_batches": 1, "ppo": {"kl_coef": 0.01, "macro": {"termination": "fixed", "n": 3}}},
    ),
    "adpo-online": ("adpo-online-tiny", {"group_size": 2, "mini_batches": 2, "label_noise": 0.3}),
    "rm-tree": ("rm-tree-tiny", {"mini_batches": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_multi_mesh_matches_one_process(case, tmp_path):
    name, changes = CASES[case]
    exp = _experiment(name, **changes)
    (m_out, m_row), (s_out, s_row) = (
        _run(tmp_path, "multi", multi_mesh(exp)),
        _run(tmp_path, "one", one_process(exp)),
    )
    trained = [r for r in exp.roles if exp.roles[r].trainable]
    assert trained
    for role in trained:
        a, b = (
            load_file(str(m_out / "final" / role / "model.safetensors")),
            load_file(str(s_out / "final" / role / "model.safetensors")),
        )
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{case} {role} {k}")
    # The trained model really moves between layouts where the plan has other calls of it.
    if any(m.kind != "train" and m.role in trained for m in exp.mfcs()):
        first = next(m.name for m in exp.mfcs() if m.role in trained and m.kind != "train")
        assert m_row["calls"][first]["realloc_s"] > 0
    keys = ("reward_mean", "pref_accuracy", "true_accuracy", "actor_loss", "reward_loss")
    for key in (*keys, "labelled_pairs", "pair_accuracy", "heldout_accuracy"):
        if key in s_row:
            assert m_row[key] == pytest.approx(s_row[key], abs=1e-5), key
    # Clipped-ratio programs: the trainer's log-probs of the generated tokens, before its first
    # update, against the ones generation recorded (same weights; float32): apart only by
    # rounding, on one process (same layout) and across layouts (generation tp/dp != train's).
    for row in (s_row, m_row):
        if "logprob_gap_max" in row:
            assert 0 <= row["logprob_gap_mean"] <= row["logprob_gap_max"] < 1e-5, row
    assert ("logprob_gap_max" in s_row) == (exp.algorithm in ("ppo", "grpo")), s_row.keys()


def test_evaluation_on_a_local_jsonl_file(tmp_path):
    rows = [
        {"question": f"What is {a} plus {a}?", "answer": f"{a} + {a} = {2 * a}. #### {2 * a}"}
        for a in range(1, 8)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exp = _experiment("grpo-tiny", group_size=2, mini_batches=2)
    doc = exp.model_dump(mode="json")
    doc["evaluation"] = {"dataset": str(data), "every": 1, "shots": 2, "questions": 5}
    out, row = _run(tmp_path, "eval", one_process(experiment_from_dict(doc)))
    assert row["eval_questions"] == 5  # the 5 rows after the 2 exemplars
    assert 0.0 <= row["eval_accuracy"] <= 1.0


def test_trained_reward_model_serves_a_ppo_run(tmp_path):
    rm_out, rm_row = _run(tmp_path, "rm", one_process(_experiment("rm-tiny")))
    assert rm_row["reward_loss"] > 0
    folder = rm_out / "final" / "reward"

    def ppo(reward_model):
        doc = _experiment("ppo-tiny", mini_batches=2).model_dump(mode="json")
        doc.pop("reward_function")
        doc["roles"]["reward"] = {"model": reward_model}
        return experiment_from_dict(doc)

    trained = ppo(str(folder))
    assert trained.model("reward").checkpoint == str(folder)
    _, with_trained = _run(tmp_path, "ppo-trained", one_process(trained))
    _, with_random = _run(tmp_path, "ppo-random", one_process(ppo("tiny")))
    # Same rollouts (the actor is the same), scored by different reward models.
    assert with_trained["response_len"] == with_random["response_len"]
    assert with_trained["reward_mean"] != pytest.approx(with_random["reward_mean"], abs=1e-4)
    assert "task_reward_mean" in with_trained  # the rule the reward model imitates, for comparison


def test_models_with_their_own_hf_tokenizer(tmp_path):
    from executor.model import Transformer
    from executor.model.hf_checkpoint import save_checkpoint
    from executor.model.weights import random_init_
    from executor.parallel.context import ParallelContext
    from plans import preset
    from tests.unit.test_executor_checkpoint import save_word_tokenizer

    folder = tmp_path / "sft"
    model = Transformer(preset("tiny"))
    random_init_(model, 0)
    save_checkpoint(model, ParallelContext.single(), folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "[UNK]": 3, **{str(d): 4 + d for d in range(10)}}
    save_word_tokenizer(folder, vocab, by_character=True)
    doc = _experiment("dpo-tiny").model_dump(mode="json")
    doc["roles"] = {"actor": {"model": str(folder), "optimizer": {"lr": 1e-3}}, "ref": str(folder)}
    out, row = _run(tmp_path, "hf-tok", one_process(experiment_from_dict(doc)))
    assert row["actor_loss"] > 0
    saved = out / "final" / "actor"
    assert (saved / "tokenizer.json").exists()  # the trained folder works on its own


def test_tree_leaves_regrouped_across_data_parallel_generation(tmp_path):
    """6 prompts over 4 generating dp ranks (2, 2, 1, 1 prompts: 8, 8, 4, 4 leaves) while the
    store splits the 24 leaves 6, 6, 6, 6: the regrouped leaves train like one process."""
    exp = _experiment("rm-tree-tiny", mini_batches=2)
    plan = multi_mesh(exp)
    plan = plan.model_copy(
        update={"allocations": {**plan.allocations, "actor_tree": _alloc(ALL, dp=4)}}
    )
    (m_out, m_row), (s_out, s_row) = (
        _run(tmp_path, "multi", plan),
        _run(tmp_path, "one", one_process(exp)),
    )
    a = load_file(str(m_out / "final" / "reward" / "model.safetensors"))
    b = load_file(str(s_out / "final" / "reward" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert m_row["labelled_pairs"] == s_row["labelled_pairs"] > 0
