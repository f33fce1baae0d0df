"""plans.residency: the rules the runtime follows and the simulator replays (home, views,
hosting, rule rewards), and the prices and memory that depend on them."""

from __future__ import annotations

import pytest

from estimator import CostModel
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    example_path,
    load_experiment,
    load_plan,
    mfcs,
)
from plans.residency import Residency, home_calls, layout_key, rule_replaces


def _alloc(first: int, n: int, dp=1, tp=1, zero1=False, micro=1) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(gpu_start=first, n_gpus=n),
        strategy=ParallelStrategy(dp=dp, tp=tp, zero1=zero1, micro_batches=micro),
    )


def test_home_is_the_train_call_else_the_first():
    assert home_calls("ppo") == {
        "actor": "actor_train",
        "critic": "critic_train",
        "ref": "ref_inf",
        "reward": "rew_inf",
    }
    assert home_calls("remax")["actor"] == "actor_train"


def test_layout_ignores_micro_batches_and_zero1():
    a = _alloc(0, 2, dp=2)
    assert layout_key(a) == layout_key(_alloc(0, 2, dp=2, zero1=True, micro=4))
    assert layout_key(a) != layout_key(_alloc(0, 2, tp=2))


@pytest.mark.parametrize("greedy_like_gen", [True, False])
@pytest.mark.parametrize("zero1", [False, True])
def test_hosting_needs_one_view_layout_and_no_zero1(greedy_like_gen, zero1):
    exp = load_experiment("remax-tiny")
    allocs = {m.name: _alloc(0, 2, tp=2) for m in exp.mfcs()}  # every home: tp2
    allocs["actor_train"] = _alloc(0, 2, tp=2, zero1=zero1)
    allocs["actor_gen"] = _alloc(0, 2, dp=2)
    allocs["actor_greedy"] = _alloc(0, 2, dp=2) if greedy_like_gen else _alloc(0, 1)
    rules = Residency.of(exp, allocs)
    assert ("actor" in rules.hosting) == (greedy_like_gen and not zero1)
    assert "ref" not in rules.hosting  # no view at all


def test_views_are_built_once_and_dropped_after_training():
    exp = load_experiment("ppo-tiny")
    allocs = {m.name: _alloc(0, 2, tp=2) for m in exp.mfcs()}
    allocs["actor_gen"] = _alloc(0, 2, dp=2)
    rules = Residency.of(exp, allocs)
    calls = {m.name: m for m in mfcs("ppo")}
    gen, train = calls["actor_gen"], calls["actor_train"]
    assert rules.move_before(None, gen)
    held = rules.view_after(None, gen)
    assert held == layout_key(allocs["actor_gen"])
    assert not rules.move_before(held, gen)  # the view is still there
    assert rules.view_after(held, train) is None  # stale after the weights change
    assert not rules.is_view(train) and not rules.move_before(None, train)
    assert rules.steady_views(list(mfcs("ppo")))["actor"] is None


def test_a_rule_reward_loads_no_reward_model_and_has_no_memory():
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    exp = plan.experiment
    assert exp.reward_function is not None
    assert rule_replaces(exp, "reward")
    assert not any(rule_replaces(exp, r) for r in ("actor", "critic", "ref"))
    assert Residency.of(exp, plan.allocations).loaded == {"actor", "critic", "ref"}
    cm = CostModel(plan.cluster, exp)
    assert cm.call_cost("rew_inf", plan.allocations["rew_inf"]).memory.total == 0

    model_reward = exp.model_copy(update={"reward_function": None})
    assert not rule_replaces(model_reward, "reward")
    assert "reward" in Residency.of(model_reward, plan.allocations).loaded
    cm = CostModel(plan.cluster, model_reward)
    assert cm.call_cost("rew_inf", plan.allocations["rew_inf"]).memory.weights > 0


def test_move_price_depends_on_hosting_and_is_cached_so():
    exp = load_experiment("ppo-tiny")
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=2, device="h100"), exp)
    gen = _alloc(0, 2, dp=2)
    hosted = cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen, hosting=True).time_s
    copied = cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen, hosting=False).time_s
    assert hosted < copied  # the home's rows are copied unless they live in the view
    assert cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen, hosting=True).time_s == hosted
