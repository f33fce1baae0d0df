"""Lower bounds and the pruning built on them: never above a real plan, never drop the optimum."""

from __future__ import annotations

import math
import random

import pytest

from estimator.cost import CostModel
from planner import baselines
from planner.bounds import dependency_layers, lower_bounds, prune_slow
from planner.candidates import candidates
from planner.context import SearchContext
from planner.mcmc import Space
from planner.search import exhaustive, search
from plans import ClusterSpec, load_experiment

CPU4 = ClusterSpec(nodes=1, gpus_per_node=4, device="cpu")
H100x2 = ClusterSpec(nodes=2, gpus_per_node=8, device="h100")


@pytest.fixture(scope="module")
def tiny():
    exp = load_experiment("ppo-tiny")
    ctx = SearchContext(exp, CPU4, CostModel(CPU4, exp))
    return exp, ctx, candidates(ctx)


def test_dependency_layers():
    ppo = load_experiment("ppo-tiny")
    assert dependency_layers(ppo) == [
        ["actor_gen"],
        ["ref_inf", "rew_inf", "critic_inf"],
        ["actor_train", "critic_train"],
    ]
    assert dependency_layers(load_experiment("dpo-llama2-7b")) == [["ref_inf"], ["actor_train"]]
    assert dependency_layers(load_experiment("grpo-llama2-7b")) == [
        ["actor_gen"],
        ["ref_inf", "rew_inf"],
        ["actor_train"],
    ]


def test_bounds_below_every_plan(tiny):
    exp, ctx, cands = tiny
    b = lower_bounds(exp, CPU4.world_size, cands)
    assert 0 < b.area_s <= b.lower_s and b.cycle_s <= b.lower_s
    assert b.cycle_s >= min(c.time_s for c in cands["actor_gen"])
    for fn in baselines.BASELINES.values():
        cost, _ = fn(ctx)
        assert b.lower_s <= cost
    out = search(exp, CPU4, seed=3, steps=600, time_limit=300)
    assert b.lower_s <= out.cost


def test_prune_slow_keeps_the_optimum(tiny):
    exp, ctx, cands = tiny
    rng = random.Random(7)
    reduced = {name: rng.sample(lst, 4) for name, lst in cands.items()}
    space = Space(reduced)
    best, state = exhaustive(space, ctx)
    assert state is not None and math.isfinite(best)
    chosen = space.allocations(state)
    pruned = prune_slow(exp, reduced, best * (1 + 1e-9))
    for name, alloc in chosen.items():
        assert any(c.alloc == alloc for c in pruned[name]), name
    # and the bound of the reduced space is below its optimum
    assert lower_bounds(exp, CPU4.world_size, reduced).lower_s <= best
    # a limit below every plan keeps one candidate per call rather than none
    assert all(len(v) >= 1 for v in prune_slow(exp, reduced, 0.0).values())


@pytest.mark.parametrize("name, cluster", [("ppo-tiny", CPU4), ("ppo-llama2-7b", H100x2)])
def test_separated_skips_only_splits_that_cannot_win(monkeypatch, name, cluster):
    exp = load_experiment(name)
    fast = baselines.separated(SearchContext(exp, cluster, CostModel(cluster, exp)))
    monkeypatch.setattr(baselines, "_split_bound", lambda ctx, meshes: -math.inf)
    full = baselines.separated(SearchContext(exp, cluster, CostModel(cluster, exp)))
    assert fast == full
