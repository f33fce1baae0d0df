"""Home shards living inside a view (executor.runtime.roles) are allowed for a role with one
view layout only, and the estimator prices moves and counts memory by the same rule; its
price of a move depends on the home's ZeRO-1 (which rules hosting out) and is cached so."""

from __future__ import annotations

import pytest

from estimator import CostModel
from estimator.simulate import _hosting, _layout, _shape
from executor.runtime.roles import hosting_allowed
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    load_experiment,
)


def _alloc(first: int, n: int, dp=1, tp=1, zero1=False) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(gpu_start=first, n_gpus=n),
        strategy=ParallelStrategy(dp=dp, tp=tp, zero1=zero1),
    )


@pytest.mark.parametrize("greedy_like_gen", [True, False])
def test_runtime_and_estimator_agree_on_which_roles_host(greedy_like_gen):
    exp = load_experiment("remax-tiny")
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, device="cpu")
    allocs = {m.name: _alloc(0, 2, tp=2) for m in exp.mfcs()}  # every home: tp2
    allocs["actor_gen"] = _alloc(0, 2, dp=2)
    allocs["actor_greedy"] = _alloc(0, 2, dp=2) if greedy_like_gen else _alloc(0, 1)
    plan = Plan(cluster=cluster, experiment=exp, allocations=allocs)
    calls = exp.mfcs()
    home, _ = _shape(exp.algorithm)
    est = _hosting(calls, {m.name: _layout(allocs[m.name]) for m in calls}, home)
    run = {role for role in exp.roles if hosting_allowed(plan, role)}
    assert est == run
    assert ("actor" in run) == greedy_like_gen  # two view layouts: no hosting
    assert "ref" not in run  # no view at all


def test_move_price_depends_on_the_homes_zero1_and_hosting():
    exp = load_experiment("ppo-tiny")
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=2, device="h100"), exp)
    gen = _alloc(0, 2, dp=2)
    plain = cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen).time_s
    zero1 = cm.realloc_cost("actor", _alloc(0, 2, tp=2, zero1=True), gen).time_s
    two_views = cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen, hosting=False).time_s
    assert plain < zero1 == two_views  # the home's rows are copied unless they live there
    assert cm.realloc_cost("actor", _alloc(0, 2, tp=2), gen).time_s == plain
