"""Search moves and starting plans: legal meshes, splits that cover their union, greedy seeds."""

from __future__ import annotations

import math
import random

import pytest

from estimator.cost import CostModel
from planner import baselines
from planner.bounds import cycles, predecessors
from planner.candidates import candidates, meshes
from planner.context import SearchContext
from planner.mcmc import Space, span
from planner.seeds import _fastest, greedy, layer_options
from plans import ClusterSpec, DeviceMesh, load_experiment

H100x4 = ClusterSpec(nodes=4, gpus_per_node=8, device="h100")


@pytest.fixture(scope="module")
def ppo7b():
    exp = load_experiment("ppo-llama2-7b")
    ctx = SearchContext(exp, H100x4, CostModel(H100x4, exp))
    cands = candidates(ctx)
    return exp, ctx, Space(cands, None, H100x4.gpus_per_node)


def test_neighbors_are_legal_and_near(ppo7b):
    _, _, space = ppo7b
    legal = set(meshes(H100x4))
    for mesh in list(space.mesh_at.values()):
        lo, hi = span(mesh, 8)
        for other in space.neighbors(mesh):
            assert other in legal and other != mesh
            a, b = span(other, 8)
            steps = {0, min(hi - lo, 8), max(1, (hi - lo) // 2)}
            assert abs(a - lo) in steps and abs(b - hi) in steps
    whole = DeviceMesh.whole(4, 8)
    near = {span(m, 8) for m in space.neighbors(whole)}
    assert {(0, 24), (8, 32)} <= near  # shrunk by one node at either end


def test_pair_options_split_or_merge(ppo7b):
    _, _, space = ppo7b
    rng = random.Random(0)
    names = space.names
    k, j = names.index("actor_train"), names.index("critic_train")
    state = list(space.random_state(rng))
    whole = DeviceMesh.whole(4, 8)
    state[k] = space.fastest[k][whole]
    state[j] = space.fastest[j][whole]
    state = tuple(state)
    opts = space.pair_options(k, j, state)
    assert opts and (whole, whole) not in opts  # the current placement is not an option
    for mk, mj in opts:
        first, second = sorted([span(mk, 8), span(mj, 8)])
        assert first[0] == 0 and first[1] == second[0] and second[1] == 32  # a split
    # split at node 1: the union for both is among the options back
    half = [o for o in opts if span(o[0], 8) == (0, 8)][0]
    state2 = list(state)
    state2[k], state2[j] = space.fastest[k][half[0]], space.fastest[j][half[1]]
    assert (whole, whole) in space.pair_options(k, j, tuple(state2))


def test_proposals_stay_in_the_space(ppo7b):
    _, _, space = ppo7b
    rng = random.Random(1)
    state = space.random_state(rng)
    for _ in range(3000):
        state = space.propose(state, rng)
        assert len(state) == len(space.cands)
        assert all(0 <= i < len(c) for i, c in zip(state, space.cands, strict=True))


def test_greedy_plan_fits_and_beats_its_start(ppo7b):
    exp, ctx, _ = ppo7b
    whole = DeviceMesh.whole(4, 8)
    start_cost, start = _fastest(ctx, {m.name: whole for m in exp.mfcs()}, {})
    assert start is not None
    plan = greedy(ctx, baselines.symmetric(ctx)[1])
    assert plan is not None and set(plan) == {m.name for m in exp.mfcs()}
    assert math.isfinite(ctx.plan_cost(plan)) and ctx.plan_cost(plan) <= start_cost


def test_layer_options_whole_or_disjoint(ppo7b):
    _, ctx, _ = ppo7b
    whole = DeviceMesh.whole(4, 8)
    options = layer_options(ctx, ["actor_train", "critic_train"])
    assert options[0] == {"actor_train": whole, "critic_train": whole}
    assert len(options) > 2
    for o in options[1:]:
        a, b = o["actor_train"], o["critic_train"]
        assert not a.overlaps(b, 8) and a.size + b.size == 32


def test_lower_bound_of_a_state_never_exceeds_its_cost(ppo7b):
    exp, ctx, _ = ppo7b
    space = Space(candidates(ctx), None, 8, predecessors(exp), cycles(exp))
    rng = random.Random(2)
    state, checked = space.random_state(rng), 0
    for _ in range(400):
        state = space.propose(state, rng)
        cost = ctx.plan_cost(space.allocations(state))
        if math.isfinite(cost):
            checked += 1
            assert space.lower(state) <= cost
    assert checked > 50
