"""Staleness in the plan: the simulator replays the staged generation view and the proximal
pass, the bounds stay below every simulated plan, and the search picks k within the bound."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from estimator.cost import CostModel
from estimator.memory import shared_weight_bytes
from estimator.simulate import simulate, steady_iterations
from planner.bounds import cycle_spans, cycles, lower_bounds, predecessors
from planner.candidates import candidates
from planner.context import SearchContext
from planner.mcmc import Space
from planner.search import search
from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy, PlanError
from plans.io import example_path, experiment_from_dict, load_experiment, load_plan

PROFILES = Path(__file__).parents[2] / "estimator" / "profiles"
CPU2 = ClusterSpec(nodes=1, gpus_per_node=2, device="cpu")
CPU4 = ClusterSpec(nodes=1, gpus_per_node=4, device="cpu")
H100x2 = ClusterSpec(nodes=2, gpus_per_node=8, device="h100")


def allowing(name: str, bound: int, **fields):
    doc = load_experiment(example_path(name, "experiment")).model_dump(mode="json")
    return experiment_from_dict({**doc, **fields, "async": {"max_staleness": bound}})


def mesh(first: int, n: int) -> DeviceMesh:
    return DeviceMesh(node_start=0, n_nodes=1, gpu_start=first, n_gpus=n)


@pytest.fixture(scope="module")
def split():
    """GRPO with generation, reference and reward on devices 0-1, training on 2-3."""
    exp = allowing("grpo-tiny", 2)
    d2 = ParallelStrategy(dp=2, tp=1, pp=1)
    gen, train = Allocation(mesh=mesh(0, 2), strategy=d2), Allocation(mesh=mesh(2, 2), strategy=d2)
    allocs = {"actor_gen": gen, "ref_inf": gen, "rew_inf": gen, "actor_train": train}
    return CostModel(CPU4, exp), allocs


def _parts(cm: CostModel, a: dict[str, Allocation]) -> dict[str, float]:
    t = {n: cm.call_cost(n, x).time_s for n, x in a.items()}

    def data(src: str, dst: str) -> float:
        return cm.data_cost(cm.mfcs[src].outputs, dst, a[src], a[dst]).time_s

    return {
        **t,
        "move": cm.realloc_cost("actor", a["actor_train"], a["actor_gen"], False).time_s,
        "prox": cm.proximal_cost("actor_train", a["actor_train"]).time_s,
        "gen>ref": data("actor_gen", "ref_inf"),
        "gen>train": data("actor_gen", "actor_train"),
        "ref>train": data("ref_inf", "actor_train"),
        "rew>train": data("rew_inf", "actor_train"),
    }


def test_synchronous_iteration_by_hand(split):
    """k = 0 is today's order: move, generate, score, train, one after another."""
    cm, a = split
    p = _parts(cm, a)
    expected = (
        p["move"] + p["actor_gen"] + p["gen>ref"] + p["ref_inf"]
        + max(p["rew_inf"] + p["rew>train"], p["ref>train"]) + p["actor_train"]
    )  # fmt: skip
    res = simulate(cm, a)
    assert res.iteration_time_s == pytest.approx(expected, rel=1e-12)
    assert res.call_time_s["actor_train"] == p["actor_train"]  # no proximal pass at k = 0
    assert simulate(cm, a, staleness=0).iteration_time_s == res.iteration_time_s


@pytest.mark.parametrize("name", ["ppo-tiny-4cpu", "ppo-llama2-70b-128xh100"])
def test_synchronous_examples_keep_their_moves_and_call_times(name):
    """k = 0 replays as before: three iterations, every actor move right before generation,
    the calls at their own prices (no proximal pass)."""
    plan = load_plan(example_path(name, "plan"))
    cm = CostModel(plan.cluster, plan.experiment)
    res = simulate(cm, plan.allocations, record=True)
    assert steady_iterations(0) == 3 and len(res.iter_end) == 3
    assert res.iteration_time_s == res.iter_end[-1] - res.iter_end[-2]
    for n, t in res.call_time_s.items():
        assert t == cm.call_cost(n, plan.allocations[n]).time_s
    gens = {s.iteration: s for s in res.steps if s.kind == "call" and s.name == "actor_gen"}
    moves = [s for s in res.steps if s.kind == "realloc" and s.role == "actor"]
    assert moves and all(s.name == "actor_gen" and s.end <= gens[s.iteration].start for s in moves)


def test_one_iteration_ahead_overlaps_generation_with_training(split):
    """k = 1: generation i + 1 runs while train i does; the training mesh is the bottleneck
    here, so an iteration is the staged move plus the train call with its proximal pass."""
    cm, a = split
    p = _parts(cm, a)
    gen_side = p["move"] + p["actor_gen"] + p["gen>ref"] + p["ref_inf"] + p["rew_inf"]
    train_side = p["move"] + p["actor_train"] + p["prox"]
    assert train_side > gen_side  # the case computed here
    assert max(p["gen>train"], p["ref>train"], p["rew>train"]) < p["move"]  # data never waits
    res = simulate(cm, a, staleness=1)
    assert res.iteration_time_s == pytest.approx(train_side, rel=1e-12)
    assert res.call_time_s["actor_train"] == pytest.approx(p["actor_train"] + p["prox"])
    # the gain: generation and scoring now hidden behind training, less the proximal pass
    hidden = p["actor_gen"] + p["gen>ref"] + p["ref_inf"]
    hidden += max(p["rew_inf"] + p["rew>train"], p["ref>train"])
    sync = simulate(cm, a).iteration_time_s
    assert sync - res.iteration_time_s == pytest.approx(hidden - p["prox"], rel=1e-9)


def test_staged_move_sits_before_the_train_call(split):
    cm, a = split
    res = simulate(cm, a, staleness=1, record=True)
    moves = [s for s in res.steps if s.kind == "realloc" and s.role == "actor"]
    trains = {s.iteration: s for s in res.steps if s.kind == "call" and s.name == "actor_train"}
    gens = {s.iteration: s for s in res.steps if s.kind == "call" and s.name == "actor_gen"}
    # one before generation 0 (its initial view), then one per iteration before train,
    # spanning both meshes (drawn once per mesh)
    assert {(s.iteration, s.first_rank) for s in moves} == {(0, 0), (0, 2)} | {
        (i, r) for i in range(len(trains)) for r in (0, 2)
    }
    first = [s for s in moves if s.end <= gens[0].start]
    assert len(first) == 2
    for i, tr in trains.items():
        staged = [s for s in moves if s.iteration == i and s.end <= tr.start and s not in first]
        assert staged and max(s.end for s in staged) == tr.start
        if i + 1 in gens:  # generation i + 1 reads that view: it starts once it is there
            assert gens[i + 1].start == pytest.approx(staged[0].end)
            assert gens[i + 1].start < tr.end  # and overlaps train i


def test_k_views_on_the_generation_mesh(split):
    cm, a = split
    view = cm.call_cost("actor_gen", a["actor_gen"]).memory.resident
    peaks = [simulate(cm, a, staleness=k).peak_memory["actor_gen"] for k in (0, 1, 2)]
    assert peaks[1] == pytest.approx(peaks[0])  # one view as before (nothing shared here)
    assert peaks[2] == pytest.approx(peaks[1] + view)
    # more views, no more speed: generation i + 1 still waits for the move before train i
    t1, t2 = (simulate(cm, a, staleness=k).iteration_time_s for k in (1, 2))
    assert t2 == pytest.approx(t1, rel=1e-12)
    ctx = SearchContext(cm.experiment, CPU4, cm, staleness=(1, 2))
    assert ctx.fastest_staleness(a) == (pytest.approx(t1), 1)  # the smaller k on a tie


def test_stale_views_share_nothing_with_the_home():
    """Where generation's devices also hold the home, a synchronous view shares tensors (and
    hosts rows) with it; a staged view is filled before the train call updates the home in
    place, so it is a full copy (plans.staleness.private_view_roles)."""
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    exp = allowing("ppo-tiny", 2)
    cm, a = CostModel(plan.cluster, exp), plan.allocations
    shared = shared_weight_bytes(exp.model("actor"), exp.dtype, a["actor_train"],
                                 a["actor_gen"], plan.cluster.gpus_per_node, True)  # fmt: skip
    assert min(shared[r] for r in (0, 1)) > 0  # generation's devices 0-1 hold the home too
    view = cm.call_cost("actor_gen", a["actor_gen"]).memory.resident
    peak = [simulate(cm, a, staleness=k).peak_memory["actor_gen"] for k in (0, 1, 2)]
    assert peak[1] == pytest.approx(peak[0] + min(shared[r] for r in (0, 1)), rel=1e-12)
    assert peak[2] == pytest.approx(peak[1] + view, rel=1e-12)


def test_staleness_outside_the_bound_is_refused(split):
    cm, a = split
    with pytest.raises(PlanError) as e:
        simulate(cm, a, staleness=3)
    assert e.value.field == "max_staleness"
    plain = CostModel(CPU4, load_experiment("grpo-tiny"))
    with pytest.raises(PlanError):
        simulate(plain, a, staleness=1)


def _random_plans(name: str, cluster: ClusterSpec, bound: int, n: int, seed: int):
    exp = allowing(name, bound)
    ctx = SearchContext(exp, cluster, CostModel(cluster, exp))
    cands = candidates(ctx)
    rng = random.Random(seed)
    states = [tuple(rng.randrange(len(c)) for c in cands.values()) for _ in range(n)]
    return exp, ctx, cands, states


@pytest.mark.parametrize("name, cluster", [("ppo-tiny", CPU4), ("grpo-llama2-7b", H100x2)])
def test_steady_state_is_reached(name, cluster):
    """Replays of random plans settle within k iterations, some alternating between two
    iteration times: the estimate does not change with more iterations of either parity."""
    exp, ctx, cands, states = _random_plans(name, cluster, 2, 60, 11)
    names = list(cands)
    checked = 0
    for state in states:
        allocs = {n: cands[n][i].alloc for n, i in zip(names, state, strict=True)}
        for k in (0, 1, 2):
            base = simulate(ctx.cm, allocs, staleness=k).iteration_time_s
            if not math.isfinite(base):
                continue
            checked += 1
            n = steady_iterations(k)
            for more in (1, 2, 3, 6):
                t = simulate(ctx.cm, allocs, n + more, staleness=k).iteration_time_s
                assert t == pytest.approx(base, rel=1e-9), (k, more)
    assert checked > 30


@pytest.mark.parametrize("name, cluster", [("ppo-tiny", CPU4), ("grpo-llama2-7b", H100x2)])
def test_bounds_below_every_simulated_plan(name, cluster):
    exp, ctx, cands, states = _random_plans(name, cluster, 2, 80, 5)
    space_of = {
        k: Space(cands, None, cluster.gpus_per_node, predecessors(exp), cycles(exp),
                 cycle_spans(exp, k))
        for k in (0, 1, 2)
    }  # fmt: skip
    assert cycle_spans(exp, 2)[0] == 3  # the actor's cycle spans k + 1 iterations
    bounds = {k: lower_bounds(exp, cluster.world_size, cands, k).lower_s for k in (0, 1, 2)}
    assert bounds[2] <= bounds[1] <= bounds[0]
    fits = 0
    for state in states:
        allocs = space_of[0].allocations(state)
        for k in (0, 1, 2):
            t = simulate(ctx.cm, allocs, staleness=k).iteration_time_s
            if not math.isfinite(t):
                continue
            fits += 1
            assert bounds[k] <= t * (1 + 1e-12)
            assert space_of[k].lower(state) <= t * (1 + 1e-12)
    assert fits > 30


def test_search_keeps_k_zero_without_a_bound():
    out = search(load_experiment("grpo-tiny"), CPU4, seed=2, steps=300, time_limit=300)
    assert out.staleness == 0 and out.sync_cost == out.cost


def test_search_picks_the_faster_k_within_the_bound():
    """One prompt per iteration (nothing for data parallelism to split) on two devices: the
    fastest plan generates on one device while the other trains, one iteration ahead."""
    exp = allowing("ppo-tiny", 1, batch_size=1, mini_batches=1)
    out = search(exp, CPU2, method="exhaustive")
    assert out.staleness == 1 and out.cost < out.sync_cost
    cm = CostModel(CPU2, exp)
    assert simulate(cm, out.allocations, staleness=1).iteration_time_s == out.cost
    sync = search(allowing("ppo-tiny", 0, batch_size=1, mini_batches=1), CPU2, method="exhaustive")
    assert sync.cost == out.sync_cost and sync.staleness == 0


def test_a_larger_k_must_gain_more_than_rounding():
    """k = 1 and k = 2 price this plan the same but for the last bits (k > 1 adds no overlap,
    plans.staleness); the search keeps the smaller k, with fewer views and fresher data."""
    from estimator import load_profile

    exp = allowing("grpo-tiny", 2)
    one = ParallelStrategy(dp=1, tp=1, pp=1)
    two = ParallelStrategy(dp=2, tp=1, pp=1, micro_batches=2)
    allocs = {
        "actor_gen": Allocation(mesh=mesh(0, 1), strategy=one),
        "ref_inf": Allocation(mesh=mesh(0, 2), strategy=two),
        "rew_inf": Allocation(mesh=mesh(0, 2), strategy=ParallelStrategy(dp=2, tp=1, pp=1)),
        "actor_train": Allocation(mesh=mesh(2, 1), strategy=one),
    }
    profile = load_profile(PROFILES / "cpu-epyc-2core-1thread_4workers.json")
    ctx = SearchContext(exp, CPU4, CostModel(CPU4, exp, profile), staleness=(1, 2))
    t1 = simulate(ctx.cm, allocs, staleness=1).iteration_time_s
    t2 = simulate(ctx.cm, allocs, staleness=2).iteration_time_s
    assert math.isclose(t1, t2, rel_tol=1e-12)
    assert ctx.fastest_staleness(allocs) == (t1, 1)


def test_a_stale_plans_train_call_is_calibrated_with_its_proximal_pass(split):
    """`call_cost_at` (the price simulate, and a calibration from a run, give each call) adds
    the proximal forward pass to the actor's train call under k > 0, part by part, and
    changes nothing at k = 0; a calibration point of a k = 1 run holds it too."""
    from estimator.calibrate import RunData, points
    from estimator.cost import COMPUTE_PARTS
    from estimator.simulate import call_cost_at
    from plans import Plan
    from plans.metrics import MetricsRow

    cm, a = split
    c = cm.call_cost("actor_train", a["actor_train"])
    p = cm.proximal_cost("actor_train", a["actor_train"])
    assert call_cost_at(cm, "actor_train", a["actor_train"], 0) is c
    at = call_cost_at(cm, "actor_train", a["actor_train"], 1)
    assert at.time_s == pytest.approx(c.time_s + p.time_s, rel=1e-12)
    assert at.compute_s == pytest.approx(c.compute_s + p.compute_s, rel=1e-12)
    assert sum(at.breakdown.values()) == pytest.approx(at.time_s, rel=1e-9)
    assert call_cost_at(cm, "actor_gen", a["actor_gen"], 1) is cm.call_cost(
        "actor_gen", a["actor_gen"]
    )
    plan = Plan(cluster=CPU4, experiment=cm.experiment, allocations=a, max_staleness=1)
    call = {
        "start": 0.0,
        "end": 1.0,
        "compute_s": 1.0,
        "wait_s": 0.0,
        "data_s": 0.0,
        "realloc_s": 0.0,
    }
    rows = [
        MetricsRow(iteration=i, iteration_s=1.0, realloc_s=0.0, peak_memory_mib=1.0,
                   calls={n: call for n in a})
        for i in range(3)
    ]  # fmt: skip
    pt = next(q for q in points(cm.profile, [RunData(plan, rows)]) if q.call == "actor_train")
    compute = sum(v for k, v in at.breakdown.items() if k in COMPUTE_PARTS)
    assert pt.compute == pytest.approx(compute, rel=1e-9)
    assert pt.compute + pt.comm == pytest.approx(at.time_s, rel=1e-9)
