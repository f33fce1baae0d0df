"""The simulator replays a plan the way rlhf-run executes it: home layouts and temporary
copies, outputs posted right after each call without blocking the producer, and no barrier
between iterations."""

from __future__ import annotations

import pytest

from estimator import CostModel, load_profile, simulate
from plans import Allocation, DeviceMesh, ParallelStrategy
from plans.io import cluster_from_dict, experiment_from_dict
from tests.unit.test_estimator_from_run import SHIPPED, ppo_doc

G0, G1, BOTH = DeviceMesh(n_gpus=1), DeviceMesh(gpu_start=1, n_gpus=1), DeviceMesh(n_gpus=2)


def cm(model: str = "small") -> CostModel:
    exp = experiment_from_dict(ppo_doc(model))
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


def test_pushes_do_not_block_producers():
    """ref_inf on g0 and rew_inf on g1 run at once although ref_inf's outputs go to g1 as
    well (the train calls span both devices): a push is posted and the producer goes on."""
    c = cm()
    res = simulate(c, plan(ref_inf=a(G0), rew_inf=a(G1)), record=True)
    bars = calls_of(res, 2)
    r, w = bars["ref_inf"], bars["rew_inf"]
    assert w.start < r.end and r.start < w.end
    # A consumer still waits for its inputs to arrive.
    pushes = [s for s in res.steps if s.kind == "data" and s.iteration == 2]
    for s in pushes:
        assert bars[s.name].start >= s.end - 1e-12


def _separate(critic_micro_batches: int) -> dict[str, Allocation]:
    return plan(
        actor_gen=a(G0),
        actor_train=a(G0),
        critic_inf=a(G1),
        critic_train=a(G1, m=critic_micro_batches),
        ref_inf=a(G0),
        rew_inf=a(G1),
    )


def test_iterations_overlap():
    """critic_train(i) on g1 overlaps actor_gen(i+1) on g0: nothing ends an iteration with a
    barrier, so a critic step slower than the actor's is hidden behind the next generation."""
    c = cm()
    fast = simulate(c, _separate(1), iterations=3, record=True)
    slow = simulate(c, _separate(4), iterations=3, record=True)
    assert slow.call_time_s["critic_train"] > fast.call_time_s["actor_train"]
    prev, now = calls_of(slow, 1), calls_of(slow, 2)
    assert now["actor_gen"].start == pytest.approx(prev["actor_train"].end)
    assert now["actor_gen"].start < prev["critic_train"].end
    assert slow.iteration_time_s == pytest.approx(fast.iteration_time_s)
    assert slow.iteration_time_s == pytest.approx(slow.iter_end[2] - slow.iter_end[1])


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


def test_measured_contention_stretches_each_call_by_its_kind_and_size():
    """A profile's contention timings (passes alone and next to a busy worker) give each call
    kind its own factor, interpolated in log parameters between the models timed; a
    calibrated profile uses its calibration's."""
    from estimator.contention import contention_factor
    from estimator.profile import Calibration, ContentionTiming

    c = cm("small")
    small = c.experiment.model("actor").num_params()
    timings = [
        ContentionTiming(kind="train", model="a", params=small / 100, alone_s=1.0, together_s=1.4),
        ContentionTiming(kind="train", model="b", params=small * 100, alone_s=1.0, together_s=1.0),
        ContentionTiming(kind="generate", model="a", params=small, alone_s=2.0, together_s=2.5),
    ]
    prof = c.profile.model_copy(update={"contention": timings})
    assert contention_factor(prof, "train", small) == pytest.approx(0.2)  # halfway in log
    assert contention_factor(prof, "train", small / 1e4) == pytest.approx(0.4)  # nearest
    assert contention_factor(prof, "generate", small * 7) == pytest.approx(0.25)
    assert contention_factor(prof, "inference", small) == 0.0  # not timed: no stretch
    # A calibration's factors were fitted next to its own contention: that one applies.
    for cal in (Calibration(contention=0.1, fitted=["contention"]), Calibration()):
        calibrated = prof.model_copy(update={"calibration": cal})
        assert contention_factor(calibrated, "train", small) == cal.contention
    slow = CostModel(c.cluster, c.experiment, prof)
    apart = plan(actor_train=a(G0), critic_train=a(G1))
    res = simulate(slow, apart, record=True)
    for name in ("actor_train", "critic_train"):
        base = c.call_cost(name, apart[name])
        want = base.time_s + 0.2 * res.concurrency[name] * base.compute_s
        assert res.concurrency[name] > 0.5
        assert res.call_time_s[name] == pytest.approx(want, rel=0.02)  # (busy of the replay)
    # One device: nothing runs beside a call, and nothing is stretched.
    one = {n: a(G0) for n in apart}
    single = CostModel(cluster_from_dict({"nodes": 1, "gpus_per_node": 1, "device": "cpu"}),
                       c.experiment, prof)  # fmt: skip
    assert (
        simulate(single, one).call_time_s
        == simulate(CostModel(single.cluster, c.experiment, c.profile), one).call_time_s
    )
