"""An experiment's calls leave out the reference's when nothing reads its log-probs
(ExperimentSpec.mfcs): the graph, the estimate, the search and plan validation follow."""

from __future__ import annotations

import json

import pytest
import torch

from estimator.cost import CostModel
from estimator.simulate import simulate
from executor.losses.grpo import grpo_loss
from executor.losses.ppo import shaped_rewards
from executor.losses.remax import kl_penalised_advantages
from planner.diff import diff_plans
from planner.graph import build_graph
from planner.search import search
from plans import (
    ALGORITHM_MFCS,
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    PlanError,
    experiment_from_dict,
    load_experiment,
    plan_from_dict,
)
from plans.dataflow import unrolled
from plans.residency import Residency
from tests.unit.test_cli import run

CPU4 = ClusterSpec(nodes=1, gpus_per_node=4, device="cpu")
EXAMPLE = {
    "ppo": "ppo-tiny",
    "grpo": "grpo-tiny",
    "remax": "remax-tiny",
    "dpo": "dpo-tiny",
    "adpo": "adpo-tiny",
    "adpo-online": "adpo-online-tiny",
    "rm": "rm-tiny",
    "rm-tree": "rm-tree-tiny",
}


def experiment(algorithm: str, **changes):
    doc = load_experiment(EXAMPLE[algorithm]).model_dump(mode="json")
    for key, value in changes.items():
        if isinstance(value, dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return experiment_from_dict(doc)


ZERO = {"ppo": {"kl_coef": 0.0}, "grpo": {"kl_coef": 0.0}}
DROPPED = [
    ("ppo", ZERO),
    ("ppo", {"ppo": {"kl_coef": 0.0, "macro": {"termination": "fixed", "n": 3}}}),
    ("grpo", {"grpo": {"kl_coef": 0.0}}),
    ("remax", {"ppo": {"kl_coef": 0.0}}),
]
KEPT = [
    ("ppo", {"ppo": {"kl_coef": 1e-6}}),
    ("ppo", {"ppo": {"kl_coef": 0.0, "macro": {"termination": "ppl"}}}),  # cuts by ref's ppl
    ("grpo", {"ppo": {"kl_coef": 0.0}}),  # GRPO's own coefficient is not 0
    ("remax", {"grpo": {"kl_coef": 0.0}}),
    ("dpo", ZERO),
    ("adpo", ZERO),
    ("adpo-online", ZERO),
]


@pytest.mark.parametrize(("algorithm", "changes"), DROPPED)
def test_reference_call_dropped_when_nothing_reads_it(algorithm, changes):
    exp = experiment(algorithm, **changes)
    table = ALGORITHM_MFCS[algorithm]
    calls = exp.mfcs()
    assert [m.name for m in calls] == [m.name for m in table if m.name != "ref_inf"]
    assert all("ref_logprobs" not in m.inputs for m in calls)
    for m, t in zip(calls, (t for t in table if t.name != "ref_inf"), strict=True):
        assert (m.role, m.kind, m.outputs) == (t.role, t.kind, t.outputs)
        assert m.inputs == tuple(k for k in t.inputs if k != "ref_logprobs")
    # The example's [roles.ref] is set aside, with a note, not refused.
    assert "ref" not in exp.roles and exp.unused_roles == ("ref",)
    assert exp.mfcs() is calls  # one tuple: caches keyed on the calls hit


@pytest.mark.parametrize(("algorithm", "changes"), KEPT)
def test_reference_call_kept_when_something_reads_it(algorithm, changes):
    exp = experiment(algorithm, **changes)
    assert exp.mfcs() == ALGORITHM_MFCS[algorithm]
    assert "ref" in exp.roles and exp.unused_roles == ()


@pytest.mark.parametrize("algorithm", ["rm", "rm-tree"])
def test_algorithms_without_reference_unchanged(algorithm):
    assert experiment(algorithm, **ZERO).mfcs() is ALGORITHM_MFCS[algorithm]


def test_without_a_ref_section_loads_and_other_roles_still_checked():
    doc = experiment("grpo", grpo={"kl_coef": 0.0}).model_dump(mode="json")
    assert "ref" not in doc["roles"]  # what a plan embeds: no reference model
    again = experiment_from_dict(doc)
    assert again.unused_roles == () and again.mfcs() == experiment("grpo", **ZERO).mfcs()
    doc["roles"]["critic"] = {"model": "tiny"}
    with pytest.raises(PlanError) as e:
        experiment_from_dict(doc)
    assert e.value.field == "roles.critic"


def _whole_mesh_plan(exp, allocations=None) -> Plan:
    whole = Allocation(mesh=DeviceMesh(n_gpus=4), strategy=ParallelStrategy(dp=4))
    names = allocations or [m.name for m in exp.mfcs()]
    return Plan(cluster=CPU4, experiment=exp, allocations={n: whole for n in names})


def test_graph_residency_and_estimate_have_no_reference():
    exp, kept = experiment("ppo", **ZERO), experiment("ppo", ppo={"kl_coef": 1e-6})
    g = build_graph(exp, 2)
    assert {d["mfc"] for _, d in g.nodes(data=True)} == {m.name for m in exp.mfcs()}
    assert all("ref_logprobs" not in d["keys"] for *_, d in g.edges(data=True))
    assert [n.mfc.name for n in unrolled(exp.mfcs(), 1)] == [m.name for m in exp.mfcs()]
    plan, kept_plan = _whole_mesh_plan(exp), _whole_mesh_plan(kept)
    rules = Residency.of(exp, plan.allocations)
    assert "ref" not in rules.home and "ref_inf" not in rules.consumers
    assert rules.consumers["actor_gen"] == ("rew_inf", "critic_inf", "actor_train", "critic_train")
    cm, kept_cm = CostModel(CPU4, exp), CostModel(CPU4, kept)
    assert set(cm.mfcs) == {m.name for m in exp.mfcs()}
    res = simulate(cm, plan.allocations, record=True)
    kept_res = simulate(kept_cm, kept_plan.allocations, record=True)
    assert "ref_inf" not in res.call_time_s and "ref_inf" in kept_res.call_time_s
    # On one mesh the calls run one after another: without the reference, faster.
    assert res.iteration_time_s < kept_res.iteration_time_s


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_search_places_no_reference_and_estimates_faster(algorithm):
    exp = experiment(algorithm, **ZERO)
    tiny = {"ppo": {"kl_coef": 1e-6}} if algorithm == "ppo" else {"grpo": {"kl_coef": 1e-6}}
    kept = experiment(algorithm, **tiny)
    out = search(exp, CPU4, method="symmetric")
    kept_out = search(kept, CPU4, method="symmetric")
    assert "ref_inf" not in out.allocations and "ref_inf" in kept_out.allocations
    assert out.cost < kept_out.cost
    found = search(exp, CPU4, seed=0, steps=300, time_limit=300)
    assert set(found.allocations) == {m.name for m in exp.mfcs()}
    assert found.cost <= out.cost


def test_plan_with_a_reference_allocation_refused():
    exp = experiment("grpo", **ZERO)
    names = [m.name for m in ALGORITHM_MFCS["grpo"]]
    whole = Allocation(mesh=DeviceMesh(n_gpus=4), strategy=ParallelStrategy(dp=4))
    doc = {
        "cluster": CPU4.model_dump(mode="json"),
        "experiment": exp.model_dump(mode="json"),
        "allocations": {n: whole.model_dump(mode="json") for n in names},
    }
    with pytest.raises(PlanError) as e:
        plan_from_dict(doc)
    assert e.value.field == "allocations.ref_inf" and not e.value.more
    assert "does not run" in e.value.reason and "\n" not in e.value.reason
    assert set(_whole_mesh_plan(exp).allocations) == set(names) - {"ref_inf"}  # valid


def test_cli_notes_the_unused_section_and_writes_a_plan_without_it(tmp_path):
    doc = load_experiment("grpo-tiny").model_dump(mode="json")
    doc["grpo"]["kl_coef"] = 0.0
    path = tmp_path / "grpo0.json"
    path.write_text(json.dumps(doc))
    r = run("validate", str(path))
    assert r.returncode == 0, r.stderr
    assert "note: roles.ref is not used" in r.stdout and "grpo.kl_coef = 0" in r.stdout
    plan = tmp_path / "plan.json"
    args = ("--nodes", "1", "--gpus-per-node", "2", "--device", "cpu", "--method", "symmetric")
    r = run("search", str(path), *args, "--out", str(plan), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["notes"] and "ref_inf" not in json.loads(r.stdout)["allocations"]
    written = json.loads(plan.read_text())
    assert "ref" not in written["experiment"]["roles"] and "ref_inf" not in written["allocations"]
    # A plan whose experiment still has the section: noted, and valid.
    written["experiment"]["roles"]["ref"] = {"model": "tiny"}
    plan.write_text(json.dumps(written))
    r = run("validate", str(plan))
    assert r.returncode == 0, r.stderr
    assert "note: roles.ref is not used" in r.stdout
    # A plan that still places the reference: one line naming the allocation.
    whole = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())
    written["allocations"]["ref_inf"] = whole.model_dump(mode="json")
    plan.write_text(json.dumps(written))
    r = run("estimate", str(plan))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "allocations.ref_inf" in r.stderr and "does not run" in r.stderr


def test_losses_without_reference_equal_a_zero_coefficient():
    g = torch.Generator().manual_seed(0)
    lp, old, ref = (torch.randn(4, 6, generator=g) - 2 for _ in range(3))
    mask = (torch.rand(4, 6, generator=g) > 0.2).float()
    score = torch.randn(4, generator=g)
    r0, kl0 = shaped_rewards(lp, None, score, mask, 0.0, 5.0)
    r, _ = shaped_rewards(lp, ref, score, mask, 0.0, 5.0)
    assert kl0 is None and torch.equal(r0, r)
    adv = torch.randn(4, 1, generator=g) * mask
    assert torch.equal(
        kl_penalised_advantages(adv, lp, None, mask, 0.0),
        kl_penalised_advantages(adv, lp, ref, mask, 0.0),
    )
    a = lp.clone().requires_grad_()
    b = lp.clone().requires_grad_()
    s0 = grpo_loss(a, old, None, adv, mask, 0.2, 0.0, 4.0)
    s = grpo_loss(b, old, ref, adv, mask, 0.2, 0.0, 4.0)
    s0.loss.backward()
    s.loss.backward()
    assert s0.kl is None and torch.equal(s0.loss, s.loss) and torch.equal(a.grad, b.grad)
    for fn in (
        lambda: shaped_rewards(lp, None, score, mask, 0.1, 5.0),
        lambda: kl_penalised_advantages(adv, lp, None, mask, 0.1),
        lambda: grpo_loss(a, old, None, adv, mask, 0.2, 0.1, 4.0),
    ):
        with pytest.raises(ValueError, match="reference"):
            fn()


def test_diff_lists_the_call_only_one_plan_runs():
    exp, kept = experiment("grpo", **ZERO), experiment("grpo", grpo={"kl_coef": 1e-6})
    a, b = _whole_mesh_plan(kept), _whole_mesh_plan(exp)
    d = diff_plans(a, b, {"ref_inf": 0.5, "iteration": 3.0}, {"iteration": 2.5})
    row = next(c for c in d["calls"] if c["call"] == "ref_inf")
    assert row["b"] is None and row["changes"] == ["only in A"] and row["delta_s"] is None
    assert [c["call"] for c in d["calls"]] == [m.name for m in kept.mfcs()]
