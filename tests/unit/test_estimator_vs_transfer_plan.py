"""The estimator prices moves with closed forms; the runtime executes plans.transfer's plans.
These must not drift apart: bytes per move agree on random layout pairs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.lookup import ProfileLookup
from estimator.profile import analytic_profile
from estimator.transfer import data_transfer, realloc_transfer
from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy, load_experiment, preset
from plans.transfer import SAMPLES, Piece, batch_layout, plan_params, plan_transfers

CLUSTER = ClusterSpec(nodes=2, gpus_per_node=4, device="h100")
LOOKUP = ProfileLookup(analytic_profile(CLUSTER), intra_bw=1e11, inter_bw=1e10)
GPN = CLUSTER.gpus_per_node


@st.composite
def allocations(draw):
    whole = draw(st.booleans())
    if whole:
        mesh = DeviceMesh(node_start=0, n_nodes=2, n_gpus=4)
    else:
        size = draw(st.sampled_from([1, 2, 4]))
        mesh = DeviceMesh(
            node_start=draw(st.integers(0, 1)),
            n_gpus=size,
            gpu_start=size * draw(st.integers(0, 4 // size - 1)),
        )
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if mesh.size % t == 0]))
    pps = [p for p in (1, 2, 4) if (mesh.size // tp) % p == 0]
    pp = draw(st.sampled_from(pps))
    return Allocation(mesh=mesh, strategy=ParallelStrategy(tp=tp, pp=pp, dp=mesh.size // tp // pp))


@settings(max_examples=60, deadline=None)
@given(allocations(), allocations())
def test_realloc_bytes_match_the_plan(src, dst):
    # MHA: with tp above the kv head count (GQA replication) the closed form still counts kv
    # projections as split, not replicated; that case is left out here (see the notes).
    spec = preset("tiny-mha")
    est = realloc_transfer(spec, 2, src, dst, GPN, LOOKUP)
    per_pair = plan_params(src, dst, spec, GPN).bytes_per_pair(2)
    crossing = {k: v for k, v in per_pair.items() if k[0] != k[1]}
    total = sum(crossing.values())
    received: dict[int, int] = {}
    for (_, d), b in crossing.items():
        received[d] = received.get(d, 0) + b
    # Norm weights (replicated, a few hundred bytes) are the only thing the closed form rounds.
    slack = 2 * spec.hidden_size * spec.num_hidden_layers * 2 + 4 * spec.hidden_size
    assert abs(est.bytes_total - total) <= slack * CLUSTER.world_size
    assert abs(est.bytes_max - max(received.values(), default=0)) <= slack


@settings(max_examples=60, deadline=None)
@given(allocations(), allocations())
def test_data_bytes_match_the_runtime_plan(src, dst):
    exp = load_experiment("ppo-tiny")
    consumer = next(m for m in exp.mfcs() if m.name == "actor_train")
    n = exp.sequences(consumer)
    est = data_transfer(("seq",), exp, consumer, src, dst, CLUSTER, LOOKUP)
    # The runtime's plan (executor.runtime.store): last-stage dp shares -> the whole batch on
    # every consumer rank.
    whole = {SAMPLES: Piece(SAMPLES, ((0, n),))}
    plan = plan_transfers(
        batch_layout(src, n, GPN, last_stage_only=True),
        {r: whole for r in dst.mesh.ranks(GPN)},
        GPN,
    )
    per_seq = 8 * exp.seq_len
    crossing = {k: v for k, v in plan.bytes_per_pair(per_seq).items() if k[0] != k[1]}
    assert est.bytes_total == sum(crossing.values())
    received: dict[int, int] = {}
    for (_, d), b in crossing.items():
        received[d] = received.get(d, 0) + b
    assert est.bytes_max == max(received.values(), default=0)
