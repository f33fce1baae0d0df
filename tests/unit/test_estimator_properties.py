"""Properties of the time model and the simulator (relations, not snapshot numbers)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import CostModel, estimate_allocations, simulate
from estimator.cost import scopes
from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy
from plans.io import experiment_from_dict


def exp(model="llama2-7b", batch=256, prompt=256, gen=256, mini=1, algorithm="ppo"):
    roles = ("actor", "critic", "ref", "reward") if algorithm == "ppo" else ("actor", "ref")
    return experiment_from_dict(
        {
            "algorithm": algorithm,
            "roles": {r: model for r in roles},
            "batch_size": batch,
            "prompt_len": prompt,
            "gen_len": gen,
            "mini_batches": mini,
        }
    )


def alloc(gpu_start=0, n_gpus=8, n_nodes=1, dp=1, tp=1, pp=1, m=1) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(n_nodes=n_nodes, gpu_start=gpu_start, n_gpus=n_gpus),
        strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp, micro_batches=m),
    )


@settings(max_examples=40, deadline=None)
@given(
    pp=st.sampled_from([2, 4, 8]),
    m_exp=st.integers(0, 4),
    batch=st.sampled_from([64, 128, 256]),
    call=st.sampled_from(["actor_train", "ref_inf"]),
)
def test_more_micro_batches_shrink_the_pipeline_bubble(pp, m_exp, batch, call):
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=8), exp(batch=batch))
    m1, m2 = 2**m_exp, 2 ** (m_exp + 1)

    def bubble(m):
        c = cm.call_cost(call, alloc(n_gpus=pp, pp=pp, m=m))
        b = c.breakdown
        pipeline = b["compute"] + b["tp_comm"] + b["pp_comm"] + b["bubble"]
        return b["bubble"], b["bubble"] / pipeline

    (s1, f1), (s2, f2) = bubble(m1), bubble(m2)
    assert f1 == pytest.approx((pp - 1) / (m1 + pp - 1))
    assert f2 == pytest.approx((pp - 1) / (m2 + pp - 1))
    assert f2 < f1 and s2 < s1


@settings(max_examples=30, deadline=None)
@given(
    call=st.sampled_from(["actor_gen", "ref_inf", "actor_train"]),
    batch=st.sampled_from([16, 64, 256]),
    device=st.sampled_from(["h100", "a100"]),
)
def test_tp_group_spanning_nodes_costs_more(call, batch, device):
    """tp=8 on one node of 8 against tp=8 over two nodes of 4: same work, slower links."""
    e = exp(batch=batch)
    inside = CostModel(ClusterSpec(nodes=1, gpus_per_node=8, device=device), e)
    across = CostModel(ClusterSpec(nodes=2, gpus_per_node=4, device=device), e)
    a_in, a_out = alloc(n_gpus=8, tp=8), alloc(n_gpus=4, n_nodes=2, tp=8)
    assert scopes(a_in, 8)[0] == "intra" and scopes(a_out, 4)[0] == "inter"
    c_in, c_out = inside.call_cost(call, a_in), across.call_cost(call, a_out)
    assert c_out.breakdown["tp_comm"] > c_in.breakdown["tp_comm"]
    assert c_out.time_s > c_in.time_s
    assert c_out.breakdown["compute"] == pytest.approx(c_in.breakdown["compute"])


def _ppo_plan(ref: Allocation, rew: Allocation) -> dict[str, Allocation]:
    every = alloc(n_gpus=8, dp=8)
    return {
        "actor_gen": every,
        "ref_inf": ref,
        "rew_inf": rew,
        "critic_inf": every,
        "actor_train": every,
        "critic_train": every,
    }


@settings(max_examples=25, deadline=None)
@given(
    batch=st.sampled_from([32, 64, 256]),
    model=st.sampled_from(["llama2-7b", "llama2-13b"]),
    ref_tp=st.sampled_from([1, 2, 4]),
)
def test_disjoint_meshes_overlap_shared_meshes_serialise(batch, model, ref_tp):
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=8), exp(model=model, batch=batch))
    ref = alloc(gpu_start=0, n_gpus=4, dp=4 // ref_tp, tp=ref_tp)
    rew_apart = alloc(gpu_start=4, n_gpus=4, dp=4)
    rew_shared = alloc(gpu_start=0, n_gpus=4, dp=4)
    for rew, overlap in ((rew_apart, True), (rew_shared, False)):
        plan = _ppo_plan(ref, rew)
        # rlhf-run pushes each output to its consumers right away, and a push is a rendezvous
        # of both meshes: ref_inf's outputs must not be due on rew_inf's devices before
        # rew_inf runs, so the train calls stay on ref_inf's half here.
        plan["actor_train"] = plan["critic_train"] = alloc(gpu_start=0, n_gpus=4, dp=4)
        res = simulate(cm, plan, record=True)
        last = max(s.iteration for s in res.steps)
        bars = {s.name: s for s in res.steps if s.kind == "call" and s.iteration == last}
        r, w = bars["ref_inf"], bars["rew_inf"]
        span = max(r.end, w.end) - min(r.start, w.start)
        t_ref, t_rew = res.call_time_s["ref_inf"], res.call_time_s["rew_inf"]
        # Up to the data fetches each call makes first (microseconds), the pair takes the
        # max of the two times on disjoint meshes and their sum on a shared one.
        eps = 1e-9 * span
        if overlap:
            assert max(t_ref, t_rew) - eps <= span <= max(t_ref, t_rew) + res.data_s + eps
            assert span < t_ref + t_rew
        else:
            assert t_ref + t_rew - eps <= span <= t_ref + t_rew + res.data_s + eps


@settings(max_examples=25, deadline=None)
@given(
    gen_dp=st.sampled_from([1, 2, 4, 8]),
    train_pp=st.sampled_from([1, 2, 4]),
    batch=st.sampled_from([64, 256]),
)
def test_iteration_time_between_busiest_device_and_serial_sum(gen_dp, train_pp, batch):
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=8), exp("small", batch=batch, mini=2))
    plan = _ppo_plan(alloc(gpu_start=0, n_gpus=4, dp=4), alloc(gpu_start=4, n_gpus=4, dp=4))
    plan["actor_gen"] = alloc(n_gpus=8, dp=gen_dp, tp=8 // gen_dp)
    plan["actor_train"] = alloc(n_gpus=8, dp=8 // train_pp, pp=train_pp, m=train_pp)
    t, res = estimate_allocations(cm, plan)
    assert math.isfinite(t)
    calls = sum(res.call_time_s.values())
    busiest = calls - res.call_time_s["rew_inf"]  # device 0 runs everything but rew_inf
    assert busiest <= t * (1 + 1e-9)
    assert t <= (calls + res.realloc_s + res.data_s) * (1 + 1e-9)


def test_reallocation_costs():
    cm = CostModel(ClusterSpec(nodes=2, gpus_per_node=8), exp())
    a = alloc(n_gpus=8, tp=8)
    assert cm.realloc_cost("actor", a, a).time_s == 0
    # Same devices, another split: moves happen, over NVLink only.
    b = alloc(n_gpus=8, dp=2, tp=4)
    same_node = cm.realloc_cost("actor", a, b)
    assert same_node.time_s > 0 and same_node.scope == "intra"
    # To the other node: every destination shard crosses the network, the whole model
    # once per dp replica.
    far = Allocation(mesh=DeviceMesh(node_start=1, n_gpus=8), strategy=b.strategy)
    moved = cm.realloc_cost("actor", a, far)
    params = cm.experiment.model("actor").num_params() * 2
    assert moved.scope == "inter" and moved.time_s > same_node.time_s
    assert moved.bytes_total == pytest.approx(2 * params, rel=1e-6)
