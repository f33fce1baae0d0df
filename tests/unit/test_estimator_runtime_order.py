"""The simulator replays a plan the way rlhf-run executes it: home layouts and temporary
copies, outputs pushed right after each call (rendezvous of both meshes), and a barrier at the
end of every iteration (the metrics gather)."""

from __future__ import annotations

import pytest

from estimator import CostModel, load_profile, simulate
from plans import Allocation, DeviceMesh, ParallelStrategy
from plans.io import cluster_from_dict, experiment_from_dict
from tests.unit.test_estimator_from_run import SHIPPED

G0, G1, BOTH = DeviceMesh(n_gpus=1), DeviceMesh(gpu_start=1, n_gpus=1), DeviceMesh(n_gpus=2)


def cm(model: str = "small") -> CostModel:
    exp = experiment_from_dict(
        {
            "algorithm": "ppo",
            "batch_size": 8,
            "prompt_len": 16,
            "gen_len": 16,
            "mini_batches": 2,
            "dtype": "float32",
            "roles": {r: model for r in ("actor", "critic", "ref", "reward")},
        }
    )
    cluster = cluster_from_dict({"nodes": 1, "gpus_per_node": 2, "device": "cpu"})
    return CostModel(cluster, exp, load_profile(SHIPPED))


def a(mesh: DeviceMesh, dp=1, tp=1, m=1) -> Allocation:
    return Allocation(mesh=mesh, strategy=ParallelStrategy(dp=dp, tp=tp, micro_batches=m))


def plan(**over: Allocation) -> dict[str, Allocation]:
    every = a(BOTH, dp=2)
    base = {n: every for n in ("actor_gen", "ref_inf", "rew_inf", "critic_inf")}
    base |= {"actor_train": every, "critic_train": every}
    return base | over


def calls_of(res, it: int) -> dict:
    return {s.name: s for s in res.steps if s.kind == "call" and s.iteration == it}


def test_a_role_moves_from_home_only():
    """The actor lives in actor_train's layout; actor_gen gets a copy moved from there each
    iteration (the copy is dropped after training), and nothing moves back before training."""
    c = cm()
    p = plan(actor_gen=a(BOTH, tp=2), actor_train=a(G0))
    res = simulate(c, p, record=True)
    moves = [s for s in res.steps if s.kind == "realloc" and s.iteration == 2]
    assert {s.name for s in moves} == {"actor_gen"}
    want = c.realloc_cost("actor", p["actor_train"], p["actor_gen"]).time_s
    assert want > 0 and res.realloc_s == pytest.approx(want)
    # The same layout for every call of a role: no moves at all.
    assert simulate(c, plan()).realloc_s == 0


def test_pushes_tie_meshes_together():
    """ref_inf on g0 and rew_inf on g1 overlap only when nothing ref_inf pushes is due on g1
    before rew_inf runs: with the train calls on both devices, g1 must take part in ref_inf's
    push first (a rendezvous), so the two run one after the other."""
    c = cm()
    ref, rew = a(G0), a(G1)
    tied = simulate(c, plan(ref_inf=ref, rew_inf=rew), record=True)
    apart = simulate(
        c,
        plan(ref_inf=ref, rew_inf=rew, actor_train=a(G0, m=2), critic_train=a(G0, m=2)),
        record=True,
    )
    t_ref, t_rew = tied.call_time_s["ref_inf"], tied.call_time_s["rew_inf"]
    for res, overlap in ((tied, False), (apart, True)):
        bars = calls_of(res, 2)
        r, w = bars["ref_inf"], bars["rew_inf"]
        if overlap:
            assert w.start < r.end and r.start < w.end
        else:
            assert w.start >= r.end - 1e-12
            assert max(r.end, w.end) - min(r.start, w.start) >= t_ref + t_rew - 1e-9


def test_iterations_are_separated_by_a_barrier():
    """critic_train(i) on g1 could overlap actor_gen(i+1) on g0, but rlhf-run gathers the
    metrics of every iteration first: an iteration is one barrier-to-barrier span."""
    c = cm()
    p = plan(
        actor_gen=a(G0),
        actor_train=a(G0),
        critic_inf=a(G1),
        critic_train=a(G1),
        ref_inf=a(G0),
        rew_inf=a(G1),
    )
    res = simulate(c, p, iterations=3, record=True)
    for it in (1, 2):
        steps = [s for s in res.steps if s.iteration == it]
        prev_end = max(s.end for s in res.steps if s.iteration == it - 1)
        assert min(s.start for s in steps) >= prev_end - 1e-12
    last = [s for s in res.steps if s.iteration == 2]
    span = max(s.end for s in last) - min(s.start for s in last)
    assert res.iteration_time_s == pytest.approx(span)
    assert simulate(c, p, iterations=2).iteration_time_s == pytest.approx(res.iteration_time_s)


def test_pushes_move_whole_batches_to_every_consumer_rank():
    """A dp=2 producer pushing to a dp=2 consumer on the same devices still moves data: every
    consumer rank receives the whole batch (the other rank's half)."""
    c = cm("tiny")
    res = simulate(c, plan())
    assert res.data_s > 0
    one = simulate(c, {n: a(G0) for n in plan()})
    assert one.data_s == 0  # one device holds everything already


def test_contention_stretches_calls_while_other_cores_compute():
    """With a calibrated contention factor, a call's compute is stretched by the share of its
    node's other devices that are busy: the two train calls on g0 and g1 run at the same time
    and both stretch; on one device one after the other, neither does."""
    from estimator.profile import Calibration

    c = cm()
    prof = c.profile.model_copy(update={"calibration": Calibration(contention=0.25)})
    slow = CostModel(c.cluster, c.experiment, prof)
    apart = plan(actor_train=a(G0), critic_train=a(G1))
    together = plan(actor_train=a(G0), critic_train=a(G0))
    for p, busy in ((apart, 1.0), (together, 0.0)):
        res = simulate(slow, p, record=True)
        base = c.call_cost("actor_train", p["actor_train"])
        assert res.concurrency["actor_train"] == pytest.approx(busy, abs=0.05)
        want = base.time_s + 0.25 * res.concurrency["actor_train"] * base.compute_s
        assert res.call_time_s["actor_train"] == pytest.approx(want, rel=0.02)
    # A call spanning both devices has its own other rank computing: fully contended.
    assert simulate(slow, plan(), record=True).concurrency["ref_inf"] == pytest.approx(1.0)
    # Without a calibration nothing changes.
    assert simulate(c, apart).call_time_s["actor_train"] == c.time("actor_train", a(G0))
