"""Malformed plans and experiments are rejected with one line naming the field."""

from __future__ import annotations

import copy
import json

import pytest

from plans import PlanError, example_path, experiment_from_dict, load_plan, plan_from_dict
from plans.model import from_hf_folder, preset
from tests.folders_util import write_zero_weights

BASE = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())


def _mutated(**paths):
    doc = copy.deepcopy(BASE)
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return doc


_DELETE = object()

CASES = [
    # (mutation, field named in the message, a word of the reason)
    (
        dict(allocations__actor_gen__strategy__dp="two"),
        "allocations.actor_gen.strategy.dp",
        "integer",
    ),
    (dict(allocations__actor_gen__mesh__n_gpus=3), "allocations.actor_gen.mesh", "power-of-two"),
    (dict(allocations__actor_gen__mesh__gpu_start=1), "allocations.actor_gen.mesh", "aligned"),
    (
        dict(allocations__actor_gen__mesh__gpu_start=4),
        "allocations.actor_gen.mesh.n_gpus",
        "outside",
    ),
    (dict(allocations__ref_inf__mesh__n_nodes=2), "allocations.ref_inf.mesh", "whole nodes"),
    (dict(allocations__actor_train__strategy__dp=4), "allocations.actor_train", "mesh size"),
    (
        dict(
            allocations__rew_inf__strategy__tp=4,
            allocations__rew_inf__mesh__n_gpus=4,
            allocations__rew_inf__mesh__gpu_start=0,
            experiment__roles__reward__model__hidden_size=48,
            experiment__roles__reward__model__num_attention_heads=12,
            experiment__roles__reward__model__num_key_value_heads=6,
        ),
        "allocations.rew_inf.strategy.tp",
        "num_key_value_heads=6",
    ),
    (
        dict(
            allocations__critic_train__strategy__pp=2,
            allocations__critic_train__strategy__dp=1,
            experiment__roles__critic__model__num_hidden_layers=1,
        ),
        "allocations.critic_train.strategy.pp",
        "exceeds",
    ),
    (
        dict(allocations__actor_sing={"mesh": {"n_gpus": 1}, "strategy": {}}),
        "allocations.actor_sing",
        "no call",
    ),
    (dict(allocations__critic_inf=_DELETE), "allocations.critic_inf", "no allocation"),
    (dict(cluster__nodes=0), "cluster.nodes", "greater"),
    (dict(cluster__device="tpu9", cluster__memory_gib=None), "cluster", "device table"),
    (dict(experiment__algorithm="ppx"), "experiment.algorithm", "ppo"),
    (dict(experiment__roles__critic=_DELETE), "experiment.roles.critic", "needs"),
    (dict(format_version=7), "format_version", "not supported"),
    (dict(surprise=1), "surprise", "not permitted"),
]


@pytest.mark.parametrize("mutation,field,word", CASES)
def test_bad_plan_names_field(mutation, field, word):
    with pytest.raises(PlanError) as info:
        plan_from_dict(_mutated(**mutation), source="p.json")
    msg = str(info.value)
    assert "\n" not in msg
    assert field in msg, msg
    assert word.lower() in msg.lower(), msg


def test_tp_may_replicate_kv_heads():
    # 4 query heads, 2 kv heads, tp=4: each kv head lives on two ranks (GQA replication).
    plan = plan_from_dict(
        _mutated(
            allocations__rew_inf__strategy__tp=4,
            allocations__rew_inf__mesh__n_gpus=4,
            allocations__rew_inf__mesh__gpu_start=0,
        )
    )
    assert plan.allocations["rew_inf"].strategy.tp == 4


def test_tp_must_divide_query_heads():
    doc = _mutated(allocations__rew_inf__strategy__tp=1, allocations__rew_inf__strategy__dp=2)
    doc["experiment"]["roles"]["reward"]["model"].update(
        num_attention_heads=3, num_key_value_heads=3, hidden_size=63
    )
    doc["allocations"]["rew_inf"]["strategy"].update(tp=2, dp=1)
    with pytest.raises(
        PlanError, match=r"allocations\.rew_inf\.strategy\.tp.*num_attention_heads=3"
    ):
        plan_from_dict(doc)


def test_too_many_micro_batches():
    doc = _mutated(allocations__actor_train__strategy__micro_batches=64)
    with pytest.raises(PlanError, match=r"micro_batches.*exceeds"):
        plan_from_dict(doc)


def test_zero1_only_for_train_calls():
    with pytest.raises(PlanError, match=r"allocations\.actor_gen\.strategy\.zero1"):
        plan_from_dict(_mutated(allocations__actor_gen__strategy__zero1=True))


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match=r"bad\.json: not valid JSON"):
        load_plan(bad)
    with pytest.raises(PlanError, match="no such file"):
        load_plan(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(PlanError, match="must be an object"):
        load_plan(bad)


def test_experiment_errors():
    exp = BASE["experiment"]
    with pytest.raises(PlanError, match=r"roles\.actor\.model.*neither a preset"):
        experiment_from_dict({**exp, "roles": {**exp["roles"], "actor": {"model": "llama9-1t"}}})
    with pytest.raises(PlanError, match=r"roles\.critic\.model\.head"):
        critic = copy.deepcopy(exp["roles"]["critic"])
        critic["model"]["head"] = "lm"
        experiment_from_dict({**exp, "roles": {**exp["roles"], "critic": critic}})
    with pytest.raises(PlanError, match=r"roles\.ref\.trainable"):
        experiment_from_dict(
            {**exp, "roles": {**exp["roles"], "ref": {"model": "tiny", "trainable": True}}}
        )
    with pytest.raises(PlanError, match="gen_len"):
        experiment_from_dict({**exp, "gen_len": 10_000})
    with pytest.raises(PlanError, match="mini_batches"):
        experiment_from_dict({**exp, "mini_batches": 5})


def test_an_inline_model_without_a_head_takes_its_roles():
    exp = copy.deepcopy(BASE["experiment"])
    for role in ("actor", "critic"):
        exp["roles"][role]["model"] = {
            k: v for k, v in preset("tiny").model_dump().items() if k != "head"
        }
    spec = experiment_from_dict(exp)
    assert spec.model("actor").head == "lm" and spec.model("critic").head == "value"


def test_hf_folder_as_model(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    cfg = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 264,
        "max_position_embeddings": 128,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    # A folder's weights are loaded and checked (plans.folders), so it needs some.
    write_zero_weights(folder, from_hf_folder(folder))
    exp = copy.deepcopy(BASE["experiment"])
    exp["roles"]["actor"] = {"model": "my-model"}
    spec = experiment_from_dict(exp, base_dir=tmp_path).model("actor")
    assert (
        spec.num_key_value_heads == 4 and spec.checkpoint == str(folder) and spec.name == "my-model"
    )
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(PlanError, match="not LLaMA-family"):
        experiment_from_dict(exp, base_dir=tmp_path)


def test_every_problem_of_a_plan_is_reported_naming_its_field():
    doc = _mutated(
        allocations__critic_inf__strategy__micro_batches=1000,
        allocations__ref_inf__strategy__zero1=True,
        experiment__batch_size=0,
    )
    del doc["allocations"]["rew_inf"]
    with pytest.raises(PlanError) as caught:
        plan_from_dict(doc, source="p.json")
    # field errors first: the plan's own checks need valid fields to run
    assert [p["field"] for p in caught.value.problems()] == ["experiment.batch_size"]
    doc["experiment"]["batch_size"] = 32
    with pytest.raises(PlanError) as caught:
        plan_from_dict(doc, source="p.json")
    lines = caught.value.lines()
    assert str(caught.value) == f"{lines[0]} (+{len(lines) - 1} more problems)"
    assert all(line.startswith("p.json: allocations.") for line in lines), lines
    assert {p["field"] for p in caught.value.problems()} == {
        "allocations.rew_inf",
        "allocations.critic_inf.strategy.micro_batches",
        "allocations.ref_inf.strategy.zero1",
    }
