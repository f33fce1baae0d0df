"""Search: determinism, MCMC against exhaustive enumeration, baselines' families, never worse."""

from __future__ import annotations

import random

import pytest

from estimator.cost import CostModel
from planner import baselines
from planner.candidates import candidates, meshes
from planner.context import SearchContext
from planner.mcmc import Space
from planner.search import exhaustive, optimize, search
from plans import ClusterSpec, load_experiment

CPU4 = ClusterSpec(nodes=1, gpus_per_node=4, device="cpu")
H100x2 = ClusterSpec(nodes=2, gpus_per_node=8, device="h100")


@pytest.fixture(scope="module")
def tiny_ctx():
    exp = load_experiment("ppo-tiny")
    return SearchContext(exp, CPU4, CostModel(CPU4, exp))


def test_meshes_are_legal_and_complete():
    ms = meshes(ClusterSpec(nodes=2, gpus_per_node=4))
    # per node 4 singles + 2 pairs + 1 quad, plus the two-node mesh
    assert len(ms) == 2 * 7 + 1
    assert len(set(ms)) == len(ms)


def test_same_seed_same_plan():
    exp = load_experiment("ppo-tiny")
    a = search(exp, CPU4, seed=7, steps=1500, time_limit=300)
    b = search(exp, CPU4, seed=7, steps=1500, time_limit=300)
    assert not a.timed_out and not b.timed_out
    assert a.allocations == b.allocations and a.cost == b.cost


def test_mcmc_finds_exhaustive_optimum(tiny_ctx):
    # A reduced space: 5 candidates per call, drawn once with a fixed seed, so 5^6 = 15625 plans.
    rng = random.Random(1234)
    full = candidates(tiny_ctx)
    reduced = {name: rng.sample(lst, 5) for name, lst in full.items()}
    space = Space(reduced)
    best, best_state = exhaustive(space, tiny_ctx)
    assert best_state is not None
    hits = 0
    for seed in range(20):
        # What `search` runs: two chains of annealing rounds, then coordinate descent.
        res, _ = optimize(
            space, tiny_ctx, [seed * 1000, seed * 1000 + 1], steps=2000, deadline=float("inf")
        )
        hits += res.cost <= best * (1 + 1e-12)
    assert hits >= 19, f"MCMC matched the optimum for {hits}/20 seeds"


def test_search_never_slower_than_baselines():
    exp = load_experiment("ppo-llama2-7b")
    out = search(exp, H100x2, seed=0, steps=1500, time_limit=300)
    assert out.cost <= min(out.baselines.values())


def test_baseline_families(tiny_ctx):
    ctx = tiny_ctx
    cost, plan = baselines.symmetric(ctx)
    assert (
        plan
        and len({(a.mesh, a.strategy.dp, a.strategy.tp, a.strategy.pp) for a in plan.values()}) == 1
    )
    assert all(a.mesh.size == CPU4.world_size for a in plan.values())
    cost, plan = baselines.separated(ctx)
    role_mesh = {ctx.exp.mfcs()[i].role: None for i in range(len(plan))}
    for m in ctx.exp.mfcs():
        role_mesh[m.role] = role_mesh[m.role] or plan[m.name].mesh
        assert plan[m.name].mesh == role_mesh[m.role]  # a model's calls share its group
    groups = list(role_mesh.values())
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not a.overlaps(b, CPU4.gpus_per_node)
    cost, plan = baselines.megatron(ctx)
    # tp = devices per node: tiny's 4 query heads split, its 2 kv heads are replicated
    assert plan and all(a.strategy.tp == 4 for a in plan.values())


def test_megatron_uses_node_wide_tp_when_heads_allow():
    exp = load_experiment("ppo-llama2-7b")
    ctx = SearchContext(exp, H100x2, CostModel(H100x2, exp))
    cost, plan = baselines.megatron(ctx)
    assert plan is not None
    assert all(a.strategy.tp == 8 and a.mesh.size == 16 for a in plan.values())
